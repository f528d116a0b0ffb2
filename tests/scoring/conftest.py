"""Fixtures for the scoring tests: a tiny sentencepiece tokenizer, a tiny checkpoint and a scorer."""

from tests.support.scoring import checkpoint_path, scorer, tokenizer_path  # noqa: F401 - fixtures

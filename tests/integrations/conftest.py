"""The integration tests score on the same tiny model and tokenizer as the scoring tests."""

from tests.support.scoring import checkpoint_path, scorer, tokenizer_path  # noqa: F401 - fixtures

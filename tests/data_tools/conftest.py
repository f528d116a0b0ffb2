"""Fixtures for the data_tools tests: a tiny sentencepiece tokenizer trained on the fly."""

from tests.support.tokenizers import sp_model, sp_tok  # noqa: F401 - fixtures

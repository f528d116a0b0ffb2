"""The planning tests build a tiny dataset with the data_tools tokenizer fixtures."""

from tests.support.tokenizers import sp_model, sp_tok  # noqa: F401 - fixtures

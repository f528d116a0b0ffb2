"""The planning tests build a tiny dataset with the data_tools tokenizer fixtures."""

from tests.data_tools.conftest import sp_model, sp_tok  # noqa: F401

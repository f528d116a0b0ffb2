from __future__ import annotations

import pytest

from tests.support.synthetic_task import build_task


@pytest.fixture(scope="session")
def task(tmp_path_factory):
    """The learnable synthetic task, built once per session with the real data_tools CLI."""
    return build_task(tmp_path_factory.mktemp("task"))

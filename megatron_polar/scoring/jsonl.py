"""The scoring tools' names for JSONL reading and atomic JSON output, kept importable from here.

The reader is :mod:`megatron_polar.utils.jsonl` (shared with ``data_tools``), the writer
:mod:`megatron_polar.utils.io`, the error :mod:`megatron_polar.utils.errors`.
"""

from __future__ import annotations

from megatron_polar.utils.errors import BadRowError as BadRowError
from megatron_polar.utils.io import write_json_atomic as write_json_atomic
from megatron_polar.utils.jsonl import count_lines as count_lines
from megatron_polar.utils.jsonl import iter_jsonl as iter_jsonl

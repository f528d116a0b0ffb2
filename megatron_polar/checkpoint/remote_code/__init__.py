"""Remote code that ``export-hf --format internlm2`` writes beside the weights.

These modules are copied into the export directory and loaded by transformers with
``trust_remote_code=True`` (``auto_map`` in ``config.json`` and ``tokenizer_config.json``); they import
nothing from megatron_polar. :data:`REMOTE_CODE_FILES` lists them.
"""

from pathlib import Path

REMOTE_CODE_DIR = Path(__file__).parent
REMOTE_CODE_FILES = (
    "configuration_internlm2.py",
    "modeling_internlm2.py",
    "tokenization_internlm2.py",
    "tokenization_internlm2_fast.py",
)

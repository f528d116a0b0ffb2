"""Fast tokenizer of a POLAR export in the InternLM2 layout (written by megatron_polar).

It reads ``tokenizer.json``, which the exporter builds from ``tokenizer.model`` and checks against it,
so that it gives the ids of :class:`InternLM2Tokenizer` (no prefix space, added tokens whole, BOS from
the post-processor when special tokens are added).
"""

from __future__ import annotations

import os

from transformers import PreTrainedTokenizerFast

try:
    from .tokenization_internlm2 import InternLM2Tokenizer
except ImportError:  # sentencepiece missing: the fast tokenizer still works from tokenizer.json
    InternLM2Tokenizer = None

VOCAB_FILES_NAMES = {"vocab_file": "tokenizer.model", "tokenizer_file": "tokenizer.json"}


class InternLM2TokenizerFast(PreTrainedTokenizerFast):
    """``tokenizers``-backed twin of :class:`InternLM2Tokenizer`."""

    vocab_files_names = VOCAB_FILES_NAMES
    slow_tokenizer_class = InternLM2Tokenizer
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"

    # No __init__ of its own: transformers 5 then loads tokenizer.json as it is, where a custom
    # __init__ makes it rebuild the backend from the vocabulary alone (and lose the BPE merges).
    # Defaults (BOS added, no EOS, the special tokens) come from tokenizer_config.json.

    @property
    def can_save_slow_tokenizer(self) -> bool:
        vocab_file = getattr(self, "vocab_file", None) or self.init_kwargs.get("vocab_file")
        return bool(vocab_file) and os.path.isfile(vocab_file)

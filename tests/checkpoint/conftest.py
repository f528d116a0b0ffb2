"""Session fixtures: tiny HF models and their imports, shared by the conversion tests (imports are slow)."""

from __future__ import annotations

import pytest

from megatron_polar.checkpoint.hf_import import import_hf
from tests.support import hf_fixtures as fx


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="session")
def causal_dir(work):
    """A random LlamaForCausalLM (LM head, no reward head)."""
    return fx.save_llama(work / "hf-causal", seq_cls=False, seed=1)


@pytest.fixture(scope="session")
def seqcls_dir(work):
    """A random LlamaForSequenceClassification (score head) with a tokenizer holding the POLAR tokens."""
    out = fx.save_llama(work / "hf-seqcls", seq_cls=True, seed=2)
    fx.save_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def causal_ckpt(work, causal_dir):
    """Imported through the command line."""
    from megatron_polar.checkpoint.manager import latest_complete
    from megatron_polar.convert import main

    assert main(["import-hf", "--hf-dir", str(causal_dir), "--output", str(work / "ck-causal")]) == 0
    return latest_complete(work / "ck-causal")


@pytest.fixture(scope="session")
def seqcls_ckpt(work, seqcls_dir):
    return import_hf(seqcls_dir, work / "ck-seqcls", reward_token=fx.REWARD_TOKEN, split_token=fx.SPLIT_TOKEN)


@pytest.fixture(scope="session")
def polar_vocab_ckpt(work):
    """A tiny random reward model over the InternLM2 vocabulary (92,544 ids), imported from a Llama dir."""
    hf = fx.save_llama(work / "hf-polar-vocab", seq_cls=True, seed=7, vocab_size=fx.POLAR_VOCAB, layers=2)
    return import_hf(
        hf, work / "ck-polar-vocab", reward_token=fx.POLAR_REWARD_ID, split_token=fx.POLAR_SPLIT_ID
    )

"""Scoring an exported HF directory: same rewards as the checkpoint it came from, and as stock transformers."""

from __future__ import annotations

import json
import random

import pytest
import torch

from megatron_polar.checkpoint.hf_export import export_hf
from megatron_polar.checkpoint.model_loading import is_hf_directory
from megatron_polar.scoring.scorer import PolarScorer
from tests.support.scoring import random_text

ATOL = 1e-5  # fp32


@pytest.fixture(scope="module")
def exports(checkpoint_path, tokenizer_path, scorer, tmp_path_factory):
    """The session checkpoint exported in both formats, with its tokenizer and special ids."""
    root = tmp_path_factory.mktemp("hf-export")
    tok = scorer.tokenizer
    return {
        fmt: export_hf(
            checkpoint_path,
            root / fmt,
            fmt=fmt,
            tokenizer=tokenizer_path,
            reward_token_id=tok.reward_token_id,
            split_token_id=tok.split_token_id,
        )
        for fmt in ("llama", "internlm2")
    }


def _requests():
    rng = random.Random(5)
    return [
        (random_text(rng), random_text(rng), [random_text(rng, 1, 40) for _ in range(3)]) for _ in range(4)
    ]


@pytest.mark.parametrize("fmt", ["llama", "internlm2"])
def test_hf_export_scores_like_its_checkpoint(fmt, exports, scorer):
    assert is_hf_directory(exports[fmt]) and not is_hf_directory(scorer.name)
    hf_scorer = PolarScorer.from_hf(exports[fmt], device="cpu", batch_tokens=scorer.batch_tokens)
    assert hf_scorer.tokenizer.reward_token_id == scorer.tokenizer.reward_token_id
    assert hf_scorer.tokenizer.split_token_id == scorer.tokenizer.split_token_id
    for prompt, ref, cands in _requests():
        ours = hf_scorer.score(prompt, ref, cands)
        assert ours == pytest.approx(scorer.score(prompt, ref, cands), abs=ATOL)
        assert (
            hf_scorer.encode(_req(prompt, ref, cands)).sequences
            == scorer.encode(_req(prompt, ref, cands)).sequences
        )


def _req(prompt, ref, cands):
    from megatron_polar.scoring.requests import ScoreRequest

    return ScoreRequest(prompt=prompt, references=[ref], candidates=cands)


def test_llama_export_scores_like_stock_transformers(exports, scorer):
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(
        exports["llama"], attn_implementation="eager"
    ).eval()
    pad = hf.config.pad_token_id
    seqs = [s for p, r, c in _requests() for s in scorer.encode(_req(p, r, c)).sequences]
    assert all(s[-1] == scorer.tokenizer.reward_token_id and pad not in s for s in seqs)
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])  # right-padded: pooling reads the last
    with torch.no_grad():
        stock = hf(input_ids=ids, attention_mask=(ids != pad).long()).logits[:, 0].tolist()
    assert scorer.forward_sequences(seqs) == pytest.approx(stock, abs=ATOL)
    assert PolarScorer.from_hf(exports["llama"], device="cpu").forward_sequences(seqs) == pytest.approx(
        stock, abs=ATOL
    )


def test_base_model_without_head_is_refused(exports, tmp_path):
    from safetensors.torch import load_file, save_file

    from megatron_polar.checkpoint.hf_io import ConversionError

    src = exports["llama"]
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    tensors = {k: v for k, v in load_file(src / "model.safetensors").items() if k != "score.weight"}
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="no reward head"):
        PolarScorer.from_hf(tmp_path, device="cpu")


def test_clis_take_an_hf_directory_without_tokenizer(exports, scorer, tmp_path):
    from megatron_polar import evaluate as evaluate_cli
    from megatron_polar import score as score_cli

    rows = [{"prompt": p, "reference": r, "candidates": c} for p, r, c in _requests()]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--model", str(exports["internlm2"]), "--device", "cpu", "--batch-tokens", "4096"]
    assert score_cli.main([*args, "--input", str(src), "--output", str(out), "--no-progress"]) == 0
    got = [json.loads(line)["rewards"] for line in out.read_text().splitlines()]
    for g, (p, r, c) in zip(got, _requests()):
        assert g == pytest.approx(scorer.score(p, r, c), abs=ATOL)
    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text(
        "".join(json.dumps({"prompt": p, "responses": [r, *c]}) + "\n" for p, r, c in _requests())
    )
    assert evaluate_cli.main([*args, "--input", str(ranked)]) == 0
    with pytest.raises(SystemExit):  # a checkpoint still needs its tokenizer
        score_cli.main(["--model", scorer.name, "--input", str(src), "--output", str(out)])

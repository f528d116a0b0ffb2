"""The Python scoring API: released sequences, batching order, references, truncation, normalisation."""

from __future__ import annotations

import math

import pytest

from megatron_polar.scoring.normalizer import RewardNormalizer
from megatron_polar.scoring.scorer import PolarScorer
from tests.support.scoring import random_text

TOL = 1e-5  # batch composition changes CPU GEMM blocking, hence the last bits


def _one_by_one(scorer, prompt, reference, candidates):
    return [scorer.score(prompt, reference, [c])[0] for c in candidates]


def test_score_matches_one_at_a_time_in_caller_order(scorer):
    import random

    rng = random.Random(1)
    prompt, reference = random_text(rng), random_text(rng)
    candidates = [random_text(rng, 1, 60) for _ in range(9)]
    batched = scorer.score(prompt, reference, candidates)
    assert len(batched) == 9
    for a, b in zip(batched, _one_by_one(scorer, prompt, reference, candidates)):
        assert abs(a - b) < TOL
    assert len(set(batched)) > 1, "a random non-zero head must tell candidates apart"
    assert scorer.score(prompt, reference, candidates) == batched  # same inputs, same bits
    budget = scorer.batch_tokens
    scorer.batch_tokens = 160  # many small length-sorted micro-batches; order must still be restored
    try:
        assert scorer.score(prompt, reference, candidates) == pytest.approx(batched, abs=TOL)
    finally:
        scorer.batch_tokens = budget


def test_sequence_follows_released_format(scorer):
    tok = scorer.tokenizer
    [enc] = [scorer.encode(r) for r in [_request("P", ["R"], ["C"])]]
    expect = [tok.bos_id, *tok.encode("P\n"), *tok.encode("R"), tok.split_token_id]
    expect += [*tok.encode("P\n"), *tok.encode("C"), tok.reward_token_id]
    assert enc.sequences == [expect]


def _request(prompt, refs, cands):
    from megatron_polar.scoring.requests import ScoreRequest

    return ScoreRequest(prompt=prompt, references=refs, candidates=cands)


def test_message_lists_are_flattened(scorer):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "sum 2 and 2"}]
    a = scorer.score(msgs, [{"role": "assistant", "content": "4"}], ["four", "4"])
    b = scorer.score("be brief\nsum 2 and 2", "4", ["four", "4"])
    assert a == b


def test_several_references_mean_and_spread(scorer):
    refs = ["the answer is 4", "4", "it is four because two plus two"]
    cands = ["4", "5 maybe"]
    detailed = scorer.score_detailed("what is 2+2", candidates=cands, references=refs)
    singles = [scorer.score("what is 2+2", r, cands) for r in refs]
    for c, d in enumerate(detailed):
        per_ref = [s[c] for s in singles]
        assert d.per_reference == pytest.approx(per_ref, abs=TOL)
        assert d.reward == pytest.approx(sum(per_ref) / 3, abs=TOL)
        assert d.min == min(d.per_reference) and d.max == max(d.per_reference)
        assert d.std == pytest.approx(math.sqrt(sum((r - d.reward) ** 2 for r in d.per_reference) / 3))
    assert scorer.score("what is 2+2", candidates=cands, references=refs) == [d.reward for d in detailed]
    with pytest.raises(ValueError):
        scorer.score("p", "r", cands, references=refs)


def test_long_candidate_is_truncated_and_flagged(scorer):
    long = "word " * 5000
    [short, cut] = scorer.score_detailed("p", "r", ["fine", long])
    assert not short.truncated and cut.truncated
    assert cut.num_tokens <= scorer.max_length


def test_calibration_roundtrip(scorer, tmp_path):
    rows = [{"prompt": f"q{i}", "reference": "a b", "candidates": ["x", "y z", "the cat"]} for i in range(4)]
    raw = scorer.score("q0", "a b", ["x", "y z"], normalize=False)
    try:
        norm = scorer.calibrate(rows, save_to=tmp_path / "calib.json")
        assert norm.count == 12 and norm.std > 0
        loaded = RewardNormalizer.load(tmp_path / "calib.json")
        assert loaded == norm
        normed = scorer.score("q0", "a b", ["x", "y z"])  # applied by default once calibrated
        assert normed == pytest.approx([(r - norm.mean) / norm.std for r in raw])
        assert scorer.score("q0", "a b", ["x", "y z"], normalize=False) == raw
    finally:
        scorer.normalizer = None
    with pytest.raises(ValueError, match="calibrate"):
        scorer.score("q0", "a b", ["x"], normalize=True)
    (tmp_path / "bad.json").write_text('{"mean": 1}')
    with pytest.raises(ValueError, match="bad.json"):
        RewardNormalizer.load(tmp_path / "bad.json")


def test_from_hf_names_a_missing_config(tmp_path):
    from megatron_polar.checkpoint.hf_io import ConversionError

    with pytest.raises(ConversionError, match="config.json"):
        PolarScorer.from_hf(tmp_path)


def test_mismatched_tokenizer_is_refused(checkpoint_path, tmp_path):
    from tests.support.scoring import make_tokenizer

    big = make_tokenizer(tmp_path / "big", vocab_size=700)
    with pytest.raises(ValueError, match="embeds only"):
        PolarScorer.from_checkpoint(checkpoint_path, big, device="cpu")

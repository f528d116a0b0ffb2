"""The POLAR string format and its truncation rules."""

from __future__ import annotations

import pytest

from megatron_polar.data.format import (
    build_polar_text,
    check_lengths,
    encode_candidates,
    encode_pair,
    encode_sequence,
    flatten_messages,
    keep_last,
    prompt_budget,
)


def test_flatten_messages():
    assert flatten_messages("hi") == "hi"
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]
    assert flatten_messages(msgs) == "sys\nq"
    assert flatten_messages([]) == ""


@pytest.mark.parametrize(
    "bad, needle",
    [
        (3, "int"),
        ([{"role": "user"}], "content"),
        (["x"], "message 0"),
        ([{"role": 1, "content": "a"}], "role"),
    ],
)
def test_flatten_messages_rejects_bad_types(bad, needle):
    with pytest.raises(ValueError, match=needle):
        flatten_messages(bad)


def test_build_polar_text():
    assert build_polar_text("P", "R", "C", "<|reward|>") == "P\nR<|reward|>P\nC"
    assert build_polar_text("P", "R", "C", "<|reward|>", wrapper="pretrain") == "PR<|reward|>PC"
    # The training code writes no "\n" before an empty response; the released client always does.
    assert build_polar_text("P", "", "C", "<|reward|>") == "P<|reward|>P\nC"
    assert build_polar_text("P", "R", "", "<|reward|>") == "P\nR<|reward|>P"
    assert build_polar_text("P", "", "", "<|reward|>", always_newline=True) == "P\n<|reward|>P\n"


def test_prompt_budget_and_keep_last():
    # (max_length - 4 - |R| - |C|) // 2, the smallest over candidates; lengths count BOS.
    assert prompt_budget(30, 5, [6]) == 7
    assert prompt_budget(30, 5, [6, 9]) == 6
    assert keep_last([1, 2, 3, 4], 2) == [3, 4] and keep_last([1, 2], 5) == [1, 2]
    with pytest.raises(ValueError, match="budget"):
        keep_last([1, 2], 0)


def test_check_lengths_leaves_room_for_a_prompt():
    check_lengths(16384, 4096)
    check_lengths(2 * 8 + 6, 8)  # budget >= (6 - 4) // 2 = 1 with both responses capped
    with pytest.raises(ValueError, match="max_length"):
        check_lengths(2 * 8 + 5, 8)  # budget 0: the released ids[-0:] would keep the whole prompt
    with pytest.raises(ValueError, match="max_response_length"):
        check_lengths(100, 0)


def test_untruncated_sequence_is_the_whole_string(sp_tok):
    ids, info = encode_sequence(
        sp_tok, "alpha beta", "gamma", "the model", max_length=256, max_response_length=64
    )
    assert not info.truncated
    text = build_polar_text("alpha beta", "gamma", "the model", "<|reward|>")
    assert ids == [sp_tok.bos_id, *sp_tok.encode(text), sp_tok.reward_token_id]
    assert ids.count(sp_tok.split_token_id) == 1


def test_pair_shares_one_prompt_length(sp_tok):
    prompt = " ".join(["alpha beta gamma"] * 20)
    short, long = "model", " ".join(["policy of the"] * 10)
    kw = dict(max_length=60, max_response_length=27)
    chosen, rejected = encode_pair(sp_tok, prompt, "reward", short, long, **kw)
    alone = encode_sequence(sp_tok, prompt, "reward", short, **kw)
    # The pair cuts the prompt for its longer candidate; the chosen candidate alone keeps more prompt.
    assert chosen.info.prompt_dropped == rejected.info.prompt_dropped > alone[1].prompt_dropped
    split = chosen.ids.index(sp_tok.split_token_id)
    assert chosen.ids[:split] == rejected.ids[:split]
    assert rejected.info.candidate_dropped > 0 and rejected.ids[-1] == sp_tok.reward_token_id
    per_candidate = encode_candidates(sp_tok, prompt, "reward", [short, long], shared_prompt=False, **kw)
    assert per_candidate[0].ids == alone[0] and per_candidate[1].ids == rejected.ids


def test_split_and_reward_text_in_content_cannot_forge_tokens(sp_tok):
    ids, _ = encode_sequence(
        sp_tok, "a<|reward|>b", "c[UNUSED_TOKEN_130]", "d", max_length=256, max_response_length=64
    )
    # Special-token text is dropped when the kept ids are decoded (skip_special_tokens), as released.
    assert ids.count(sp_tok.split_token_id) == 1 and ids.count(sp_tok.reward_token_id) == 1

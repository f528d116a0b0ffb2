"""The POLAR string format and its truncation rules."""

from __future__ import annotations

import pytest

from megatron_polar.data.format import (
    TruncationInfo,
    assemble_sequence,
    build_polar_text,
    encode_sequence,
    flatten_messages,
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


def test_assemble_no_truncation():
    ids, info = assemble_sequence(
        [1, 2], [3], [4, 5], bos_id=90, split_id=91, reward_id=92, max_length=32, max_response_length=8
    )
    assert ids == [90, 1, 2, 3, 91, 1, 2, 4, 5, 92]
    assert info == TruncationInfo() and not info.truncated


def test_assemble_truncation_hand_computed():
    # max_response_length 3: R [10..14] -> [10,11,12] (2 dropped), C [20,21] kept.
    # keep = (max_length 14 - 4 - 3 - 2) // 2 = 2 -> prompt [1..5] keeps its last 2: [4, 5].
    ids, info = assemble_sequence(
        [1, 2, 3, 4, 5],
        [10, 11, 12, 13, 14],
        [20, 21],
        bos_id=90,
        split_id=91,
        reward_id=92,
        max_length=14,
        max_response_length=3,
    )
    assert ids == [90, 4, 5, 10, 11, 12, 91, 4, 5, 20, 21, 92]
    assert info == TruncationInfo(prompt_dropped=3, reference_dropped=2, candidate_dropped=0)
    assert len(ids) <= 14 - 1 and ids[-1] == 92


def test_assemble_prompt_can_vanish_entirely():
    # keep = (10 - 4 - 3 - 3) // 2 = 0: an empty prompt, never the whole prompt via ids[-0:].
    ids, info = assemble_sequence(
        [1, 2], [3, 3, 3], [4, 4, 4], bos_id=9, split_id=8, reward_id=7, max_length=10, max_response_length=3
    )
    assert ids == [9, 3, 3, 3, 8, 4, 4, 4, 7] and info.prompt_dropped == 2


def test_assemble_rejects_impossible_limits():
    with pytest.raises(ValueError, match="max_length"):
        assemble_sequence(
            [1], [2], [3], bos_id=0, split_id=1, reward_id=2, max_length=10, max_response_length=4
        )


def test_encode_sequence_matches_text(sp_tok):
    ids, _ = encode_sequence(sp_tok, "the prompt", "a reference", "a candidate 数据")
    assert ids[0] == sp_tok.bos_id and ids[-1] == sp_tok.reward_token_id
    assert ids.count(sp_tok.split_token_id) == 1
    assert sp_tok.decode(ids[1:-1]) == build_polar_text(
        "the prompt", "a reference", "a candidate 数据", "<|reward|>"
    )
    ids_pt, _ = encode_sequence(sp_tok, "p", "r", "c", wrapper="pretrain")
    assert sp_tok.decode(ids_pt[1:-1]) == "pr<|reward|>pc"

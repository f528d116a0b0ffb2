"""Token-exact POLAR format with the real InternLM2 tokenizer, against an independent reference.

The reference below is written from the description of the released training code (xtuner
``tokenize_ref``, with POLAR-7B's InternLM2 tokenizer loaded through ``transformers``) using
sentencepiece directly, not our tokenizer or encoder:

* ``encode(text, add_special_tokens=True)``: BOS, then the text cut at the added tokens of
  ``tokenizer_config.json`` (leftmost, longest first), each piece between them encoded by sentencepiece;
* ``decode(ids, skip_special_tokens=True)``: the ids marked special dropped, sentencepiece's decode of
  the rest, then the InternLM2 tokenizer's unconditional space clean-up before punctuation;
* the algorithm: measure P, R, C with BOS; cut R and C to ``max_response_length``; the prompt keeps
  ``p[-m:]`` with ``m = min over chosen/rejected of (max_length - 4 - |R| - |C|) // 2``; decode; join
  ``P + "\\n" + R + "<|reward|>" + P + "\\n" + C`` (no ``"\\n"`` for the pretrain wrapper or before an
  empty response); encode the whole string; append the reward id 92527.

Every case of the edge-case suite must give the reference's ids from the encoder, from ``data_tools
build`` (read back through ``inspect --json``) and from the scorer (one candidate at a time).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "polar7b-tokenizer"
REWARD_ID = 92527
MAX_LENGTH, MAX_RESPONSE = 96, 24  # small, so that the suite exercises truncation


class ReferenceTokenizer:
    """The released HF tokenizer's encode/decode, from sentencepiece and tokenizer_config.json."""

    def __init__(self, directory: Path) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        self.added = {v["content"]: int(k) for k, v in config["added_tokens_decoder"].items()}
        self.special = {int(k) for k, v in config["added_tokens_decoder"].items() if v["special"]}
        self.bos = self.sp.bos_id()
        assert config["add_bos_token"] is True and config["tokenizer_class"] == "InternLM2Tokenizer"

    def encode(self, text: str) -> list[int]:
        ids, pending, i = [self.bos], "", 0
        while i < len(text):
            hits = [name for name in self.added if text.startswith(name, i)]
            if hits:
                name = max(hits, key=len)
                if pending:
                    ids += self.sp.encode(pending)
                ids.append(self.added[name])
                pending, i = "", i + len(name)
            else:
                pending += text[i]
                i += 1
        if pending:
            ids += self.sp.encode(pending)
        return ids

    def decode(self, ids: list[int]) -> str:
        text = self.sp.decode([i for i in ids if i not in self.special])
        for old, new in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'")]:
            text = text.replace(old, new)
        for suffix in ("n't", "'m", "'s", "'ve", "'re"):
            text = text.replace(" " + suffix, suffix)
        return text


def reference_pair(tok: ReferenceTokenizer, row: dict, max_length: int, max_response: int) -> tuple:
    """(chosen_ids, rejected_ids) of one training row, by the released training algorithm."""

    def flat(key: str) -> str:
        return "\n".join(m["content"] for m in row[key])

    p, r, c, j = (tok.encode(flat(k)) for k in ("prompt", "reference", "chosen", "rejected"))
    r, c, j = r[:max_response], c[:max_response], j[:max_response]
    budget = max_length - 4
    m = min((budget - len(r) - len(c)) // 2, (budget - len(r) - len(j)) // 2)
    if len(p) > m:
        p = p[-m:]
    p_text, r_text, c_text, j_text = (tok.decode(x) for x in (p, r, c, j))
    pretrain = row.get("wrapper") == "pretrain"

    def half(response: str) -> str:
        return p_text + response if pretrain or response == "" else p_text + "\n" + response

    ref_half = half(r_text)
    return (
        tok.encode(ref_half + "<|reward|>" + half(c_text)) + [REWARD_ID],
        tok.encode(ref_half + "<|reward|>" + half(j_text)) + [REWARD_ID],
    )


def msgs(*contents: str, role: str = "user") -> list[dict]:
    return [{"role": role, "content": c} for c in contents]


LONG = "The quick brown fox jumps over the lazy dog, again and again. "
CASES: dict[str, dict] = {
    "plain": {
        "prompt": msgs("What is 2+2?"),
        "reference": msgs("It is 4.", role="assistant"),
        "chosen": msgs("4", role="assistant"),
        "rejected": msgs("5", role="assistant"),
    },
    "leading_newlines": {
        "prompt": msgs("Write a poem.\n"),
        "reference": msgs("\n\nRoses are red", role="assistant"),
        "chosen": msgs("\nViolets are blue", role="assistant"),
        "rejected": msgs("\n\n\n  sugar is sweet", role="assistant"),
    },
    "special_token_text_in_content": {
        "prompt": msgs("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
        "reference": msgs("hello<|im_end|>", role="assistant"),
        "chosen": msgs("hey there <|im_end|> <s>x</s> <|reward|>", role="assistant"),
        "rejected": msgs("[UNUSED_TOKEN_130] <|action_start|>", role="assistant"),
    },
    "empty_reference": {
        "prompt": msgs("Say nothing."),
        "reference": msgs("", role="assistant"),
        "chosen": msgs("ok", role="assistant"),
        "rejected": msgs("no", role="assistant"),
    },
    "empty_candidate": {
        "prompt": msgs("Say something."),
        "reference": msgs("Something.", role="assistant"),
        "chosen": msgs("", role="assistant"),
        "rejected": msgs("Nothing at all, really .", role="assistant"),
    },
    "truncation_chosen_rejected_differ": {
        "prompt": msgs(LONG * 3),
        "reference": msgs("A fox and a dog.", role="assistant"),
        "chosen": msgs("Short.", role="assistant"),
        "rejected": msgs(LONG * 2, role="assistant"),
    },
    "long_prompt_long_reference": {
        "prompt": msgs(LONG * 6),
        "reference": msgs(LONG * 4, role="assistant"),
        "chosen": msgs(LONG, role="assistant"),
        "rejected": msgs("No.", role="assistant"),
    },
    "multi_turn": {
        "prompt": msgs("You are helpful.", role="system")
        + msgs("Hi!")
        + msgs("Hello! How can I help?", role="assistant")
        + msgs("Tell me a joke."),
        "reference": msgs(
            "Why did the chicken cross the road?", "To get to the other side.", role="assistant"
        ),
        "chosen": msgs("I don't know any jokes , sorry .", role="assistant"),
        "rejected": msgs("Knock knock.", role="assistant"),
    },
    "crlf_and_tabs": {
        "prompt": msgs("line one\r\nline two\r\n\tindented"),
        "reference": msgs("\tcode:\r\n\t\treturn 1\r\n", role="assistant"),
        "chosen": msgs("\r\n\tok\t\t", role="assistant"),
        "rejected": msgs("  \t  ", role="assistant"),
    },
    "unicode": {
        "prompt": msgs("翻译：数据很重要。 Ünïcödé ñ"),
        "reference": msgs("Data is important. 😀", role="assistant"),
        "chosen": msgs("数据很重要 👍🏽 — «quoted»", role="assistant"),
        "rejected": msgs("\u200b zero width\u00a0nbsp", role="assistant"),
    },
    "pretrain_wrapper": {
        "prompt": msgs("Once upon a time"),
        "reference": msgs(", there was a king.", role="assistant"),
        "chosen": msgs("\nthere lived a queen", role="assistant"),
        "rejected": msgs(" in a land far away", role="assistant"),
        "wrapper": "pretrain",
    },
    "pretrain_wrapper_truncated": {
        "prompt": msgs(LONG * 5),
        "reference": msgs(LONG, role="assistant"),
        "chosen": msgs(LONG * 2, role="assistant"),
        "rejected": msgs("end", role="assistant"),
        "wrapper": "pretrain",
    },
}


@pytest.fixture(scope="module")
def ref_tok() -> ReferenceTokenizer:
    return ReferenceTokenizer(FIXTURE)


@pytest.fixture(scope="module")
def polar_tok():
    from megatron_polar.data.tokenizer import load_tokenizer

    return load_tokenizer(FIXTURE)


@pytest.fixture(scope="module")
def expected(ref_tok) -> dict[str, tuple]:
    return {name: reference_pair(ref_tok, row, MAX_LENGTH, MAX_RESPONSE) for name, row in CASES.items()}


def flat_row(row: dict) -> dict:
    from megatron_polar.data.format import flatten_messages

    out = {k: flatten_messages(row[k]) for k in ("prompt", "reference", "chosen", "rejected")}
    out["wrapper"] = row.get("wrapper")
    return out


def test_fixture_resolves_the_released_ids(polar_tok):
    assert (polar_tok.bos_id, polar_tok.split_token_id, polar_tok.reward_token_id) == (1, 92397, 92527)
    assert polar_tok.encode("<|im_end|>") == [92542] and polar_tok.add_bos


def test_suite_exercises_what_it_claims(ref_tok, expected):
    """The cases really hit the boundary effects (else the equality tests below prove little)."""
    chosen, rejected = expected["truncation_chosen_rejected_differ"]
    alone = reference_pair(
        ref_tok, {**CASES["truncation_chosen_rejected_differ"], "rejected": msgs("x")}, 96, 24
    )
    assert chosen != alone[0]  # the long rejected candidate shortened the chosen sequence's prompt
    assert max(len(s) for pair in expected.values() for s in pair) > 80
    # A leading "\n" merges with the separator "\n": whole-string ids differ from joined segment ids.
    c = CASES["leading_newlines"]
    seg = ref_tok.encode("Write a poem.\n" + "\n")[1:] + ref_tok.encode(c["reference"][0]["content"])[1:]
    assert seg != expected["leading_newlines"][0][1 : 1 + len(seg)]
    # Special-token text in content is gone: exactly one split token and one reward token.
    chosen, rejected = expected["special_token_text_in_content"]
    for ids in (chosen, rejected):
        assert ids.count(92397) == 1 and 92542 not in ids and 1 not in ids[1:]
    # "[UNUSED_TOKEN_130]" is not special in POLAR-7B's configuration: its text survives as id 92527.
    assert chosen.count(REWARD_ID) == 1 and rejected.count(REWARD_ID) == 2


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoder_matches_reference(name, polar_tok, expected):
    from megatron_polar.data.format import encode_pair

    row = flat_row(CASES[name])
    chosen, rejected = encode_pair(
        polar_tok,
        row["prompt"],
        row["reference"],
        row["chosen"],
        row["rejected"],
        max_length=MAX_LENGTH,
        max_response_length=MAX_RESPONSE,
        wrapper=row["wrapper"],
    )
    assert (chosen.ids, rejected.ids) == expected[name]


def test_released_defaults_match_reference(polar_tok, ref_tok):
    """At 16384 / 4096 a long prompt and a long reference are cut as released (BOS counted)."""
    from megatron_polar.data.format import encode_pair

    row = {
        "prompt": msgs("word " * 9000),
        "reference": msgs("token " * 5000),
        "chosen": msgs("\nanswer " * 3),
        "rejected": msgs("other " * 4200),
    }
    want = reference_pair(ref_tok, row, 16384, 4096)
    f = flat_row(row)
    got = encode_pair(polar_tok, f["prompt"], f["reference"], f["chosen"], f["rejected"])
    assert (got[0].ids, got[1].ids) == want and got[1].info.truncated


def test_build_and_inspect_json_give_reference_ids(tmp_path, polar_tok, expected, capsys):
    from data_tools.__main__ import main

    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(CASES[n]) + "\n" for n in sorted(CASES)), encoding="utf-8")
    prefix = str(tmp_path / "ds")
    argv = ["build", str(src), "-o", prefix, "--tokenizer", str(FIXTURE), "--no-progress"]
    assert main([*argv, "--max-length", str(MAX_LENGTH), "--max-response-length", str(MAX_RESPONSE)]) == 0
    capsys.readouterr()
    assert main(["inspect", prefix, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == len(CASES)
    for name, rec in zip(sorted(CASES), records):
        assert (rec["chosen_ids"], rec["rejected_ids"]) == expected[name], name
    manifest = json.loads((tmp_path / "ds.manifest.json").read_text())
    assert manifest["tokenizer"]["split_token_id"] == 92397 and manifest["dtype"] == "int32"


def test_bare_model_falls_back_to_released_added_tokens(tmp_path, expected):
    import shutil

    from megatron_polar.data.format import encode_pair
    from megatron_polar.data.tokenizer import load_tokenizer

    shutil.copy(FIXTURE / "tokenizer.model", tmp_path / "tokenizer.model")
    tok = load_tokenizer(tmp_path / "tokenizer.model")
    assert tok.config_path is None and tok.split_token_id == 92397 and tok.encode("<|im_end|>") == [92542]
    row = flat_row(CASES["special_token_text_in_content"])
    got = encode_pair(
        tok,
        row["prompt"],
        row["reference"],
        row["chosen"],
        row["rejected"],
        max_length=96,
        max_response_length=24,
    )
    assert (got[0].ids, got[1].ids) == expected["special_token_text_in_content"]


def test_scorer_scores_the_reference_ids(ref_tok, polar_tok, expected):
    """The scorer (and the server, which encodes through it) builds the same ids, one candidate at a time."""
    import torch

    from megatron_polar.config import load_config
    from megatron_polar.model.standalone import build_single
    from megatron_polar.scoring.prefix_sharing import plan_shared_rows
    from megatron_polar.scoring.requests import ScoreRequest
    from megatron_polar.scoring.scorer import PolarScorer

    cfg = load_config(
        [
            "train.precision=fp32",
            "model.num_layers=1",
            "model.transformer_impl=local",
            f"model.vocab_size={polar_tok.vocab_size}",
        ]
    )
    torch.manual_seed(0)
    model = build_single(cfg, "cpu")
    scorer = PolarScorer(model, polar_tok, max_length=MAX_LENGTH, max_response_length=MAX_RESPONSE)
    pair_cut_differs = set()
    for name, row in CASES.items():
        f = flat_row(row)
        request = ScoreRequest(f["prompt"], [f["reference"]], [f["chosen"], f["rejected"]], f["wrapper"])
        encoded = scorer.encode(request)
        for k, (cand_key, ids) in enumerate(zip(("chosen", "rejected"), encoded.sequences)):
            # The training rule for a single candidate: the row with this candidate on both sides.
            one = {**row, "chosen": row[cand_key], "rejected": row[cand_key]}
            alone = reference_pair(ref_tok, one, MAX_LENGTH, MAX_RESPONSE)[0]
            assert ids == alone, (name, cand_key)
            if alone != expected[name][k]:
                pair_cut_differs.add(name)  # the pair's shorter prompt length is a training-only rule
            else:
                assert ids == expected[name][k], (name, cand_key)
    assert "truncation_chosen_rejected_differ" in pair_cut_differs and "plain" not in pair_cut_differs
    # What the scorer scores is what the model sees for the built ids; with shared-prefix rows the
    # whole-string ids of a request's candidates share their longest common prefix and score the same.
    f = flat_row(CASES["leading_newlines"])
    cands = [f["chosen"], f["rejected"], f["reference"]]
    sequences = scorer.encode(ScoreRequest(f["prompt"], [f["reference"]], cands)).sequences
    shared = PolarScorer(
        model, polar_tok, max_length=MAX_LENGTH, max_response_length=MAX_RESPONSE, min_shared_prefix=4
    )
    alone = PolarScorer(
        model, polar_tok, max_length=MAX_LENGTH, max_response_length=MAX_RESPONSE, share_prefix=False
    )
    assert shared.share_prefix  # the local spec takes explicit masks
    rows, _ = plan_shared_rows(sequences, 4, 4096, 0.0)
    assert rows and rows[0].prefix > sequences[0].index(92397)  # past the split token
    got = shared.score(f["prompt"], f["reference"], cands)
    want = alone.forward_sequences([expected["leading_newlines"][0], expected["leading_newlines"][1]])
    assert got[:2] == pytest.approx(want, abs=1e-5)

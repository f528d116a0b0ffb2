"""In-process scoring for the demo: the untrained baseline and the hand-written examples.

The accuracies of trained checkpoints come from ``python -m megatron_polar.evaluate`` (a subprocess,
as a user would run it). Two things need the library directly:

* the *untrained* model has no checkpoint to point the CLI at. Its reward head starts at zero, so every
  reward is exactly 0 and every pair ties; we report the trainer's convention (a tie counts half)
  next to the strict protocol's (a tie counts wrong).
* the example scores, from :class:`PolarScorer` and from the exported HF model through ``transformers``
  (the two should agree to float precision).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from megatron_polar.config import from_yaml
from megatron_polar.data.tokenizer import load_tokenizer
from megatron_polar.model.standalone import build_single, single_process_config
from megatron_polar.scoring.preference_accuracy import evaluate_preferences
from megatron_polar.scoring.requests import ScoreRequest
from megatron_polar.scoring.scorer import PolarScorer
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

STRAWBERRY_PROMPT = "How many 'r's are there in the word 'strawberry'?"
STRAWBERRY_REFERENCE = "There are 3 'r's in the word 'strawberry'."
EXAMPLES: list[dict] = [
    {
        "prompt": STRAWBERRY_PROMPT,
        "reference": STRAWBERRY_REFERENCE,
        "candidates": [
            ("same as the reference", "There are 3 'r's in the word 'strawberry'."),
            ("correct, phrased differently", "The word 'strawberry' contains 3 'r's."),
            (
                "correct, spelled out",
                "Let's count the 'r's in 'strawberry': 's', 't', 'r', 'a', 'w', 'b', 'e', 'r', 'r', 'y'. "
                "There are 3 'r's, so the answer is 3.",
            ),
            ("wrong, phrased like the reference", "There are 2 'r's in the word 'strawberry'."),
            ("wrong, phrased differently", "The word 'strawberry' contains 2 'r's."),
        ],
    },
    {
        "prompt": "How many 'e's are there in the word 'reference'?",
        "reference": "'reference' has 4 'e's.",
        "candidates": [
            ("correct, phrased differently", "There are 4 'e's in the word 'reference'."),
            ("wrong, phrased like the reference", "'reference' has 3 'e's."),
            ("wrong, phrased like the reference", "'reference' has 5 'e's."),
        ],
    },
    {
        "prompt": "How many words are in the phrase 'beautiful is better than ugly'?",
        "reference": "There are 5 words in 'beautiful is better than ugly'.",
        "candidates": [
            ("correct, phrased differently", "The phrase 'beautiful is better than ugly' has 5 words."),
            ("wrong, phrased like the reference", "There are 4 words in 'beautiful is better than ugly'."),
        ],
    },
]


def untrained_accuracy(run_dir: Path, tokenizer: str, rows: list[dict]) -> dict:
    """Pair accuracy of a freshly initialised model with the configuration of ``run_dir``'s run."""
    cfg = single_process_config(from_yaml((Path(run_dir) / "config.yaml").read_text()), "fp32")
    model = build_single(cfg, device="cpu").eval()
    scorer = PolarScorer(model, tokenizer=_tokenizer(tokenizer), explicit_mask=True, name="untrained")
    margins: list[float] = []
    report = evaluate_preferences(scorer, rows, margins=margins)
    ties = sum(m == 0 for m in margins)
    wins = sum(m > 0 for m in margins)
    report["ties"] = ties
    report["accuracy_ties_half"] = (wins + 0.5 * ties) / len(margins) if margins else float("nan")
    log.info(
        "untrained model: accuracy %.3f (ties count half; %d of %d pairs tie), strict %.3f",
        report["accuracy_ties_half"],
        ties,
        len(margins),
        report["overall"]["accuracy"],
    )
    return report


def _tokenizer(path: str):
    return load_tokenizer(path)


def score_examples(checkpoint: str, tokenizer: str, export_dir: Path) -> list[dict]:
    """Score :data:`EXAMPLES` with the scoring API and with the HF export; one dict per candidate.

    The HF model gets the very token ids the scorer built (the released string, reward token last),
    so the two columns differ only by the model implementation.
    """
    scorer = PolarScorer.from_checkpoint(checkpoint, tokenizer=tokenizer, device="cpu")
    hf = AutoModelForSequenceClassification.from_pretrained(export_dir, torch_dtype=torch.float32).eval()
    out = []
    for ex in EXAMPLES:
        texts = [text for _, text in ex["candidates"]]
        rewards = scorer.score(ex["prompt"], ex["reference"], texts)
        request = ScoreRequest(prompt=ex["prompt"], references=[ex["reference"]], candidates=texts)
        with torch.no_grad():
            hf_rewards = [
                float(hf(input_ids=torch.tensor([ids])).logits[0, 0])
                for ids in scorer.encode(request).sequences
            ]
        for (label, text), r, h in zip(ex["candidates"], rewards, hf_rewards):
            out.append(
                {
                    "prompt": ex["prompt"],
                    "reference": ex["reference"],
                    "label": label,
                    "candidate": text,
                    "reward": r,
                    "reward_hf": h,
                }
            )
    return out

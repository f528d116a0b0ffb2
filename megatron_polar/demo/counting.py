"""A fine-tuning task with an objective criterion, after the paper's "strawberry" example (appendix C.2).

Questions ask how many times a letter occurs in a word, or how many words a short phrase has. Each
ranked row is ``{"prompt", "responses": [best, ..., worst], "category"}`` as ``data_tools rank`` reads it:

1. the reference: the correct count in one phrasing;
2. the correct count in a *different* phrasing (sometimes spelled out letter by letter);
3. a wrong count (off by one) phrased *exactly like the reference*;
4. the same wrong count in the second phrasing.

The demo fine-tunes on ``rank --mode first3`` triples, (2 > 3) against the reference: a correct answer
in another phrasing must beat a wrong answer that copies the reference's phrasing, so the count, not
surface similarity, decides. (``--mode all`` would add (2 > 4) and (3 > 4); the latter rewards phrasing
among equally wrong answers and, on this tiny model, slowed learning of the count from 0.93 to 0.71
held-out accuracy in the same steps.) Evaluation follows the paper's protocol (reference = 1st, correct when 2nd scores above 3rd).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from megatron_polar.demo.policies import SOURCES, source_text, tokenize_words

LETTER_TEMPLATES: tuple[Callable[[str, str, int], str], ...] = (
    lambda w, c, n: f"There are {n} '{c}'s in the word '{w}'.",
    lambda w, c, n: f"The word '{w}' contains {n} '{c}'s.",
    lambda w, c, n: f"'{w}' has {n} '{c}'s.",
    lambda w, c, n: f"Counting them, I find {n} '{c}'s in '{w}'.",
    lambda w, c, n: f"The answer is {n}: '{c}' appears {n} times in '{w}'.",
)
PHRASE_TEMPLATES: tuple[Callable[[str, int], str], ...] = (
    lambda p, n: f"There are {n} words in '{p}'.",
    lambda p, n: f"The phrase '{p}' has {n} words.",
    lambda p, n: f"'{p}' is {n} words long.",
    lambda p, n: f"Counting them, I find {n} words.",
)


def spelled_out(word: str, letter: str, n: int) -> str:
    """The paper's step-by-step phrasing: list the letters, then the count."""
    letters = ", ".join(f"'{ch}'" for ch in word)
    return f"Let's count the '{letter}'s in '{word}': {letters}. There are {n} '{letter}'s, so the answer is {n}."


def word_list(min_len: int = 5, max_len: int = 12) -> list[str]:
    """Distinct lowercase words from the shipped texts, sorted (deterministic)."""
    words = {
        w.lower()
        for s in SOURCES
        for w in tokenize_words(source_text(s))
        if w.isalpha() and w.isascii() and min_len <= len(w) <= max_len
    }
    return sorted(words)


def split_words(words: list[str], holdout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Train and held-out words (disjoint); the held-out ones appear in no training prompt."""
    shuffled = list(words)
    random.Random(seed).shuffle(shuffled)
    n_hold = max(1, int(len(shuffled) * holdout_fraction))
    return sorted(shuffled[n_hold:]), sorted(shuffled[:n_hold])


def _wrong(rng: random.Random, n: int) -> int:
    return n + 1 if n <= 1 or rng.random() < 0.5 else n - 1


def letter_row(rng: random.Random, word: str) -> dict:
    """One ranked letter-counting row about ``word``."""
    counts = {c: word.count(c) for c in sorted(set(word))}
    repeated = [c for c, k in counts.items() if k > 1]
    letter = rng.choice(repeated) if repeated and rng.random() < 0.7 else rng.choice(sorted(counts))
    n, wrong = counts[letter], _wrong(rng, counts[letter])
    ref_t, alt_t = rng.sample(LETTER_TEMPLATES, 2)
    correct_alt = spelled_out(word, letter, n) if rng.random() < 0.25 else alt_t(word, letter, n)
    return {
        "prompt": f"How many '{letter}'s are there in the word '{word}'?",
        "responses": [
            ref_t(word, letter, n),
            correct_alt,
            ref_t(word, letter, wrong),
            alt_t(word, letter, wrong),
        ],
        "category": "letters",
    }


def phrase_row(rng: random.Random, words: list[str]) -> dict:
    """One ranked word-counting row about a phrase drawn from ``words``."""
    phrase = " ".join(rng.sample(words, rng.randint(2, 7)))
    n = len(phrase.split())
    wrong = _wrong(rng, n)
    ref_t, alt_t = rng.sample(PHRASE_TEMPLATES, 2)
    return {
        "prompt": f"How many words are in the phrase '{phrase}'?",
        "responses": [ref_t(phrase, n), alt_t(phrase, n), ref_t(phrase, wrong), alt_t(phrase, wrong)],
        "category": "words",
    }


def make_rows(words: list[str], n: int, seed: int, phrase_share: float = 0.25) -> list[dict]:
    """``n`` ranked rows over ``words`` (letters, and a ``phrase_share`` of word counting)."""
    rng = random.Random(seed)
    return [
        phrase_row(rng, words) if rng.random() < phrase_share else letter_row(rng, rng.choice(words))
        for _ in range(n)
    ]

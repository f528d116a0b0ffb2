"""Repetition-loop truncation keeps some of the loop."""

from __future__ import annotations

import random

from data_tools.loops import LoopConfig, truncate_loops


def test_phrase_loop_keeps_two_repetitions():
    text = "Here is my answer. " + "I am sorry. " * 100
    out, cut = truncate_loops(text)
    assert cut and out.startswith("Here is my answer.") and out.count("I am sorry") == 2


def test_paragraph_loop():
    block = (
        "A long line of text that repeats again and again in this degenerate sample.\nAnd its second line.\n"
    )
    out, cut = truncate_loops("Intro.\n" + block * 12)
    assert cut and out == "Intro.\n" + block * 2


def test_keep_is_configurable_and_short_text_untouched():
    out, _ = truncate_loops("x" * 1000, LoopConfig(keep=5))
    assert out == "x" * 5
    assert truncate_loops("ha ha ha ha ha ha ha") == ("ha ha ha ha ha ha ha", False)


def test_normal_text_untouched():
    rng = random.Random(0)
    words = "the of a and to in is it that for on with as was he she they".split()
    text = " ".join(rng.choice(words) for _ in range(3000))
    assert truncate_loops(text) == (text, False)

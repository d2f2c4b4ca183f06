"""Prompt templates: each holds the instruction, the marks and the image token exactly once."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magma_core.codecs import trace_text
from magma_core.codecs.action_tokenizer import ActionNormStats, ActionTokenizer
from magma_core.codecs.trace_text import GridTrace, encode_marks, parse_mark_ids, parse_traces
from magma_core.errors import InvalidInputError
from magma_core.prompts import (
    DEFAULT_TEMPLATES,
    IMAGE_TOKEN,
    TRACE_END,
    TRACE_START,
    PromptTemplates,
    action_answer_ids,
    action_prompt,
    grounding_answer,
    grounding_prompt,
    normalize_instruction,
    trace_answer,
    trace_prompt,
)

MARKS = [(1, (120, 45)), (2, (30, 200)), (5, (255, 0))]
INSTRUCTION = "put the red cube on the green pad"


def test_trace_markers_are_defined_once_in_the_codec():
    assert TRACE_START is trace_text.TRACE_START and TRACE_END is trace_text.TRACE_END
    assert (IMAGE_TOKEN, TRACE_START, TRACE_END) == ("<image>", "<trace_start>", "<trace_end>")


@pytest.mark.parametrize("variant", range(len(DEFAULT_TEMPLATES.grounding)))
def test_grounding_prompt(variant):
    text = grounding_prompt(INSTRUCTION, MARKS, variant=variant)
    assert text.count(IMAGE_TOKEN) == 1 and text.startswith(IMAGE_TOKEN)
    assert text.count(INSTRUCTION) == 1
    assert encode_marks(MARKS) in text
    assert TRACE_START not in text


@pytest.mark.parametrize("variant", range(len(DEFAULT_TEMPLATES.trace)))
@pytest.mark.parametrize("with_depth, step_format", [(False, "(x,y)"), (True, "(x,y,depth,gripper)")])
def test_trace_prompt(variant, with_depth, step_format):
    text = trace_prompt(INSTRUCTION, MARKS, n_steps=8, with_depth=with_depth, variant=variant)
    assert text.count(IMAGE_TOKEN) == 1
    assert text.count(INSTRUCTION) == 1
    assert encode_marks(MARKS) in text
    assert " 8 " in text and step_format in text
    if not with_depth:
        assert "depth" not in text


@pytest.mark.parametrize("variant", range(len(DEFAULT_TEMPLATES.action)))
def test_action_prompt(variant):
    text = action_prompt("Open the top drawer.", variant=variant)
    assert text.count(IMAGE_TOKEN) == 1
    assert "to open the top drawer?" in text
    assert action_prompt("open the top drawer") == "<image>\nWhat action should the robot take to open the top drawer?"


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=80) | st.sampled_from(["Put the cube on the pad.", "say <image>", "pick {marks} up"]),
    st.integers(0, 1),
)
def test_any_instruction_appears_once_with_one_image_token(raw, variant):
    try:
        instruction = normalize_instruction(raw)
    except InvalidInputError:
        return  # empty after trimming, or holds a special token: refused by design
    for text in (
        grounding_prompt(raw, MARKS, variant=variant),
        trace_prompt(raw, MARKS, 4, variant=variant),
        action_prompt(raw, variant=variant),
    ):
        assert text.count(IMAGE_TOKEN) == 1
        assert instruction in text


def test_normalize_instruction():
    assert normalize_instruction("  Put the cube\n on the pad.  ") == "put the cube on the pad"
    assert normalize_instruction("UR5: stack blocks!") == "UR5: stack blocks"
    for bad in ("", " . ", None, "show <image> twice", "a" * 501, f"{TRACE_START} x"):
        with pytest.raises(InvalidInputError):
            normalize_instruction(bad)


def test_grounding_answers_parse_back():
    for ids in ([3], [2, 5], [1, 2, 5]):
        assert parse_mark_ids(grounding_answer(ids)) == ids
    assert grounding_answer([2, 5]) == "Marks 2 and 5"
    for bad in ([], [1, 1], [-1], ["3"], [True]):
        with pytest.raises(InvalidInputError):
            grounding_answer(bad)


def test_trace_answer_is_the_marked_block_and_checks_length():
    traces = [GridTrace(1, [[120, 45], [121, 46], [122, 47]], [10, 11, 12], [0, 0, 1])]
    answer = trace_answer(traces, n_steps=2)
    assert answer.startswith(TRACE_START) and answer.endswith(TRACE_END)
    assert parse_traces(answer, expect_25d=True, expect_steps=3).traces == traces
    with pytest.raises(InvalidInputError, match="now \\+ 4"):
        trace_answer(traces, n_steps=4)


def test_action_answer_ids_are_the_tokenizer_ids():
    stats = ActionNormStats(q01=[-1] * 6 + [0], q99=[1] * 7)
    tok = ActionTokenizer(1000, stats)
    chunk = np.zeros((2, 7))
    ids = action_answer_ids(chunk, tok)
    assert ids.shape == (14,) and tok.is_action_token(ids).all()


def test_bad_arguments():
    with pytest.raises(InvalidInputError, match="variant"):
        action_prompt(INSTRUCTION, variant=len(DEFAULT_TEMPLATES.action))
    with pytest.raises(InvalidInputError, match="n_steps"):
        trace_prompt(INSTRUCTION, MARKS, 0)
    with pytest.raises(InvalidInputError):
        grounding_prompt(INSTRUCTION, [])


def test_paraphrases_are_data_and_validated():
    extra = PromptTemplates(action=DEFAULT_TEMPLATES.action + ("{image}\nRobot, {instruction}. Next action?",))
    assert action_prompt(INSTRUCTION, variant=2, templates=extra) == f"{IMAGE_TOKEN}\nRobot, {INSTRUCTION}. Next action?"
    with pytest.raises(InvalidInputError, match="missing"):
        PromptTemplates(action=("{image} do it",))
    with pytest.raises(InvalidInputError, match="exactly once"):
        PromptTemplates(action=("{image}{image} {instruction}",))
    with pytest.raises(InvalidInputError, match="unknown"):
        PromptTemplates(grounding=("{image} {instruction} {marks} {colour}",))
    with pytest.raises(InvalidInputError, match="literal"):
        PromptTemplates(action=("<image>{image} {instruction}",))
    with pytest.raises(InvalidInputError, match="non-empty"):
        PromptTemplates(trace=())

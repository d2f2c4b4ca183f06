"""Every prompt the model sees, in one place: grounding (Set-of-Mark), trace planning (Trace-of-Mark), actions.

Templates are data (`PromptTemplates`), so paraphrases are added by listing more strings; a
template is checked when the dataclass is built: it holds exactly one ``{image}`` field and
the fields its task needs. `variant` picks a paraphrase (training samples one; inference uses 0).

Special tokens: `IMAGE_TOKEN` is owned here; `TRACE_START` / `TRACE_END` belong to the trace
codec (`magma_core.codecs.trace_text`, which defines the format) and are re-exported here.
"""
from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from magma_core.codecs.action_tokenizer import ActionTokenizer
from magma_core.codecs.trace_text import DEFAULT_N_DEPTH_BINS, TRACE_END, TRACE_START, GridTrace, encode_marks, encode_traces
from magma_core.errors import InvalidInputError

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = (IMAGE_TOKEN, TRACE_START, TRACE_END)
MAX_INSTRUCTION_CHARS = 500

__all__ = [
    "IMAGE_TOKEN",
    "TRACE_START",
    "TRACE_END",
    "SPECIAL_TOKENS",
    "PromptTemplates",
    "DEFAULT_TEMPLATES",
    "normalize_instruction",
    "grounding_prompt",
    "grounding_answer",
    "trace_prompt",
    "trace_answer",
    "goal_header",
    "GOAL_HEADER_PREFIX",
    "locate_prompt",
    "refer_prompt",
    "action_prompt",
    "action_answer_ids",
]

# Fields each kind of template must use; `step_format` tells the model 2D from 2.5D.
_REQUIRED_FIELDS = {
    "grounding": {"image", "instruction", "marks"},
    "trace": {"image", "instruction", "marks", "n_steps", "step_format"},
    "action": {"image", "instruction"},
    "locate": {"image", "marks", "mark_list", "step_format"},
    "refer": {"image", "marks", "things"},
}
STEP_FORMAT_2D = "(x,y)"
STEP_FORMAT_25D = "(x,y,depth,gripper)"


def _check_template(kind: str, template: str, required: set[str]) -> None:
    if not isinstance(template, str):
        raise InvalidInputError(f"{kind} template must be a str, got {type(template).__name__}")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise InvalidInputError(f"{kind} template {template!r} is not a valid format string: {exc}") from exc
    unknown = set(fields) - required
    missing = required - set(fields)
    if unknown or missing:
        raise InvalidInputError(f"{kind} template {template!r}: unknown fields {sorted(unknown)}, missing {sorted(missing)}")
    if fields.count("image") != 1:
        raise InvalidInputError(f"{kind} template {template!r} must place {{image}} exactly once")
    # A literal special token would duplicate the image or open a trace block inside the prompt.
    if any(token in template for token in SPECIAL_TOKENS):
        raise InvalidInputError(f"{kind} template {template!r} must use {{image}}, not literal special tokens")


@dataclass(frozen=True)
class PromptTemplates:
    """Paraphrases of the user prompt for each task, as `str.format` templates."""

    grounding: tuple[str, ...] = (
        "{image}\nMarks:\n{marks}\nWhich mark is the object named in \"{instruction}\"? Answer with its mark.",
        "{image}\nThe numbered marks are:\n{marks}\nInstruction: {instruction}\nWhich mark shows the object the instruction refers to?",
    )
    trace: tuple[str, ...] = (
        "{image}\nTask: {instruction}\nMarks:\n{marks}\nGive each mark's position now and its next {n_steps} positions as {step_format}.",
        "{image}\nThe robot must {instruction}.\nMarks on the image:\n{marks}\nWhere is each mark now and over the next {n_steps} steps? Write {step_format} per step.",
    )
    locate: tuple[str, ...] = (
        "{image}\nMarks:\n{marks}\nWhere are marks {mark_list} now? Write {step_format} for each.",
        "{image}\nThe numbered marks are:\n{marks}\nGive the current position of marks {mark_list} as {step_format}.",
    )
    refer: tuple[str, ...] = (
        "{image}\nMarks:\n{marks}\nWhich marks show the {things}? Answer with their marks in that order.",
        "{image}\nThe numbered marks are:\n{marks}\nName the marks of the {things}, in order.",
    )
    action: tuple[str, ...] = (
        "{image}\nWhat action should the robot take to {instruction}?",
        "{image}\nWhich action should the robot take next to {instruction}?",
    )

    def __post_init__(self) -> None:
        for kind, required in _REQUIRED_FIELDS.items():
            templates = getattr(self, kind)
            if isinstance(templates, str) or not templates:
                raise InvalidInputError(f"{kind} templates must be a non-empty tuple of strings")
            object.__setattr__(self, kind, tuple(templates))
            for template in templates:
                _check_template(kind, template, required)


DEFAULT_TEMPLATES = PromptTemplates()


def normalize_instruction(instruction: str) -> str:
    """Trim, collapse whitespace, drop final punctuation, lower-case a capitalised first word.

    So "Put the cube on the pad." reads naturally inside "...take to {instruction}?". Refuses
    empty or very long text and text holding special tokens (it would corrupt the prompt).
    """
    if not isinstance(instruction, str):
        raise InvalidInputError(f"instruction must be a str, got {type(instruction).__name__}")
    text = " ".join(instruction.split()).rstrip(".!?;, ")
    if not text:
        raise InvalidInputError("instruction is empty")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InvalidInputError(f"instruction has {len(text)} characters, more than {MAX_INSTRUCTION_CHARS}")
    for token in SPECIAL_TOKENS:
        if token in text:
            raise InvalidInputError(f"instruction contains the special token {token}")
    # "Put" -> "put", but keep acronyms and single capitals such as "UR5" or "I".
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return text


def grounding_prompt(
    instruction: str,
    marks: Sequence[tuple[int, tuple[int, int]]] | str,
    variant: int = 0,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
) -> str:
    """Set-of-Mark grounding: which of `marks` (id, (x, y) grid cell) is the object the instruction names."""
    return _pick(templates.grounding, variant, "grounding").format(
        image=IMAGE_TOKEN, instruction=normalize_instruction(instruction), marks=_marks_block(marks)
    )


def grounding_answer(mark_ids: Sequence[int]) -> str:
    """Expected answer: "Mark 3", "Marks 2 and 5", "Marks 1, 2 and 5" (parsed by `parse_mark_ids`)."""
    try:
        ids = [_as_mark_id(i) for i in mark_ids]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"grounding answer needs integer mark ids, got {mark_ids!r}") from exc
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise InvalidInputError(f"grounding answer needs distinct non-negative mark ids, got {list(mark_ids)!r}")
    return f"Mark {ids[0]}" if len(ids) == 1 else "Marks " + _spoken_list([str(i) for i in ids])


def trace_prompt(
    instruction: str,
    marks: Sequence[tuple[int, tuple[int, int]]] | str,
    n_steps: int,
    with_depth: bool = False,
    variant: int = 0,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
) -> str:
    """Trace-of-Mark planning: predict each mark's next `n_steps` grid positions, 2D or 2.5D (`with_depth`)."""
    if not isinstance(n_steps, (int, np.integer)) or isinstance(n_steps, bool) or n_steps < 1:
        raise InvalidInputError(f"n_steps must be a positive integer, got {n_steps!r}")
    return _pick(templates.trace, variant, "trace").format(
        image=IMAGE_TOKEN,
        instruction=normalize_instruction(instruction),
        marks=_marks_block(marks),
        n_steps=int(n_steps),
        step_format=STEP_FORMAT_25D if with_depth else STEP_FORMAT_2D,
    )


def trace_answer(grid_traces: Sequence[GridTrace], n_steps: int | None = None, n_depth_bins: int | None = None) -> str:
    """Expected answer: the trace block with markers; each trace is the current cell plus `n_steps` future cells."""
    if n_steps is not None:
        for gt in grid_traces:
            if gt.length != n_steps + 1:
                raise InvalidInputError(f"mark {gt.mark_id} has {gt.length} steps; the prompt asks for now + {n_steps}")
    return encode_traces(grid_traces, with_markers=True, n_depth_bins=n_depth_bins or DEFAULT_N_DEPTH_BINS)


GOAL_HEADER_PREFIX = "Goal: "


def goal_header(description: str) -> str:
    """The line a goal-first trace answer may open with: "Goal: red block 4cm\n", the listed description of the
    mark the hand heads for, written before its trace block.

    Naming the goal in words first turns grounding into copying: the colour and shape come from the
    instruction and the mark list, and the mark number then follows from the description (at run
    time only listed descriptions are considered, and the chosen one fixes the mark)."""
    text = " ".join(str(description).split())
    if not text or any(c in text for c in "<>[]\n"):
        raise InvalidInputError(f"a goal description must be plain non-empty text, got {description!r}")
    return f"{GOAL_HEADER_PREFIX}{text}\n"


def locate_prompt(marks: str, mark_ids: Sequence[int], variant: int = 0,
                  templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """Mark localisation (Set-of-Mark): where the listed marks `mark_ids` are now, written as one-step traces.

    Its answer (`trace_answer` of one-step traces) starts each line the way a trace does, so the model
    practises finding a mark's line by its number and copying its position, the first step of every trace."""
    try:
        ids = [_as_mark_id(i) for i in mark_ids]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"locate needs integer mark ids, got {mark_ids!r}") from exc
    if not ids or len(set(ids)) != len(ids):
        raise InvalidInputError(f"locate needs distinct mark ids, got {list(mark_ids)!r}")
    return _pick(templates.locate, variant, "locate").format(
        image=IMAGE_TOKEN, marks=_marks_block(marks), mark_list=_spoken_list([str(i) for i in ids]), step_format=STEP_FORMAT_25D)


def refer_prompt(marks: str, things: Sequence[str], variant: int = 0, templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """Referring (Set-of-Mark): which marks show the named `things` ("blue block", ...); answered with
    `grounding_answer` in the same order. It practises the lookup an instruction's object needs."""
    names = [" ".join(str(t).split()) for t in things]
    if not names or any(not n or any(c in n for c in "<>[]\n;") for n in names):
        raise InvalidInputError(f"refer needs non-empty plain names, got {list(things)!r}")
    return _pick(templates.refer, variant, "refer").format(image=IMAGE_TOKEN, marks=_marks_block(marks), things=_spoken_list(names))


def action_prompt(instruction: str, variant: int = 0, templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """Magma's robot-head question: "What action should the robot take to <instruction>?"."""
    return _pick(templates.action, variant, "action").format(image=IMAGE_TOKEN, instruction=normalize_instruction(instruction))


def action_answer_ids(actions: np.ndarray, tokenizer: ActionTokenizer) -> np.ndarray:
    """Expected answer of an action prompt: the 7 action token ids (flat) of one action (7,) or a chunk (K, 7)."""
    return tokenizer.encode(actions).reshape(-1)


def _marks_block(marks) -> str:
    """The prompt's mark list: (id, (x, y)) pairs encoded here, or lines already written (described marks,
    `magma_core.som.describe.marks_text`)."""
    if isinstance(marks, str):
        if not marks.strip():
            raise InvalidInputError("the mark list is empty")
        for token in SPECIAL_TOKENS:
            if token in marks:
                raise InvalidInputError(f"the mark list contains the special token {token}")
        return marks
    return encode_marks(marks)


def _spoken_list(items: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def _as_mark_id(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{value!r} is not an integer")
    return int(value)


def _pick(templates: tuple[str, ...], variant: int, kind: str) -> str:
    if not isinstance(variant, (int, np.integer)) or isinstance(variant, bool) or not 0 <= variant < len(templates):
        raise InvalidInputError(f"{kind} template variant must be in [0, {len(templates)}), got {variant!r}")
    return templates[int(variant)]

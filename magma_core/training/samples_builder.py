"""Turn a `Sample` into (image, prompt, answer) for the three training objectives.

Ground-truth marks come from the sample's ground-truth traces (first step of each): trace 0 is
the gripper (always mark 1, as `propose_marks` numbers it at run time), trace 1 the task's
object, trace 2 the place when there is one. The object and place get ids drawn from
``2..object_id_range+1`` (by the caller's rng), so the model reads which mark is which from the
image and the instruction rather than learning a fixed number.

- grounding (Set-of-Mark): marks drawn on the image, answer "Mark k" for the object.
- trace (Trace-of-Mark): marks drawn, answer the 2.5D trace (grid cells, depth bins, gripper
  state) of the gripper and the object over the next `trace_steps` positions.
- action: the plain image, answer the 7 action tokens of the recorded action.
- locate (proposed marks only): marks drawn and listed, answer the current position of a few of them,
  asked in random order, as one-step traces. Every line is a lookup by mark number and a copy, the
  skill each trace's first step needs, practised several times per example.
- refer (proposed marks only): marks drawn and listed, the question names a few of them by colour and
  shape ("blue block"), answer their mark ids in that order: the lookup from a named thing to its
  mark that grounding an instruction needs, several times per example.

With ``marks: proposed`` (the default of configs/train_tiny.yaml) grounding and trace samples use
the marks a robot proposes at run time (`propose_marks` on the recorded RGB-D frame, camera and
proprioception) instead of marks at the ground-truth points: all of them, distractors and
spurious ones included, numbered and described as at run time (`magma_core.som.describe`). The
ground-truth traces are attached to the proposed marks nearest their start (within
`MATCH_RADIUS_PX`); the gripper is always mark 1.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from magma_core.codecs.action_tokenizer import ActionTokenizer
from magma_core.codecs.trace_text import DepthBinning, GridTrace, grid_traces_from_traces, marks_from_grid_traces
from magma_core.data.samples import Sample
from magma_core.errors import InvalidInputError
from magma_core.grid import GRID_SIZE, pixels_to_grid
from magma_core.prompts import (action_answer_ids, action_prompt, goal_header, grounding_answer, grounding_prompt, locate_prompt, refer_prompt,
                                trace_answer, trace_prompt)
from magma_core.som.draw import draw_marks
from magma_core.som.describe import DescribedMark, describe_proposal, listed_positions, mark_set, marks_text, nearest_mark
from magma_core.som.marks import Mark, MarkSet
from magma_core.training.config import TRACE_ORDERS
from magma_core.tom.types import Trace

GRIPPER_MARK_ID = 1
GRIPPER_TRACE, OBJECT_TRACE, PLACE_TRACE = 0, 1, 2
# A ground-truth trace belongs to the proposed mark nearest its start within this many pixels (per 128 px of width).
MATCH_RADIUS_PX = 6.0


@dataclass
class TrainingItem:
    """One example before tokenisation: exactly one of `answer` (text) or `answer_ids` (action tokens)."""

    objective: str
    image: np.ndarray
    prompt: str
    answer: str | None = None
    answer_ids: np.ndarray | None = None


def has_traces(sample: Sample) -> bool:
    """True if the sample carries ground-truth traces of the gripper and at least one object."""
    return sample.gt_trace is not None and sample.gt_trace.ndim == 3 and sample.gt_trace.shape[0] >= 2


def mark_ids_for(sample: Sample, rng: np.random.Generator | None, object_id_range: int) -> list[int]:
    """Mark id of each ground-truth trace: 1 for the gripper, distinct random ids >= 2 for the rest."""
    n = _check_traces(sample)
    if n - 1 > object_id_range:
        raise InvalidInputError(f"the sample has {n - 1} object traces but object_id_range is {object_id_range}")
    pool = np.arange(2, object_id_range + 2)
    others = pool[: n - 1] if rng is None else rng.choice(pool, size=n - 1, replace=False)
    return [GRIPPER_MARK_ID] + [int(i) for i in others]


def gt_marks(sample: Sample, mark_ids: list[int]) -> MarkSet:
    """The marks at the first step of each ground-truth trace, in pixels (gripper kind for mark 1)."""
    points = np.asarray(sample.gt_trace[:, 0, :2], dtype=np.float64)
    h, w = sample.rgb.shape[:2]
    points = np.clip(points, 0, [w - 1, h - 1])
    marks = [Mark(mark_id, point=tuple(p), kind="gripper" if mark_id == GRIPPER_MARK_ID else "object")
             for mark_id, p in zip(mark_ids, points)]
    return MarkSet(sorted(marks, key=lambda m: m.id))


def prompt_marks(marks: MarkSet, width: int, height: int) -> list[tuple[int, tuple[int, int]]]:
    """(id, grid cell) of each mark, for the prompt's mark list."""
    cells = pixels_to_grid(marks.centers(), width, height)
    return [(m.id, (int(c[0]), int(c[1]))) for m, c in zip(marks, cells)]


def build_grounding(sample: Sample, mark_ids: list[int], variant: int = 0) -> TrainingItem:
    """Set-of-Mark grounding: which drawn mark is the instruction's object."""
    marks = gt_marks(sample, mark_ids)
    h, w = sample.rgb.shape[:2]
    prompt = grounding_prompt(sample.instruction, prompt_marks(marks, w, h), variant=variant)
    return TrainingItem("grounding", draw_marks(sample.rgb, marks), prompt, answer=grounding_answer([mark_ids[OBJECT_TRACE]]))


def trace_indices(n_recorded: int, trace_steps: int, trace_stride: int) -> np.ndarray:
    """Indices into a recorded trace (n_recorded steps) of now and the next `trace_steps` positions, clamped."""
    return np.minimum(np.arange(trace_steps + 1) * trace_stride, n_recorded - 1)


def answer_trace_indices(sample: Sample, mark_ids: list[int | None], order: str = "gripper_first") -> list[int]:
    """Which ground-truth traces a trace answer lists, in order (indices into `sample.gt_trace`).

    gripper_first: the gripper, then the object. target_first: the mark the gripper heads for (the
    object until the hand closes, then the place, when there is one), then the gripper. Traces whose
    mark was not proposed (id None) are left out.
    """
    n = _check_traces(sample)
    if order not in TRACE_ORDERS:
        raise InvalidInputError(f"trace order must be one of {TRACE_ORDERS}, got {order!r}")
    if order == "gripper_first":
        chosen = [GRIPPER_TRACE, OBJECT_TRACE]
    else:
        holding = sample.gt_trace_gripper is not None and float(np.asarray(sample.gt_trace_gripper).reshape(-1)[0]) >= 0.5
        chosen = [PLACE_TRACE if holding and n > PLACE_TRACE else OBJECT_TRACE, GRIPPER_TRACE]
    return [i for i in chosen if mark_ids[i] is not None]


def gt_grid_traces(sample: Sample, mark_ids: list[int], trace_steps: int, trace_stride: int,
                   depth_binning: DepthBinning, indices: list[int] | None = None) -> list[GridTrace]:
    """2.5D grid traces of the ground-truth traces `indices` (default: the gripper then the object); the gripper
    state is the hand's, for every trace."""
    _check_traces(sample)
    if sample.gt_trace_gripper is None:
        raise InvalidInputError("the sample has traces but no gt_trace_gripper")
    idx = trace_indices(sample.gt_trace.shape[1], trace_steps, trace_stride)
    gripper = np.clip(np.asarray(sample.gt_trace_gripper, dtype=np.float64)[idx], 0.0, 1.0)
    traces = []
    for index in (GRIPPER_TRACE, OBJECT_TRACE) if indices is None else indices:
        uvd = np.asarray(sample.gt_trace[index], dtype=np.float64)[idx]
        traces.append(Trace(mark_ids[index], uvd[:, :2], np.ones(len(idx), bool), depth=uvd[:, 2], gripper=gripper))
    h, w = sample.rgb.shape[:2]
    return grid_traces_from_traces(traces, w, h, depth_binning)


def build_trace(sample: Sample, mark_ids: list[int], trace_steps: int, trace_stride: int,
                depth_binning: DepthBinning, variant: int = 0, order: str = "gripper_first") -> TrainingItem:
    """Trace-of-Mark planning: the next positions (2.5D) of the gripper and its object or goal, from the drawn marks."""
    marks = gt_marks(sample, mark_ids)
    h, w = sample.rgb.shape[:2]
    grid = gt_grid_traces(sample, mark_ids, trace_steps, trace_stride, depth_binning,
                          indices=answer_trace_indices(sample, mark_ids, order))
    prompt = trace_prompt(sample.instruction, prompt_marks(marks, w, h), trace_steps, with_depth=True, variant=variant)
    return TrainingItem("trace", draw_marks(sample.rgb, marks), prompt, answer=trace_answer(grid, trace_steps, depth_binning.n_bins))


def build_action(sample: Sample, action_tokenizer: ActionTokenizer, variant: int = 0) -> TrainingItem:
    """Magma's robot head: the recorded 7-number action as action tokens."""
    if sample.action is None:
        raise InvalidInputError(f"episode {sample.episode_index} frame {sample.frame_index} has no 7-number action")
    ids = action_answer_ids(np.asarray(sample.action, dtype=np.float64), action_tokenizer)
    return TrainingItem("action", sample.rgb, action_prompt(sample.instruction, variant=variant), answer_ids=ids)


def proposal_observation(sample: Sample) -> dict | None:
    """The run-time observation of a recorded frame (what `propose_marks` reads), or None when the frame lacks
    depth, camera parameters or the end-effector pose (e.g. RLDS data): those samples use ground-truth marks."""
    if sample.depth is None or not sample.camera_known or not sample.ee_pose_known or sample.state is None:
        return None
    state = np.asarray(sample.state, dtype=np.float64)
    if state.shape[0] < 8 or not np.isfinite(state[:8]).all():
        return None
    return {"rgb": sample.rgb, "depth": sample.depth, "intrinsics": sample.camera.intrinsics,
            "extrinsics": sample.camera.extrinsics, "ee_pose": state[:7], "gripper": state[7:8],
            "instruction": sample.instruction}


def propose_for_sample(sample: Sample) -> list[DescribedMark] | None:
    """The described run-time marks of a recorded frame (None: no RGB-D/camera/pose, or no gripper mark)."""
    from magma_core.som.propose import propose_marks

    obs = proposal_observation(sample)
    if obs is None:
        return None
    proposal = propose_marks(obs)
    if proposal.gripper is None:
        return None
    return describe_proposal(proposal, gripper_opening_m=float(obs["gripper"][0]))


def match_trace_marks(sample: Sample, marks: list[DescribedMark]) -> list[int | None]:
    """Mark id of each ground-truth trace: 1 for the gripper, else the nearest proposed mark (None: not proposed)."""
    n = _check_traces(sample)
    radius = MATCH_RADIUS_PX * sample.rgb.shape[1] / 128.0
    ids: list[int | None] = [GRIPPER_MARK_ID]
    for index in range(1, n):
        ids.append(nearest_mark(marks, sample.gt_trace[index, 0, :2], radius, exclude=[GRIPPER_MARK_ID] + [i for i in ids if i]))
    return ids


def build_grounding_proposed(sample: Sample, marks: list[DescribedMark], depth_binning: DepthBinning,
                             variant: int = 0) -> TrainingItem | None:
    """Set-of-Mark grounding on run-time marks; None when the object was not proposed."""
    ids = match_trace_marks(sample, marks)
    if ids[OBJECT_TRACE] is None:
        return None
    image, listed = _drawn_and_listed(sample, marks, depth_binning)
    prompt = grounding_prompt(sample.instruction, listed, variant=variant)
    return TrainingItem("grounding", image, prompt,
                        answer=grounding_answer([ids[OBJECT_TRACE]]))


def build_trace_proposed(sample: Sample, marks: list[DescribedMark], trace_steps: int, trace_stride: int,
                         depth_binning: DepthBinning, variant: int = 0, order: str = "gripper_first",
                         with_goal_header: bool = False) -> TrainingItem:
    """Trace-of-Mark planning on run-time marks: the gripper's trace and its object's or goal's (in `order`),
    leaving out a trace whose mark was not proposed. `with_goal_header` (target_first): the answer opens with the
    goal mark's listed description (`goal_header`)."""
    ids = match_trace_marks(sample, marks)
    grid = gt_grid_traces(sample, [i if i is not None else 0 for i in ids], trace_steps, trace_stride, depth_binning,
                          indices=answer_trace_indices(sample, ids, order))
    h, w = sample.rgb.shape[:2]
    if order == "target_first":
        positions = listed_positions(marks, w, h, depth_binning)
        grid = [anchored_at_mark(t, positions[t.mark_id], depth_binning.n_bins) for t in grid]
    image, listed = _drawn_and_listed(sample, marks, depth_binning)
    prompt = trace_prompt(sample.instruction, listed, trace_steps, with_depth=True, variant=variant)
    answer = trace_answer(grid, trace_steps, depth_binning.n_bins)
    if with_goal_header and order == "target_first" and grid and grid[0].mark_id != GRIPPER_MARK_ID:
        described = {m.mark_id: m for m in marks}
        answer = goal_header(described[grid[0].mark_id].text) + answer
    return TrainingItem("trace", image, prompt, answer=answer)


def build_locate_proposed(sample: Sample, marks: list[DescribedMark], depth_binning: DepthBinning,
                          rng: np.random.Generator, max_marks: int = 4, variant: int = 0) -> TrainingItem:
    """Mark localisation on run-time marks: 1..`max_marks` of them in random order, each answered with its
    listed (x, y, depth bin) and the hand's state, as a one-step trace."""
    if not marks:
        raise InvalidInputError("locate needs at least one proposed mark")
    if sample.gt_trace_gripper is None:
        raise InvalidInputError(f"episode {sample.episode_index} frame {sample.frame_index} has no gt_trace_gripper")
    h, w = sample.rgb.shape[:2]
    positions = listed_positions(marks, w, h, depth_binning)
    count = int(rng.integers(1, min(max_marks, len(marks)) + 1))
    chosen = [int(marks[i].mark_id) for i in rng.permutation(len(marks))[:count]]
    closed = int(float(np.asarray(sample.gt_trace_gripper).reshape(-1)[0]) >= 0.5)
    traces = [GridTrace(i, np.array([positions[i][:2]]), np.array([positions[i][2]]), np.array([closed])) for i in chosen]
    image, listed = _drawn_and_listed(sample, marks, depth_binning)
    return TrainingItem("locate", image, locate_prompt(listed, chosen, variant=variant),
                        answer=trace_answer(traces, 0, depth_binning.n_bins))


# Made-up instructions of the `goal` objective, in the words the simulated tasks use.
_GOAL_INSTRUCTIONS = ("put the {o} on the {p}", "move the {o} to the {p}", "place the {o} onto the {p}",
                      "pick up the {o} and put it on the {p}", "set the {o} down on the {p}")
_OBJECT_NOUNS, _PLACE_NOUNS = ("block", "cube"), ("mat", "pad", "square")


def _uniquely_coloured(marks: list[DescribedMark], shape: str) -> list[tuple[str, DescribedMark]]:
    """(colour, mark) for the listed `shape` marks ("block", "flat") whose colour no other such mark has."""
    found: dict[str, list[DescribedMark]] = {}
    for mark in marks:
        words = str(mark.text).split()
        if mark.mark_id != GRIPPER_MARK_ID and len(words) >= 2 and words[1] == shape:
            found.setdefault(words[0], []).append(mark)
    return [(colour, ms[0]) for colour, ms in sorted(found.items()) if len(ms) == 1]


def build_goal_proposed(sample: Sample, marks: list[DescribedMark], trace_steps: int, depth_binning: DepthBinning,
                        rng: np.random.Generator, variant: int = 0) -> TrainingItem | None:
    """Goal naming with a made-up instruction: the trace prompt, its instruction naming a random block of the scene
    and a random flat place, answered with the goal line only (`goal_header`): the named block while the hand is
    open, the named place while it holds its object (then the instruction names the held object).

    Recorded episodes always head for their instruction's object, so the mark nearest the hand predicts the goal in
    most frames; naming other blocks takes that shortcut away and leaves the instruction as the only cue.
    None when the frame lacks a uniquely coloured block and place (or, holding, its held object's mark)."""
    blocks, places = _uniquely_coloured(marks, "block"), _uniquely_coloured(marks, "flat")
    if not blocks or not places or sample.gt_trace_gripper is None:
        return None
    holding = float(np.asarray(sample.gt_trace_gripper).reshape(-1)[0]) >= 0.5
    place_colour, place = places[int(rng.integers(len(places)))]
    if holding:
        held = match_trace_marks(sample, marks)[OBJECT_TRACE]
        held_mark = next((m for m in marks if m.mark_id == held), None) if held is not None else None
        if held_mark is None or len(str(held_mark.text).split()) < 2:
            return None
        object_mark, goal = held_mark, place
    else:
        _, object_mark = blocks[int(rng.integers(len(blocks)))]
        goal = object_mark
    words = str(object_mark.text).split()
    size_cm = int(words[-1][:-2]) if re.fullmatch(r"\d+cm", words[-1]) else None
    small = "small " if size_cm is not None and size_cm <= 3 and rng.random() < 0.5 else ""  # as the tasks say it
    named_object = f"{words[0]} {small}{_OBJECT_NOUNS[int(rng.integers(len(_OBJECT_NOUNS)))]}"
    named_place = f"{place_colour} {_PLACE_NOUNS[int(rng.integers(len(_PLACE_NOUNS)))]}"
    instruction = _GOAL_INSTRUCTIONS[int(rng.integers(len(_GOAL_INSTRUCTIONS)))].format(o=named_object, p=named_place)
    image, listed = _drawn_and_listed(sample, marks, depth_binning)
    prompt = trace_prompt(instruction, listed, trace_steps, with_depth=True, variant=variant)
    return TrainingItem("goal", image, prompt, answer=goal_header(goal.text))


def build_refer_proposed(sample: Sample, marks: list[DescribedMark], depth_binning: DepthBinning,
                         rng: np.random.Generator, max_marks: int = 3, variant: int = 0) -> TrainingItem | None:
    """Referring on run-time marks: 1..`max_marks` marks named by colour and shape (only names one mark has),
    answered with their ids in the asked order; None when no object or region has a name of its own."""
    names: dict[str, list[int]] = {}
    for mark in marks:
        if mark.kind == "gripper" or mark.mark_id == GRIPPER_MARK_ID:
            continue
        words = str(mark.text).split()
        name = " ".join(words[:-1] if len(words) > 2 and words[-1].endswith("cm") else words)
        names.setdefault(name, []).append(int(mark.mark_id))
    unique = sorted((name, ids[0]) for name, ids in names.items() if len(ids) == 1)
    if not unique:
        return None
    count = int(rng.integers(1, min(max_marks, len(unique)) + 1))
    chosen = [unique[i] for i in rng.permutation(len(unique))[:count]]
    image, listed = _drawn_and_listed(sample, marks, depth_binning)
    return TrainingItem("refer", image, refer_prompt(listed, [name for name, _ in chosen], variant=variant),
                        answer=grounding_answer([mark_id for _, mark_id in chosen]))


def anchored_at_mark(trace: GridTrace, listed: tuple[int, int, int], n_depth_bins: int) -> GridTrace:
    """`trace` moved so it starts exactly at its mark's listed (x, y, depth bin) (its motion kept).

    A goal's ground-truth point and its proposed mark differ by a few cells; starting the goal's trace at the
    listed position makes its first step an exact copy of the prompt, which a small model learns quickly."""
    x, y, depth_bin = listed
    cells = np.clip(trace.cells - trace.cells[0] + np.array([x, y], dtype=np.int64), 0, GRID_SIZE - 1)
    bins = np.clip(trace.depth_bins - trace.depth_bins[0] + depth_bin, 0, n_depth_bins - 1)
    return GridTrace(trace.mark_id, cells, bins, trace.gripper)


def _drawn_and_listed(sample: Sample, marks: list[DescribedMark], depth_binning: DepthBinning) -> tuple[np.ndarray, str]:
    """The frame with the run-time marks drawn, and their prompt lines, as every proposed-marks sample shows them."""
    h, w = sample.rgb.shape[:2]
    return draw_marks(sample.rgb, mark_set(marks, w, h)), marks_text(marks, w, h, depth_binning)


def _check_traces(sample: Sample) -> int:
    if not has_traces(sample):
        raise InvalidInputError(
            f"episode {sample.episode_index} frame {sample.frame_index} has no ground-truth traces of the gripper and an object")
    if sample.gt_trace.shape[-1] != 3 or not np.isfinite(sample.gt_trace).all():
        raise InvalidInputError("gt_trace must be (M, n+1, 3) finite pixel u, v and depth")
    return int(sample.gt_trace.shape[0])


__all__ = ["TrainingItem", "has_traces", "proposal_observation", "propose_for_sample", "match_trace_marks",
           "build_grounding_proposed", "build_trace_proposed", "build_locate_proposed", "build_refer_proposed", "mark_ids_for", "gt_marks", "prompt_marks", "build_grounding", "build_trace",
           "build_action", "gt_grid_traces", "answer_trace_indices", "trace_indices", "marks_from_grid_traces"]

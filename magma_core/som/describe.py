"""Marks as the model reads them: each proposed mark with its position, depth bin and what it is.

Set-of-Mark in Magma draws numbered marks on the image; this project also lists them in the
prompt. A described mark line reads ``Mark 6: [(118,118,57)] pink block 4cm``: the 256-grid cell,
the depth bin of the mark (so the trace's first step is known, not guessed), and the proposal's
label and footprint size (so "the small pink cube" can be told from a large one). The gripper
line carries proprioception instead: ``Mark 1: [(128,30,31)] gripper 80mm`` (the finger opening).
The position is written as a trace answer starts (``Mark 6: [(118,118,57,``), so a trace begins as a
literal continuation of its mark's line: the model learns to copy a mark's position by matching text.

The same code builds the lines for training samples (from proposals on recorded frames) and at
run time (`MagmaPolicy`), so the model sees one format in both places.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from magma_core.codecs.trace_text import DepthBinning
from magma_core.errors import InvalidInputError
from magma_core.grid import pixels_to_grid
from magma_core.som.marks import Mark, MarkSet
from magma_core.som.propose import GRIPPER_MARK_ID, ProposedMarks


@dataclass(frozen=True)
class DescribedMark:
    """One mark as listed in a prompt: id, pixel point, depth (m, camera z) and a short description."""

    mark_id: int
    point: tuple[float, float]
    depth: float
    text: str
    kind: str = "object"

    def shifted(self, dx: float, dy: float) -> "DescribedMark":
        return replace(self, point=(self.point[0] + dx, self.point[1] + dy))


def describe_proposal(proposal: ProposedMarks, gripper_opening_m: float | None = None) -> list[DescribedMark]:
    """The proposal's marks (gripper first, then by id) with their descriptions; marks without a finite depth are kept
    with the median depth of the others so a line is never dropped silently."""
    depths = [float(i.depth) for i in proposal.info.values() if np.isfinite(i.depth) and i.depth > 0]
    fallback = float(np.median(depths)) if depths else 1.0
    out = []
    for mark in proposal.marks:
        info = proposal.info.get(mark.id)
        depth = float(info.depth) if info is not None and np.isfinite(info.depth) and info.depth > 0 else fallback
        if mark.id == proposal.gripper_id:
            text = "gripper" if gripper_opening_m is None else f"gripper {_millimetres(gripper_opening_m)}mm"
            kind = "gripper"
        else:
            text = info.label if info is not None and info.label else (mark.label or mark.kind)
            if info is not None and max(info.size) > 0:
                text = f"{text} {int(round(max(info.size) * 100))}cm"
            kind = mark.kind
        out.append(DescribedMark(int(mark.id), tuple(float(v) for v in mark.center), depth, text, kind))
    return sorted(out, key=lambda m: (m.mark_id != GRIPPER_MARK_ID, m.mark_id))


def listed_positions(marks: Sequence[DescribedMark], width: int, height: int,
                     depth_binning: DepthBinning) -> dict[int, tuple[int, int, int]]:
    """Mark id -> the (x, y, depth bin) its prompt line lists (grid cells of the point clipped into the image)."""
    if not marks:
        raise InvalidInputError("no marks to describe")
    points = np.clip(np.array([m.point for m in marks], dtype=np.float64), 0, [width - 1, height - 1])
    cells = pixels_to_grid(points, width, height)
    bins = np.atleast_1d(depth_binning.encode(np.array([m.depth for m in marks], dtype=np.float64)))
    return {int(m.mark_id): (int(c[0]), int(c[1]), int(b)) for m, c, b in zip(marks, cells, bins)}


def marks_text(marks: Sequence[DescribedMark], width: int, height: int, depth_binning: DepthBinning) -> str:
    """Prompt lines ``Mark k: [(x,y,d)] text`` (grid cells, depth bin)."""
    positions = listed_positions(marks, width, height, depth_binning)
    lines = []
    for mark in marks:
        text = " ".join(str(mark.text).split())
        if any(c in text for c in "<>[]\n"):
            raise InvalidInputError(f"mark {mark.mark_id} description {text!r} holds a reserved character")
        x, y, depth_bin = positions[mark.mark_id]
        lines.append(f"Mark {mark.mark_id}: [({x},{y},{depth_bin})] {text}".rstrip())
    return "\n".join(lines)


def mark_set(marks: Sequence[DescribedMark], width: int, height: int) -> MarkSet:
    """The marks to draw on the image (points clipped inside it)."""
    drawn = []
    for m in marks:
        u = float(np.clip(m.point[0], 0, width - 1))
        v = float(np.clip(m.point[1], 0, height - 1))
        drawn.append(Mark(m.mark_id, point=(u, v), kind="gripper" if m.kind == "gripper" else m.kind))
    return MarkSet(drawn)


def nearest_mark(marks: Sequence[DescribedMark], point, radius_px: float, exclude: Sequence[int] = ()) -> int | None:
    """Id of the mark closest to `point` (pixels) within `radius_px`, ignoring `exclude`; None if none is that close."""
    best, best_d = None, float(radius_px)
    for m in marks:
        if m.mark_id in exclude:
            continue
        d = float(np.hypot(m.point[0] - point[0], m.point[1] - point[1]))
        if d <= best_d:
            best, best_d = m.mark_id, d
    return best


def _millimetres(value) -> int:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size < 1 or not np.isfinite(arr[0]):
        raise InvalidInputError(f"gripper opening must be a finite width in metres, got {value!r}")
    return int(round(max(float(arr[0]), 0.0) * 1000))


__all__ = ["DescribedMark", "describe_proposal", "listed_positions", "marks_text", "mark_set", "nearest_mark"]

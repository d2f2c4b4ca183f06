"""Trace-of-Mark as text: Magma's mark-indexed traces on the 256 grid, plus this project's 2.5D steps.

A trace block lists, one line per mark, the mark's current cell followed by its future cells
on the 256x256 grid. In 2D each step is ``(x,y)``; in the 2.5D extension each step is
``(x,y,d,g)`` with ``d`` a depth bin (see `DepthBinning`) and ``g`` the gripper state
(0 open, 1 closed). Written without spaces inside steps, since a small language model reads
and writes every character::

    <trace_start>Mark 1: [(120,45),(123,47),(127,50)]
    Mark 4: [(30,200),(31,199),(33,197)]<trace_end>

Grammar (EBNF; ``ws`` is any run of whitespace, allowed between every two tokens)::

    output  = [ anything , TRACE_START ] , block , [ TRACE_END , anything ] ;
    block   = mark , { mark } ;                     (* the encoder puts "\n" between marks *)
    mark    = "Mark" , int , ":" , "[" , step , { "," , step } , "]" ;   (* "Mark" in any ASCII case *)
    step    = "(" , int , "," , int , [ "," , int , "," , bit ] , ")" ;
    int     = digit , { digit } ;                   (* ASCII digits only, at most 6 *)
    bit     = "0" | "1" ;

Rules beyond the grammar: 0 <= x, y < grid; 0 <= d < n_depth_bins; mark ids unique; every
step of every mark has the same arity (all 2D or all 2.5D); every mark has the same number of
steps. When ``<trace_start>`` is present, text before it is ignored and ``<trace_end>`` is
required (else the error is ``missing_end``); text after ``<trace_end>`` is ignored. A block
may also come bare (no markers), e.g. when the prompt itself ends with ``<trace_start>``.

`parse_traces` never raises on any text: it returns a `ParseResult` whose `error` carries a
code from `ERROR_CODES`, a message naming the problem and the character offset. The robot
holds still on any error; `ParseResult.partial` keeps the marks read completely before the
error, for logs and for callers that accept a truncated plan explicitly.

Visibility (`Trace.visible`) and `Trace.moving` are not written: trim or drop lost traces
before encoding. Decoded traces come back all visible and moving.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from magma_core.errors import InvalidInputError
from magma_core.grid import GRID_SIZE, grid_to_pixels, pixels_to_grid
from magma_core.tom.types import Trace

# The model's vocabulary gets these as special tokens; prompts.py re-exports them.
TRACE_START = "<trace_start>"
TRACE_END = "<trace_end>"

DEFAULT_N_DEPTH_BINS = 100
MAX_INPUT_CHARS = 100_000
MAX_MARKS = 64
MAX_STEPS = 256
MAX_DIGITS = 6  # longer numbers are out of range for every field; also keeps int() cheap

ERROR_CODES = (
    "not_text",  # the input is not a str
    "too_long",  # more than max_chars characters
    "empty",  # no marks at all
    "truncated",  # the text stops inside a mark or a marker
    "missing_end",  # <trace_start> present, complete marks, no <trace_end>
    "bad_token",  # a character or token the grammar does not allow there
    "out_of_range",  # a coordinate, depth bin, gripper state or mark id outside its range
    "empty_mark",  # a mark with no steps: "Mark 1: []"
    "mixed_dimensions",  # 2D and 2.5D steps in one block
    "wrong_dimensions",  # 2D where 2.5D was expected, or the reverse
    "inconsistent_lengths",  # marks with different step counts, or not the expected count
    "duplicate_mark",  # one mark id twice
    "too_many_marks",
    "too_many_steps",
    "internal",  # a bug in this parser; reported instead of raised so a robot node never crashes
)


# --------------------------------------------------------------------------- grid-level traces


@dataclass(eq=False)
class GridTrace:
    """One mark's trace on the grid: row 0 is the current cell, then the future cells.

    cells:      (T, 2) int x, y on the grid.
    depth_bins: (T,) int depth bins, or None for a 2D trace.
    gripper:    (T,) int 0 open / 1 closed, or None for a 2D trace.
    A 2.5D trace carries both depth_bins and gripper; a 2D trace neither.
    """

    mark_id: int
    cells: np.ndarray
    depth_bins: np.ndarray | None = None
    gripper: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.mark_id = _as_int(self.mark_id, f"mark id {self.mark_id!r}")
        self.cells = _int_array(self.cells, f"mark {self.mark_id} cells")
        if self.cells.ndim != 2 or self.cells.shape[1] != 2 or self.cells.shape[0] < 1:
            raise InvalidInputError(f"mark {self.mark_id}: cells must have shape (T>=1, 2), got {self.cells.shape}")
        if (self.depth_bins is None) != (self.gripper is None):
            raise InvalidInputError(f"mark {self.mark_id}: a 2.5D trace needs both depth_bins and gripper, got only one")
        n_steps = self.cells.shape[0]
        for name in ("depth_bins", "gripper"):
            value = getattr(self, name)
            if value is None:
                continue
            value = _int_array(value, f"mark {self.mark_id} {name}").reshape(-1)
            if value.shape[0] != n_steps:
                raise InvalidInputError(f"mark {self.mark_id}: {name} has {value.shape[0]} steps, cells have {n_steps}")
            setattr(self, name, value)
        if self.gripper is not None and not np.isin(self.gripper, (0, 1)).all():
            raise InvalidInputError(f"mark {self.mark_id}: gripper states must be 0 (open) or 1 (closed)")

    @property
    def length(self) -> int:
        return int(self.cells.shape[0])

    @property
    def is_25d(self) -> bool:
        return self.depth_bins is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GridTrace):
            return NotImplemented
        return (
            self.mark_id == other.mark_id
            and np.array_equal(self.cells, other.cells)
            and _optional_equal(self.depth_bins, other.depth_bins)
            and _optional_equal(self.gripper, other.gripper)
        )

    def __repr__(self) -> str:
        kind = "2.5D" if self.is_25d else "2D"
        return f"GridTrace(mark {self.mark_id}, {kind}, {self.cells.tolist()}, d={_tolist(self.depth_bins)}, g={_tolist(self.gripper)})"


# --------------------------------------------------------------------------- depth bins


@dataclass(frozen=True)
class DepthBinning:
    """Depth (metres along the camera z axis) to bins and back.

    Default: 100 log-spaced bins over 0.2..2.0 m, so a bin number takes at most two
    characters. Log spacing keeps the *relative* depth step constant (about 2.3 %, i.e. a
    half-bin error of ~1.2 cm at 1 m), which matches how a grid cell's lateral size also grows
    with depth; uniform spacing (`spacing="uniform"`) would waste bins far away and be coarse
    near the gripper. Depth outside [near, far] is clipped to the end bins; NaN, inf and
    depth <= 0 (sensor "no reading" values) are errors.
    """

    near: float = 0.2
    far: float = 2.0
    n_bins: int = DEFAULT_N_DEPTH_BINS
    spacing: str = "log"

    def __post_init__(self) -> None:
        if self.spacing not in ("log", "uniform"):
            raise InvalidInputError(f"depth spacing must be 'log' or 'uniform', got {self.spacing!r}")
        if not (math.isfinite(self.near) and math.isfinite(self.far) and 0 < self.near < self.far):
            raise InvalidInputError(f"depth range needs 0 < near < far (finite), got near={self.near}, far={self.far}")
        if not isinstance(self.n_bins, (int, np.integer)) or self.n_bins < 2:
            raise InvalidInputError(f"n_bins must be an integer >= 2, got {self.n_bins!r}")

    def _to_unit(self, depth: np.ndarray) -> np.ndarray:
        """Depth -> position in [0, 1] along the binned axis."""
        if self.spacing == "log":
            return (np.log(depth) - math.log(self.near)) / (math.log(self.far) - math.log(self.near))
        return (depth - self.near) / (self.far - self.near)

    def _from_unit(self, unit: np.ndarray) -> np.ndarray:
        if self.spacing == "log":
            return np.exp(math.log(self.near) + unit * (math.log(self.far) - math.log(self.near)))
        return self.near + unit * (self.far - self.near)

    def encode(self, depth_m):
        """Depth in metres (scalar or array) -> bin index (int, or int64 array of the same shape)."""
        depth = np.asarray(depth_m, dtype=np.float64)
        if not np.isfinite(depth).all():
            raise InvalidInputError("depth contains NaN or inf; mask invalid depth before binning")
        if (depth <= 0).any():
            raise InvalidInputError(f"depth must be positive metres, got min {float(depth.min())}")
        unit = self._to_unit(np.clip(depth, self.near, self.far))
        bins = np.clip(np.floor(unit * self.n_bins), 0, self.n_bins - 1).astype(np.int64)
        return int(bins) if bins.ndim == 0 else bins

    def decode(self, bins):
        """Bin index (scalar or array) -> depth in metres at the bin centre (on the binned axis)."""
        raw = np.asarray(bins)
        values = _int_array(raw, "depth bin")
        if values.size and (values.min() < 0 or values.max() >= self.n_bins):
            raise InvalidInputError(f"depth bins must lie in [0, {self.n_bins}), got {values.min()}..{values.max()}")
        depth = self._from_unit((values + 0.5) / self.n_bins)
        return float(depth) if depth.ndim == 0 else depth

    def bin_edges(self) -> np.ndarray:
        """(n_bins + 1,) depth at the bin boundaries, in metres."""
        return self._from_unit(np.arange(self.n_bins + 1) / self.n_bins)

    def to_dict(self) -> dict:
        return {"near": float(self.near), "far": float(self.far), "n_bins": int(self.n_bins), "spacing": self.spacing}

    @classmethod
    def from_dict(cls, data: dict) -> "DepthBinning":
        try:
            return cls(near=float(data["near"]), far=float(data["far"]), n_bins=int(data["n_bins"]), spacing=str(data.get("spacing", "log")))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"depth binning dict is malformed ({exc!r}); needs near, far, n_bins[, spacing]") from exc


# --------------------------------------------------------------------------- pixels <-> grid


def grid_traces_from_traces(
    traces: Sequence[Trace], width: int, height: int, depth_codec: DepthBinning | None = None
) -> list[GridTrace]:
    """Pixel traces of a `width` x `height` frame -> grid traces.

    Without `depth_codec` the result is 2D (depth and gripper are dropped). With it, every
    trace must carry depth and gripper; the gripper is thresholded at 0.5 (>= 0.5 is closed).
    """
    _check_image_size(width, height)
    out = []
    for trace in traces:
        if not np.isfinite(trace.points).all():
            raise InvalidInputError(f"trace {trace.mark_id}: points contain NaN or inf")
        cells = pixels_to_grid(trace.points, width, height)
        if depth_codec is None:
            out.append(GridTrace(trace.mark_id, cells))
            continue
        if trace.depth is None or trace.gripper is None:
            missing = "depth" if trace.depth is None else "gripper"
            raise InvalidInputError(f"trace {trace.mark_id} has no {missing}; a 2.5D trace needs depth and gripper per step")
        gripper = np.asarray(trace.gripper, dtype=np.float64)
        if not np.isfinite(gripper).all() or (gripper < 0).any() or (gripper > 1).any():
            raise InvalidInputError(f"trace {trace.mark_id}: gripper values must lie in [0, 1] (0 open, 1 closed)")
        try:
            depth_bins = depth_codec.encode(trace.depth)
        except InvalidInputError as exc:
            raise InvalidInputError(f"trace {trace.mark_id}: {exc}") from exc
        out.append(GridTrace(trace.mark_id, cells, depth_bins, (gripper >= 0.5).astype(np.int64)))
    return out


def traces_from_grid_traces(
    grid_traces: Sequence[GridTrace], width: int, height: int, depth_codec: DepthBinning | None = None
) -> list[Trace]:
    """Grid traces -> pixel traces at cell centres; 2.5D traces need `depth_codec` to decode depth."""
    _check_image_size(width, height)
    out = []
    for gt in grid_traces:
        points = grid_to_pixels(gt.cells, width, height)
        depth = gripper = None
        if gt.is_25d:
            if depth_codec is None:
                raise InvalidInputError(f"mark {gt.mark_id} is 2.5D: pass the DepthBinning used to encode it")
            depth = depth_codec.decode(gt.depth_bins)
            gripper = gt.gripper.astype(np.float64)
        out.append(Trace(gt.mark_id, points, np.ones(gt.length, dtype=bool), moving=True, depth=depth, gripper=gripper))
    return out


def marks_from_grid_traces(grid_traces: Sequence[GridTrace]) -> list[tuple[int, tuple[int, int]]]:
    """Each trace's current cell as a Set-of-Mark entry (mark id, (x, y)), for `encode_marks`."""
    return [(gt.mark_id, (int(gt.cells[0, 0]), int(gt.cells[0, 1]))) for gt in grid_traces]


# --------------------------------------------------------------------------- encoder


def encode_traces(
    grid_traces: Sequence[GridTrace],
    with_markers: bool = True,
    grid: int = GRID_SIZE,
    n_depth_bins: int = DEFAULT_N_DEPTH_BINS,
) -> str:
    """Grid traces -> trace text (see the module docstring). Refuses what `parse_traces` would reject."""
    grid_traces = list(grid_traces)
    if not grid_traces:
        raise InvalidInputError("no traces to encode")
    if len(grid_traces) > MAX_MARKS:
        raise InvalidInputError(f"{len(grid_traces)} traces; the format allows at most {MAX_MARKS}")
    seen: set[int] = set()
    lines = []
    for gt in grid_traces:
        _check_encodable(gt, grid_traces[0], seen, grid, n_depth_bins)
        seen.add(gt.mark_id)
        if gt.is_25d:
            steps = ",".join(f"({x},{y},{d},{g})" for (x, y), d, g in zip(gt.cells.tolist(), gt.depth_bins.tolist(), gt.gripper.tolist()))
        else:
            steps = ",".join(f"({x},{y})" for x, y in gt.cells.tolist())
        lines.append(f"Mark {gt.mark_id}: [{steps}]")
    body = "\n".join(lines)
    return f"{TRACE_START}{body}{TRACE_END}" if with_markers else body


def _check_encodable(gt: GridTrace, first: GridTrace, seen: set[int], grid: int, n_depth_bins: int) -> None:
    if not isinstance(gt, GridTrace):
        raise InvalidInputError(f"expected GridTrace, got {type(gt).__name__}")
    if gt.mark_id in seen:
        raise InvalidInputError(f"mark {gt.mark_id} appears twice")
    if not 0 <= gt.mark_id < 10**MAX_DIGITS:
        raise InvalidInputError(f"mark id {gt.mark_id} outside [0, {10**MAX_DIGITS})")
    if gt.is_25d != first.is_25d:
        raise InvalidInputError(f"mark {gt.mark_id} is {'2.5D' if gt.is_25d else '2D'} but mark {first.mark_id} is not; one block is all 2D or all 2.5D")
    if gt.length != first.length:
        raise InvalidInputError(f"mark {gt.mark_id} has {gt.length} steps, mark {first.mark_id} has {first.length}; all marks need the same count")
    if gt.length > MAX_STEPS:
        raise InvalidInputError(f"mark {gt.mark_id} has {gt.length} steps; the format allows at most {MAX_STEPS}")
    if gt.cells.min() < 0 or gt.cells.max() >= grid:
        raise InvalidInputError(f"mark {gt.mark_id}: cells outside the {grid}x{grid} grid")
    if gt.is_25d and (gt.depth_bins.min() < 0 or gt.depth_bins.max() >= n_depth_bins):
        raise InvalidInputError(f"mark {gt.mark_id}: depth bins outside [0, {n_depth_bins})")


# --------------------------------------------------------------------------- parser


@dataclass(frozen=True)
class TraceParseError:
    """Why a model output is not a usable trace block: `code` (one of ERROR_CODES), a message, a char offset."""

    code: str
    message: str
    position: int


@dataclass
class ParseResult:
    """Outcome of `parse_traces`: `traces` when ok; else `error`, with `partial` holding the marks read completely."""

    traces: list[GridTrace] = field(default_factory=list)
    error: TraceParseError | None = None
    partial: list[GridTrace] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


class TraceParseException(InvalidInputError):
    """Raised by `parse_traces_strict`; `.error` is the `TraceParseError`."""

    def __init__(self, error: TraceParseError):
        super().__init__(f"unparsable trace ({error.code}) at char {error.position}: {error.message}")
        self.error = error


class _Fail(Exception):
    def __init__(self, code: str, message: str, position: int):
        super().__init__(message)
        self.error = TraceParseError(code, message, position)


class _Scanner:
    """Reads tokens of one trace block between `pos` and `end`; every failure raises `_Fail`."""

    def __init__(self, text: str, pos: int, end: int):
        self.text = text
        self.pos = pos
        self.end = end

    def skip_ws(self) -> None:
        text, end = self.text, self.end
        while self.pos < end and text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= self.end

    def snippet(self) -> str:
        return repr(self.text[self.pos : min(self.pos + 12, self.end)])

    def stop(self, expected: str) -> _Fail:
        """Ran out of block while expecting `expected`."""
        if self.end == len(self.text):
            return _Fail("truncated", f"text ends where {expected} was expected", self.pos)
        return _Fail("bad_token", f"{TRACE_END} comes where {expected} was expected", self.pos)

    def literal(self, token: str, expected: str, ignore_case: bool = False) -> None:
        self.skip_ws()
        rest = self.text[self.pos : min(self.pos + len(token), self.end)]
        # ASCII-only folding: a Unicode look-alike (e.g. the Kelvin sign) must not pass for "k".
        fold = (lambda s: s.lower() if s.isascii() else s) if ignore_case else str
        if fold(rest) == fold(token):
            self.pos += len(token)
            return
        if len(rest) < len(token) and fold(token).startswith(fold(rest)):
            raise self.stop(expected)
        raise _Fail("bad_token", f"expected {expected}, found {self.snippet()}", self.pos)

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < self.end else ""

    def integer(self, expected: str) -> tuple[int, int]:
        """An optionally signed ASCII integer -> (value, offset). Sign only so '-3' reads as out of range."""
        self.skip_ws()
        start = self.pos
        text, end = self.text, self.end
        if self.pos < end and text[self.pos] == "-":
            self.pos += 1
        digits_start = self.pos
        while self.pos < end and text[self.pos] in "0123456789" and self.pos - digits_start <= MAX_DIGITS:
            self.pos += 1
        digits = text[digits_start : self.pos]
        if not digits:
            if self.pos >= end:
                raise self.stop(expected)
            raise _Fail("bad_token", f"expected {expected}, found {self.snippet()}", self.pos)
        if len(digits) > MAX_DIGITS:
            raise _Fail("out_of_range", f"{expected} has more than {MAX_DIGITS} digits", start)
        value = int(digits)
        return (-value if digits_start > start else value), start


@dataclass(frozen=True)
class _Limits:
    grid: int
    n_depth_bins: int
    max_marks: int
    max_steps: int
    expect_25d: bool | None
    expect_steps: int | None
    require_end: bool


def parse_traces(
    text: str,
    expect_25d: bool | None = None,
    grid: int = GRID_SIZE,
    max_marks: int = MAX_MARKS,
    max_steps: int = MAX_STEPS,
    n_depth_bins: int = DEFAULT_N_DEPTH_BINS,
    expect_steps: int | None = None,
    require_end: bool = True,
    max_chars: int = MAX_INPUT_CHARS,
) -> ParseResult:
    """Model output -> `ParseResult`. Never raises on any `text`; raises InvalidInputError only on bad options.

    expect_25d: True/False demands (x,y,d,g) / (x,y) steps; None accepts either (not mixed).
    expect_steps: if given, every mark must have exactly this many steps (current + future).
    require_end: with `<trace_start>` present, a missing `<trace_end>` is an error.
    """
    limits = _Limits(grid, n_depth_bins, max_marks, max_steps, expect_25d, expect_steps, bool(require_end))
    _check_limits(limits, max_chars)
    marks: list[GridTrace] = []
    try:
        if not isinstance(text, str):
            raise _Fail("not_text", f"expected str, got {type(text).__name__}", 0)
        if len(text) > max_chars:
            raise _Fail("too_long", f"{len(text)} characters, more than the {max_chars} allowed", max_chars)
        traces = _parse_block(text, limits, marks)
        return ParseResult(traces=traces)
    except _Fail as fail:
        return ParseResult(error=fail.error, partial=list(marks))
    except Exception as exc:  # noqa: BLE001 - a parser bug must make the robot hold still, not crash its node
        return ParseResult(error=TraceParseError("internal", f"parser bug: {exc!r}", 0), partial=list(marks))


def parse_traces_strict(text: str, **options) -> list[GridTrace]:
    """Like `parse_traces` but returns the traces or raises `TraceParseException`."""
    result = parse_traces(text, **options)
    if not result.ok:
        raise TraceParseException(result.error)
    return result.traces


def _parse_block(text: str, limits: _Limits, marks: list[GridTrace]) -> list[GridTrace]:
    """Parse into `marks` (appended as each completes, so the caller keeps them on failure)."""
    if not text.strip():
        raise _Fail("empty", "the output is empty", 0)
    start_at = text.find(TRACE_START)
    body_start = 0 if start_at < 0 else start_at + len(TRACE_START)
    end_at = text.find(TRACE_END, body_start)
    body_end = len(text) if end_at < 0 else end_at
    scanner = _Scanner(text, body_start, body_end)
    mark_starts: list[int] = []
    while not scanner.at_end():
        if body_end == len(text) and _is_cut_marker(text[scanner.pos :]):
            raise _Fail("truncated", f"text ends inside a marker: {scanner.snippet()}", scanner.pos)
        if len(marks) >= limits.max_marks:
            raise _Fail("too_many_marks", f"more than {limits.max_marks} marks", scanner.pos)
        mark_starts.append(scanner.pos)
        marks.append(_parse_mark(scanner, limits, marks))
    if not marks:
        if start_at >= 0 and end_at < 0:
            raise _Fail("truncated", f"nothing after {TRACE_START}", body_start)
        raise _Fail("empty", "no marks in the trace block", body_start)
    if start_at >= 0 and end_at < 0 and limits.require_end:
        raise _Fail("missing_end", f"{TRACE_START} without {TRACE_END}; the output may have been cut", len(text))
    _check_lengths(marks, mark_starts, limits)
    return marks


def _parse_mark(scanner: _Scanner, limits: _Limits, done: list[GridTrace]) -> GridTrace:
    scanner.literal("Mark", '"Mark"', ignore_case=True)
    mark_id, id_pos = scanner.integer("a mark id")
    scanner.literal(":", f'":" after "Mark {mark_id}"')
    # Checked only once the header is complete, so a cut "Mark 12" read as "Mark 1" says truncated.
    if mark_id < 0:
        raise _Fail("out_of_range", f"mark id {mark_id} is negative", id_pos)
    if any(m.mark_id == mark_id for m in done):
        raise _Fail("duplicate_mark", f"Mark {mark_id} appears twice", id_pos)
    scanner.literal("[", f'"[" opening Mark {mark_id}\'s steps')
    if scanner.peek() == "]":
        raise _Fail("empty_mark", f"Mark {mark_id} has no steps", scanner.pos)
    arity = _expected_arity(limits, done)
    steps: list[list[int]] = []
    while True:
        if len(steps) >= limits.max_steps:
            raise _Fail("too_many_steps", f"Mark {mark_id} has more than {limits.max_steps} steps", scanner.pos)
        step_pos = scanner.pos
        step = _parse_step(scanner, limits, mark_id)
        if arity is None:
            arity = len(step)
        elif len(step) != arity:
            raise _dimension_error(limits, mark_id, len(steps), len(step), arity, step_pos)
        steps.append(step)
        if scanner.peek() == "]":
            scanner.pos += 1
            break
        scanner.literal(",", f'"," or "]" after step {len(steps) - 1} of Mark {mark_id}')
    array = np.asarray(steps, dtype=np.int64)
    if arity == 2:
        return GridTrace(mark_id, array)
    return GridTrace(mark_id, array[:, :2], array[:, 2], array[:, 3])


def _expected_arity(limits: _Limits, done: list[GridTrace]) -> int | None:
    if limits.expect_25d is not None:
        return 4 if limits.expect_25d else 2
    if done:
        return 4 if done[0].is_25d else 2
    return None


def _dimension_error(limits: _Limits, mark_id: int, index: int, got: int, want: int, pos: int) -> _Fail:
    kind = {2: "2D (x,y)", 4: "2.5D (x,y,d,g)"}
    if limits.expect_25d is not None:
        return _Fail("wrong_dimensions", f"Mark {mark_id} step {index} is {kind[got]}; expected {kind[want]}", pos)
    return _Fail("mixed_dimensions", f"Mark {mark_id} step {index} is {kind[got]} but earlier steps are {kind[want]}", pos)


_FIELDS = ("x", "y", "depth bin", "gripper")


def _parse_step(scanner: _Scanner, limits: _Limits, mark_id: int) -> list[int]:
    scanner.literal("(", f'"(" opening a step of Mark {mark_id}')
    values: list[int] = []
    while True:
        name = _FIELDS[len(values)] if len(values) < 4 else "a number"
        value, pos = scanner.integer(f"{name} of Mark {mark_id}")
        _check_field_range(len(values), value, pos, limits, mark_id)
        values.append(value)
        if scanner.peek() == ")":
            scanner.pos += 1
            break
        if len(values) == 4:
            scanner.literal(")", f'")" closing a 4-number step of Mark {mark_id}')
            break
        scanner.literal(",", f'"," or ")" in a step of Mark {mark_id}')
    if len(values) not in (2, 4):
        raise _Fail("bad_token", f"a step of Mark {mark_id} has {len(values)} numbers; expected (x,y) or (x,y,depth,gripper)", scanner.pos - 1)
    return values


def _check_field_range(index: int, value: int, pos: int, limits: _Limits, mark_id: int) -> None:
    if index < 2:
        high, what = limits.grid, f"{_FIELDS[index]} {value} of Mark {mark_id}"
    elif index == 2:
        high, what = limits.n_depth_bins, f"depth bin {value} of Mark {mark_id}"
    else:
        high, what = 2, f"gripper state {value} of Mark {mark_id}"
    if not 0 <= value < high:
        allowed = "must be 0 (open) or 1 (closed)" if index == 3 else f"is outside [0, {high})"
        raise _Fail("out_of_range", f"{what} {allowed}", pos)


def _check_lengths(marks: list[GridTrace], starts: list[int], limits: _Limits) -> None:
    want = limits.expect_steps if limits.expect_steps is not None else marks[0].length
    for mark, pos in zip(marks, starts):
        if mark.length != want:
            reason = f"expected {want}" if limits.expect_steps is not None else f"but Mark {marks[0].mark_id} has {want}"
            raise _Fail("inconsistent_lengths", f"Mark {mark.mark_id} has {mark.length} steps, {reason}", pos)


def _is_cut_marker(rest: str) -> bool:
    """True if the text's tail is the start of a marker the model had not finished writing."""
    rest = rest.rstrip()
    return bool(rest) and any(m.startswith(rest) and m != rest for m in (TRACE_START, TRACE_END))


def _check_limits(limits: _Limits, max_chars: int) -> None:
    for name in ("grid", "n_depth_bins", "max_marks", "max_steps"):
        value = getattr(limits, name)
        if not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    if limits.expect_steps is not None and (not isinstance(limits.expect_steps, int) or limits.expect_steps < 1):
        raise InvalidInputError(f"expect_steps must be a positive int or None, got {limits.expect_steps!r}")
    if limits.expect_25d not in (None, True, False):
        raise InvalidInputError(f"expect_25d must be True, False or None, got {limits.expect_25d!r}")
    if not isinstance(max_chars, int) or max_chars < 1:
        raise InvalidInputError(f"max_chars must be a positive int, got {max_chars!r}")


# --------------------------------------------------------------------------- Set-of-Mark text


def encode_marks(marks: Sequence[tuple[int, tuple[int, int]]], grid: int = GRID_SIZE) -> str:
    """Set-of-Mark marks (id, (x, y) grid cell) -> lines ``Mark k at [x,y]`` for a prompt."""
    if not marks:
        raise InvalidInputError("no marks to list")
    lines, seen = [], set()
    for entry in marks:
        try:
            mark_id, (x, y) = entry
            mark_id, x, y = _as_int(mark_id, "mark id"), _as_int(x, "x"), _as_int(y, "y")
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"a mark must be (id, (x, y)) with integers, got {entry!r}") from exc
        if mark_id in seen or mark_id < 0:
            raise InvalidInputError(f"mark id {mark_id} is negative or repeated")
        if not (0 <= x < grid and 0 <= y < grid):
            raise InvalidInputError(f"mark {mark_id} at ({x}, {y}) is outside the {grid}x{grid} grid")
        seen.add(mark_id)
        lines.append(f"Mark {mark_id} at [{x},{y}]")
    return "\n".join(lines)


_MARK_LIST = re.compile(r"\bmarks?\s*#?\s*([0-9]{1,6}(?:\s*(?:,|&|\band\b|\bor\b)\s*(?:\band\b\s*)?#?[0-9]{1,6})*)", re.IGNORECASE)
# What may surround the numbers of a bare answer such as "2, 5 and 7." (a linear check, no backtracking).
_BARE_FILLER = re.compile(r"[0-9]+|,|&|\band\b|[.!]|\s+", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![0-9])[0-9]{1,6}(?![0-9])")
MAX_ANSWER_CHARS = 2_000


def parse_mark_ids(text: str, valid_ids: Iterable[int] | None = None) -> list[int]:
    """Mark ids named in a grounding answer ("Mark 3", "3", "Marks 2 and 5"), in order, without repeats.

    Returns [] when the answer names no mark (or is not text, or is implausibly long). Numbers
    after "Mark"/"Marks" count; a bare list of numbers counts only when it is the whole answer,
    so coordinates such as "[120,45]" are not read as ids. Ids not in `valid_ids` are dropped.
    """
    if not isinstance(text, str) or len(text) > MAX_ANSWER_CHARS:
        return []
    groups = [m.group(1) for m in _MARK_LIST.finditer(text)]
    if not groups and not _BARE_FILLER.sub("", text):
        groups = [text]
    allowed = None if valid_ids is None else {int(i) for i in valid_ids}
    ids: list[int] = []
    for group in groups:
        for number in _NUMBER.findall(group):
            value = int(number)
            if value not in ids and (allowed is None or value in allowed):
                ids.append(value)
    return ids


# --------------------------------------------------------------------------- helpers


def _as_int(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"{what} must be an integer, got a bool")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise InvalidInputError(f"{what} must be an integer, got {value!r}")


def _int_array(value, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == bool:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating) and np.isfinite(array).all() and (array == np.round(array)).all():
        return array.astype(np.int64)
    raise InvalidInputError(f"{what} must be integers, got dtype {array.dtype}")


def _optional_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(a, b)


def _tolist(a: np.ndarray | None):
    return None if a is None else a.tolist()


def _check_image_size(width: int, height: int) -> None:
    if not (isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer)) and width > 0 and height > 0):
        raise InvalidInputError(f"image size must be positive integers, got {width!r} x {height!r}")

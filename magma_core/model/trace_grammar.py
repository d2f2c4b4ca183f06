"""A character automaton for the trace text a model may write, so decoding can only produce parsable traces.

It accepts the canonical form `magma_core.codecs.trace_text.encode_traces` writes, a subset of
what `parse_traces` reads::

    <trace_start>Mark 1: [(120,45),(123,47)]\\nMark 4: [(30,200),(31,199)]<trace_end>

and enforces the parser's rules as it goes: coordinates below the grid size, depth bins below
`n_depth_bins`, gripper 0/1, no leading zeros, unique mark ids (optionally from a given set), one
arity (2D or 2.5D) for every step, the same step count for every mark, at most `max_marks` marks.

`final_mark` makes the answer goal-first: exactly one other mark, then this one (the gripper), then the end.
`anchors` (mark id -> leading fields of its first step, e.g. the (x, y, depth bin) a mark's prompt line
lists) pins where a trace starts: after ``Mark k: [(`` only mark k's anchored values may be written, so
a decoder writes them without asking the model (training anchors goal-first traces the same way).

The markers are special tokens in this project's vocabularies; `TraceGrammar(markers_as_text=True)`
spells them out character by character for a tokenizer that lacks them. States are immutable
and hashable, so callers can cache per-state work. `min_chars_to_close(state)` is the fewest
characters that complete the block from a state: decoding with a token budget uses it to close
the trace in time.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum
from typing import NamedTuple

from magma_core.codecs.trace_text import DEFAULT_N_DEPTH_BINS, MAX_DIGITS, MAX_MARKS, MAX_STEPS, TRACE_END, TRACE_START
from magma_core.errors import InvalidInputError
from magma_core.grid import GRID_SIZE

MARK_PREFIX = "Mark "
AFTER_ID = ": [("  # ":" then the canonical " [" and the first step's "("


class Phase(IntEnum):
    START = 0  # before the block: expects the start marker
    LITERAL = 1  # spelling out `literal`, then `then`
    MARK_ID = 2
    FIELD = 3  # digits of field `field` of a step: x, y[, depth, gripper]
    AFTER_STEP = 4  # after ")": "," for another step or "]" to close the mark
    AFTER_MARK = 5  # after "]": "\n" for another mark or the end marker
    END = 6  # after the end marker: only end-of-sequence
    DONE = 7


class TraceState(NamedTuple):
    phase: Phase
    literal: str = ""
    then: Phase = Phase.DONE
    mark_id: int = 0
    value: int = 0
    digits: int = 0
    field: int = 0
    arity: int = 0  # 0 until the first step shows 2D (x,y) or 2.5D (x,y,d,g)
    steps: int = 0  # completed steps of the current mark
    target: int = 0  # steps every mark must have (0: not known yet)
    marks: int = 0  # completed marks
    used: frozenset = frozenset()


def _with_digit(state: TraceState, value: int) -> TraceState:
    """`state` with one more digit written, the number now being `value`: ``state._replace(value=value,
    digits=state.digits + 1)`` built directly (the hot path of walking the vocabulary; _replace is slower)."""
    phase, literal, then, mark_id, _, digits, field, arity, steps, target, marks, used = state
    return TraceState(phase, literal, then, mark_id, value, digits + 1, field, arity, steps, target, marks, used)


@dataclass(frozen=True)
class TraceGrammar:
    """The rules (options of `parse_traces`) and the transition function over characters."""

    grid: int = GRID_SIZE
    n_depth_bins: int = DEFAULT_N_DEPTH_BINS
    expect_25d: bool | None = None
    expect_steps: int | None = None
    max_marks: int = MAX_MARKS
    max_steps: int = MAX_STEPS
    mark_ids: frozenset | None = None
    max_mark_id: int = 999
    markers_as_text: bool = False
    anchors: tuple = ()  # ((mark id, (x, y[, depth bin])), ...): a dict is accepted and stored sorted
    final_mark: int | None = None  # goal-first: one other mark, then this one, then the end (needs mark_ids)

    def __post_init__(self) -> None:
        for name in ("grid", "n_depth_bins", "max_marks", "max_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
        if self.n_depth_bins < 1 or self.grid < 1:
            raise InvalidInputError("grid and n_depth_bins must be positive")
        if self.expect_steps is not None and not (isinstance(self.expect_steps, int) and 1 <= self.expect_steps <= self.max_steps):
            raise InvalidInputError(f"expect_steps must be an int in [1, {self.max_steps}], got {self.expect_steps!r}")
        if not isinstance(self.max_mark_id, int) or not 0 <= self.max_mark_id < 10**MAX_DIGITS:
            raise InvalidInputError(f"max_mark_id must be an int in [0, 10^{MAX_DIGITS}), got {self.max_mark_id!r}")
        if self.expect_25d not in (None, True, False):
            raise InvalidInputError(f"expect_25d must be True, False or None, got {self.expect_25d!r}")
        if self.mark_ids is not None:
            ids = frozenset(int(i) for i in self.mark_ids)
            if not ids or min(ids) < 0 or max(ids) > self.max_mark_id:
                raise InvalidInputError(f"mark_ids must be a non-empty set of ids in [0, {self.max_mark_id}], got {sorted(ids)}")
            object.__setattr__(self, "mark_ids", ids)
        object.__setattr__(self, "anchors", self._checked_anchors(self.anchors))
        if self.final_mark is not None:
            if self.mark_ids is None or self.final_mark not in self.mark_ids or len(self.mark_ids) < 2 or self.max_marks < 2:
                raise InvalidInputError(f"final_mark {self.final_mark!r} needs mark_ids holding it and another id, and "
                                        f"max_marks >= 2 (got mark_ids {self.mark_ids}, max_marks {self.max_marks})")
        object.__setattr__(self, "_anchor_map", dict(self.anchors))  # not a field: lookups per character

    def _checked_anchors(self, anchors) -> tuple:
        items = anchors.items() if isinstance(anchors, dict) else anchors
        try:
            pinned = tuple(sorted((int(k), tuple(int(v) for v in values)) for k, values in items))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"anchors must map mark ids to integer fields, got {anchors!r}") from exc
        for mark_id, values in pinned:
            if not 1 <= len(values) <= 3:
                raise InvalidInputError(f"anchor of mark {mark_id} must give x, y and optionally a depth bin, got {values}")
            if len(values) == 3 and self.expect_25d is False:
                raise InvalidInputError(f"anchor of mark {mark_id} has a depth bin but the grammar is 2D")
            for field, value in enumerate(values):
                if not 0 <= value < self._field_limit(field):
                    raise InvalidInputError(f"anchor of mark {mark_id}: field {field} = {value} is out of range")
        return pinned

    # ------------------------------------------------------------------ states

    def initial_state(self, start_marker_done: bool = False) -> TraceState:
        """The state before anything is written; `start_marker_done` when the prompt already ends with it."""
        if start_marker_done:
            return TraceState(Phase.LITERAL, literal=MARK_PREFIX, then=Phase.MARK_ID, target=self.expect_steps or 0)
        if self.markers_as_text:
            return TraceState(Phase.LITERAL, literal=TRACE_START + MARK_PREFIX, then=Phase.MARK_ID, target=self.expect_steps or 0)
        return TraceState(Phase.START, target=self.expect_steps or 0)

    def after_start_marker(self, state: TraceState) -> TraceState | None:
        """Consume the start marker token (special-token mode)."""
        if state.phase != Phase.START:
            return None
        return state._replace(phase=Phase.LITERAL, literal=MARK_PREFIX, then=Phase.MARK_ID)

    def after_end_marker(self, state: TraceState) -> TraceState | None:
        """Consume the end marker token (special-token mode); allowed once a mark is closed."""
        if state.phase != Phase.AFTER_MARK or not self._closing_allowed(state):
            return None
        return state._replace(phase=Phase.END)

    def step(self, state: TraceState, char: str) -> TraceState | None:
        """The state after `char`, or None if the grammar forbids it here."""
        phase = state.phase
        if phase == Phase.LITERAL:
            if char != state.literal[0]:
                return None
            rest = state.literal[1:]
            if rest:
                return state._replace(literal=rest)
            return self._enter(state._replace(literal=""), state.then)
        if phase == Phase.MARK_ID:
            return self._mark_id_char(state, char)
        if phase == Phase.FIELD:
            return self._field_char(state, char)
        if phase == Phase.AFTER_STEP:
            return self._after_step_char(state, char)
        if phase == Phase.AFTER_MARK:
            if char == "\n" and self._can_add_mark(state):
                return state._replace(phase=Phase.LITERAL, literal=MARK_PREFIX, then=Phase.MARK_ID)
            if self.markers_as_text and char == TRACE_END[0] and self._closing_allowed(state):
                return state._replace(phase=Phase.LITERAL, literal=TRACE_END[1:], then=Phase.END)
            return None
        return None  # START, END, DONE take tokens, not characters

    def walk(self, state: TraceState, text: str) -> TraceState | None:
        for char in text:
            state = self.step(state, char)
            if state is None:
                return None
        return state

    # ------------------------------------------------------------------ budget

    def min_chars_to_close(self, state: TraceState) -> int:
        """Fewest characters from `state` to a closed mark where the end marker may follow; END/DONE -> 0."""
        chars = self._chars_to_close_mark(state)
        if self.final_mark is None or state.phase in (Phase.END, Phase.DONE) or (
                state.phase == Phase.LITERAL and state.then == Phase.END):
            return chars
        closed = state.marks if state.phase == Phase.AFTER_MARK else state.marks + 1
        if closed >= 2:
            return chars
        final = state._replace(marks=1)  # the one mark still missing is the final mark
        return chars + 1 + self._chars_for_new_mark(final, MARK_PREFIX)

    def _chars_to_close_mark(self, state: TraceState) -> int:
        phase = state.phase
        if phase in (Phase.AFTER_MARK, Phase.END, Phase.DONE):
            return 0
        if phase == Phase.START:
            return self._chars_for_new_mark(state, MARK_PREFIX)
        if phase == Phase.LITERAL:
            if state.then == Phase.END:
                return 0  # spelling the end marker: the mark is already closed
            if state.then == Phase.MARK_ID:
                return len(state.literal) + self._chars_for_id_and_mark(state, "", 0)
            # ": [(" or "(" (another step): then a whole step and what the mark still needs
            return len(state.literal) + self._chars_to_close_step(state, field=0, digits=0) + self._chars_after_step(state, state.steps + 1)
        if phase == Phase.MARK_ID:
            prefix = str(state.value) if state.digits else ""
            return self._chars_for_id_and_mark(state, prefix, state.digits)
        if phase == Phase.FIELD:
            return self._chars_to_close_step(state, state.field, state.digits) + self._chars_after_step(state, state.steps + 1)
        return self._chars_after_step(state, state.steps)  # AFTER_STEP

    def min_tokens_to_finish(self, state: TraceState) -> int:
        """Tokens enough to finish from `state` (end marker and end-of-sequence included).

        An upper bound on the fewest tokens, given a vocabulary with a one-character token for
        every character the grammar uses (byte-level BPE has them all).
        """
        if state.phase == Phase.DONE:
            return 0
        if state.phase == Phase.END:
            return 1
        if state.phase == Phase.LITERAL and state.then == Phase.END:
            return len(state.literal) + 1
        start = 1 if state.phase == Phase.START else 0
        end = len(TRACE_END) if self.markers_as_text else 1
        return start + self.min_chars_to_close(state) + end + 1

    # ------------------------------------------------------------------ transitions

    def _enter(self, state: TraceState, phase: Phase) -> TraceState:
        if phase == Phase.MARK_ID:
            return state._replace(phase=Phase.MARK_ID, value=0, digits=0)
        if phase == Phase.FIELD:
            return state._replace(phase=Phase.FIELD, field=0, value=0, digits=0)
        return state._replace(phase=phase)

    def _mark_id_char(self, state: TraceState, char: str) -> TraceState | None:
        if char.isascii() and char.isdigit():
            if state.digits and state.value == 0:
                return None  # no leading zeros
            prefix = (str(state.value) if state.digits else "") + char
            if self._min_id_extension(prefix, self._unavailable(state)) is None:
                return None
            return _with_digit(state, int(prefix))
        if char == ":" and state.digits and self._id_allowed(state.value, self._unavailable(state)):
            return state._replace(phase=Phase.LITERAL, literal=AFTER_ID[1:], then=Phase.FIELD, mark_id=state.value, steps=0)
        return None

    def _field_char(self, state: TraceState, char: str) -> TraceState | None:
        pinned = self._pinned(state)
        if char.isascii() and char.isdigit():
            if state.digits and state.value == 0:
                return None
            value = state.value * 10 + int(char)
            if value >= self._field_limit(state.field):
                return None
            if pinned is not None and not str(pinned).startswith(str(value)):
                return None
            return _with_digit(state, value)
        if not state.digits or (pinned is not None and state.value != pinned):
            return None
        field, arity = state.field, state.arity
        if char == ",":
            if field == 0 or field == 2:
                return state._replace(field=field + 1, value=0, digits=0)
            if field == 1 and arity in (0, 4) and self.expect_25d is not False:
                return state._replace(field=2, value=0, digits=0, arity=4)
            return None
        if char == ")":
            # The number just closed is forgotten (value, digits): states after a step are then the same whatever
            # was written, so per-state work is shared.
            if field == 1 and arity in (0, 2) and self.expect_25d is not True:
                return state._replace(phase=Phase.AFTER_STEP, arity=2, steps=state.steps + 1, value=0, digits=0)
            if field == 3:
                return state._replace(phase=Phase.AFTER_STEP, steps=state.steps + 1, value=0, digits=0)
        return None

    def _after_step_char(self, state: TraceState, char: str) -> TraceState | None:
        if char == "," and state.steps < self._step_limit(state):
            return state._replace(phase=Phase.LITERAL, literal="(", then=Phase.FIELD)
        if char == "]" and (state.target == 0 or state.steps == state.target):
            return state._replace(
                phase=Phase.AFTER_MARK,
                marks=state.marks + 1,
                used=state.used | {state.mark_id},
                target=state.target or state.steps,
                steps=0,
            )
        return None

    # ------------------------------------------------------------------ rules

    def _field_limit(self, field: int) -> int:
        return (self.grid, self.grid, self.n_depth_bins, 2)[field]

    def _unavailable(self, state: TraceState) -> frozenset:
        """Ids the next mark may not take: those written; with `final_mark`, it first, then every other one."""
        if self.final_mark is None:
            return state.used
        if state.marks == 0:
            return state.used | {self.final_mark}
        return state.used | (self.mark_ids - {self.final_mark})

    def _closing_allowed(self, state: TraceState) -> bool:
        return self.final_mark is None or state.marks >= 2

    def anchors_act_on(self, state: TraceState) -> bool:
        """Whether an anchor constrains the next characters from `state`: a number field of an anchored mark's
        first step (the only place anchors act; `min_tokens_to_finish` never depends on them)."""
        return bool(self.anchors) and state.phase == Phase.FIELD and self._pinned(state) is not None

    def cache_state(self, state: TraceState) -> TraceState:
        """A state with the same options as `state`, to key per-state work by: a number that can take no more
        digits (and is not pinned) is forgotten, since only its terminators can follow and they reset it."""
        if (state.phase == Phase.FIELD and state.digits and 10 ** state.digits >= self._field_limit(state.field)
                and self._pinned(state) is None):
            phase, literal, then, mark_id, _, _, field, arity, steps, target, marks, used = state
            return TraceState(phase, literal, then, mark_id, 0, 9, field, arity, steps, target, marks, used)
        return state

    @property
    def anchor_shape(self) -> tuple:
        """Which marks are anchored and on how many fields: where anchors can act, whatever their values."""
        shape = self.__dict__.get("_anchor_shape")
        if shape is None:
            shape = tuple((mark_id, len(values)) for mark_id, values in self.anchors)
            object.__setattr__(self, "_anchor_shape", shape)
        return shape

    def only_anchor(self, mark_id: int) -> "TraceGrammar":
        """This grammar with the anchor of `mark_id` alone (memoized per grammar): what decides the options inside
        that mark's first step, so frames that list that mark at the same place share their work."""
        memo = self.__dict__.get("_only_anchor")
        if memo is None:
            memo = {}
            object.__setattr__(self, "_only_anchor", memo)
        found = memo.get(mark_id)
        if found is None:
            kept = tuple((k, v) for k, v in self.anchors if k == mark_id)
            found = memo[mark_id] = replace(self, anchors=kept) if kept != self.anchors else self
        return found

    def without_anchors(self) -> "TraceGrammar":
        """This grammar with no anchors (built once per grammar)."""
        bare = self.__dict__.get("_without_anchors")
        if bare is None:
            bare = replace(self, anchors=()) if self.anchors else self
            object.__setattr__(self, "_without_anchors", bare)
        return bare

    def _pinned(self, state: TraceState) -> int | None:
        """The anchored value of the field being written (first step of an anchored mark), else None."""
        if not self.anchors or state.steps:
            return None
        values = self._anchor_map.get(state.mark_id)
        return values[state.field] if values is not None and state.field < len(values) else None

    def _step_limit(self, state: TraceState) -> int:
        return state.target if state.target else self.max_steps

    def _id_allowed(self, mark_id: int, used: frozenset) -> bool:
        if mark_id in used:
            return False
        return self.mark_ids is None or mark_id in self.mark_ids

    def _can_add_mark(self, state: TraceState) -> bool:
        limit = 2 if self.final_mark is not None else self.max_marks
        return state.marks < limit and self._min_id_extension("", self._unavailable(state)) is not None

    def _min_id_extension(self, prefix: str, used: frozenset) -> int | None:
        """Fewest digits to append to `prefix` for an allowed, unused id; None if impossible."""
        if self.mark_ids is not None:
            lengths = [len(str(i)) - len(prefix) for i in self.mark_ids - used if str(i).startswith(prefix)]
            return min(lengths) if lengths else None
        limit = self.max_mark_id
        if prefix and int(prefix) > limit:
            return None
        if prefix == "0":
            return 0 if 0 not in used else None  # no leading zeros: "0" cannot grow
        if prefix and int(prefix) not in used:
            return 0
        for extra in range(1, len(str(limit)) - len(prefix) + 1):
            if prefix:
                candidates = range(int(prefix) * 10**extra, min((int(prefix) + 1) * 10**extra, limit + 1))
            else:
                candidates = range(min(10, limit + 1)) if extra == 1 else range(10 ** (extra - 1), min(10**extra, limit + 1))
            if any(c not in used for c in candidates):
                return extra
        return None

    # ------------------------------------------------------------------ costs

    def _step_chars(self, state: TraceState) -> int:
        arity = state.arity or (4 if self.expect_25d else 2)
        return 2 * arity + 1  # "(" + digits and commas + ")"

    def _chars_to_close_step(self, state: TraceState, field: int, digits: int) -> int:
        arity = state.arity or (4 if (self.expect_25d or field >= 2) else 2)
        return (0 if digits else 1) + 2 * (arity - 1 - field) + 1

    def _chars_after_step(self, state: TraceState, steps_done: int) -> int:
        more = max(0, state.target - steps_done) if state.target else 0
        return more * (1 + self._step_chars(state)) + 1  # ",(...)" per missing step, then "]"

    def _chars_for_id_and_mark(self, state: TraceState, prefix: str, digits: int) -> int:
        extension = self._min_id_extension(prefix, self._unavailable(state))
        if extension is None:
            return 10**9  # unreachable in practice: transitions never enter such a prefix
        steps = state.target or 1
        return extension + len(AFTER_ID) - 1 + self._step_chars(state) + (steps - 1) * (1 + self._step_chars(state)) + 1

    def _chars_for_new_mark(self, state: TraceState, literal: str) -> int:
        return len(literal) + self._chars_for_id_and_mark(state, "", 0)


__all__ = ["TraceGrammar", "TraceState", "Phase"]

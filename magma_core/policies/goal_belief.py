"""A goal that persists across frames: the model's per-frame goal-line scores, smoothed over time.

`MagmaPolicy` ranks the goal line of every listed mark each frame ("Goal: blue block 4cm"). One frame's
ranking can be wrong (the hand covering its block changes that block's description, a colour read badly)
and one wrong frame sends the arm elsewhere. `GoalBelief` keeps, for each place in the image a goal
could be, an exponential moving average of the model's probabilities (softmax of its line scores), and
the policy traces the mark with the highest belief. Marks are renumbered every frame, so they are
associated across frames by image position. The belief starts afresh whenever the hand's state
changes (open, holding something, closed on nothing, from the finger opening in proprioception): the
goal then changes on purpose (object -> place once it is held) and old evidence is about another goal.

Only the policy's own outputs and proprioception are used; nothing here reads the simulator.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from magma_core.errors import InvalidInputError


@dataclass
class _Hypothesis:
    point: np.ndarray  # (2,) pixels, where the mark was last seen
    belief: float


class GoalBelief:
    """Goal probabilities per image position, smoothed over frames and reset when the hand's state changes.

    Args:
        decay: weight of the past in the moving average (0: every frame decides alone).
        match_radius_px: a candidate continues a hypothesis whose last position is this close (pixels).
        open_m: finger opening at or above which the hand counts as open (metres).
        empty_m: opening at or below which the closed hand holds nothing (metres).
    """

    def __init__(self, decay: float = 0.8, match_radius_px: float = 6.0, open_m: float = 0.07,
                 empty_m: float = 0.005) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise InvalidInputError(f"goal belief decay must be in [0, 1), got {decay!r}")
        if not float(match_radius_px) > 0:
            raise InvalidInputError(f"match radius must be > 0 pixels, got {match_radius_px!r}")
        if not 0.0 <= float(empty_m) < float(open_m):
            raise InvalidInputError(f"need 0 <= empty_m < open_m, got {empty_m!r}, {open_m!r}")
        self.decay = float(decay)
        self.match_radius_px = float(match_radius_px)
        self.open_m = float(open_m)
        self.empty_m = float(empty_m)
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new episode)."""
        self._hypotheses: list[_Hypothesis] = []
        self.hand_state: str | None = None
        self.resets = 0

    def hand_state_of(self, opening_m: float | None) -> str:
        """"open", "holding", "empty" (closed on nothing) or "unknown" from the finger opening."""
        if opening_m is None or not np.isfinite(opening_m):
            return "unknown"
        if opening_m >= self.open_m:
            return "open"
        return "empty" if opening_m <= self.empty_m else "holding"

    def update(self, points: Sequence[Sequence[float]], scores: Sequence[float], opening_m: float | None = None) -> int:
        """Fold one frame's candidates (pixel points) and their goal-line log-likelihoods in; returns the index of
        the candidate to trace. With `decay` 0 this is the frame's own best candidate."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
        logits = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(pts) == 0 or len(pts) != len(logits):
            raise InvalidInputError(f"need one score per candidate and at least one, got {len(pts)} points, {len(logits)} scores")
        if not np.all(np.isfinite(pts)) or not np.all(np.isfinite(logits)):
            raise InvalidInputError("goal candidates' points and scores must be finite")
        state = self.hand_state_of(opening_m)
        if state != self.hand_state:
            if self.hand_state is not None:
                self.resets += 1
            self._hypotheses, self.hand_state = [], state
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        matched = self._associate(pts)
        kept: list[_Hypothesis] = []
        now = np.zeros(len(pts))
        for i, (point, p) in enumerate(zip(pts, probs)):
            h = matched.get(i)
            past = self._hypotheses[h].belief if h is not None else 0.0
            first = h is None and not self._hypotheses
            belief = float(p) if first else self.decay * past + (1.0 - self.decay) * float(p)
            now[i] = belief
            kept.append(_Hypothesis(point.copy(), belief))
        # Positions not seen this frame fade out (a mark hidden for a frame keeps some of its belief).
        used = set(matched.values())
        for j, h in enumerate(self._hypotheses):
            if j not in used and h.belief * self.decay > 1e-3:
                kept.append(_Hypothesis(h.point, h.belief * self.decay))
        self._hypotheses = kept
        return int(np.argmax(now))

    def leading(self, points: Sequence[Sequence[float]], opening_m: float | None = None) -> int | None:
        """The candidate `update` would most likely pick before this frame's scores are in: the one at the position
        with the most belief so far; None when there is no belief to go by (a new episode, or the hand's state
        changed). Read-only: the policy uses it to start work on that goal early."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
        if not len(pts) or not self._hypotheses or self.hand_state_of(opening_m) != self.hand_state \
                or not np.all(np.isfinite(pts)):
            return None
        matched = self._associate(pts)
        if not matched:
            return None
        return max(matched, key=lambda i: self._hypotheses[matched[i]].belief)

    def _associate(self, pts: np.ndarray) -> dict[int, int]:
        """Candidate index -> hypothesis index, nearest pairs first, each within the match radius."""
        if not self._hypotheses:
            return {}
        old = np.array([h.point for h in self._hypotheses])
        dist = np.linalg.norm(pts[:, None, :] - old[None, :, :], axis=-1)
        out: dict[int, int] = {}
        for flat in np.argsort(dist, axis=None):
            i, j = divmod(int(flat), dist.shape[1])
            if dist[i, j] > self.match_radius_px:
                break
            if i not in out and j not in out.values():
                out[i] = j
        return out


__all__ = ["GoalBelief"]

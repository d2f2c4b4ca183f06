"""Ground-truth traces against the foundation's point tracker on the same simulated clips.

The simulator knows where every mark really goes (``Episode.gt_traces``); Trace-of-Mark labels
for real video come from a tracker instead. Running the tracker on simulated frames, seeded with
the ground-truth mark points, measures how far the labels a real dataset would get are from the
truth. Errors count only steps where the mark is in view: inside the image and not hidden
behind something nearer the camera (judged against the rendered depth).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magma_core.bench.tracking import DELTA_THRESHOLDS
from magma_core.data.episode import Episode
from magma_core.errors import InvalidInputError
from magma_core.tom.trackers import PointTracker, make_tracker

OCCLUSION_TOLERANCE_M = 0.02  # a mark counts as hidden when the rendered surface is this much nearer
MOVING_PX = 1.0  # a mark "moved" once its GT position is this far from where it was queried


def window_errors(episode: Episode, start: int, tracker: PointTracker,
                  occlusion_tolerance: float = OCCLUSION_TOLERANCE_M) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tracker error (S-1, M) in pixels over the GT trace that starts at step `start`, its validity
    mask and the GT displacement (S-1, M) from the start point (how far the mark really moved).

    The tracker gets frames start..start+S-1 (S = the trace length, cut at the episode's end) and the
    GT mark points of frame `start` as queries; step 0 (the queries themselves) is left out.
    """
    if episode.gt_traces is None:
        raise InvalidInputError("episode has no ground-truth traces to compare with")
    T = len(episode)
    if not 0 <= start < T - 1:
        raise InvalidInputError(f"start step {start} leaves no future frame in an episode of {T} steps")
    steps = min(episode.gt_traces.shape[2], T - start)
    gt = episode.gt_traces[start, :, :steps].astype(np.float64)  # (M, S, 3)
    M = gt.shape[0]
    errors = np.full((steps - 1, M), np.nan)
    valid = np.zeros((steps - 1, M), dtype=bool)
    moved = np.linalg.norm(gt[:, 1:, :2] - gt[:, :1, :2], axis=-1).T
    seen = _in_view(episode, start, gt, occlusion_tolerance)  # (M, S)
    queries = np.flatnonzero(seen[:, 0])  # a hidden or off-image start cannot be queried
    if queries.size == 0:
        return errors, valid, moved
    result = tracker.track(episode.rgb[start:start + steps], gt[queries, 0, :2])
    predicted = result.points[1:]  # (S-1, Q, 2)
    error = np.linalg.norm(predicted - np.transpose(gt[queries, 1:, :2], (1, 0, 2)), axis=-1)
    errors[:, queries] = error
    valid[:, queries] = seen[queries, 1:].T
    return errors, valid, moved


def _in_view(episode: Episode, start: int, gt: np.ndarray, tolerance: float) -> np.ndarray:
    height, width = episode.rgb.shape[1:3]
    u, v, d = gt[..., 0], gt[..., 1], gt[..., 2]
    inside = (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1) & (d > 0)
    if episode.depth is None:
        return inside
    seen = inside.copy()
    for m, s in zip(*np.nonzero(inside)):
        surface = episode.depth[start + s, int(round(v[m, s])), int(round(u[m, s]))]
        # NaN depth means nothing was hit there: nothing can be in front of the mark either.
        seen[m, s] = not (np.isfinite(surface) and surface < d[m, s] - tolerance)
    return seen


@dataclass
class TrackerErrors:
    """Per window step and mark: error (px), whether it counts (mark in view), GT motion since the query."""

    errors: np.ndarray  # (N, M)
    valid: np.ndarray  # (N, M) bool
    moved: np.ndarray  # (N, M) px
    names: list[str]  # M mark roles


def tracker_errors(episode: Episode, tracker: str | PointTracker = "lk", stride: int | None = None) -> TrackerErrors:
    """Errors over trace windows starting every `stride` steps (default the trace length: no overlap)."""
    if episode.gt_traces is None:
        raise InvalidInputError("episode has no ground-truth traces to compare with")
    tracker = make_tracker(tracker) if isinstance(tracker, str) else tracker
    M, n_steps = episode.gt_traces.shape[1:3]
    stride = max(1, n_steps - 1) if stride is None else stride
    if int(stride) != stride or stride < 1:
        raise InvalidInputError(f"stride must be a positive integer, got {stride!r}")
    parts = [window_errors(episode, start, tracker) for start in range(0, len(episode) - 1, int(stride))]
    if parts:
        errors, valid, moved = (np.concatenate(column) for column in zip(*parts))
    else:
        errors, valid, moved = np.zeros((0, M)), np.zeros((0, M), dtype=bool), np.zeros((0, M))
    # Marks are named by role (gripper, object, target) so episodes with different objects pool.
    role_of = {name: role for role, name in (episode.metadata.get("roles") or {}).items()}
    names = [role_of.get(n, n) for n in episode.metadata.get("mark_names") or []]
    names = names[:M] if len(names) >= M else [f"mark{m}" for m in range(M)]
    return TrackerErrors(errors, valid, moved, names)


def error_summary(result: TrackerErrors, image_side: int) -> dict:
    """Median/mean error (pixels), the median where the mark had moved > MOVING_PX, TAP-Vid delta_avg
    (thresholds 1..16 px at 256 px, so errors are rescaled) and the median per mark."""
    errors, valid = result.errors, result.valid
    kept = errors[valid]
    moving = errors[valid & (result.moved > MOVING_PX)]
    scale = 256.0 / image_side

    def median(values: np.ndarray) -> float | None:
        return float(np.median(values)) if values.size else None

    return {
        "n_points": int(kept.size),
        "median_px": median(kept),
        "mean_px": float(np.mean(kept)) if kept.size else None,
        "median_moving_px": median(moving),
        "n_moving_points": int(moving.size),
        "delta_avg": float(np.mean([(kept * scale < d).mean() for d in DELTA_THRESHOLDS])) if kept.size else None,
        "per_mark_median_px": {name: median(errors[:, m][valid[:, m]]) for m, name in enumerate(result.names)},
        "per_mark_median_moving_px": {name: median(errors[:, m][valid[:, m] & (result.moved[:, m] > MOVING_PX)])
                                      for m, name in enumerate(result.names)},
    }


def compare_tracker(episode: Episode, tracker: str | PointTracker = "lk", stride: int | None = None) -> dict:
    """Tracker vs ground truth over one episode (see `tracker_errors` and `error_summary`)."""
    return error_summary(tracker_errors(episode, tracker, stride), max(episode.rgb.shape[1:3]))


def compare_episodes(episodes, tracker: str | PointTracker = "lk", stride: int | None = None) -> dict:
    """Tracker vs ground truth pooled over several episodes (same image size and marks)."""
    episodes = list(episodes)
    if not episodes:
        raise InvalidInputError("no episodes to compare")
    tracker = make_tracker(tracker) if isinstance(tracker, str) else tracker
    parts = [tracker_errors(ep, tracker, stride) for ep in episodes]
    names = parts[0].names
    if any(len(p.names) != len(names) for p in parts):
        raise InvalidInputError("episodes have different numbers of marks; compare them one by one")
    pooled = TrackerErrors(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("errors", "valid", "moved")),
                           names=names)
    summary = error_summary(pooled, max(episodes[0].rgb.shape[1:3]))
    summary["episodes"] = len(parts)
    return summary

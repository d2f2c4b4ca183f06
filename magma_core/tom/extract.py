"""Trace-of-Mark extraction from video: the training labels of Magma's ToM objective.

Steps (each a function below, `extract_traces` runs them all):
1. an s x s grid of query points over the current frame (frame 0);
2. track them through the current frame and the next l frames with a pluggable tracker;
3. drop points visible in fewer than `min_visible_fraction` of the frames;
4. if most points move, the camera moved: estimate a homography per frame (RANSAC) that maps
   frame t back to frame 0 and express every trace in frame-0 coordinates;
5. split traces into moving and static by their mean per-step motion after compensation, and
   keep as mark candidates only moving traces that nearby traces move alike with (`supported`);
6. K-means on trace features picks a few representative marks (2-4 moving, more static); each
   mark is the real trace nearest its cluster centre. Mark ids run from 1, moving marks first,
   each group biggest cluster first.

Invisible steps of a trace keep the tracker's predicted position; `Trace.visible` says which.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from magma_core.errors import InvalidInputError
from magma_core.tom.clip import validate_clip
from magma_core.tom.trackers import PointTracker, TrackResult, make_tracker
from magma_core.tom.types import Trace, TraceSet


@dataclass
class ToMConfig:
    """Settings of Trace-of-Mark extraction. Pixel values refer to the clip's own resolution."""

    grid_size: int = 16  # s: s x s query points
    future_frames: int = 16  # l: frames tracked after the current one
    fb_threshold: float = 1.0  # px, forward-backward check of the default LK tracker
    min_visible_fraction: float = 0.5  # drop traces visible in fewer frames than this fraction
    motion_epsilon: float = 0.5  # px/step: mean motion above this makes a trace "moving"
    camera_motion_fraction: float = 0.5  # camera moving when more than this fraction of traces move
    ransac_threshold: float = 1.0  # px, reprojection threshold of the per-frame homography
    min_support: int = 2  # a moving mark needs this many nearby traces moving alike (0: no check)
    min_moving_marks: int = 2
    max_moving_marks: int = 4
    n_static_marks: int = 6
    seed: int = 0  # K-means initialisation

    def validate(self) -> None:
        if self.grid_size < 1:
            raise InvalidInputError(f"grid_size must be >= 1, got {self.grid_size}")
        if self.future_frames < 1:
            raise InvalidInputError(f"future_frames must be >= 1, got {self.future_frames}")
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise InvalidInputError(f"min_visible_fraction must lie in [0, 1], got {self.min_visible_fraction}")
        if not 0.0 <= self.camera_motion_fraction < 1.0:
            raise InvalidInputError(f"camera_motion_fraction must lie in [0, 1), got {self.camera_motion_fraction}")
        if self.motion_epsilon < 0 or self.ransac_threshold <= 0:
            raise InvalidInputError("motion_epsilon must be >= 0 and ransac_threshold > 0")
        if not 1 <= self.min_moving_marks <= self.max_moving_marks:
            raise InvalidInputError(f"need 1 <= min_moving_marks <= max_moving_marks, got {self.min_moving_marks}, {self.max_moving_marks}")
        if self.min_support < 0:
            raise InvalidInputError(f"min_support must be >= 0, got {self.min_support}")
        if self.n_static_marks < 0:
            raise InvalidInputError(f"n_static_marks must be >= 0, got {self.n_static_marks}")


def grid_points(width: int, height: int, grid_size: int) -> np.ndarray:
    """(s*s, 2) x, y at the centres of an s x s grid of cells (pixel centres at integer coordinates), row by row."""
    xs = (np.arange(grid_size) + 0.5) * width / grid_size - 0.5
    ys = (np.arange(grid_size) + 0.5) * height / grid_size - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def extract_traces(frames: np.ndarray, config: ToMConfig | None = None, tracker: PointTracker | None = None) -> TraceSet:
    """Run the whole extraction on a clip (frame 0 = current frame); traces come in frame-0 pixels.

    Uses the current frame and the next `config.future_frames` frames (fewer if the clip is
    shorter). The default tracker is Lucas-Kanade with `config.fb_threshold`.
    """
    return extract_with_tracks(frames, config, tracker)[0]


def extract_with_tracks(
    frames: np.ndarray, config: ToMConfig | None = None, tracker: PointTracker | None = None
) -> tuple[TraceSet, np.ndarray, TrackResult]:
    """`extract_traces`, also returning the grid queries (N, 2) and the raw tracks (for scoring)."""
    config = config or ToMConfig()
    config.validate()
    started = time.perf_counter()
    clip = validate_clip(frames)[: config.future_frames + 1]
    tracker = tracker or make_tracker("lk", fb_threshold=config.fb_threshold)
    height, width = clip.shape[1:3]
    query = grid_points(width, height, config.grid_size)
    tracks = tracker.track(clip, query)
    trace_set = traces_from_tracks(tracks, (width, height), config)
    trace_set.stats["tracker"] = getattr(tracker, "name", type(tracker).__name__)
    trace_set.stats["seconds"] = time.perf_counter() - started
    return trace_set, query, tracks


def traces_from_tracks(tracks: TrackResult, image_size: tuple[int, int], config: ToMConfig | None = None) -> TraceSet:
    """Steps 3-6 on tracks of grid points: filter, remove camera motion, split, choose marks."""
    config = config or ToMConfig()
    config.validate()
    points, visible = tracks.points, tracks.visible
    count, n = visible.shape
    kept = visible.mean(axis=0) >= config.min_visible_fraction if n else np.zeros(0, dtype=bool)
    points, visible = points[:, kept], visible[:, kept]

    raw_motion = mean_step_motion(points, visible)
    raw_moving_fraction = float(np.mean(raw_motion > config.motion_epsilon)) if raw_motion.size else 0.0
    camera_moving = raw_moving_fraction > config.camera_motion_fraction
    stats: dict = {
        "n_grid": int(n),
        "n_frames": int(count),
        "n_tracked": int(kept.sum()),
        "n_dropped": int(n - kept.sum()),
        "raw_moving_fraction": raw_moving_fraction,
        "camera_moving": bool(camera_moving),
        "config": asdict(config),
    }
    homographies = None
    if camera_moving:
        homographies, inlier_fraction, failures = estimate_camera_motion(points, visible, config.ransac_threshold)
        points = apply_homographies(homographies, points)
        stats["homography_inlier_fraction"] = inlier_fraction
        stats["homography_failures"] = failures

    motion = mean_step_motion(points, visible)
    moving = motion > config.motion_epsilon
    stats["n_moving_traces"] = int(moving.sum())
    stats["n_static_traces"] = int((~moving).sum())

    traces: list[Trace] = []
    moving_idx, static_idx = np.flatnonzero(moving), np.flatnonzero(~moving)
    # Marks come only from motion several neighbouring traces agree on: a lone "moving" trace is
    # far more often a tracking failure (a point dragged by an occluder) than a tiny object.
    spacing = max(image_size) / float(config.grid_size)
    moving_idx = moving_idx[supported(points, visible, moving_idx, 2.5 * spacing, config.min_support)]
    stats["n_moving_supported"] = int(moving_idx.size)
    k_moving = choose_moving_count(_features(points, visible, image_size, moving_idx, True), config)
    for group, k, with_motion in ((moving_idx, k_moving, True), (static_idx, min(config.n_static_marks, static_idx.size), False)):
        if k == 0:
            continue
        features = _features(points, visible, image_size, group, with_motion)
        for chosen in representatives(features, k, config.seed):
            index = group[chosen]
            traces.append(Trace(mark_id=len(traces) + 1, points=points[:, index], visible=visible[:, index], moving=bool(with_motion)))
    stats["n_moving_marks"] = sum(t.moving for t in traces)
    stats["n_static_marks"] = sum(not t.moving for t in traces)
    return TraceSet(traces=traces, image_size=(int(image_size[0]), int(image_size[1])), camera_moving=bool(camera_moving), homographies=homographies, stats=stats)


def mean_step_motion(points: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(N,) mean displacement per step over steps where the point is visible at both ends (0 if none)."""
    if points.shape[1] == 0:
        return np.zeros(0)
    steps = np.linalg.norm(np.diff(points, axis=0), axis=-1)
    both = visible[1:] & visible[:-1]
    counted = both.sum(axis=0)
    return np.where(counted > 0, (steps * both).sum(axis=0) / np.maximum(counted, 1), 0.0)


def estimate_camera_motion(points: np.ndarray, visible: np.ndarray, ransac_threshold: float) -> tuple[np.ndarray, float, int]:
    """(T, 3, 3) homographies mapping frame t to frame 0 (RANSAC on points visible in both).

    The dominant motion (the background's) wins RANSAC; moving objects are its outliers. A frame
    with fewer than 4 usable points, or where RANSAC fails, reuses the previous frame's homography.
    Returns the homographies, the mean inlier fraction and the number of failed frames.
    """
    import cv2

    count = points.shape[0]
    homographies = np.tile(np.eye(3), (count, 1, 1))
    inliers, failures = [], 0
    for t in range(1, count):
        usable = visible[t] & visible[0]
        matrix = None
        if usable.sum() >= 4:
            matrix, mask = cv2.findHomography(
                points[t, usable].astype(np.float32), points[0, usable].astype(np.float32), cv2.RANSAC, ransac_threshold, maxIters=2000, confidence=0.995
            )
        if matrix is None or not np.isfinite(matrix).all():
            failures += 1
            homographies[t] = homographies[t - 1]
            continue
        homographies[t] = matrix / matrix[2, 2]
        inliers.append(float(mask.mean()))
    return homographies, float(np.mean(inliers)) if inliers else 0.0, failures


def apply_homographies(homographies: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (T, N, 2) points of each frame t through homographies[t]."""
    ones = np.ones(points.shape[:2] + (1,))
    mapped = np.einsum("tij,tnj->tni", homographies, np.concatenate([points, ones], axis=-1))
    return mapped[..., :2] / mapped[..., 2:3]


def supported(points: np.ndarray, visible: np.ndarray, group: np.ndarray, radius: float, min_support: int) -> np.ndarray:
    """(len(group),) whether each trace has `min_support` others within `radius` (frame 0) moving alike.

    Alike: the RMS difference of their displacements from frame 0 (over frames both are visible)
    is at most 1 px + half the RMS displacement of the trace, loose enough for points of one
    rotating object, tight enough to separate an object from a point sliding on its own.
    """
    if min_support == 0 or group.size == 0:
        return np.ones(group.size, dtype=bool)
    start = points[0, group]
    displacement = points[:, group] - start[None]  # (T, M, 2)
    vis = visible[:, group]
    near = np.linalg.norm(start[:, None] - start[None], axis=-1) <= radius
    np.fill_diagonal(near, False)
    both = vis[:, :, None] & vis[:, None, :]  # (T, M, M)
    diff = np.linalg.norm(displacement[:, :, None] - displacement[:, None, :], axis=-1)
    frames = np.maximum(both.sum(axis=0), 1)
    rms_diff = np.sqrt(((diff**2) * both).sum(axis=0) / frames)
    own = np.sqrt(((np.linalg.norm(displacement, axis=-1) ** 2) * vis).sum(axis=0) / np.maximum(vis.sum(axis=0), 1))
    alike = near & (rms_diff <= 1.0 + 0.5 * own[:, None]) & (both.sum(axis=0) >= 2)
    return alike.sum(axis=1) >= min_support


def _features(points: np.ndarray, visible: np.ndarray, image_size: tuple[int, int], group: np.ndarray, with_motion: bool) -> np.ndarray:
    """Trace features for K-means: start position, plus displacements from the start for moving traces.

    Each block is scaled to unit RMS so position and motion weigh the same whatever the
    resolution; static traces cluster on position only (their displacements are tracker noise).
    """
    if group.size == 0:
        return np.zeros((0, 2))
    scale = float(max(image_size))
    start = points[0, group] / scale
    blocks = [start / (np.sqrt(((start - start.mean(axis=0)) ** 2).sum(axis=1).mean()) + 1e-9)]
    if with_motion:
        displacement = (points[1:, group] - points[0, group]).transpose(1, 0, 2).reshape(group.size, -1) / scale
        rms = np.sqrt(((displacement - displacement.mean(axis=0)) ** 2).sum(axis=1).mean())
        blocks.append(displacement / (rms + 1e-9))
    return np.concatenate(blocks, axis=1)


def choose_moving_count(features: np.ndarray, config: ToMConfig) -> int:
    """How many moving marks: k in [min, max] by silhouette (fewer if there are fewer traces).

    Silhouette alone favours small k when clusters hold few traces, merging separate objects;
    so the largest k scoring within 10 % of the best silhouette wins.
    """
    n = features.shape[0]
    if n <= config.min_moving_marks:
        return n
    scores = {}
    for k in range(config.min_moving_marks, min(config.max_moving_marks, n - 1) + 1):
        labels, _ = kmeans(features, k, config.seed)
        scores[k] = silhouette(features, labels)
    if not scores:
        return config.min_moving_marks
    best = max(scores.values())
    return max(k for k, score in scores.items() if score >= best - 0.1 * abs(best))


def representatives(features: np.ndarray, k: int, seed: int) -> list[int]:
    """Indices of the traces nearest each of k cluster centres, biggest cluster first."""
    labels, centres = kmeans(features, k, seed)
    chosen = []
    sizes = np.bincount(labels, minlength=k)
    for cluster in sorted(range(k), key=lambda c: (-sizes[c], c)):
        members = np.flatnonzero(labels == cluster)
        if members.size == 0:
            continue
        distances = np.linalg.norm(features[members] - centres[cluster], axis=1)
        chosen.append(int(members[np.argmin(distances)]))
    return chosen


def kmeans(features: np.ndarray, k: int, seed: int, n_init: int = 4, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic K-means (k-means++ seeding, best of n_init): (labels (N,), centres (k, D))."""
    n = features.shape[0]
    if not 1 <= k <= n:
        raise InvalidInputError(f"k-means needs 1 <= k <= number of points, got k={k}, n={n}")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(n_init):
        centres = _kmeans_pp(features, k, rng)
        for _ in range(iterations):
            distances = ((features[:, None, :] - centres[None]) ** 2).sum(axis=-1)
            labels = distances.argmin(axis=1)
            updated = np.array([features[labels == c].mean(axis=0) if np.any(labels == c) else centres[c] for c in range(k)])
            if np.allclose(updated, centres):
                break
            centres = updated
        distances = ((features[:, None, :] - centres[None]) ** 2).sum(axis=-1)
        labels = distances.argmin(axis=1)
        inertia = float(distances[np.arange(n), labels].sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, labels, centres)
    return best[1], best[2]


def _kmeans_pp(features: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [features[rng.integers(features.shape[0])]]
    for _ in range(1, k):
        d2 = np.min(((features[:, None, :] - np.array(centres)[None]) ** 2).sum(axis=-1), axis=1)
        total = d2.sum()
        pick = rng.choice(features.shape[0], p=d2 / total) if total > 0 else rng.integers(features.shape[0])
        centres.append(features[pick])
    return np.array(centres, dtype=np.float64)


def silhouette(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient (higher = better separated clusters); 0 for a single cluster."""
    clusters = np.unique(labels)
    if clusters.size < 2:
        return 0.0
    distances = np.linalg.norm(features[:, None, :] - features[None], axis=-1)
    scores = np.zeros(features.shape[0])
    for i in range(features.shape[0]):
        own = labels == labels[i]
        if own.sum() <= 1:
            continue  # a singleton scores 0 by convention
        a = distances[i, own].sum() / (own.sum() - 1)
        b = min(distances[i, labels == c].mean() for c in clusters if c != labels[i])
        scores[i] = (b - a) / max(a, b, 1e-12)
    return float(scores.mean())

"""Tracking benchmark on synthetic clips with known ground truth (TAP-Vid style metrics).

Each clip has a textured background seen by a panning (slightly rotating) camera, moving and
rotating textured objects and an occluder sweeping across. Query points are the s x s grid of
frame 0 that Trace-of-Mark extraction uses. Positions are scored on the frames after the query
frame where the ground truth says the point is visible; errors are measured after rescaling to
256 x 256 as TAP-Vid does (so the pixel thresholds mean the same at any size).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from magma_core.errors import InvalidInputError

DELTA_THRESHOLDS = (1, 2, 4, 8, 16)
TARGETS = {
    "median_error_moving_px": ("<=", 1.0),
    "delta_avg": (">=", 0.9),
    "fps": (">=", 300.0),
}


@dataclass
class TrackingBenchConfig:
    """Benchmark settings: clip size (pixels), grid side, future frames per clip, clip count, seed, tracker."""

    size: int = 256
    grid: int = 16
    frames: int = 16
    clips: int = 8
    seed: int = 0
    tracker: str = "lk"
    tracker_kwargs: dict = field(default_factory=dict)
    repeats: int = 5  # time each clip this many times and keep the fastest (shared machines are noisy)

    def validate(self) -> None:
        if self.size < 32:
            raise InvalidInputError(f"--size must be >= 32 pixels, got {self.size}")
        if self.grid < 1:
            raise InvalidInputError(f"--grid must be >= 1, got {self.grid}")
        if self.frames < 1:
            raise InvalidInputError(f"--frames (future frames) must be >= 1, got {self.frames}")
        if self.clips < 1:
            raise InvalidInputError(f"--clips must be >= 1, got {self.clips}")
        if self.repeats < 1:
            raise InvalidInputError(f"--repeats must be >= 1, got {self.repeats}")


def score_tracks(pred_points, pred_visible, gt_points, gt_visible, moving, image_size) -> dict:
    """Per-point-frame scores of one clip (frame 0 excluded): errors, within-threshold flags, occlusion flags.

    Returns arrays to pool across clips: error (visible GT), error_moving, within (thresholds x
    visible), occluded_flagged (GT-occluded), visible_kept (GT-visible), visibility_match (all).
    """
    width, height = image_size
    scale = np.array([256.0 / width, 256.0 / height])
    gt_vis = np.asarray(gt_visible, dtype=bool)[1:]
    pred_vis = np.asarray(pred_visible, dtype=bool)[1:]
    error = np.linalg.norm((np.asarray(pred_points)[1:] - np.asarray(gt_points)[1:]) * scale, axis=-1)
    moving_mask = gt_vis & np.asarray(moving, dtype=bool)[None, :]
    return {
        "error": error[gt_vis],
        "error_moving": error[moving_mask],
        "within": np.stack([error[gt_vis] < d for d in DELTA_THRESHOLDS]),
        "occluded_flagged": ~pred_vis[~gt_vis],
        "visible_kept": pred_vis[gt_vis],
        "visibility_match": (pred_vis == gt_vis).ravel(),
    }


def summarize(scores: list[dict]) -> dict:
    """Pool per-clip scores into the benchmark's figures."""
    pooled = {key: np.concatenate([s[key] for s in scores], axis=-1) for key in scores[0]}

    def stat(values: np.ndarray, fn) -> float | None:
        return float(fn(values)) if values.size else None

    within = pooled["within"]
    delta = {str(d): float(within[i].mean()) if within.shape[1] else None for i, d in enumerate(DELTA_THRESHOLDS)}
    return {
        "median_error_px": stat(pooled["error"], np.median),
        "mean_error_px": stat(pooled["error"], np.mean),
        "median_error_moving_px": stat(pooled["error_moving"], np.median),
        "mean_error_moving_px": stat(pooled["error_moving"], np.mean),
        "delta_avg": float(np.mean([v for v in delta.values() if v is not None])) if within.shape[1] else None,
        "delta_within": delta,
        "occluded_flagged_invisible": stat(pooled["occluded_flagged"].astype(float), np.mean),
        "visible_flagged_visible": stat(pooled["visible_kept"].astype(float), np.mean),
        "occlusion_accuracy": stat(pooled["visibility_match"].astype(float), np.mean),
        "n_visible_point_frames": int(pooled["error"].size),
        "n_moving_point_frames": int(pooled["error_moving"].size),
        "n_occluded_point_frames": int(pooled["occluded_flagged"].size),
    }


def check_targets(results: dict) -> dict:
    """{metric: {target, op, value, pass}} for the benchmark's targets."""
    out = {}
    for key, (op, target) in TARGETS.items():
        value = results.get(key)
        ok = value is not None and (value <= target if op == "<=" else value >= target)
        out[key] = {"op": op, "target": target, "value": value, "pass": bool(ok)}
    return out


def run_tracking_benchmark(config: TrackingBenchConfig, progress: bool = False) -> dict:
    """Track the grid through `config.clips` synthetic clips; return figures, targets and settings.

    Timing covers only the tracker's `track` call, with OpenCV limited to one thread; each clip is
    tracked `repeats` times and the fastest run counts (the tracker is deterministic, so the
    results are identical; the minimum filters out other processes' interference).
    """
    import cv2

    from magma_core.synthetic import make_clip
    from magma_core.tom.extract import grid_points
    from magma_core.tom.trackers import make_tracker

    config.validate()
    tracker = make_tracker(config.tracker, **config.tracker_kwargs)
    query = grid_points(config.size, config.size, config.grid)
    clips = range(config.clips)
    if progress:
        from tqdm import tqdm

        clips = tqdm(clips, desc="bench tracking", unit="clip", leave=False)

    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    scores, seconds, tracked_frames = [], 0.0, 0
    try:
        for index in clips:
            clip = make_clip("benchmark", seed=config.seed + index, size=config.size, frames=config.frames + 1)
            truth = clip.ground_truth(query)
            if index == 0:
                tracker.track(clip.frames[:2], query)  # warm-up: first calls pay OpenCV's lazy initialisation
            best = float("inf")
            for _ in range(config.repeats):
                start = time.perf_counter()
                result = tracker.track(clip.frames, query)
                best = min(best, time.perf_counter() - start)
            seconds += best
            tracked_frames += clip.n_frames - 1
            scores.append(score_tracks(result.points, result.visible, truth.points, truth.visible, truth.moving, clip.image_size))
    finally:
        cv2.setNumThreads(previous_threads)

    results = summarize(scores)
    results["fps"] = tracked_frames / seconds if seconds > 0 else None
    results["ms_per_frame"] = 1000.0 * seconds / tracked_frames if tracked_frames else None
    results["opencv_threads"] = 1
    results["targets"] = check_targets(results)
    results["config"] = {k: v for k, v in asdict(config).items()}
    results["n_points"] = int(query.shape[0])
    return results

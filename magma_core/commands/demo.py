"""`magma tom-demo`: Trace-of-Mark end to end on a generated clip, scored against its ground truth.

Generates a synthetic clip (panning camera, moving and rotating textured objects), writes it as
clip.mp4, reads it back and runs the same extraction as `magma tom extract` (so video compression
is part of the test), writes traces.json, overlay.png and overlay.mp4, and reports how far the
tracks are from the known motion.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from magma_core.errors import InvalidInputError

DEMO_FPS = 10.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tom-demo",
        help="generate a clip, extract Trace-of-Mark labels from it, and score them against ground truth",
        description="Synthetic clip (panning camera, moving objects) -> clip.mp4 -> Trace-of-Mark extraction "
        "-> traces.json, overlay.png, overlay.mp4, with tracking error against the known motion.",
    )
    parser.add_argument("--out", default="magma_demo", help="output folder (default magma_demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated clip (default 0)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magma_core.bench.tracking import score_tracks, summarize
    from magma_core.commands.tom import print_summary, summarize_extraction, write_outputs
    from magma_core.synthetic import SyntheticClipConfig, make_clip
    from magma_core.tom.clip import load_clip
    from magma_core.tom.extract import ToMConfig, extract_with_tracks

    started = time.perf_counter()
    out = Path(args.out)
    config = ToMConfig(seed=args.seed)
    clip = make_clip(SyntheticClipConfig(pan=(1.5, 0.75), n_objects=3, rotate=True, noise_std=1.0, frames=config.future_frames + 1, seed=args.seed))
    video = write_clip_video(clip.frames, out / "clip.mp4", DEMO_FPS)
    loaded = load_clip(video, max_frames=config.future_frames + 1)
    trace_set, query, tracks = extract_with_tracks(loaded.frames, config)
    source = {"path": str(video), "start": 0, "stride": 1, "fps": DEMO_FPS, "synthetic_seed": args.seed}
    paths = {"clip": str(video), **write_outputs(loaded.frames, trace_set, out, fps=DEMO_FPS, source=source)}

    truth = clip.ground_truth(query)
    scores = summarize([score_tracks(tracks.points, tracks.visible, truth.points, truth.visible, truth.moving, clip.image_size)])
    marks = score_marks(clip, trace_set)
    summary = summarize_extraction(trace_set, paths, time.perf_counter() - started)
    summary["tracking_error"] = {
        "median_px": scores["median_error_px"],
        "mean_px": scores["mean_error_px"],
        "median_moving_px": scores["median_error_moving_px"],
        "delta_avg": scores["delta_avg"],
        "mark_trace_median_px": marks["median_px"],
        "moving_marks_on_moving_objects": marks["moving_on_objects"],
    }
    err = summary["tracking_error"]
    extra = (
        f"tracking error vs ground truth: median {_px(err['median_px'])} (moving objects {_px(err['median_moving_px'])}), "
        f"mean {_px(err['mean_px'])}, delta_avg {err['delta_avg']:.3f}",
        f"mark traces vs ground truth: median {_px(err['mark_trace_median_px'])}; "
        f"{err['moving_marks_on_moving_objects']} of {summary['n_moving_marks']} moving marks lie on moving objects",
    )
    print_summary(summary, args.json, title=f"magma tom-demo (seed {args.seed}): synthetic clip, panning camera, {clip.config.n_objects} moving objects", extra_lines=extra)
    return 0


def _px(value) -> str:
    return "n/a" if value is None else f"{value:.2f} px"


def write_clip_video(frames: np.ndarray, path: Path, fps: float) -> Path:
    """Write RGB frames as an mp4 ('mp4v'); fall back to a folder of PNGs if no writer opens."""
    from magma_core.tom.draw import write_video

    height, width = frames.shape[1:3]
    return write_video(frames, path, fps, size=(width, height))


def score_marks(clip, trace_set) -> dict:
    """Median error of the mark traces (frame-0 coordinates) against the truth mapped the same way.

    Also counts the moving marks whose start point lies on a moving object.
    """
    if not trace_set.traces:
        return {"median_px": None, "moving_on_objects": 0}
    starts = np.array([t.points[0] for t in trace_set.traces])
    truth = clip.ground_truth(starts)
    to_frame0 = clip.frame_to_frame0() if trace_set.camera_moving else np.tile(np.eye(3), (clip.n_frames, 1, 1))
    count = min(clip.n_frames, trace_set.traces[0].length)
    if to_frame0.shape[0] < count:
        raise InvalidInputError("trace longer than the generated clip")
    errors = []
    for index, trace in enumerate(trace_set.traces):
        gt = truth.points[:count, index]
        mapped = np.einsum("tij,tj->ti", to_frame0[:count], np.c_[gt, np.ones(count)])
        mapped = mapped[:, :2] / mapped[:, 2:3]
        both = trace.visible[:count] & truth.visible[:count, index]
        errors.append(np.linalg.norm(trace.points[:count] - mapped, axis=1)[both])
    pooled = np.concatenate(errors) if errors else np.zeros(0)
    moving_on_objects = int(sum(1 for i, t in enumerate(trace_set.traces) if t.moving and truth.moving[i]))
    return {"median_px": float(np.median(pooled)) if pooled.size else None, "moving_on_objects": moving_on_objects}

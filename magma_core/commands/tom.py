"""`magma tom extract VIDEO`: Trace-of-Mark labels from a video file or a folder of frames.

Writes, into --out:
  traces.json   marks, traces (pixels and 256-grid cells), visibility, moving flags, image size,
                camera motion, and the trace text the model reads (Magma's format)
  overlay.png   the current frame with marks and traces drawn
  overlay.mp4   the clip with the traces drawn progressively (or a PNG folder if no mp4 writer opens)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from magma_core.errors import InvalidInputError
from magma_core.tom.types import TraceSet

JSON_FORMAT = "magma-tom-traces/1"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tom", help="Trace-of-Mark: extract traces from video")
    commands = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    extract = commands.add_parser(
        "extract",
        help="track a grid of points through a clip and choose moving and static marks",
        description="Trace-of-Mark labels from a video (mp4, avi, ...) or a folder of frames: "
        "grid points tracked over the next frames, camera motion removed, marks chosen by K-means.",
    )
    extract.add_argument("video", help="video file or folder of frames (sorted naturally)")
    extract.add_argument("--out", default=None, help="output folder (default: <video name>_tom)")
    add_extraction_arguments(extract)
    extract.add_argument("--start", type=int, default=0, help="index of the current frame in the video (default 0)")
    extract.add_argument("--stride", type=int, default=1, help="use every stride-th frame (default 1)")
    extract.add_argument("--no-video", action="store_true", help="skip overlay.mp4")
    extract.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    extract.set_defaults(func=run_extract)


def add_extraction_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `tom extract` and `demo`."""
    parser.add_argument("--grid", type=int, default=16, help="s: track an s x s grid of points (default 16)")
    parser.add_argument("--frames", type=int, default=16, help="l: future frames to track (default 16)")
    parser.add_argument("--tracker", choices=["lk", "cotracker"], default="lk", help="point tracker (default lk)")
    parser.add_argument("--cotracker-checkpoint", default=None, help="local CoTracker checkpoint (.pth or .safetensors)")
    parser.add_argument("--seed", type=int, default=0, help="K-means seed (default 0)")


def build_tracker(args: argparse.Namespace, config):
    """The tracker the options name; CoTracker fails here, before any video is read, if unavailable."""
    from magma_core.tom.trackers import make_tracker

    if args.tracker == "cotracker":
        return make_tracker("cotracker", checkpoint=args.cotracker_checkpoint)
    return make_tracker("lk", fb_threshold=config.fb_threshold)


def tom_config(args: argparse.Namespace):
    from magma_core.tom.extract import ToMConfig

    config = ToMConfig(grid_size=args.grid, future_frames=args.frames, seed=args.seed)
    config.validate()
    return config


def run_extract(args: argparse.Namespace) -> int:
    from magma_core.tom.clip import load_clip
    from magma_core.tom.extract import extract_traces

    started = time.perf_counter()
    config = tom_config(args)
    tracker = build_tracker(args, config)
    clip = load_clip(args.video, max_frames=config.future_frames + 1, start=args.start, stride=args.stride)
    trace_set = extract_traces(clip.frames, config, tracker)
    out = Path(args.out) if args.out else Path(f"{Path(args.video).name.split('.')[0] or 'clip'}_tom")
    source = {"path": str(args.video), "start": args.start, "stride": args.stride, "fps": clip.fps}
    paths = write_outputs(clip.frames[: trace_set.stats["n_frames"]], trace_set, out, fps=clip.fps or 10.0, source=source, video=not args.no_video)
    summary = summarize_extraction(trace_set, paths, time.perf_counter() - started)
    print_summary(summary, args.json, title=f"magma tom extract: {args.video}")
    return 0


def trace_set_to_dict(trace_set: TraceSet, source: dict | None = None) -> dict:
    """The JSON document of traces.json (see the module docstring)."""
    from magma_core.codecs.trace_text import encode_marks, encode_traces, grid_traces_from_traces
    from magma_core.grid import GRID_SIZE, pixels_to_grid

    width, height = trace_set.image_size
    marks, traces = [], []
    for trace in trace_set.traces:
        cells = pixels_to_grid(trace.points, width, height)
        marks.append({"id": trace.mark_id, "x": float(trace.points[0, 0]), "y": float(trace.points[0, 1]), "cell": cells[0].tolist(), "moving": trace.moving})
        traces.append(
            {
                "mark_id": trace.mark_id,
                "moving": trace.moving,
                "points": np.round(trace.points, 3).tolist(),
                "cells": cells.tolist(),
                "visible": trace.visible.tolist(),
            }
        )
    moving = trace_set.moving
    return {
        "format": JSON_FORMAT,
        "source": source or {},
        "image_size": [width, height],
        "grid": GRID_SIZE,
        "n_frames": int(trace_set.stats.get("n_frames", trace_set.traces[0].length if trace_set.traces else 0)),
        "coordinates": "pixels of the current frame (frame 0); camera motion removed when camera_moving",
        "camera_moving": trace_set.camera_moving,
        "homographies": None if trace_set.homographies is None else np.round(trace_set.homographies, 8).tolist(),
        "marks": marks,
        "traces": traces,
        # Magma's text: moving marks' traces (lost steps keep the tracker's predicted positions;
        # visibility is above), and every mark as a Set-of-Mark list.
        "trace_text": encode_traces(grid_traces_from_traces(moving, width, height)) if moving else None,
        "marks_text": encode_marks([(m["id"], tuple(m["cell"])) for m in marks]) if marks else None,
        "stats": _jsonable(trace_set.stats),
    }


def write_outputs(frames: np.ndarray, trace_set: TraceSet, out: Path, fps: float, source: dict | None = None, video: bool = True) -> dict:
    """Write traces.json, overlay.png and (if `video`) overlay.mp4 into `out`; return their paths."""
    from magma_core.imageio import save_image
    from magma_core.tom.draw import draw_traces, write_overlay_video

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create output folder {out}: {exc.strerror or exc}") from exc
    paths = {"traces": out / "traces.json", "overlay_png": out / "overlay.png"}
    paths["traces"].write_text(dump_readable(trace_set_to_dict(trace_set, source)))
    save_image(paths["overlay_png"], draw_traces(frames[0], trace_set))
    if video:
        paths["overlay_video"] = write_overlay_video(frames, trace_set, out / "overlay.mp4", fps=fps)
    return {key: str(path) for key, path in paths.items()}


def summarize_extraction(trace_set: TraceSet, paths: dict, seconds: float) -> dict:
    stats = trace_set.stats
    return {
        "n_moving_marks": len(trace_set.moving),
        "n_static_marks": len(trace_set.static),
        "camera_moving": trace_set.camera_moving,
        "n_frames": stats.get("n_frames"),
        "n_tracked": stats.get("n_tracked"),
        "n_dropped": stats.get("n_dropped"),
        "image_size": list(trace_set.image_size),
        "tracker": stats.get("tracker"),
        "extract_seconds": stats.get("seconds"),
        "seconds": seconds,
        "outputs": paths,
    }


def print_summary(summary: dict, as_json: bool, title: str, extra_lines: tuple[str, ...] = ()) -> None:
    if as_json:
        print(json.dumps(_jsonable(summary), indent=1))
        return
    width, height = summary["image_size"]
    lines = [
        title,
        f"  marks: {summary['n_moving_marks']} moving, {summary['n_static_marks']} static "
        f"({summary['n_tracked']} of {summary['n_tracked'] + summary['n_dropped']} grid points kept over {summary['n_frames']} frames, {width}x{height})",
        f"  camera motion: {'yes, removed by homography' if summary['camera_moving'] else 'no'}",
        f"  time: {summary['seconds']:.2f} s (extraction {summary['extract_seconds']:.3f} s, tracker {summary['tracker']})",
    ]
    lines += [f"  {line}" for line in extra_lines]
    lines += [f"  {name}: {path}" for name, path in summary["outputs"].items()]
    print("\n".join(lines))


def dump_readable(document: dict) -> str:
    """JSON with one top-level key per line and one list item (a mark, a trace) per line."""
    compact = {"separators": (",", ": ")}
    lines = []
    for key, value in _jsonable(document).items():
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            items = ",\n".join(f"  {json.dumps(item, **compact)}" for item in value)
            lines.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, **compact)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _jsonable(value):
    """Plain JSON types from numpy scalars/arrays, tuples and paths."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value

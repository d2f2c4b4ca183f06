"""`magma dataset info DIR`: what a LeRobot v3 dataset holds, and a contact sheet of its episodes."""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

SHEET_TILE_MIN = 256  # small sim frames are upscaled so the drawn traces stay legible


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info", help="summarize a LeRobot v3 dataset (episodes, frames, tasks, fps, features)",
        description="Print a summary of a LeRobot v3.0 dataset folder; --contact-sheet draws the first frame of "
        "each episode with its ground-truth Trace-of-Mark (when the dataset has one).")
    parser.add_argument("root", metavar="DIR", help="dataset folder")
    parser.add_argument("--contact-sheet", metavar="PNG", default=None, help="write a contact sheet of first frames")
    parser.add_argument("--sheet-episodes", type=int, default=16, help="episodes on the contact sheet (default 16)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magma_core.data.lerobot_v3 import LeRobotV3Dataset  # noqa: PLC0415 - pyarrow/av only for this command
    from magma_core.errors import InvalidInputError  # noqa: PLC0415

    if args.sheet_episodes < 1:
        raise InvalidInputError(f"--sheet-episodes must be >= 1, got {args.sheet_episodes}")
    dataset = LeRobotV3Dataset(args.root)
    summary = dataset_summary(dataset)
    if args.contact_sheet:
        summary["contact_sheet"] = str(write_contact_sheet(dataset, args.contact_sheet, args.sheet_episodes))
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def dataset_summary(dataset) -> dict:
    """Episodes, frames, fps, tasks, per-task episode counts, success rate, features and size of a dataset."""
    rows = [dataset.episode_info(i) for i in range(len(dataset))]
    task_names = Counter(str(r.get("task_name") or (r.get("tasks") or ["?"])[0]) for r in rows)
    outcomes = [r.get("success") for r in rows if r.get("success") is not None]
    lengths = [int(r["length"]) for r in rows]
    info = dataset.info
    magma = info.get("magma") or {}
    return {
        "root": str(dataset.root),
        "codebase_version": info.get("codebase_version"),
        "robot_type": info.get("robot_type"),
        "episodes": len(dataset),
        "frames": dataset.num_frames,
        "fps": dataset.fps,
        "episode_length": {"min": min(lengths), "mean": float(np.mean(lengths)), "max": max(lengths)} if lengths else None,
        "instructions": len(dataset.tasks),
        "tasks": dict(task_names),
        "success_rate": float(np.mean(outcomes)) if outcomes else None,
        "features": {name: {"dtype": f["dtype"], "shape": list(f["shape"])} for name, f in dataset.features.items()},
        "camera": magma.get("camera"),
        "bytes_on_disk": sum(p.stat().st_size for p in Path(dataset.root).rglob("*") if p.is_file()),
    }


def format_summary(s: dict) -> str:
    lines = [f"{s['root']}  (LeRobot {s['codebase_version']}, robot {s['robot_type']})",
             f"  episodes : {s['episodes']}   frames: {s['frames']}   fps: {s['fps']:g}   "
             f"size: {s['bytes_on_disk'] / 1e6:.2f} MB"]
    if s["episode_length"]:
        el = s["episode_length"]
        lines.append(f"  length   : {el['min']}..{el['max']} steps (mean {el['mean']:.1f})")
    lines.append(f"  tasks    : {', '.join(f'{t} ({n})' for t, n in s['tasks'].items())}; "
                 f"{s['instructions']} distinct instruction(s)")
    if s["success_rate"] is not None:
        lines.append(f"  success  : {100 * s['success_rate']:.1f}% of episodes")
    if s["camera"]:
        c = s["camera"]
        lines.append(f"  camera   : {c.get('name')} {c.get('width')}x{c.get('height')}, fx {c['intrinsics'][0][0]:.1f}")
    lines.append("  features :")
    lines += [f"    {name:<32} {f['dtype']:<8} {f['shape']}" for name, f in s["features"].items()]
    if s.get("contact_sheet"):
        lines.append(f"  contact sheet: {s['contact_sheet']}")
    return "\n".join(lines)


def first_frame_overlay(episode) -> np.ndarray:
    """An episode's first frame (upscaled when small) with its first ground-truth traces drawn, if any."""
    import cv2  # noqa: PLC0415

    from magma_core.tom.draw import draw_traces  # noqa: PLC0415
    from magma_core.tom.types import Trace  # noqa: PLC0415

    frame = episode.rgb[0]
    scale = max(1, int(np.ceil(SHEET_TILE_MIN / max(frame.shape[:2]))))
    if scale > 1:
        frame = cv2.resize(frame, (frame.shape[1] * scale, frame.shape[0] * scale), interpolation=cv2.INTER_LINEAR)
    if episode.gt_traces is None:
        return frame
    traces = []
    for m, steps in enumerate(np.asarray(episode.gt_traces[0], dtype=np.float64)):
        # Pixel centres sit at integer coordinates, so scaling maps x to (x + 0.5) * s - 0.5.
        points = (steps[:, :2] + 0.5) * scale - 0.5
        moving = bool(np.max(np.linalg.norm(points - points[0], axis=1)) > 1.0)
        traces.append(Trace(mark_id=m + 1, points=points, visible=np.ones(len(points), bool), moving=moving,
                            depth=steps[:, 2]))
    return draw_traces(frame, traces)


def write_contact_sheet(dataset, path: str, max_episodes: int = 16, cols: int = 4) -> Path:
    """A PNG of the first `max_episodes` episodes' first frames with their GT traces; returns its path."""
    from magma_core.imageio import save_image  # noqa: PLC0415
    from magma_core.tom.draw import contact_sheet  # noqa: PLC0415

    count = min(max_episodes, len(dataset))
    tiles, titles = [], []
    for i in range(count):
        episode = dataset.episode(i)
        tiles.append(first_frame_overlay(episode))
        outcome = "" if episode.success is None else (" ok" if episode.success else " fail")
        titles.append(f"{i} {episode.task}{outcome}")
    sheet = contact_sheet(tiles, cols=min(cols, count), titles=titles)
    return save_image(path, sheet)

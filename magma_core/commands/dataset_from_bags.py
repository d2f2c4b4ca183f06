"""`magma dataset from-bags BAGS... --out DIR`: recorded episodes -> a LeRobot v3 dataset (as `dataset generate`)."""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "from-bags", help="convert recorded episode bags (MCAP + episode.json) into a LeRobot v3 dataset",
        description="Each episode folder the recorder wrote (or a folder holding many) becomes one dataset episode: "
        "camera frames resampled to --fps, depth, camera_info, end-effector pose and joint states matched by "
        "nearest stamp within a tolerance (frames without a match are dropped and counted), 7-number actions from "
        "consecutive end-effector poses and the gripper command, and Trace-of-Mark labels (the gripper projected "
        "from proprioception, the other marks tracked in the video). Episodes that fail are reported and the rest "
        "are written; the exit status is then 1.")
    parser.add_argument("bags", nargs="+", metavar="BAGS", help="episode folders, or folders holding episode folders")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--fps", type=float, default=None, help="dataset frame rate (default: the first episode's camera rate)")
    parser.add_argument("--tolerance-ms", type=float, default=20.0,
                        help="how far depth and camera_info stamps may be from the image's (default 20)")
    parser.add_argument("--state-tolerance-ms", type=float, default=50.0,
                        help="how far end-effector pose and joint state stamps may be from the image's (default 50)")
    parser.add_argument("--only-success", action="store_true", help="keep only episodes whose outcome is success")
    parser.add_argument("--image-size", type=int, default=None,
                        help="resize so the longer image side has this many pixels (default: as recorded)")
    parser.add_argument("--traces", choices=("gripper", "tracked", "none"), default="gripper",
                        help="Trace-of-Mark labels: gripper from proprioception + tracked marks (default; needs "
                        "calibration), tracked marks only, or none")
    parser.add_argument("--n-future", type=int, default=16, help="future steps in each trace (default 16)")
    parser.add_argument("--tracked-marks", type=int, default=2, help="tracked marks per frame besides the gripper (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magma_core.data.from_bags import ConvertConfig, convert_bags  # noqa: PLC0415 - rosbags/pyarrow only here

    config = ConvertConfig(fps=args.fps, depth_tolerance_ms=args.tolerance_ms, state_tolerance_ms=args.state_tolerance_ms,
                           only_success=args.only_success, image_size=args.image_size, traces=args.traces,
                           n_future=args.n_future, tracked_marks=args.tracked_marks)
    summary = convert_bags(args.bags, args.out, config, overwrite=args.overwrite, progress=True)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        print(format_summary(summary))
    for failure in summary.failures:
        reason = failure.reason if failure.path in failure.reason else f"{failure.path}: {failure.reason}"
        print(f"magma dataset from-bags: error: {reason}", file=sys.stderr)
    return 1 if summary.failures else 0


def format_summary(summary) -> str:
    s = summary.to_dict()
    lines = [f"wrote {s['out']}",
             f"  episodes : {s['converted']} converted, {s['skipped']} skipped, {s['failed']} failed "
             f"(of {s['episodes_found']}); {s['frames']} frames at {s['fps']:g} fps",
             f"  camera   : {s['camera_frames']} images, {s['decimated']} between frames (decimated), "
             f"{s['gaps']} gap(s) without an image"]
    dropped = {reason: n for reason, n in s["dropped"].items() if n}
    lines.append("  dropped  : " + (", ".join(f"{n} without {reason}" for reason, n in dropped.items())
                                    if dropped else "none"))
    lines.append("  rates    : " + ", ".join(f"{name} {hz:.1f} Hz" for name, hz in s["stream_rates_hz"].items()))
    if s["recovered"]:
        lines.append(f"  recovered: {s['recovered']} bag(s) not closed cleanly, read up to the last complete chunk")
    for episode in summary.episodes:
        for warning in episode.warnings:
            lines.append(f"  warning  : {episode.episode_id or episode.path}: {warning}")
        if episode.status == "skipped":
            lines.append(f"  skipped  : {episode.episode_id or episode.path}: {episode.reason}")
    lines.append(f"  size     : {s['bytes_on_disk'] / 1e6:.2f} MB, {s['seconds']:.1f} s")
    return "\n".join(lines)

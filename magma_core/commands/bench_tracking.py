"""`magma bench tracking`: point-tracking accuracy and speed on synthetic clips with ground truth."""
from __future__ import annotations

import argparse
import json

from magma_core.bench.tracking import DELTA_THRESHOLDS, TrackingBenchConfig, run_tracking_benchmark


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tracking",
        help="tracker error, TAP-Vid delta_avg, occlusion flags and frames/s on synthetic clips",
        description="Track an s x s grid through synthetic clips (textured background, panning camera, moving and "
        "rotating objects, an occluder) and compare with the known ground truth. Speed is measured with OpenCV "
        "limited to one thread.",
    )
    parser.add_argument("--size", type=int, default=256, help="clip width and height in pixels (default 256)")
    parser.add_argument("--grid", type=int, default=16, help="s: an s x s grid of query points (default 16)")
    parser.add_argument("--frames", type=int, default=16, help="future frames tracked after the query frame (default 16)")
    parser.add_argument("--clips", type=int, default=8, help="number of synthetic clips (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first clip (default 0)")
    parser.add_argument("--repeats", type=int, default=5, help="time each clip this many times, keep the fastest (default 5)")
    parser.add_argument("--tracker", choices=["lk", "cotracker"], default="lk", help="tracker to measure (default lk)")
    parser.add_argument("--cotracker-checkpoint", default=None, help="local CoTracker checkpoint, for --tracker cotracker")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kwargs = {"checkpoint": args.cotracker_checkpoint} if args.tracker == "cotracker" else {}
    config = TrackingBenchConfig(
        size=args.size, grid=args.grid, frames=args.frames, clips=args.clips, seed=args.seed, tracker=args.tracker,
        tracker_kwargs=kwargs, repeats=args.repeats,
    )
    results = run_tracking_benchmark(config, progress=not args.json)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(format_report(results))
    return 0


def format_report(results: dict) -> str:
    """Human summary: figures, then each target with pass/fail."""
    cfg = results["config"]

    def px(value) -> str:
        return "n/a" if value is None else f"{value:.3f} px"

    def frac(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [
        f"bench tracking: tracker {cfg['tracker']}, {cfg['clips']} synthetic clips {cfg['size']}x{cfg['size']}, "
        f"{results['n_points']} points ({cfg['grid']}x{cfg['grid']} grid), 1 + {cfg['frames']} frames each",
        f"  error, all visible points:   median {px(results['median_error_px'])}, mean {px(results['mean_error_px'])}",
        f"  error, moving-object points: median {px(results['median_error_moving_px'])}, mean {px(results['mean_error_moving_px'])}",
        f"  delta_avg (TAP-Vid, errors at 256x256): {frac(results['delta_avg'])}   "
        + ", ".join(f"<{d}px {frac(results['delta_within'][str(d)])}" for d in DELTA_THRESHOLDS),
        f"  occluded points flagged invisible: {frac(results['occluded_flagged_invisible'])}; "
        f"visible points kept visible: {frac(results['visible_flagged_visible'])}; "
        f"occlusion accuracy (all): {frac(results['occlusion_accuracy'])}",
        f"  speed: {results['fps']:.0f} frames/s ({results['ms_per_frame']:.2f} ms/frame) on one core "
        f"(cv2.setNumThreads(1), fastest of {cfg['repeats']} runs per clip)",
        "  targets:",
    ]
    for name, target in results["targets"].items():
        value = target["value"]
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(f"    {name} {target['op']} {target['target']:g}: {shown}  {'PASS' if target['pass'] else 'FAIL'}")
    return "\n".join(lines)

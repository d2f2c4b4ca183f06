"""`magma dataset generate`: scripted-expert episodes written as a LeRobot v3 dataset."""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="roll scripted experts out in the PyBullet tabletop and write a LeRobot v3 dataset",
        description="Expert episodes on seeds S..S+N-1 of each task, with instruction, RGB + depth, proprioception, "
        "ee_delta actions, waypoints, ground-truth Trace-of-Mark and camera parameters. Only successful episodes "
        "are kept unless --keep-failures. The output is the same whatever --workers is.")
    parser.add_argument("--task", default="all", help="a task, a comma-separated list, or 'all' (default)")
    parser.add_argument("--episodes", type=int, required=True, help="episodes (seeds) per task")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--image-size", type=int, default=128, help="camera image side in pixels (default 128)")
    parser.add_argument("--n-future", type=int, default=16, help="future steps in each GT trace (default 16)")
    parser.add_argument("--control-hz", type=int, default=10, help="control (and dataset) rate; must divide 240")
    parser.add_argument("--max-steps", type=int, default=None, help="episode horizon in steps (default: the task's)")
    parser.add_argument("--workers", type=int, default=1, help="rollout worker processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    parser.add_argument("--keep-failures", action="store_true", help="also keep episodes the expert failed")
    parser.add_argument("--compare-tracker", type=int, default=0, metavar="K",
                        help="run the LK tracker on the first K episodes and report its error against the GT traces")
    parser.add_argument("--takeover", default=None, metavar="POLICY",
                        help="recovery data: POLICY (a checkpoint folder or 'heuristic') drives each episode first and "
                        "the expert takes over from wherever it left the arm; only the expert's part is recorded")
    parser.add_argument("--takeover-steps", default="5:60", metavar="LOW:HIGH",
                        help="with --takeover: the expert takes over at a step drawn per seed from LOW..HIGH "
                             "(default 5:60). Keep HIGH within the policy's usual episode length: an episode the "
                             "policy ends before the expert's turn records nothing (the embedded model finishes "
                             "pick_place in about 30 steps)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magma_sim.generate import GenerateConfig, generate_dataset  # noqa: PLC0415 - keeps `magma --help` light

    from magma_core.errors import InvalidInputError  # noqa: PLC0415

    try:
        low, high = (int(v) for v in str(args.takeover_steps).split(":"))
    except ValueError:
        raise InvalidInputError(f"--takeover-steps must read LOW:HIGH (e.g. 5:60), got {args.takeover_steps!r}") from None
    config = GenerateConfig(image_size=args.image_size, n_future=args.n_future, control_hz=args.control_hz,
                            max_steps=args.max_steps, keep_failures=args.keep_failures,
                            takeover_policy=args.takeover, takeover_steps=(low, high))
    summary = generate_dataset(args.out, args.task, args.episodes, args.seed_start, config=config,
                               workers=args.workers, overwrite=args.overwrite, compare_tracker=args.compare_tracker,
                               progress=True)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        print(format_summary(summary))
    return 0


def _px(value) -> str:
    return "n/a" if value is None else f"{value:.2f} px"


def format_summary(s) -> str:
    per_task = ", ".join(f"{t} {w}/{n}" for t, (w, n) in s.expert_successes.items())
    lines = [
        f"wrote {s.out}",
        f"  episodes  : {s.kept} kept of {s.attempted} rolled out ({s.frames} frames)",
        f"  expert    : {100 * s.expert_success_rate:.1f}% success ({per_task})",
        *([f"  takeover  : {s.finished_before_takeover} episode(s) ended before the expert's turn (nothing to record)"]
          if s.config.get("takeover_policy") else []),
        f"  size      : {s.bytes_on_disk / 1e6:.2f} MB on disk",
        f"  time      : {s.seconds:.1f} s ({s.episodes_per_minute:.1f} episodes/min at {s.config['image_size']} px)",
    ]
    c = s.tracker_comparison
    if c:
        if c["n_points"]:
            marks = ", ".join(f"{m} {_px(v)} ({_px(c['per_mark_median_moving_px'][m])} moving)"
                              for m, v in c["per_mark_median_px"].items())
            lines.append(f"  tracker   : LK vs GT traces on {c['episodes']} episode(s): median {c['median_px']:.2f} px, "
                         f"mean {c['mean_px']:.2f} px, delta_avg {c['delta_avg']:.3f}; median where the mark moved "
                         f"{_px(c['median_moving_px'])} (per mark: {marks})")
        else:
            lines.append("  tracker   : no mark was in view long enough to compare")
    return "\n".join(lines)

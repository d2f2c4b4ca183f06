"""`magma eval`: success rates of a policy on the tabletop tasks, with intervals, videos and a plot."""
from __future__ import annotations

import argparse
import json

# Evaluation seeds start far from the dataset generator's default (0), so a policy trained on a
# generated dataset is not evaluated on the scenes it was trained on unless asked to.
DEFAULT_EVAL_SEED_START = 10_000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="run a policy on simulated tasks: success rates with 95%% Wilson intervals",
        description="Run POLICY for N episodes per task on seeds S..S+N-1 in W worker processes. Results are "
        "identical for the same seeds whatever W is. POLICY is 'scripted' (the privileged expert), "
        "'random[:SEED]' or a checkpoint folder with policy.json naming its class.")
    parser.add_argument("--policy", required=True, help="'scripted', 'heuristic', 'random[:SEED]' or a checkpoint folder")
    parser.add_argument("--task", default="all", help="a task, a comma-separated list, or 'all' (default)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (default 10)")
    parser.add_argument("--seed-start", type=int, default=DEFAULT_EVAL_SEED_START,
                        help=f"first seed (default {DEFAULT_EVAL_SEED_START}, clear of generated datasets' seeds)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--image-size", type=int, default=128, help="camera image side in pixels (default 128)")
    parser.add_argument("--control-hz", type=int, default=10, help="control rate; must divide 240 (default 10)")
    parser.add_argument("--max-steps", type=int, default=None, help="episode horizon in steps (default: the task's)")
    parser.add_argument("--lookahead", type=int, default=1, help="trace mode: trace step used as the target (default 1)")
    parser.add_argument("--video", metavar="DIR", default=None,
                        help="write videos (with predicted traces), success.png and results.json to DIR")
    parser.add_argument("--video-episodes", type=int, default=3, help="videos per task with --video (default 3)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magma_sim.evaluate import EvalConfig, evaluate  # noqa: PLC0415 - keeps `magma --help` light

    config = EvalConfig(image_size=args.image_size, control_hz=args.control_hz, max_steps=args.max_steps,
                        video_dir=args.video, video_episodes=args.video_episodes, lookahead=args.lookahead)
    report = evaluate(args.policy, args.task, args.episodes, args.seed_start, workers=args.workers, config=config,
                      progress=True)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    print(format_report(report))
    return 0


def format_report(report) -> str:
    """The human summary: one row per task and overall."""
    seeds = sorted({e.seed for e in report.episodes})
    lines = [f"magma eval: policy {report.policy}, {len(report.tasks)} task(s) x {len(seeds)} episodes "
             f"(seeds {seeds[0]}..{seeds[-1]}), {report.workers} worker(s), {report.seconds:.1f} s",
             f"{'task':<14}{'n':>5}{'success':>10}{'95% interval':>18}{'mean length':>14}"]

    def row(name: str, b: dict) -> str:
        ci = f"[{100 * b['ci_low']:.1f}, {100 * b['ci_high']:.1f}]"
        return f"{name:<14}{b['n']:>5}{100 * b['rate']:>9.1f}%{ci:>18}{b['mean_length']:>14.1f}"

    lines += [row(task, block) for task, block in report.summary["tasks"].items()]
    lines.append(row("overall", report.summary["overall"]))
    invalid = report.summary["overall"]["invalid_steps"]
    if invalid:
        lines.append(f"warning: {invalid} step(s) had an unusable policy output; the arm held still there")
    if report.config.video_dir:
        lines.append(f"videos, success.png and results.json in {report.config.video_dir}")
    return "\n".join(lines)

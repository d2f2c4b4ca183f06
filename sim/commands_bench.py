"""`magma bench sim`: environment steps per second with and without rendering, and render time per frame."""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sim", help="PyBullet tabletop: steps/s with and without rendering, ms per frame")
    parser.add_argument("--task", default="pick_place", help="task to drive with its scripted expert")
    parser.add_argument("--steps", type=int, default=200, help="control steps per measurement (default 200)")
    parser.add_argument("--frames", type=int, default=20, help="frames per render-time measurement (default 20)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from magma_core.errors import InvalidInputError
    from magma_sim.bench import run_benchmark
    from magma_sim.tasks import check_task

    check_task(args.task)
    if args.steps <= 0 or args.frames <= 0:
        raise InvalidInputError(f"--steps and --frames must be positive, got {args.steps} and {args.frames}")
    with tqdm(total=2 * args.steps + 2 * args.frames, desc="bench sim", file=sys.stderr, leave=False) as bar:
        result = run_benchmark(args.task, args.steps, args.frames, progress=bar)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"PyBullet tabletop ({result['task']}, expert-driven, {result['control_hz']} Hz control, "
          f"{result['physics_hz']} Hz physics, {result['steps']} steps)")
    print(f"  steps/s without rendering : {result['steps_per_s_no_render']:8.1f}"
          f"  ({result['physics_steps_per_s_no_render']:.0f} physics steps/s)")
    print(f"  steps/s with 128 px images: {result['steps_per_s_render_128']:8.1f}")
    print(f"  render RGB+depth 128 px   : {result['render_ms_128']:8.1f} ms/frame")
    print(f"  render RGB+depth 256 px   : {result['render_ms_256']:8.1f} ms/frame")
    return 0

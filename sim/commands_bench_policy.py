"""`magma bench policy`: median and p95 latency of one Policy.infer step on simulated observations."""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("policy", help="latency of one Policy.infer step (median, p95) on simulated observations")
    parser.add_argument("--policy", default="heuristic",
                        help="'heuristic', 'random[:SEED]' or a checkpoint folder with policy.json (default heuristic)")
    parser.add_argument("--task", default="pick_place", help="task whose expert rollout supplies the observations")
    parser.add_argument("--steps", type=int, default=50, help="timed infer calls, one per observation (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed infer calls first (default 5)")
    parser.add_argument("--image-size", type=int, default=128, help="camera image width = height in pixels (default 128)")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (default 1: one CPU)")
    parser.add_argument("--seed", type=int, default=0, help="first episode's seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from magma_sim.bench_policy import run_policy_benchmark

    with tqdm(total=args.steps + args.warmup + args.steps, desc="bench policy", file=sys.stderr, leave=False) as bar:
        result = run_policy_benchmark(args.policy, task=args.task, steps=args.steps, warmup=args.warmup,
                                      image_size=args.image_size, threads=args.threads, seed=args.seed, progress=bar)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"Policy.infer latency: {result['policy']} ({result['policy_class']}), mode {result['mode']}")
    print(f"  {result['task']}, {result['image_size']} px, {result['steps']} steps over {result['episodes']} episode(s), "
          f"{result['warmup']} warm-up, {result['threads']} thread(s)")
    print(f"  median {result['median_ms']:8.1f} ms   p95 {result['p95_ms']:8.1f} ms")
    print(f"  mean   {result['mean_ms']:8.1f} ms   max {result['max_ms']:8.1f} ms   ({result['infers_per_s']:.1f} infers/s)")
    print(f"  outputs that parse: {100 * result['parse_fraction']:.0f}%"
          + (f" ({result['errors']} raised; first: {result['first_error']})" if result["errors"] else ""))
    if result["target"] is None:
        print("  target: none for this policy (the latency target applies to Magma checkpoints)")
    else:
        print(f"  target ({result['target']}): {'PASS' if result['passed'] else 'FAIL'}")
    return 0

"""`magma bench answers`: teacher-forced answer accuracy of a checkpoint, per objective and field."""
from __future__ import annotations

import argparse
import json

from magma_core.bench.answers import OBJECTIVES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "answers",
        help="teacher-forced accuracy of a checkpoint's answers (mark ids, positions, gripper) per objective",
        description="Feed examples of a training config with their true answers and count the tokens the checkpoint "
        "predicts right, grouped by what they say: mark numbers, a trace's first step, its later steps, gripper flags. "
        "Seconds instead of a closed-loop evaluation; examples come from a stream position training did not reach.",
    )
    parser.add_argument("--policy", required=True, metavar="CHECKPOINT", help="checkpoint folder")
    parser.add_argument("--config", default="configs/train_tiny.yaml", help="training config whose data and options to use")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES), help=f"comma-separated, of {', '.join(OBJECTIVES)}")
    parser.add_argument("--examples", type=int, default=32, help="examples per objective (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from magma_core.bench.answers import answer_accuracy, format_report

    torch.set_num_threads(max(1, args.threads))
    objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    report = answer_accuracy(args.policy, args.config, objectives, examples=args.examples, progress=not args.json)
    if args.json:
        print(json.dumps({"policy": args.policy, "config": args.config, "objectives": report}, indent=1))
    else:
        print(format_report(report))
    return 0

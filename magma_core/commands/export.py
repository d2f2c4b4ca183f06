"""`magma export`: a training checkpoint as a policy folder (no optimizer state), optionally half precision."""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    from magma_core.model.export import EXPORT_DTYPES

    parser = subparsers.add_parser(
        "export",
        help="write a checkpoint's policy files and weights (float16 by default) to a new folder",
        description="Copy what a policy needs from a `magma train` checkpoint (config, tokenizer, processor and policy "
        "files) and its weights cast to --dtype, leaving out the optimizer and trainer state. The folder loads with "
        "`magma eval --policy OUT` (float32 on a CPU) and `magma train --init-from OUT`.",
    )
    parser.add_argument("checkpoint", help="checkpoint folder (e.g. runs/magma-tiny/checkpoint)")
    parser.add_argument("out", help="new folder to write")
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="float16", help="weight precision (default float16)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magma_core.model.export import export_checkpoint

    summary = export_checkpoint(args.checkpoint, args.out, args.dtype)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {summary['destination']}: {summary['tensors']} tensors in {summary['dtype']} "
              f"({summary['weights_mb']} MB), {len(summary['files'])} files")
    return 0

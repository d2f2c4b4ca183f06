"""`magma train --config CONFIG.yaml [--resume]`: train a Magma model on a mixture of datasets and objectives.

Several GPUs: start the same command under torchrun, e.g.
``torchrun --nproc_per_node=4 -m magma_core.cli train --config CONFIG.yaml``; each process takes
its slice of every batch and only rank 0 prints and writes (docs/training_scale_out.md).
"""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train magma-tiny on LeRobot v3 datasets (grounding, trace, action objectives)",
        description="Train a Magma model from a YAML/JSON config (see configs/train_tiny.yaml). The checkpoint "
        "folder OUT/checkpoint is also a policy: `magma eval --policy OUT/checkpoint`. Progress on stderr; "
        "metrics in OUT/metrics.csv. Under torchrun the processes share each batch (DDP, or FSDP with "
        "distributed: {strategy: fsdp}); see docs/training_scale_out.md.")
    parser.add_argument("--config", required=True, metavar="CONFIG", help="training config (.yaml, .yml or .json)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in OUT/checkpoint")
    parser.add_argument("--out", default=None, help="override the config's output folder")
    parser.add_argument("--steps", type=int, default=None, help="override the number of optimizer steps")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override the batch size (the global micro-batch, split over torchrun's processes)")
    parser.add_argument("--lr", type=float, default=None, help="override the peak learning rate")
    parser.add_argument("--seed", type=int, default=None, help="override the seed")
    parser.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                        help="start from this checkpoint folder's weights (overrides the config's init_from)")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop (and save) after this step, keeping the learning-rate schedule of the whole run; "
                        "--resume continues it")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="override the device")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from magma_core.errors import InvalidInputError
    from magma_core.training.config import load_config
    from magma_core.training.distributed import session
    from magma_core.training.trainer import Trainer

    if args.threads is not None:
        if args.threads < 1:
            raise InvalidInputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.stop_at is not None and args.stop_at < 1:
        raise InvalidInputError(f"--stop-at must be a step >= 1, got {args.stop_at}")
    config = load_config(args.config, out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, device=args.device, init_from=args.init_from)
    # A single process (no torchrun) gets a context without any process group.
    with session(config.device) as context:
        trainer = Trainer(config, resume=args.resume, context=context)
        started = trainer.step
        result = trainer.train(until=args.stop_at)
    if not context.is_main:
        return 0
    summary = dict(result.to_dict(), started_at_step=started, out=config.out, processes=context.world_size)
    summary["losses"] = [round(x, 5) for x in result.losses]
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        first, last = summary["first_loss"], summary["last_loss"]
        loss = f"loss {first:.3f} -> {last:.3f}" if first is not None else "no steps run (already at the last step)"
        where = f" on {context.world_size} processes" if context.is_distributed else ""
        print(f"trained steps {started} -> {result.step} of {config.steps}{where} in {result.seconds:.1f} s "
              f"({result.examples_per_second:.1f} examples/s); {loss}")
        print(f"checkpoint: {result.checkpoint}  (policy: magma eval --policy {result.checkpoint})")
        print(f"metrics: {config.out}/metrics.csv")
    return 0

"""Training over several processes started by torchrun: process group, one device per rank, DDP or FSDP.

`torchrun --nproc_per_node=N -m magma_core.cli train --config CONFIG` starts N copies of the
command; each reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (`setup`). A
single process (no torchrun, or WORLD_SIZE=1) touches no process group and trains exactly as
before.

The batch convention: ``batch_size`` in the config is the GLOBAL micro-batch. Each rank takes a
disjoint, contiguous slice of it (`DistributedContext.shard`), so one optimizer step always sees
``batch_size * grad_accum`` examples, the same examples whatever the number of processes, and
the loss is weighted by answer tokens across ranks (`answer_token_count`) so that N processes
compute the gradient of one process over the same batch (up to float rounding). A run therefore
resumes exactly, on the same or a different number of GPUs. To keep the per-GPU batch when
adding GPUs, raise ``batch_size``.

Strategies: "ddp" keeps a full replica per rank and averages gradients; "fsdp" (PyTorch's
``torch.distributed.fsdp.fully_shard``) shards parameters, gradients and AdamW state, one unit
per Llama decoder layer and per ConvNeXt stage plus the root, with bf16 compute and float32
reduction on CUDA. Only rank 0 writes files; everyone meets at a barrier after each save.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from magma_core.errors import InvalidInputError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Rank 0 writes a whole 8B checkpoint (weights and AdamW moments) while the others wait at a
# barrier: that can take minutes, longer than the collectives' default timeout of 10 minutes.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)
# FSDP units: each of these modules is all-gathered on its own, so only one layer is whole at a time.
FSDP_UNIT_CLASSES = ("LlamaDecoderLayer", "ConvNextStage")


@dataclass
class DistributedContext:
    """Where this process stands: its rank among world_size processes and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # "nccl" or "gloo"; None in a single process
    owns_group: bool = False  # True when `setup` created the process group (and `close` destroys it)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, metrics and progress."""
        return self.rank == 0

    def shard(self, count: int) -> tuple[int, int]:
        """This rank's (offset, size) in a global batch of `count` examples: disjoint, contiguous slices."""
        if count % self.world_size:
            raise InvalidInputError(
                f"batch_size {count} is the global micro-batch and must split evenly over {self.world_size} processes; "
                f"use a multiple of {self.world_size}")
        size = count // self.world_size
        return self.rank * size, size

    def barrier(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_sum(self, value: float | int) -> float:
        """The sum of `value` over all ranks (the value itself in a single process)."""
        if not self.is_distributed:
            return value
        import torch.distributed as dist

        # float64 keeps integer token counts exact and float sums rank-order independent enough for logging.
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of a same-shaped tensor, on the CPU, ordered by rank."""
        if not self.is_distributed:
            return [tensor.detach().cpu()]
        import torch.distributed as dist

        local = tensor.detach().to(self._comm_device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return [p.cpu() for p in parts]

    def close(self) -> None:
        """Destroy the process group if `setup` created it (idempotent)."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    @property
    def _comm_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo moves CPU tensors.
        return self.device if self.backend == "nccl" else torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """The single-process device for a config's "auto", "cpu" or "cuda"."""
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device 'cuda' was asked for but torch sees no CUDA device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def torchrun_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's variables, or None outside torchrun or with one process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = env.get(name, "0" if name == "LOCAL_RANK" else None)
        if raw is None:
            raise InvalidInputError(f"WORLD_SIZE is set but {name} is not; start the processes with torchrun")
        try:
            values[name] = int(raw)
        except ValueError:
            raise InvalidInputError(f"environment variable {name} must be an integer, got {raw!r}") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InvalidInputError(f"inconsistent torchrun variables: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    if world == 1:
        return None
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:
        raise InvalidInputError(f"WORLD_SIZE={world} but {', '.join(missing)} unset; start the processes with torchrun")
    return rank, world, local


def setup(device: str = "auto", environ: Mapping[str, str] | None = None) -> DistributedContext:
    """The context of this process; under torchrun also the process group (NCCL on CUDA, gloo on the CPU).

    Reuses a process group that already exists (then `close` leaves it alone).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        env = os.environ if environ is None else environ
        local = int(env.get("LOCAL_RANK", rank))
        if world == 1:
            return DistributedContext(device=resolve_device(device))
        return DistributedContext(rank, world, local, _rank_device(device, local), dist.get_backend(), owns_group=False)
    found = torchrun_env(environ)
    if found is None:
        return DistributedContext(device=resolve_device(device))
    rank, world, local = found
    if not dist.is_available():
        raise InvalidInputError("this torch build has no torch.distributed; multi-process training is impossible")
    rank_device = _rank_device(device, local)
    backend = "nccl" if rank_device.type == "cuda" else "gloo"
    if rank_device.type == "cuda":
        torch.cuda.set_device(rank_device)
    dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT,
                            device_id=rank_device if backend == "nccl" else None)
    return DistributedContext(rank, world, local, rank_device, backend, owns_group=True)


@contextlib.contextmanager
def session(device: str = "auto", environ: Mapping[str, str] | None = None) -> Iterator[DistributedContext]:
    """`setup`, then tear the process group down when the block ends normally.

    After an error the group is left to the process's exit: destroying it while a peer still
    waits in a collective can block, and torchrun stops the other ranks anyway. Use one session
    per process: a session inside another reuses the outer group, but creating a second group
    after the first was destroyed can hang at rendezvous.
    """
    context = setup(device, environ)
    yield context
    context.barrier()
    context.close()


def _rank_device(device: str, local_rank: int) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidInputError(f"device must be auto, cpu or cuda, got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count == 0:
        raise InvalidInputError("device 'cuda' was asked for but torch sees no CUDA device")
    if local_rank >= count:
        raise InvalidInputError(f"LOCAL_RANK {local_rank} has no GPU: this node shows {count}; "
                                f"start at most {count} processes per node (--nproc_per_node)")
    return torch.device("cuda", local_rank)


# ---------------------------------------------------------------------- wrapping


def wrap_model(model: nn.Module, strategy: str, context: DistributedContext) -> nn.Module:
    """The module to train: `model` itself in a single process, else a DDP wrapper or the FSDP-sharded model."""
    if not context.is_distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [context.device.index] if context.device.type == "cuda" else None
        # ConvNeXt's depthwise kernels (C, 1, 7, 7) get gradients whose stride on the size-1 axis differs
        # from the bucket's; the layout is the same, so DDP's warning about it is noise.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        # Every parameter that trains takes part in every forward (the image features always
        # feed the decoder), so DDP need not search the graph for unused ones.
        return DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp":
        return shard_fsdp(model, context)
    raise InvalidInputError(f"unknown distributed strategy {strategy!r}; choose ddp or fsdp")


def shard_fsdp(model: nn.Module, context: DistributedContext) -> nn.Module:
    """Apply `fully_shard` to each decoder layer and ConvNeXt stage, then to the root (in place)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(context.device.type, (context.world_size,))
    if context.device.type == "cuda":
        # bf16 all-gathers and compute, float32 gradient reduction and float32 master weights.
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    units = [m for m in model.modules() if type(m).__name__ in FSDP_UNIT_CLASSES]
    if not units:
        raise InvalidInputError(f"FSDP found none of {FSDP_UNIT_CLASSES} in {type(model).__name__}")
    for module in units:
        fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose parameter names a checkpoint uses: DDP's inner module, else the module itself
    (FSDP shards in place and keeps the names)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce for all but the last micro-batch of an accumulated step."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if is_fsdp(model):
        model.set_requires_gradient_sync(enabled)
    yield


def answer_token_count(labels: torch.Tensor, ignore_index: int = -100) -> int:
    """Tokens the loss averages over: labels after the first position that are not ignored."""
    return int((labels[:, 1:] != ignore_index).sum())


# ---------------------------------------------------------------------- tensors across ranks


def full_tensor(value):
    """A DTensor (an FSDP shard) gathered whole on every rank (collective); any other value as it is."""
    return value.full_tensor() if _is_dtensor(value) else value


def _is_dtensor(value) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch build without torch.distributed: nothing can be sharded
        return False
    return isinstance(value, DTensor)


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`full` laid out like `param`: this rank's slice when param is an FSDP DTensor, else on param's device."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        # Every rank holds the full tensor, so each slices its own part: no communication.
        return distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    return full.to(param.device)


def full_state_dict(model: nn.Module, context: DistributedContext) -> dict[str, torch.Tensor]:
    """The whole model state as CPU tensors on rank 0 (an empty dict on the other ranks).

    FSDP gathers shard by shard (collective: call on every rank); otherwise the tensors are the
    module's own, unchanged.
    """
    module = unwrap(model)
    if is_fsdp(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return module.state_dict() if context.is_main else {}


def load_sharded_from_rank0(model: nn.Module, state: dict[str, torch.Tensor], context: DistributedContext) -> None:
    """Fill an FSDP-sharded model whose ranks > 0 were built on the meta device from rank 0's `state`.

    Rank 0 alone read the checkpoint, so N processes never hold N copies of an 8B model in host
    memory. Non-persistent buffers (rotary frequencies) are not in any state dict: they are
    broadcast from rank 0 as well.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not context.is_main:
        model.to_empty(device=context.device)
    set_model_state_dict(model, state if context.is_main else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for _, buffer in sorted(model.named_buffers()):
        staged = buffer.detach().to(context._comm_device)
        dist.broadcast(staged, src=0)
        buffer.data.copy_(staged.to(buffer.device))


def build_on_rank0(load: Callable[[], nn.Module], build_empty: Callable[[], nn.Module],
                   context: DistributedContext) -> nn.Module:
    """Rank 0 runs `load` (reads weights); the others `build_empty` under the meta device (no memory)."""
    if context.is_main:
        return load()
    with torch.device("meta"):
        return build_empty()


__all__ = [
    "DistributedContext", "setup", "session", "torchrun_env", "resolve_device", "wrap_model", "shard_fsdp",
    "unwrap", "is_fsdp", "gradient_sync", "answer_token_count", "full_tensor", "shard_like", "full_state_dict",
    "load_sharded_from_rank0", "build_on_rank0", "ENV_VARS", "FSDP_UNIT_CLASSES",
]

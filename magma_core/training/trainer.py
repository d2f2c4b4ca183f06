"""`Trainer`: AdamW with warm-up + cosine, gradient accumulation, bf16 autocast on CUDA, checkpoints that resume.

A checkpoint is a folder (``<out>/checkpoint``) that is at once a model, a processor and a policy
(`magma eval --policy <out>/checkpoint` loads it) plus the training state:

- ``config.json``, ``model.safetensors`` (and generation config): the weights, via save_pretrained;
- the tokenizer and ``processor_config.json``;
- ``policy.json`` and ``magma_policy.json``: what `MagmaPolicy.from_pretrained` needs;
- ``trainer_state.json``: step, examples seen, the run's config (plain JSON);
- ``optimizer.safetensors``: AdamW moments and step counts keyed by parameter name, and the torch
  RNG states, as tensors only: nothing is pickled, so resuming never unpickles a file.

The learning rate is a pure function of the step and the data stream a pure function of the
example index (see `mixture`), so a resumed run continues exactly where it stopped.

Scale-out (see docs/training_scale_out.md): under torchrun every process runs this same code on
its slice of each global batch (`distributed`), wrapped in DDP or sharded with FSDP; rank 0 alone
writes. ``init_from`` starts from a local checkpoint (e.g. Magma-8B). With ``lora`` the model is a
peft model over that base (`lora`): the checkpoint holds the adapter (``adapter_model.safetensors``)
and, with ``save: merged``, the merged model too; a resume reloads the base from init_from and the
adapter from the checkpoint.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import functools
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from magma_core.errors import InvalidInputError
from magma_core.training import distributed
from magma_core.training.config import TrainConfig
from magma_core.training.distill import distillation_loss
from magma_core.training.distributed import DistributedContext
from magma_core.training.lora import base_model
from magma_core.training.mixture import TrainingMixture

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
METRICS_FILE = "metrics.csv"
METRICS_COLUMNS = ("step", "loss", "lr", "grad_norm", "examples", "seconds")
EVAL_FILE = "eval.csv"
EVAL_COLUMNS = ("step", "task", "episodes", "successes", "success_rate", "wilson_low", "wilson_high", "seconds")
STATE_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up over warmup_steps, then a cosine from lr down to lr * min_lr_ratio at the last step."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    """What one `train` call did."""

    step: int  # optimizer steps done in total (including before a resume)
    losses: list[float] = field(default_factory=list)  # loss of each step this call ran
    checkpoint: str = ""
    seconds: float = 0.0
    examples_per_second: float = 0.0

    def to_dict(self) -> dict:
        return {"step": self.step, "losses": self.losses, "checkpoint": self.checkpoint, "seconds": self.seconds,
                "examples_per_second": self.examples_per_second,
                "first_loss": self.losses[0] if self.losses else None, "last_loss": self.losses[-1] if self.losses else None}


class Trainer:
    """Builds (or, with `resume`, reloads) the model, processor, mixture and optimizer for a TrainConfig.

    `context` is this process's place in a multi-process run (`distributed.session`); by default it
    is read from torchrun's environment, and a plain process trains alone. `model` is the module
    that trains (the model itself in a single process), `core` the same model without a DDP wrapper.
    """

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True,
                 context: DistributedContext | None = None, prefetch: bool | None = None) -> None:
        if not isinstance(config, TrainConfig):
            raise InvalidInputError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.context = context if context is not None else distributed.setup(config.device)
        self.is_main = self.context.is_main
        self.progress = progress and self.is_main
        self.out = Path(config.out)
        self.checkpoint_dir = self.out / CHECKPOINT_DIR
        self.device = self.context.device
        # Building a batch (decode, augment, draw, tokenize) is CPU work that a GPU would wait for: on CUDA
        # the next batch is built in a background thread while the current one trains. On a CPU both
        # would compete for the same cores, so it is off there unless asked for.
        self.prefetch = (self.device.type == "cuda") if prefetch is None else bool(prefetch)
        self.step = 0
        self.context.shard(config.batch_size)  # a global batch that cannot split over the ranks fails now
        torch.manual_seed(config.seed)
        if resume:
            if not (self.checkpoint_dir / STATE_FILE).is_file():
                raise InvalidInputError(f"nothing to resume: {self.checkpoint_dir / STATE_FILE} not found")
        elif (self.checkpoint_dir / STATE_FILE).exists():
            raise InvalidInputError(f"{self.checkpoint_dir} already holds a run; pass --resume to continue it or choose another --out")
        self._build_model(resume)
        # A teacher with weight 0 would only cost a forward pass per step: it is not loaded.
        self.teacher = self._load_teacher() if config.distill_from is not None and config.distill_weight > 0 else None
        self.mixture = TrainingMixture.from_config(config, self.processor.vocab_size)
        self.optimizer = _adamw(self.model, config)
        if resume:
            self._load_state(self.checkpoint_dir)

    # ------------------------------------------------------------------ building

    def _build_model(self, resume: bool) -> None:
        from magma_core.model import MagmaProcessor

        cfg = self.config
        if resume and cfg.lora is None:
            weights, dtype = self.checkpoint_dir, None  # the checkpoint's own dtype: float32 as written
        elif cfg.init_from is not None:
            weights = Path(cfg.init_from)
            dtype = _DTYPES[cfg.lora.base_dtype] if cfg.lora is not None else torch.float32
        else:
            weights = dtype = None
        pending: dict | None = None  # rank 0's state for ranks built empty (FSDP)
        if weights is None:
            model, self.processor = self._new_model()
        else:
            self.processor = MagmaProcessor.from_pretrained(self.checkpoint_dir if resume else weights)
            model, pending = self._load_model(weights, dtype)
            if cfg.init_text_layers is not None and not resume:
                from magma_core.model.text_layers import keep_text_layers

                if pending is not None:
                    raise InvalidInputError("init_text_layers is not supported under FSDP: make the student in one process first")
                model = keep_text_layers(model, cfg.init_text_layers)
            self.processor.check_model_config(model.config)
        if cfg.lora is not None:
            from magma_core.training import lora

            model = lora.apply_lora(model, cfg.lora, base_path=cfg.init_from)
            if resume and not _is_meta(model):
                lora.load_adapter_weights(model, self.checkpoint_dir)
            if pending is not None and self.is_main:
                pending = model.state_dict()
        if cfg.gradient_checkpointing:
            base_model(model).activation_checkpointing_enable({"use_reentrant": False})
        self.core = model
        self.model = distributed.wrap_model(model, cfg.distributed.strategy, self.context)
        if pending is not None:
            distributed.load_sharded_from_rank0(self.model, pending, self.context)

    def _load_teacher(self):
        """The frozen teacher of distill_from, checked to read exactly the prompts and images the student reads."""
        from magma_core.model import MagmaForConditionalGeneration, MagmaProcessor

        folder = Path(self.config.distill_from)
        teacher = MagmaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, device=self.device).eval()
        try:
            self.processor.check_model_config(teacher.config)
        except InvalidInputError as exc:
            raise InvalidInputError(f"teacher {folder} cannot read the student's inputs: {exc}") from exc
        theirs = MagmaProcessor.from_pretrained(folder)
        if theirs.tokenizer.get_vocab() != self.processor.tokenizer.get_vocab():
            raise InvalidInputError(f"teacher {folder} has another tokenizer: distillation compares the two models token by token")
        if theirs.format_prompt("probe") != self.processor.format_prompt("probe"):
            raise InvalidInputError(f"teacher {folder} wraps prompts differently (system prompt or style)")
        teacher.requires_grad_(False)
        return teacher

    def _new_model(self):
        from magma_core.model import MagmaConfig, MagmaForConditionalGeneration, MagmaProcessor

        overrides = dict(self.config.model_overrides)
        try:
            model_config = MagmaConfig.magma_tiny(**overrides)
        except TypeError as exc:
            raise InvalidInputError(f"bad model_overrides {overrides}: {exc}") from exc
        model = MagmaForConditionalGeneration(model_config).to(self.device)
        if self.config.number_embeddings:
            from magma_core.model.number_init import init_number_embeddings

            init_number_embeddings(model, _tiny_tokenizer())
        return model, MagmaProcessor.for_config(_tiny_tokenizer(), model_config)

    def _load_model(self, directory: Path, dtype: torch.dtype | None):
        """The model of a checkpoint folder and, for FSDP over several ranks, the state rank 0 read
        (the other ranks build it empty and receive their shards after sharding)."""
        from magma_core.model import MagmaForConditionalGeneration

        if not (self.context.is_distributed and self.config.distributed.strategy == "fsdp"):
            return MagmaForConditionalGeneration.from_pretrained(directory, dtype=dtype, device=self.device), None
        dtype = dtype or torch.float32  # every rank must build the same dtypes
        model = distributed.build_on_rank0(
            lambda: MagmaForConditionalGeneration.from_pretrained(directory, dtype=dtype, device="cpu"),
            lambda: MagmaForConditionalGeneration(_checkpoint_config(directory)).to(dtype),
            self.context)
        return model, (model.state_dict() if self.is_main else {})

    # ------------------------------------------------------------------ training

    def batch(self, step: int, micro: int) -> dict:
        """This rank's slice of micro-batch `micro` of optimizer step `step` (a pure function of the three;
        the whole micro-batch in a single process), on the training device."""
        return self._to_device(self.host_batch(step, micro))

    def _to_device(self, batch: dict) -> dict:
        if self.device.type == "cuda":
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return {k: v.to(self.device) for k, v in batch.items()}

    def host_batch(self, step: int, micro: int) -> dict:
        """`batch` before it moves to the device (CPU tensors)."""
        cfg = self.config
        first = (step * cfg.grad_accum + micro) * cfg.batch_size
        offset, count = self.context.shard(cfg.batch_size)
        examples = []
        for index in range(first + offset, first + offset + count):
            item = self.mixture.item(index)
            examples.append(self.processor.build_example(item.image, item.prompt, answer=item.answer, answer_ids=item.answer_ids))
        return self.processor.collate(examples, padding_side="right")

    def _micro_loss(self, batch: dict) -> torch.Tensor:
        """The loss to back-propagate for one micro-batch (already divided by grad_accum)."""
        if not self.context.is_distributed:
            with _autocast(self.device):
                return self._loss(batch) / self.config.grad_accum
        # Each rank's loss is a mean over its own answer tokens; weighting it by the rank's share of
        # the global tokens (times world_size, as the gradient all-reduce averages) makes the summed
        # gradient that of the mean over the whole micro-batch, as in a single process.
        local = distributed.answer_token_count(batch["labels"], base_model(self.core).config.ignore_index)
        total = self.context.all_reduce_sum(local)
        with _autocast(self.device):
            loss = self._loss(batch)
        return loss * (local * self.context.world_size / total) / self.config.grad_accum

    def _loss(self, batch: dict) -> torch.Tensor:
        """The data loss, mixed with the distillation loss when a teacher is set."""
        outputs = self.model(**batch)
        if self.teacher is None:
            return outputs.loss
        cfg = self.config
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs, use_cache=False).logits
        distilled = distillation_loss(outputs.logits, teacher_logits, batch["labels"],
                                      base_model(self.core).config.ignore_index, cfg.distill_temperature)
        return (1.0 - cfg.distill_weight) * outputs.loss + cfg.distill_weight * distilled

    def _gradient_sync(self, last_micro: bool):
        if not self.context.is_distributed:
            return contextlib.nullcontext()
        return distributed.gradient_sync(self.model, last_micro)

    def train(self, until: int | None = None) -> TrainResult:
        """Run optimizer steps up to `until` (default: config.steps), checkpointing every save_every and at the end."""
        cfg = self.config
        end = cfg.steps if until is None else min(int(until), cfg.steps)
        result = TrainResult(self.step)
        start_time = time.perf_counter()
        metrics = None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            metrics = _MetricsLog(self.out / METRICS_FILE)
        bar = _progress(self.step, end, self.progress)
        window: list[float] = []
        self.model.train()
        batches = _BatchStream(self, self.step, end)
        try:
            while self.step < end:
                lr = learning_rate(self.step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                total = 0.0
                for micro in range(cfg.grad_accum):
                    batch = batches.next(self.step, micro)
                    with self._gradient_sync(micro == cfg.grad_accum - 1):
                        loss = self._micro_loss(batch)
                        loss.backward()
                    total += float(loss.detach())
                if self.context.is_distributed:
                    total = self.context.all_reduce_sum(total) / self.context.world_size  # the global mean
                if not math.isfinite(total):
                    raise InvalidInputError(f"loss became {total} at step {self.step}; lower lr or check the data")
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                grad_norm = float(distributed.full_tensor(grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                result.losses.append(total)
                window.append(total)
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == end:
                    mean = sum(window) / len(window)
                    if metrics is not None:
                        metrics.write(self.step, mean, lr, grad_norm, self.step * cfg.batch_size * cfg.grad_accum,
                                      time.perf_counter() - start_time)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean:.3f}", lr=f"{lr:.2e}")
                    window = []
                if self.step % cfg.save_every == 0 or self.step == end:
                    self.save()
                    if cfg.eval_every and self.is_main and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                        rate = self.evaluate_in_sim(metrics)
                        if bar is not None:
                            bar.set_postfix(sim_success=f"{rate:.2f}", step=self.step)
        finally:
            batches.close()
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        result.step = self.step
        result.checkpoint = str(self.checkpoint_dir)
        result.seconds = time.perf_counter() - start_time
        done = len(result.losses) * cfg.batch_size * cfg.grad_accum
        result.examples_per_second = done / result.seconds if result.seconds > 0 else 0.0
        return result

    def evaluate_in_sim(self, metrics: "_MetricsLog | None") -> float:
        """Run the saved checkpoint in simulation (config.eval_*) and log the success rate; returns it."""
        from magma_sim.evaluate import evaluate  # noqa: PLC0415 - the sim extra, only when asked for

        cfg = self.config
        # The checkpoint is loaded afresh from disk: the model in training is left as it is.
        report = evaluate(str(self.checkpoint_dir), tasks=cfg.eval_task, episodes=cfg.eval_episodes,
                          seed_start=cfg.eval_seed_start, workers=1)
        block = report.summary["tasks"][cfg.eval_task]
        if metrics is not None:
            metrics.write_eval(self.step, cfg.eval_task, block, report.seconds)
        return float(block["rate"])

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        """Write the checkpoint folder (atomically replacing the previous one) and return its path.

        Every rank must call it (FSDP gathers the shards); rank 0 writes, then all meet at a barrier.
        """
        from safetensors.torch import save_file

        from magma_core.training.policy import write_policy_files

        sharded = self.context.is_distributed and distributed.is_fsdp(self.model)
        gathered = distributed.full_state_dict(self.model, self.context) if sharded else None
        optimizer_tensors = self._optimizer_tensors()
        if self.is_main:
            tmp = self.out / (CHECKPOINT_DIR + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            self._save_weights(tmp, gathered)
            self.processor.save_pretrained(tmp)
            stats = next((s.action_stats for s in self.mixture.sources if s.action_stats is not None), None)
            write_policy_files(tmp, self.config, stats, self.mixture.depth_binning)
            save_file(optimizer_tensors, str(tmp / OPTIMIZER_FILE))
            state = {"format_version": STATE_VERSION, "step": self.step, "config": self.config.to_dict(),
                     "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, default=_json_default) + "\n")
            old = self.out / (CHECKPOINT_DIR + ".old")
            if self.checkpoint_dir.exists():
                if old.exists():
                    shutil.rmtree(old)
                self.checkpoint_dir.rename(old)
            tmp.rename(self.checkpoint_dir)
            if old.exists():
                shutil.rmtree(old)
        self.context.barrier()
        return self.checkpoint_dir

    def _save_weights(self, directory: Path, gathered: dict | None) -> None:
        lora_spec = self.config.lora
        if lora_spec is not None:
            from magma_core.training import lora

            lora.save_adapter(self.core, directory, gathered)
            if lora_spec.save == "merged":
                lora.save_merged(self.core, directory, gathered)
        elif gathered is not None:
            self.core.save_pretrained(directory, state_dict=gathered)
        else:
            self.core.save_pretrained(directory)

    def _optimizer_tensors(self) -> dict[str, torch.Tensor]:
        """AdamW state keyed by parameter name, whole (FSDP shards gathered: every rank must call), and the
        RNG states; filled on rank 0 only."""
        tensors = {}
        for name, param in self.core.named_parameters():
            for key, value in self.optimizer.state.get(param, {}).items():
                value = torch.as_tensor(distributed.full_tensor(value))
                if self.is_main:
                    tensors[f"state/{name}/{key}"] = value.detach().to("cpu").contiguous()
        cuda = self.device.type == "cuda"
        if self.context.is_distributed:
            # Each rank's own generator state (dropout draws differ per rank), for an exact resume.
            for rank, rng in enumerate(self.context.all_gather(torch.get_rng_state())):
                tensors[f"rng/rank{rank}/cpu"] = rng
            if cuda:
                for rank, rng in enumerate(self.context.all_gather(torch.cuda.get_rng_state(self.device))):
                    tensors[f"rng/rank{rank}/cuda"] = rng
        tensors["rng/cpu"] = torch.get_rng_state()
        if cuda:
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        return tensors if self.is_main else {}

    def _load_state(self, directory: Path) -> None:
        from safetensors import SafetensorError, safe_open

        from magma_core.model.safe_loading import _refuse_pickle as refuse_pickle

        try:
            state = json.loads((directory / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"cannot read {directory / STATE_FILE}: {exc}") from exc
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise InvalidInputError(f"{directory / STATE_FILE} has no step")
        if state.get("format_version", STATE_VERSION) > STATE_VERSION:
            raise InvalidInputError(f"{directory / STATE_FILE} was written by a newer version")
        path = directory / OPTIMIZER_FILE
        if not path.is_file():
            raise InvalidInputError(f"cannot resume: {path} is missing")
        refuse_pickle(path)
        params = dict(self.core.named_parameters())
        # Read one tensor at a time (memory-mapped): an 8B run's moments need not sit in memory twice.
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except (SafetensorError, OSError) as exc:
            raise InvalidInputError(f"cannot read {path} as safetensors: {exc}") from exc
        with handle:
            keys = set(handle.keys())
            for key in sorted(keys):
                kind, _, rest = key.partition("/")
                if kind != "state":
                    continue
                name, _, field_name = rest.rpartition("/")
                if name not in params:
                    raise InvalidInputError(f"{OPTIMIZER_FILE} holds state for unknown parameter {name!r}")
                param = params[name]
                value = handle.get_tensor(key)
                value = value if field_name == "step" else distributed.shard_like(value.to(param.dtype), param)
                self.optimizer.state[param][field_name] = value
            own = f"rng/rank{self.context.rank}"
            cpu_key = f"{own}/cpu" if self.context.is_distributed and f"{own}/cpu" in keys else "rng/cpu"
            cuda_key = f"{own}/cuda" if self.context.is_distributed and f"{own}/cuda" in keys else "rng/cuda"
            if cpu_key in keys:
                torch.set_rng_state(handle.get_tensor(cpu_key))
            if cuda_key in keys and self.device.type == "cuda":
                torch.cuda.set_rng_state(handle.get_tensor(cuda_key), self.device)
        self.step = state["step"]


# The trainer that forked batch workers build for: inherited through fork, never pickled.
_FORKED_TRAINER: Trainer | None = None


def _init_batch_worker() -> None:
    import cv2  # noqa: PLC0415 - a core dependency, needed here only to limit its threads

    # Thread pools do not survive fork (a child that enters one can hang): each worker builds on one thread.
    torch.set_num_threads(1)
    cv2.setNumThreads(0)


def _forked_host_batch(step: int, micro: int) -> dict:
    return _FORKED_TRAINER.host_batch(step, micro)


class _BatchStream:
    """The batches of steps [start, end) in order. With the config's `batch_workers`, forked worker processes
    build up to two batches each ahead; else, with the trainer's `prefetch`, the next one is built in a
    background thread while the current one trains. Batches are pure functions of (step, micro), so the
    stream yields exactly what `Trainer.batch` would."""

    def __init__(self, trainer: Trainer, start: int, end: int) -> None:
        self._trainer = trainer
        self._keys = iter([(s, m) for s in range(start, end) for m in range(trainer.config.grad_accum)])
        self._ahead: collections.deque = collections.deque()  # (key, a call that waits for its host batch), in order
        self._submit = None  # key -> that call; None: batches are built when asked for
        self._close = None
        ahead = 1
        if trainer.config.batch_workers > 0:
            import multiprocessing  # noqa: PLC0415 - only for worker processes

            if "fork" not in multiprocessing.get_all_start_methods():
                raise InvalidInputError("batch_workers needs processes started by fork (Linux, macOS); set it to 0")
            global _FORKED_TRAINER
            _FORKED_TRAINER = trainer
            workers = multiprocessing.get_context("fork").Pool(trainer.config.batch_workers,
                                                               initializer=_init_batch_worker)
            self._submit = lambda key: workers.apply_async(_forked_host_batch, key).get
            self._close = lambda: (workers.terminate(), workers.join())
            ahead = 2 * trainer.config.batch_workers
        elif trainer.prefetch:
            from concurrent.futures import ThreadPoolExecutor

            thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="magma-batches")
            self._submit = lambda key: thread.submit(trainer.host_batch, *key).result
            self._close = lambda: thread.shutdown(wait=True, cancel_futures=True)
        if self._submit is not None:
            for _ in range(ahead):
                self._submit_next()

    def _submit_next(self) -> None:
        key = next(self._keys, None)
        if key is not None:
            self._ahead.append((key, self._submit(key)))

    def next(self, step: int, micro: int) -> dict:
        if self._submit is None:
            return self._trainer.batch(step, micro)
        key, wait = self._ahead.popleft() if self._ahead else (None, None)
        if key != (step, micro):
            raise RuntimeError(f"batch stream out of order: asked for {(step, micro)}")
        batch = wait()
        self._submit_next()
        return self._trainer._to_device(batch)

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None
        self._ahead.clear()


class _MetricsLog:
    """metrics.csv (appended on resume) and, when the package is installed, TensorBoard scalars."""

    def __init__(self, path: Path) -> None:
        new = not path.exists()
        self.file = path.open("a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(METRICS_COLUMNS)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: only with the tensorboard package

            self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # ImportError, or tensorboard present but broken: the CSV is enough
            self.tensorboard = None

    def write(self, step: int, loss: float, lr: float, grad_norm: float, examples: int, seconds: float) -> None:
        self.csv.writerow([step, f"{loss:.6f}", f"{lr:.6g}", f"{grad_norm:.4f}", examples, f"{seconds:.2f}"])
        self.file.flush()
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("train/loss", loss, step)
            self.tensorboard.add_scalar("train/lr", lr, step)

    def write_eval(self, step: int, task: str, block: dict, seconds: float) -> None:
        """One row of eval.csv (beside metrics.csv) and the TensorBoard scalar eval/<task>/success_rate."""
        path = Path(self.file.name).parent / EVAL_FILE
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(EVAL_COLUMNS)
            writer.writerow([step, task, block["n"], block["successes"], f"{block['rate']:.4f}",
                             f"{block['ci_low']:.4f}", f"{block['ci_high']:.4f}", f"{seconds:.1f}"])
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(f"eval/{task}/success_rate", block["rate"], step)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(out: str | Path) -> list[dict]:
    """Rows of a run's metrics.csv as dicts of floats (step and examples as ints)."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        raise InvalidInputError(f"no metrics at {path}")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return [{k: (int(v) if k in ("step", "examples") else float(v)) for k, v in row.items()} for row in rows]


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer():
    # Deterministic (fixed corpus and seed) and never mutated here: one per process is enough.
    from magma_core.model import train_tiny_tokenizer

    return train_tiny_tokenizer()


def _checkpoint_config(directory: Path):
    """The MagmaConfig a checkpoint folder describes (this project's or an official Magma-8B copy)."""
    from magma_core.model import MagmaConfig
    from magma_core.model.checkpoint_mapping import is_official_config, official_config_to_magma
    from magma_core.model.safe_loading import CheckpointError, read_config

    raw = read_config(directory)
    if is_official_config(raw):
        return official_config_to_magma(raw)
    if raw.get("model_type") != "magma":
        raise CheckpointError(f"{directory} has model_type {raw.get('model_type')!r}, expected 'magma'")
    return MagmaConfig.from_dict(raw)


def _is_meta(model) -> bool:
    return any(p.is_meta for p in model.parameters())


def _adamw(model, config: TrainConfig) -> torch.optim.AdamW:
    # Norm scales, biases and the row separator are vectors: decaying them only fights the loss.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def _device(name: str) -> torch.device:
    return distributed.resolve_device(name)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _progress(start: int, end: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=end, initial=start, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)


def _json_default(value):
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-able")


__all__ = ["Trainer", "TrainResult", "learning_rate", "read_metrics", "CHECKPOINT_DIR"]

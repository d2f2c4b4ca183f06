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
"""
from __future__ import annotations

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
from magma_core.training.config import TrainConfig
from magma_core.training.mixture import TrainingMixture

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
METRICS_FILE = "metrics.csv"
METRICS_COLUMNS = ("step", "loss", "lr", "grad_norm", "examples", "seconds")
STATE_VERSION = 1


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
    """Builds (or, with `resume`, reloads) the model, processor, mixture and optimizer for a TrainConfig."""

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True) -> None:
        if not isinstance(config, TrainConfig):
            raise InvalidInputError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.progress = progress
        self.out = Path(config.out)
        self.checkpoint_dir = self.out / CHECKPOINT_DIR
        self.device = _device(config.device)
        self.step = 0
        torch.manual_seed(config.seed)
        if resume:
            self._load_model(self.checkpoint_dir)
        else:
            if (self.checkpoint_dir / STATE_FILE).exists():
                raise InvalidInputError(f"{self.checkpoint_dir} already holds a run; pass --resume to continue it or choose another --out")
            self._new_model()
        self.mixture = TrainingMixture.from_config(config, self.processor.vocab_size)
        self.optimizer = _adamw(self.model, config)
        if resume:
            self._load_state(self.checkpoint_dir)

    # ------------------------------------------------------------------ building

    def _new_model(self) -> None:
        from magma_core.model import MagmaConfig, MagmaForConditionalGeneration, MagmaProcessor

        overrides = dict(self.config.model_overrides)
        try:
            model_config = MagmaConfig.magma_tiny(**overrides)
        except TypeError as exc:
            raise InvalidInputError(f"bad model_overrides {overrides}: {exc}") from exc
        self.model = MagmaForConditionalGeneration(model_config).to(self.device)
        self.processor = MagmaProcessor.for_config(_tiny_tokenizer(), model_config)

    def _load_model(self, directory: Path) -> None:
        from magma_core.model import MagmaForConditionalGeneration, MagmaProcessor

        if not (directory / STATE_FILE).is_file():
            raise InvalidInputError(f"nothing to resume: {directory / STATE_FILE} not found")
        self.model = MagmaForConditionalGeneration.from_pretrained(directory, device=self.device)
        self.processor = MagmaProcessor.from_pretrained(directory)
        self.processor.check_model_config(self.model.config)

    # ------------------------------------------------------------------ training

    def batch(self, step: int, micro: int) -> dict:
        """The tensors of micro-batch `micro` of optimizer step `step` (a pure function of the two)."""
        cfg = self.config
        first = (step * cfg.grad_accum + micro) * cfg.batch_size
        examples = []
        for index in range(first, first + cfg.batch_size):
            item = self.mixture.item(index)
            examples.append(self.processor.build_example(item.image, item.prompt, answer=item.answer, answer_ids=item.answer_ids))
        batch = self.processor.collate(examples, padding_side="right")
        return {k: v.to(self.device) for k, v in batch.items()}

    def train(self, until: int | None = None) -> TrainResult:
        """Run optimizer steps up to `until` (default: config.steps), checkpointing every save_every and at the end."""
        cfg = self.config
        end = cfg.steps if until is None else min(int(until), cfg.steps)
        result = TrainResult(self.step)
        start_time = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = _MetricsLog(self.out / METRICS_FILE)
        bar = _progress(self.step, end, self.progress)
        window: list[float] = []
        self.model.train()
        try:
            while self.step < end:
                lr = learning_rate(self.step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                total = 0.0
                for micro in range(cfg.grad_accum):
                    batch = self.batch(self.step, micro)
                    with _autocast(self.device):
                        loss = self.model(**batch).loss / cfg.grad_accum
                    loss.backward()
                    total += float(loss.detach())
                if not math.isfinite(total):
                    raise InvalidInputError(f"loss became {total} at step {self.step}; lower lr or check the data")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                result.losses.append(total)
                window.append(total)
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == end:
                    mean = sum(window) / len(window)
                    metrics.write(self.step, mean, lr, grad_norm, self.step * cfg.batch_size * cfg.grad_accum, time.perf_counter() - start_time)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean:.3f}", lr=f"{lr:.2e}")
                    window = []
                if self.step % cfg.save_every == 0 or self.step == end:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            metrics.close()
        result.step = self.step
        result.checkpoint = str(self.checkpoint_dir)
        result.seconds = time.perf_counter() - start_time
        done = len(result.losses) * cfg.batch_size * cfg.grad_accum
        result.examples_per_second = done / result.seconds if result.seconds > 0 else 0.0
        return result

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        """Write the checkpoint folder (atomically replacing the previous one) and return its path."""
        from safetensors.torch import save_file

        from magma_core.training.policy import write_policy_files

        tmp = self.out / (CHECKPOINT_DIR + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.model.save_pretrained(tmp)
        self.processor.save_pretrained(tmp)
        stats = next((s.action_stats for s in self.mixture.sources if s.action_stats is not None), None)
        write_policy_files(tmp, self.config, stats, self.mixture.depth_binning)
        save_file(self._optimizer_tensors(), str(tmp / OPTIMIZER_FILE))
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
        return self.checkpoint_dir

    def _optimizer_tensors(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        tensors = {}
        for param, state in self.optimizer.state.items():
            for key, value in state.items():
                tensors[f"state/{names[id(param)]}/{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
        tensors["rng/cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        return tensors

    def _load_state(self, directory: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from magma_core.model.safe_loading import _refuse_pickle as refuse_pickle

        try:
            state = json.loads((directory / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"cannot read {directory / STATE_FILE}: {exc}") from exc
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise InvalidInputError(f"{directory / STATE_FILE} has no step")
        if state.get("format_version", STATE_VERSION) > STATE_VERSION:
            raise InvalidInputError(f"{directory / STATE_FILE} was written by a newer version")
        if not (directory / OPTIMIZER_FILE).is_file():
            raise InvalidInputError(f"cannot resume: {directory / OPTIMIZER_FILE} is missing")
        refuse_pickle(directory / OPTIMIZER_FILE)
        try:
            tensors = load_file(str(directory / OPTIMIZER_FILE))
        except (SafetensorError, OSError) as exc:
            raise InvalidInputError(f"cannot read {directory / OPTIMIZER_FILE} as safetensors: {exc}") from exc
        params = dict(self.model.named_parameters())
        for key, value in tensors.items():
            kind, _, rest = key.partition("/")
            if kind != "state":
                continue
            name, _, field_name = rest.rpartition("/")
            if name not in params:
                raise InvalidInputError(f"{OPTIMIZER_FILE} holds state for unknown parameter {name!r}")
            param = params[name]
            value = value if field_name == "step" else value.to(param.device, param.dtype)
            self.optimizer.state[param][field_name] = value
        if "rng/cpu" in tensors:
            torch.set_rng_state(tensors["rng/cpu"])
        if "rng/cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.device)
        self.step = state["step"]


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


def _adamw(model, config: TrainConfig) -> torch.optim.AdamW:
    # Norm scales, biases and the row separator are vectors: decaying them only fights the loss.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device 'cuda' was asked for but torch sees no CUDA device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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

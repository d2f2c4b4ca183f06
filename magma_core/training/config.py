"""`TrainConfig`: everything a training run needs, read from YAML or JSON and checked before any work starts."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magma_core.errors import InvalidInputError

OBJECTIVES = ("grounding", "trace", "action", "locate", "refer", "goal")  # locate, refer, goal: proposed marks only
MODEL_PRESETS = ("magma_tiny", "magma_8b")  # magma_8b only starts from a local checkpoint (init_from)
STRATEGIES = ("ddp", "fsdp")
# The decoder's projections LoRA may adapt (Llama names); the vision tower is trained fully or not at all.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_SAVES = ("merged", "adapter")
WEIGHT_DTYPES = ("float32", "bfloat16")


TRACE_ORDERS = ("gripper_first", "target_first")


@dataclass(frozen=True)
class DatasetSpec:
    """One LeRobot v3 dataset folder and its share of the mixture."""

    path: str
    weight: float = 1.0
    stride: int = 1  # use every stride-th frame


@dataclass(frozen=True)
class DistributedSpec:
    """How a run started by torchrun spreads over its processes; a single process ignores it.

    strategy: "ddp" keeps the whole model on every rank and averages gradients; "fsdp" shards
    parameters, gradients and optimizer state (one unit per Llama decoder layer and ConvNeXt stage).
    """

    strategy: str = "ddp"


@dataclass(frozen=True)
class LoraSpec:
    """LoRA on the decoder's projections (via peft); the base weights stay frozen.

    r, alpha, dropout: the adapters' rank, scale numerator (scale = alpha / r) and input dropout.
    target_modules:    which of LORA_TARGETS get adapters, in every decoder layer.
    train_vision:      also train the vision tower and projector fully (float32); false freezes them.
    base_dtype:        dtype of the frozen weights: "bfloat16" halves their memory (adapters stay float32).
    save:              "merged": the checkpoint holds the merged model (a ready policy) and the adapter;
                       "adapter": the adapter only (small), to be loaded onto init_from.
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = LORA_TARGETS
    train_vision: bool = False
    base_dtype: str = "float32"
    save: str = "merged"


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Steps count optimizer updates; each update sees batch_size * grad_accum examples."""

    datasets: tuple[DatasetSpec, ...]
    out: str = "runs/magma-tiny"
    objectives: dict = field(default_factory=lambda: {"grounding": 0.2, "trace": 0.6, "action": 0.2})
    model: str = "magma_tiny"
    model_overrides: dict = field(default_factory=dict)  # MagmaConfig.magma_tiny(text=..., vision=..., **rest)
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 200
    log_every: int = 10
    trace_steps: int = 4  # future positions per trace in the answer
    trace_stride: int = 4  # recorded steps between two trace positions
    object_id_range: int = 6  # object/place marks get random ids in 2..object_id_range+1 (the gripper is 1)
    color_jitter: float = 0.1  # max relative brightness/contrast/channel gain change
    max_shift_px: int = 4  # max image shift (pixels), applied to the trace pixels too
    device: str = "auto"  # "auto", "cpu" or "cuda"
    # Worker processes that build batches ahead of the optimizer (forked: Linux and macOS). 0: the training process
    # builds them (in a background thread on CUDA). Each batch is a pure function of its step, so the run is the same
    # either way; on a GPU one thread cannot keep up with a small model (session 11: 4 workers, 3x the steps/s).
    batch_workers: int = 0
    mode: str = "trace"  # what the saved policy answers with: "trace" or "action"
    # "proposed": grounding/trace samples use run-time mark proposals (RGB-D + proprioception) where a frame has
    # them, as the policy does at run time; "ground_truth": marks at the ground-truth trace starts only.
    marks: str = "ground_truth"
    inference_marks: int = 1  # traces the saved policy writes at run time (the gripper's first; 1 = gripper only)
    # Order of the traces in a trace answer: "gripper_first" (the gripper, then the object) or "target_first"
    # (the mark the gripper heads for, the object before the grasp and the place while holding it, then the
    # gripper): the model names and copies its goal before it plans the hand's path to it.
    trace_order: str = "gripper_first"
    # Goal-first trace answers open with "Goal: <the goal mark's listed description>" (prompts.goal_header); at run
    # time the policy ranks the listed descriptions by the model's likelihood and the best one fixes the goal mark.
    goal_header: bool = False
    # A local checkpoint folder to start from (this project's, or a copy of microsoft/Magma-8B); then `model`
    # and model_overrides build nothing: the checkpoint's own config decides the shapes.
    init_from: str | None = None
    # With init_from: keep only these text decoder layers (indices into its layers, in order), e.g. [0, 3] makes a
    # shallower student that decodes about twice as fast; training then teaches the kept layers to do the work.
    init_text_layers: tuple[int, ...] | None = None
    # Knowledge distillation: a teacher checkpoint folder (same tokenizer and image size). The loss becomes
    # (1 - distill_weight) * data loss + distill_weight * KL(teacher || student) on the answer tokens
    # (training/distill.py), the teacher's logits taken at distill_temperature.
    distill_from: str | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 1.0
    distributed: DistributedSpec = field(default_factory=DistributedSpec)  # used only under torchrun
    lora: LoraSpec | None = None  # None: train every weight
    # A new model starts its number tokens (0..255) as Fourier features of their value (model/number_init.py).
    number_embeddings: bool = False
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    # Depth bins of 2.5D traces and described marks: DepthBinning fields (near, far metres; n_bins; spacing).
    depth_binning: dict = field(default_factory=dict)
    # Periodic evaluation in simulation (needs the sim extra): every eval_every steps (a multiple of save_every;
    # 0: never) the saved checkpoint runs eval_episodes episodes of eval_task on held-out seeds from eval_seed_start;
    # results go to eval.csv, TensorBoard and the progress bar.
    eval_every: int = 0
    eval_episodes: int = 3
    eval_task: str = "pick_place"
    eval_seed_start: int = 10_000

    def __post_init__(self) -> None:
        specs = self.datasets
        if isinstance(specs, (str, dict, DatasetSpec)) or not specs:
            raise InvalidInputError("config 'datasets' must be a non-empty list of {path, weight} entries")
        object.__setattr__(self, "datasets", tuple(_dataset_spec(s, i) for i, s in enumerate(specs)))
        if not isinstance(self.objectives, dict) or not self.objectives:
            raise InvalidInputError(f"config 'objectives' must map some of {OBJECTIVES} to weights")
        unknown = set(self.objectives) - set(OBJECTIVES)
        if unknown:
            raise InvalidInputError(f"unknown objective(s) {sorted(unknown)}; choose from {OBJECTIVES}")
        for name, weight in self.objectives.items():
            _check_number(f"objectives.{name}", weight, minimum=0.0)
        if sum(float(w) for w in self.objectives.values()) <= 0:
            raise InvalidInputError("objective weights must not all be zero")
        if self.model not in MODEL_PRESETS:
            raise InvalidInputError(f"model must be one of {MODEL_PRESETS}, got {self.model!r}")
        if not isinstance(self.model_overrides, dict):
            raise InvalidInputError("model_overrides must be a mapping")
        self._check_scale_out()
        for name in ("steps", "batch_size", "grad_accum", "save_every", "log_every", "trace_steps", "trace_stride", "object_id_range"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "max_shift_px", "seed", "eval_every", "eval_seed_start", "batch_workers"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("eval_episodes", self.eval_episodes, minimum=1)
        if self.eval_every and self.eval_every % self.save_every:
            raise InvalidInputError(f"eval_every ({self.eval_every}) must be a multiple of save_every ({self.save_every}): "
                                    "it evaluates the saved checkpoint")
        if not isinstance(self.eval_task, str) or not self.eval_task:
            raise InvalidInputError(f"eval_task must name a simulated task, got {self.eval_task!r}")
        _check_number("lr", self.lr, minimum=0.0, strict=True)
        _check_number("weight_decay", self.weight_decay, minimum=0.0)
        _check_number("min_lr_ratio", self.min_lr_ratio, minimum=0.0, maximum=1.0)
        _check_number("max_grad_norm", self.max_grad_norm, minimum=0.0, strict=True)
        _check_number("color_jitter", self.color_jitter, minimum=0.0, maximum=0.9)
        if self.device not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.marks not in ("proposed", "ground_truth"):
            raise InvalidInputError(f"marks must be 'proposed' or 'ground_truth', got {self.marks!r}")
        _check_int("inference_marks", self.inference_marks, minimum=1)
        if self.trace_order not in TRACE_ORDERS:
            raise InvalidInputError(f"trace_order must be one of {TRACE_ORDERS}, got {self.trace_order!r}")
        if self.trace_order == "target_first" and self.inference_marks < 2:
            raise InvalidInputError("trace_order target_first writes the target's trace before the gripper's: "
                                    "set inference_marks to 2")
        if self.goal_header and (self.trace_order != "target_first" or self.marks != "proposed"):
            raise InvalidInputError("goal_header names the goal by its listed description: it needs "
                                    "trace_order: target_first and marks: proposed")
        if self.objective_weights["goal"] > 0 and not self.goal_header:
            raise InvalidInputError("the goal objective answers with goal lines: it needs goal_header: true")
        for name in ("locate", "refer", "goal"):
            if self.objective_weights[name] > 0 and self.marks != "proposed":
                raise InvalidInputError(f"the {name} objective lists run-time marks: it needs marks: proposed")
        self.make_depth_binning()
        if self.mode not in ("trace", "action"):
            raise InvalidInputError(f"mode must be 'trace' or 'action', got {self.mode!r}")
        if not isinstance(self.out, str) or not self.out:
            raise InvalidInputError("out must be a non-empty path")

    def make_depth_binning(self):
        """The DepthBinning this run writes depths with (checked: a bad entry is an error naming it)."""
        from magma_core.codecs.trace_text import DepthBinning

        if not isinstance(self.depth_binning, dict):
            raise InvalidInputError("depth_binning must be a mapping of near, far, n_bins, spacing")
        unknown = set(self.depth_binning) - {"near", "far", "n_bins", "spacing"}
        if unknown:
            raise InvalidInputError(f"unknown depth_binning key(s) {sorted(unknown)}; known: near, far, n_bins, spacing")
        return DepthBinning(**self.depth_binning)

    def _check_scale_out(self) -> None:
        if self.init_from is not None:
            if not isinstance(self.init_from, str) or not self.init_from:
                raise InvalidInputError(f"init_from must be a checkpoint folder path, got {self.init_from!r}")
            if self.model_overrides:
                raise InvalidInputError("model_overrides cannot change a model loaded from init_from; remove one of them")
        elif self.init_text_layers is not None:
            raise InvalidInputError("init_text_layers picks layers of the init_from model: set init_from too")
        elif self.model == "magma_8b":
            raise InvalidInputError("model magma_8b starts from a local checkpoint: set init_from to a copy of Magma-8B")
        object.__setattr__(self, "distributed", _distributed_spec(self.distributed))
        object.__setattr__(self, "lora", _lora_spec(self.lora))
        if self.lora is not None and self.init_from is None:
            raise InvalidInputError("lora adapts a trained model: set init_from to the base checkpoint folder")
        object.__setattr__(self, "init_text_layers", _layer_indices(self.init_text_layers))
        if self.distill_from is not None and (not isinstance(self.distill_from, str) or not self.distill_from):
            raise InvalidInputError(f"distill_from must be a teacher checkpoint folder path, got {self.distill_from!r}")
        _check_number("distill_weight", self.distill_weight, 0.0, 1.0)
        _check_number("distill_temperature", self.distill_temperature, 0.0, strict=True)
        if self.init_text_layers is not None and self.lora is not None:
            raise InvalidInputError("init_text_layers drops layers of the base model, which LoRA keeps frozen: use one of them")
        if not isinstance(self.gradient_checkpointing, bool):
            raise InvalidInputError(f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")

    @property
    def objective_weights(self) -> dict[str, float]:
        return {name: float(self.objectives.get(name, 0.0)) for name in OBJECTIVES}

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["datasets"] = [dataclasses.asdict(s) for s in self.datasets]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "TrainConfig":
        if not isinstance(data, dict):
            raise InvalidInputError(f"a training config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        if "datasets" not in data:
            raise InvalidInputError("config needs 'datasets'")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidInputError(f"bad training config: {exc}") from exc


def load_config(path: str | Path, **overrides) -> TrainConfig:
    """Read a YAML (.yaml/.yml) or JSON config; `overrides` (not None) replace its keys. Relative dataset
    paths are taken relative to the config file's folder."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"training config not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise different types; both mean the same to the user
        raise InvalidInputError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} must hold a mapping of config keys")
    datasets = data.get("datasets")
    if isinstance(datasets, list):
        data["datasets"] = [_relative_to(entry, path.parent) for entry in datasets]
    for key in ("init_from", "distill_from"):  # inputs, like the datasets
        if isinstance(data.get(key), str) and data[key] and not Path(data[key]).is_absolute():
            data[key] = str(path.parent / data[key])
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data)


def _relative_to(entry: Any, base: Path) -> Any:
    if isinstance(entry, str):
        entry = {"path": entry}
    if isinstance(entry, dict) and isinstance(entry.get("path"), str) and not Path(entry["path"]).is_absolute():
        entry = dict(entry, path=str(base / entry["path"]))
    return entry


def _layer_indices(value) -> tuple[int, ...] | None:
    """init_text_layers as a tuple of distinct, increasing layer indices (None: keep them all)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidInputError(f"init_text_layers must be a list of layer indices, got {value!r}")
    indices = tuple(value)
    if not indices or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
        raise InvalidInputError(f"init_text_layers must be a non-empty list of layer indices >= 0, got {list(indices)}")
    if list(indices) != sorted(set(indices)):
        raise InvalidInputError(f"init_text_layers must be distinct and increasing (the layers keep their order), got {list(indices)}")
    return indices


def _dataset_spec(value: Any, index: int) -> DatasetSpec:
    if isinstance(value, DatasetSpec):
        spec = value
    elif isinstance(value, str):
        spec = DatasetSpec(value)
    elif isinstance(value, dict):
        unknown = set(value) - {"path", "weight", "stride"}
        if unknown or "path" not in value:
            raise InvalidInputError(f"datasets[{index}] needs 'path' (and optional weight, stride); got keys {sorted(value)}")
        spec = DatasetSpec(**value)
    else:
        raise InvalidInputError(f"datasets[{index}] must be a path or a mapping, got {type(value).__name__}")
    if not isinstance(spec.path, str) or not spec.path:
        raise InvalidInputError(f"datasets[{index}].path must be a non-empty string")
    _check_number(f"datasets[{index}].weight", spec.weight, minimum=0.0, strict=True)
    _check_int(f"datasets[{index}].stride", spec.stride, minimum=1)
    return spec


def _distributed_spec(value: Any) -> DistributedSpec:
    if isinstance(value, DistributedSpec):
        spec = value
    elif value is None:
        spec = DistributedSpec()
    elif isinstance(value, dict):
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(DistributedSpec)})
        if unknown:
            raise InvalidInputError(f"unknown distributed key(s) {unknown}; known: strategy")
        spec = DistributedSpec(**value)
    else:
        raise InvalidInputError(f"distributed must be a mapping such as {{strategy: ddp}}, got {type(value).__name__}")
    if spec.strategy not in STRATEGIES:
        raise InvalidInputError(f"distributed.strategy must be one of {STRATEGIES}, got {spec.strategy!r}")
    return spec


def _lora_spec(value: Any) -> LoraSpec | None:
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if isinstance(value, LoraSpec):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise InvalidInputError(f"lora must be a mapping such as {{r: 16, alpha: 32}} or null, got {type(value).__name__}")
    known = [f.name for f in dataclasses.fields(LoraSpec)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise InvalidInputError(f"unknown lora key(s) {unknown}; known: {known}")
    spec = LoraSpec(**value)
    _check_int("lora.r", spec.r, minimum=1)
    _check_number("lora.alpha", spec.alpha, minimum=0.0, strict=True)
    _check_number("lora.dropout", spec.dropout, minimum=0.0, maximum=0.9)
    targets = spec.target_modules
    if isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not targets:
        raise InvalidInputError(f"lora.target_modules must be a non-empty list drawn from {LORA_TARGETS}, got {targets!r}")
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad:
        raise InvalidInputError(f"lora.target_modules {bad} are not decoder projections; choose from {LORA_TARGETS}")
    if not isinstance(spec.train_vision, bool):
        raise InvalidInputError(f"lora.train_vision must be true or false, got {spec.train_vision!r}")
    if spec.base_dtype not in WEIGHT_DTYPES:
        raise InvalidInputError(f"lora.base_dtype must be one of {WEIGHT_DTYPES}, got {spec.base_dtype!r}")
    if spec.save not in LORA_SAVES:
        raise InvalidInputError(f"lora.save must be one of {LORA_SAVES}, got {spec.save!r}")
    # Sorted and deduplicated: the same set of targets is the same config (and the same adapter).
    return dataclasses.replace(spec, alpha=float(spec.alpha), dropout=float(spec.dropout),
                               target_modules=tuple(t for t in LORA_TARGETS if t in targets))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any, minimum: float, maximum: float | None = None, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum) or (maximum is not None and value > maximum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise InvalidInputError(f"{name} must be {bound}{f' and <= {maximum}' if maximum is not None else ''}, got {value!r}")

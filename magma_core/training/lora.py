"""LoRA on Magma's decoder through peft (imported lazily: only LoRA runs need it).

Adapters go on the chosen projections (q/k/v/o, gate/up/down) of every Llama decoder layer and
nowhere else; the base weights are frozen. With ``train_vision`` the vision tower and projector
train fully (float32) beside the adapters, through peft's ``modules_to_save``, so they are saved
with the adapter. Files, in peft's own layout so peft can read them too:

- adapter: ``adapter_config.json`` + ``adapter_model.safetensors`` (`save_adapter`);
- merged: the base model with the adapters folded in, written like any checkpoint
  (``config.json`` + ``model.safetensors``), so `MagmaForConditionalGeneration.from_pretrained`
  and `MagmaPolicy` load it without peft (`save_merged`, `merge_adapter`).

Adapters are read back with safetensors only (`load_adapter`); a pickled adapter is refused.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from magma_core.errors import InvalidInputError
from magma_core.training.config import LORA_TARGETS, LoraSpec

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_NAME = "default"  # peft's name for the one adapter a run trains
FULLY_TRAINED_WITH_VISION = ("vision_tower", "multi_modal_projector")
PEFT_PREFIX = "base_model.model."  # what PeftModel puts before the wrapped model's parameter names
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class PeftMissingError(InvalidInputError):
    """LoRA was asked for but the peft package is not installed."""


def require_peft():
    """The peft module, or a PeftMissingError saying how to install it."""
    try:
        import peft
    except ImportError as exc:
        raise PeftMissingError(
            "LoRA needs the peft package, which is not installed: pip install peft==0.21.2 "
            "(or the project's model extra)") from exc
    return peft


def target_pattern(targets: tuple[str, ...] | list[str]) -> str:
    """peft's target_modules as a regex matching the chosen projections of the decoder layers only."""
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise InvalidInputError(f"LoRA targets must be drawn from {LORA_TARGETS}, got {list(targets)}")
    names = "|".join(re.escape(t) for t in targets)
    return rf"language_model\.model\.layers\.\d+\.(self_attn|mlp)\.({names})"


def lora_config(spec: LoraSpec):
    """The peft LoraConfig of a LoraSpec."""
    peft = require_peft()
    return peft.LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=target_pattern(spec.target_modules),
        modules_to_save=list(FULLY_TRAINED_WITH_VISION) if spec.train_vision else None,
        bias="none",
    )


def apply_lora(model: nn.Module, spec: LoraSpec, base_path: str | os.PathLike | None = None) -> nn.Module:
    """Wrap a MagmaForConditionalGeneration in a peft model with fresh adapters; only they (and with
    train_vision the vision tower and projector) require gradients. `base_path`, the folder the base
    came from, is recorded in adapter_config.json."""
    if hasattr(model, "peft_config"):
        raise InvalidInputError("this model already carries LoRA adapters")
    peft = require_peft()
    model.to(_DTYPES[spec.base_dtype])
    # autocast_adapter_dtype keeps the adapters in float32 over a bfloat16 base.
    wrapped = peft.get_peft_model(model, lora_config(spec), adapter_name=ADAPTER_NAME, autocast_adapter_dtype=True)
    if base_path is not None:
        wrapped.peft_config[ADAPTER_NAME].base_model_name_or_path = str(base_path)
    if spec.train_vision:
        # The trained copies peft makes must not learn in bfloat16: small updates would round away.
        for name in FULLY_TRAINED_WITH_VISION:
            getattr(wrapped.get_base_model(), name).modules_to_save[ADAPTER_NAME].float()
    return wrapped


def base_model(model: nn.Module) -> nn.Module:
    """The MagmaForConditionalGeneration inside a peft model (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ---------------------------------------------------------------------- saving


def adapter_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors in peft's saved naming (CPU, contiguous); `state_dict` is the peft model's
    full state (e.g. gathered from FSDP shards) when the model's own tensors are sharded."""
    peft = require_peft()
    tensors = peft.get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=ADAPTER_NAME)
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_adapter(model: nn.Module, directory: str | os.PathLike,
                 state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write adapter_config.json and adapter_model.safetensors into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.peft_config[ADAPTER_NAME].save_pretrained(str(directory))
    save_file(adapter_state_dict(model, state_dict), str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return directory


def merged_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The base model's state with every adapter folded in (W + scale * B @ A), in the base model's
    names and dtypes; trained copies of the vision tower and projector replace the originals."""
    state = model.state_dict() if state_dict is None else state_dict
    scales = _lora_scales(model)
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if ".lora_" in name or ".original_module." in name:
            continue
        name = name.replace(f".modules_to_save.{ADAPTER_NAME}.", ".")
        if ".base_layer." in name:
            layer = name.split(".base_layer.")[0]
            name = name.replace(".base_layer.", ".")
            if name.endswith(".weight") and layer in scales:
                prefix = f"{PEFT_PREFIX}{layer}" if key.startswith(PEFT_PREFIX) else layer
                down = state[f"{prefix}.lora_A.{ADAPTER_NAME}.weight"].float()
                up = state[f"{prefix}.lora_B.{ADAPTER_NAME}.weight"].float()
                value = (value.float() + scales[layer] * (up.to(value.device) @ down.to(value.device))).to(value.dtype)
        merged[name] = value.detach()
    return merged


def save_merged(model: nn.Module, directory: str | os.PathLike,
                state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the merged model (config.json, generation config, model.safetensors) into `directory`."""
    directory = Path(directory)
    merged = merged_state_dict(model, state_dict)
    inner = base_model(model)
    inner.save_pretrained(directory, state_dict={k: v.to("cpu").contiguous() for k, v in merged.items()})
    return directory


def _lora_scales(model: nn.Module) -> dict[str, float]:
    """Adapter scale (alpha / r) of each LoRA layer, keyed by its name inside the base model."""
    require_peft()
    from peft.tuners.lora import LoraLayer

    scales = {}
    for name, module in base_model(model).named_modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.scaling:
            scales[name] = float(module.scaling[ADAPTER_NAME])
    return scales


# ---------------------------------------------------------------------- loading


def read_adapter_spec(directory: str | os.PathLike) -> dict:
    """adapter_config.json of an adapter folder, checked to be a LoRA adapter of this project's kind."""
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise InvalidInputError(f"{directory} has no {ADAPTER_CONFIG}; it is not a LoRA adapter folder")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("peft_type") != "LORA":
        raise InvalidInputError(f"{path} does not describe a LoRA adapter (peft_type {data.get('peft_type')!r})")
    return data


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Put the adapter saved in `directory` onto a base MagmaForConditionalGeneration; returns the peft model."""
    peft = require_peft()
    read_adapter_spec(directory)
    config = peft.LoraConfig.from_pretrained(str(directory))
    wrapped = peft.get_peft_model(model, config, adapter_name=ADAPTER_NAME, autocast_adapter_dtype=True)
    if config.modules_to_save:
        for name in config.modules_to_save:
            getattr(base_model(wrapped), name).modules_to_save[ADAPTER_NAME].float()
    load_adapter_weights(wrapped, directory)
    return wrapped


def load_adapter_weights(model: nn.Module, directory: str | os.PathLike) -> None:
    """Read adapter_model.safetensors into a peft model that already has matching adapters; every
    adapter tensor must be present with its shape."""
    from safetensors.torch import load_file

    from magma_core.model.safe_loading import CheckpointError
    from magma_core.model.safe_loading import _refuse_pickle as refuse_pickle

    peft = require_peft()
    path = Path(directory) / ADAPTER_WEIGHTS
    if not path.is_file():
        pickles = sorted(p.name for p in Path(directory).glob("adapter_model.*") if p.suffix != ".safetensors")
        hint = f" (found {', '.join(pickles)}: pickles are refused)" if pickles else ""
        raise CheckpointError(f"{directory} has no {ADAPTER_WEIGHTS}{hint}")
    refuse_pickle(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this model's adapters: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, the adapter expects {tuple(expected[key].shape)}")
    peft.set_peft_model_state_dict(model, tensors, adapter_name=ADAPTER_NAME)


def merge_adapter(base: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike,
                  dtype: torch.dtype | None = None) -> Path:
    """Load the base checkpoint `base`, put the adapter from `adapter` on it, and write the merged model
    to `out` (plus the base's processor, so `out` is a complete model folder)."""
    from magma_core.model import MagmaForConditionalGeneration, MagmaProcessor

    model = MagmaForConditionalGeneration.from_pretrained(base, dtype=dtype)
    processor = MagmaProcessor.from_pretrained(base)
    wrapped = load_adapter(model, adapter)
    out = save_merged(wrapped, out)
    processor.save_pretrained(out)
    return out


__all__ = [
    "PeftMissingError", "require_peft", "target_pattern", "lora_config", "apply_lora", "base_model",
    "adapter_state_dict", "save_adapter", "merged_state_dict", "save_merged", "read_adapter_spec", "load_adapter",
    "load_adapter_weights", "merge_adapter", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS",
]

"""Load Magma weights from a local directory, from safetensors only; never unpickle anything.

A directory holds ``config.json`` and either ``model.safetensors`` or ``model.safetensors.index.json``
with its shards. Both this project's checkpoints and a copy of microsoft/Magma-8B load; the
latter's names are mapped by `checkpoint_mapping`. Each problem gets an error naming it: a
missing file, a pickle file where weights should be, a shard listed but absent, a tensor
missing, unexpected or of the wrong shape. The model is built on the meta device and takes
the loaded tensors as they are, so an 8B checkpoint never exists twice in memory.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from magma_core.errors import InvalidInputError

CONFIG_NAME = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class CheckpointError(InvalidInputError):
    """A checkpoint directory that cannot be loaded (missing files, pickle weights, mismatched tensors)."""


def checkpoint_directory(directory: str | os.PathLike) -> Path:
    root = Path(directory)
    if not root.exists():
        raise CheckpointError(f"checkpoint directory not found: {root}")
    if not root.is_dir():
        raise CheckpointError(f"{root} is a file; pass the checkpoint directory (with {CONFIG_NAME} and {SINGLE_FILE})")
    return root


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint directory, checked to exist; refuses pickle-only checkpoints."""
    root = checkpoint_directory(directory)
    if (root / INDEX_FILE).is_file():
        index = _read_json(root / INDEX_FILE)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{root / INDEX_FILE} has no weight_map")
        names = sorted(set(weight_map.values()))
        bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or not n.endswith(".safetensors")]
        if bad:
            raise CheckpointError(f"{root / INDEX_FILE} lists shard names that are not plain .safetensors files in the directory: {bad[:3]}")
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise CheckpointError(f"{root} lacks {len(missing)} shard(s) listed in {INDEX_FILE}: {', '.join(missing[:5])}")
        return [root / n for n in names]
    if (root / SINGLE_FILE).is_file():
        return [root / SINGLE_FILE]
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{root} holds only pickle weights ({', '.join(pickles[:3])}); they are refused because unpickling can run code. "
            "Convert them to safetensors on a trusted machine."
        )
    raise CheckpointError(f"{root} has no weights: expected {SINGLE_FILE} or {INDEX_FILE}")


def iter_tensors(files: list[Path], device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in the files, read with safetensors (memory-mapped)."""
    from safetensors import safe_open

    for file in files:
        _refuse_pickle(file)
        try:
            handle = safe_open(str(file), framework="pt", device=str(device))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from exc
        with handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def read_config(directory: str | os.PathLike) -> dict:
    root = checkpoint_directory(directory)
    if not (root / CONFIG_NAME).is_file():
        raise CheckpointError(f"{root} has no {CONFIG_NAME}")
    return _read_json(root / CONFIG_NAME)


def load_magma(cls, directory: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Build `cls` (MagmaForConditionalGeneration) from a local checkpoint directory; see the module docstring."""
    from magma_core.model import checkpoint_mapping
    from magma_core.model.configuration_magma import MagmaConfig

    root = Path(directory)
    raw_config = read_config(root)
    files = weight_files(root)
    official = checkpoint_mapping.is_official_config(raw_config)
    config = checkpoint_mapping.official_config_to_magma(raw_config) if official else _own_config(MagmaConfig, raw_config, root)
    with torch.device("meta"):
        model = cls(config)
    expected = {name: tensor for name, tensor in model.state_dict().items()}
    loaded: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for name, tensor in iter_tensors(files, device):
        target = checkpoint_mapping.map_official_key(name) if official else name
        if target is None:  # an official tensor Magma never reads (e.g. CLIP's projection head)
            continue
        if target not in expected:
            unexpected.append(name)
            continue
        if official:
            tensor = checkpoint_mapping.adapt_tensor(target, tensor, expected[target].shape)
        if tuple(tensor.shape) != tuple(expected[target].shape):
            raise CheckpointError(f"tensor {name} has shape {tuple(tensor.shape)}, the model expects {tuple(expected[target].shape)} for {target}")
        if target in loaded:
            raise CheckpointError(f"{target} is given twice in the checkpoint (last from {name})")
        loaded[target] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    if unexpected:
        raise CheckpointError(f"{len(unexpected)} checkpoint tensor(s) match nothing in the model, e.g. {unexpected[:5]}")
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. {missing[:5]}")
    model.load_state_dict(loaded, strict=True, assign=True)
    _rebuild_buffers(model, device)
    _check_materialised(model)
    if config.text_config.tie_word_embeddings:
        model.language_model.lm_head.weight = model.language_model.model.embed_tokens.weight
    _load_generation_config(model, root)
    model.eval()
    return model


def _own_config(config_cls, raw: dict, root: Path):
    if raw.get("model_type") != "magma":
        raise CheckpointError(f"{root / CONFIG_NAME} has model_type {raw.get('model_type')!r}, expected 'magma'")
    try:
        return config_cls.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{root / CONFIG_NAME} is not a valid Magma config: {exc}") from exc


def _rebuild_buffers(model, device) -> None:
    # Rotary frequencies are computed, not stored: the meta-built module has none.
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    decoder = model.language_model.model
    decoder.rotary_emb = LlamaRotaryEmbedding(config=model.config.text_config).to(torch.device(device))


def _check_materialised(model) -> None:
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in items:
            if tensor.is_meta:
                raise CheckpointError(f"{kind} {name} was not set by the checkpoint")


def _load_generation_config(model, root: Path) -> None:
    if not (root / GENERATION_CONFIG).is_file():
        return
    data = _read_json(root / GENERATION_CONFIG)
    gen = model.generation_config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if data.get(key) is not None:
            setattr(gen, key, data[key])


def _refuse_pickle(file: Path) -> None:
    """Check the safetensors framing (8-byte header length, then a JSON object) before any parsing."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(9)
    header_length = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if len(head) == 9 and 0 < header_length <= size - 8 and head[8:9] == b"{":
        return
    # Pickle streams start with the PROTO opcode (0x80, protocol 2..5); torch.save writes a zip archive.
    if (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{file} is a pickle/torch.save file, not safetensors; it is refused because unpickling can run code")
    raise CheckpointError(f"{file} is not a safetensors file (no valid header)")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


__all__ = ["CheckpointError", "load_magma", "weight_files", "iter_tensors", "read_config"]

"""The embedded model: a trained magma-tiny checkpoint shipped inside the package (the product's default policy).

`magma eval --policy embedded`, `magma demo` and the ROS policy node with ``policy: embedded`` load it
from here; nothing is downloaded. Its model card (README.md beside the weights) records the data,
seeds, command, training time and measured success.
"""
from __future__ import annotations

from pathlib import Path

from magma_core.errors import InvalidInputError

EMBEDDED_NAME = "magma-tiny"
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded" / EMBEDDED_NAME


def embedded_checkpoint() -> Path:
    """The folder of the embedded checkpoint; a clear error if the install lacks it."""
    if not (EMBEDDED_DIR / "policy.json").is_file() or not (EMBEDDED_DIR / "model.safetensors").is_file():
        raise InvalidInputError(
            f"the embedded {EMBEDDED_NAME} checkpoint is missing from {EMBEDDED_DIR} (a partial install?); "
            "reinstall the package or pass a checkpoint folder")
    return EMBEDDED_DIR


__all__ = ["EMBEDDED_NAME", "EMBEDDED_DIR", "embedded_checkpoint"]

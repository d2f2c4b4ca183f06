"""Atomic text writes and validated YAML/JSON loading for calibration files."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import yaml

from magma_calibration.errors import CalibrationFileError


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` via a temporary file in the same folder and a rename.

    Readers see either the old file or the whole new one, never a half-written file, and a
    failure (disk full, interrupt) leaves the old file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_mapping(path: str | os.PathLike, what: str) -> dict:
    """Parse a YAML (or JSON, by suffix) file that must hold a mapping; errors name the file and problem."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationFileError(f"{what} file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationFileError(f"cannot read {what} file {path}: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise CalibrationFileError(f"{what} file {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise CalibrationFileError(f"{what} file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def format_floats(values) -> str:
    """A YAML flow list of floats, e.g. ``[1.0, 0.5]``, written with the digits that round-trip exactly."""
    return "[" + ", ".join(format_float(v) for v in values) + "]"


def format_float(value: float) -> str:
    # repr is the shortest text that reads back to the same double; 1e-05 style is valid YAML 1.2 but
    # PyYAML (YAML 1.1) reads an exponent without a dot as a string, so give it one.
    text = repr(float(value))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def finite_vector(value: object, size: int, where: str) -> np.ndarray:
    """`value` as `size` finite floats, or a CalibrationFileError naming `where`."""
    if value is None:
        raise CalibrationFileError(f"{where}: missing")
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationFileError(f"{where}: expected {size} numbers, got {value!r}") from exc
    if v.shape != (size,):
        raise CalibrationFileError(f"{where}: expected {size} numbers, got {value!r}")
    if not np.all(np.isfinite(v)):
        raise CalibrationFileError(f"{where}: contains NaN or inf")
    return v

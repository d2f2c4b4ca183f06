"""ROS camera_info YAML (camera_calibration_parsers' format): write atomically, read with validation.

Written files hold exactly the keys ROS reads (image_width, image_height, camera_name, camera_matrix,
distortion_model, distortion_coefficients, rectification_matrix, projection_matrix), so a ROS
camera driver can load them as is; calibration statistics go in comment lines at the top. For a
monocular camera the rectification is the identity and the projection matrix is [K | 0].
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from magma_calibration.errors import CalibrationFileError
from magma_calibration.yaml_io import atomic_write_text, format_floats, load_mapping

# Coefficient counts of the distortion models magma_calibration.projection can apply.
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8}


@dataclass(frozen=True)
class CameraInfo:
    """Intrinsics of one camera at one resolution, as ROS's sensor_msgs/CameraInfo holds them."""

    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray = field(default_factory=lambda: np.zeros(5))
    distortion_model: str = "plumb_bob"
    camera_name: str = "camera"
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    P: np.ndarray | None = None

    def __post_init__(self) -> None:
        K = np.asarray(self.K, dtype=np.float64)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "dist", np.asarray(self.dist, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "R", np.asarray(self.R, dtype=np.float64))
        P = np.hstack([K, np.zeros((3, 1))]) if self.P is None else np.asarray(self.P, dtype=np.float64)
        object.__setattr__(self, "P", P)
        _validate(self, "camera_info")


def camera_info_yaml(info: CameraInfo, comments: list[str] | None = None) -> str:
    """The YAML text of `info`, in ROS's layout (matrices as rows/cols/data, row-major)."""
    lines = [f"# {c}" for c in comments or []]
    lines += [
        f"image_width: {int(info.width)}",
        f"image_height: {int(info.height)}",
        f"camera_name: {_yaml_string(info.camera_name)}",
        *_matrix("camera_matrix", info.K),
        f"distortion_model: {info.distortion_model}",
        *_matrix("distortion_coefficients", info.dist.reshape(1, -1)),
        *_matrix("rectification_matrix", info.R),
        *_matrix("projection_matrix", info.P),
    ]
    return "\n".join(lines) + "\n"


def write_camera_info(path: str | os.PathLike, info: CameraInfo, comments: list[str] | None = None) -> Path:
    """Write `info` as camera_info YAML via a temporary file and a rename (never half-written)."""
    return atomic_write_text(path, camera_info_yaml(info, comments))


def read_camera_info(path: str | os.PathLike) -> CameraInfo:
    """Read a camera_info YAML; CalibrationFileError names the file and what is wrong."""
    return parse_camera_info(load_mapping(path, "camera_info"), str(path))


def parse_camera_info(data: dict, source: str = "camera_info") -> CameraInfo:
    """CameraInfo from an already-parsed camera_info mapping."""
    required = ["image_width", "image_height", "camera_matrix", "distortion_model", "distortion_coefficients"]
    missing = [k for k in required if k not in data]
    if missing:
        raise CalibrationFileError(f"{source}: missing {', '.join(missing)}")
    width = _positive_int(data["image_width"], f"{source}: image_width")
    height = _positive_int(data["image_height"], f"{source}: image_height")
    K = _read_matrix(data["camera_matrix"], (3, 3), f"{source}: camera_matrix")
    model = data["distortion_model"]
    if model not in DISTORTION_MODELS:
        raise CalibrationFileError(f"{source}: distortion_model {model!r} is not supported; use one of {', '.join(DISTORTION_MODELS)}")
    dist = _read_matrix(data["distortion_coefficients"], None, f"{source}: distortion_coefficients").reshape(-1)
    if dist.size == 0:
        dist = np.zeros(DISTORTION_MODELS[model])
    if dist.size != DISTORTION_MODELS[model]:
        raise CalibrationFileError(f"{source}: {model} needs {DISTORTION_MODELS[model]} distortion coefficients, got {dist.size}")
    R = _read_matrix(data["rectification_matrix"], (3, 3), f"{source}: rectification_matrix") if "rectification_matrix" in data else np.eye(3)
    P = _read_matrix(data["projection_matrix"], (3, 4), f"{source}: projection_matrix") if "projection_matrix" in data else None
    name = data.get("camera_name", "camera")
    try:
        return CameraInfo(width, height, K, dist, model, str(name) if name is not None else "camera", R, P)
    except CalibrationFileError as exc:
        raise CalibrationFileError(str(exc).replace("camera_info", source, 1)) from exc


def _validate(info: CameraInfo, source: str) -> None:
    if not (isinstance(info.width, (int, np.integer)) and isinstance(info.height, (int, np.integer))) or info.width <= 0 or info.height <= 0:
        raise CalibrationFileError(f"{source}: image size must be positive integers, got {info.width}x{info.height}")
    for name, M, shape in (("camera_matrix", info.K, (3, 3)), ("rectification_matrix", info.R, (3, 3)), ("projection_matrix", info.P, (3, 4))):
        if M.shape != shape:
            raise CalibrationFileError(f"{source}: {name} must be {shape[0]}x{shape[1]}, got shape {M.shape}")
        if not np.all(np.isfinite(M)):
            raise CalibrationFileError(f"{source}: {name} contains NaN or inf")
    if not np.all(np.isfinite(info.dist)):
        raise CalibrationFileError(f"{source}: distortion_coefficients contain NaN or inf")
    K = info.K
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CalibrationFileError(f"{source}: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0 or K[2, 0] != 0:
        raise CalibrationFileError(f"{source}: camera_matrix is not a pinhole matrix (last row must be [0, 0, 1])")
    if info.distortion_model not in DISTORTION_MODELS:
        raise CalibrationFileError(f"{source}: distortion_model {info.distortion_model!r} is not supported")
    if info.dist.size != DISTORTION_MODELS[info.distortion_model]:
        needed = DISTORTION_MODELS[info.distortion_model]
        raise CalibrationFileError(f"{source}: {info.distortion_model} needs {needed} coefficients, got {info.dist.size}")


def _matrix(name: str, M: np.ndarray) -> list[str]:
    M = np.asarray(M, dtype=np.float64)
    return [f"{name}:", f"  rows: {M.shape[0]}", f"  cols: {M.shape[1]}", f"  data: {format_floats(M.reshape(-1))}"]


def _read_matrix(node: object, shape: tuple[int, int] | None, where: str) -> np.ndarray:
    if not isinstance(node, dict) or "data" not in node:
        raise CalibrationFileError(f"{where}: expected a mapping with rows, cols and data")
    data = node["data"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise CalibrationFileError(f"{where}: data must be a list of numbers, got {type(data).__name__}")
    try:
        values = np.array([float(x) for x in data], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationFileError(f"{where}: data must hold numbers only ({exc})") from exc
    if not np.all(np.isfinite(values)):
        raise CalibrationFileError(f"{where}: data contains NaN or inf")
    rows, cols = node.get("rows"), node.get("cols")
    if shape is not None and (rows, cols) != shape:
        raise CalibrationFileError(f"{where}: must be {shape[0]}x{shape[1]}, file says rows={rows}, cols={cols}")
    if not (isinstance(rows, int) and isinstance(cols, int)) or rows < 0 or cols < 0:
        raise CalibrationFileError(f"{where}: rows and cols must be non-negative integers, got rows={rows!r}, cols={cols!r}")
    if values.size != rows * cols:
        raise CalibrationFileError(f"{where}: rows x cols = {rows}x{cols} needs {rows * cols} values, data has {values.size}")
    return values.reshape(rows, cols)


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CalibrationFileError(f"{where} must be a positive integer, got {value!r}")
    return value


def _yaml_string(text: str) -> str:
    # A JSON string is a valid YAML scalar, quoted only when plain would be misread.
    plain = text.replace("_", "").replace("-", "").isalnum() and not text[:1].isdigit()
    return text if plain else json.dumps(text)

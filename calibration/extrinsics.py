"""Camera extrinsics YAML: where the camera sits, written by hand-eye calibration, read by the controller.

Layout::

    parent_frame: base                     # eye_to_hand: the robot base; eye_in_hand: the end effector
    child_frame: camera_optical_frame      # the camera (OpenCV axes: x right, y down, z forward)
    mode: eye_to_hand                      # eye_to_hand | eye_in_hand | fixed (set by hand)
    transform:                             # pose of child in parent: p_parent = T @ p_child
      translation: [x, y, z]               # metres
      rotation_xyzw: [x, y, z, w]
      matrix: [[...], [...], [...], [0, 0, 0, 1]]   # the same transform, 4x4 (optional when reading)
    residuals: {translation_rms_mm: .., translation_max_mm: .., rotation_rms_deg: .., rotation_max_deg: .., reprojection_rms_px: ..}
    num_samples: 20
    method: ...
    date: 2025-01-01T00:00:00Z
    target:                                # optional: the board found by the solver
      parent_frame: ee                     # eye_to_hand: the board on the gripper; eye_in_hand: on the table (base)
      child_frame: calibration_board
      translation: [...]
      rotation_xyzw: [...]

A reader needs only parent_frame, child_frame and the transform (matrix, or translation +
rotation_xyzw; when both are present they must agree).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from magma_calibration.errors import CalibrationFileError
from magma_calibration.transforms import matrix_to_pose, pose_to_matrix
from magma_calibration.yaml_io import atomic_write_text, finite_vector, format_float, format_floats, load_mapping

MODES = ("eye_to_hand", "eye_in_hand", "fixed")


@dataclass(frozen=True)
class Extrinsics:
    """The camera's pose in its parent frame (the base, or the end effector for a wrist camera)."""

    parent_frame: str
    child_frame: str
    transform: np.ndarray  # 4x4, child pose in parent
    mode: str = "fixed"
    method: str = ""
    date: str = ""
    residuals: dict[str, float] = field(default_factory=dict)
    num_samples: int = 0
    target_transform: np.ndarray | None = None
    target_parent_frame: str | None = None
    target_frame: str = "calibration_board"

    def __post_init__(self) -> None:
        object.__setattr__(self, "transform", _rigid(self.transform, "transform"))
        if self.target_transform is not None:
            object.__setattr__(self, "target_transform", _rigid(self.target_transform, "target transform"))
        if self.mode not in MODES:
            raise CalibrationFileError(f"extrinsics mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("parent_frame", "child_frame"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise CalibrationFileError(f"extrinsics {name} must be a non-empty string")

    def camera_in_base(self, T_base_ee: np.ndarray | None = None) -> np.ndarray:
        """T_base_cam: the transform itself for a fixed camera, T_base_ee @ T_ee_cam for a wrist camera."""
        if self.mode != "eye_in_hand":
            return self.transform.copy()
        if T_base_ee is None:
            raise CalibrationFileError(f"camera {self.child_frame} rides on {self.parent_frame}: "
                                       "its pose in the base needs the current end-effector pose")
        return _rigid(T_base_ee, "end-effector pose") @ self.transform


def extrinsics_yaml(ext: Extrinsics) -> str:
    position, quat = matrix_to_pose(ext.transform)
    lines = [
        "# magma camera extrinsics: pose of child_frame in parent_frame (p_parent = T @ p_child)",
        f"parent_frame: {_q(ext.parent_frame)}",
        f"child_frame: {_q(ext.child_frame)}",
        f"mode: {ext.mode}",
        "transform:",
        f"  translation: {format_floats(position)}",
        f"  rotation_xyzw: {format_floats(quat)}",
        "  matrix:",
        *[f"    - {format_floats(row)}" for row in ext.transform],
    ]
    if ext.residuals:
        lines.append("residuals:")
        lines += [f"  {k}: {format_float(v)}" for k, v in ext.residuals.items()]
    lines += [f"num_samples: {int(ext.num_samples)}", f"method: {_q(ext.method)}",
              f"date: {_q(ext.date or datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))}"]
    if ext.target_transform is not None:
        t_pos, t_quat = matrix_to_pose(ext.target_transform)
        lines += ["target:", f"  parent_frame: {_q(ext.target_parent_frame or '')}", f"  child_frame: {_q(ext.target_frame)}",
                  f"  translation: {format_floats(t_pos)}", f"  rotation_xyzw: {format_floats(t_quat)}"]
    return "\n".join(lines) + "\n"


def write_extrinsics(path: str | os.PathLike, ext: Extrinsics) -> Path:
    """Write atomically (temporary file + rename)."""
    return atomic_write_text(path, extrinsics_yaml(ext))


def read_extrinsics(path: str | os.PathLike) -> Extrinsics:
    """Read and validate an extrinsics YAML; CalibrationFileError names the file and the problem."""
    source = str(path)
    data = load_mapping(path, "extrinsics")
    missing = [k for k in ("parent_frame", "child_frame", "transform") if k not in data]
    if missing:
        raise CalibrationFileError(f"{source}: missing {', '.join(missing)}")
    if not isinstance(data["transform"], dict):
        raise CalibrationFileError(f"{source}: transform must be a mapping with matrix or translation + rotation_xyzw")
    T = _read_transform(data["transform"], f"{source}: transform")
    target = data.get("target")
    T_target = None
    if target is not None:
        if not isinstance(target, dict):
            raise CalibrationFileError(f"{source}: target must be a mapping")
        T_target = _read_transform(target, f"{source}: target")
    residuals = data.get("residuals") or {}
    if not isinstance(residuals, dict) or not all(isinstance(v, (int, float)) for v in residuals.values()):
        raise CalibrationFileError(f"{source}: residuals must map names to numbers")
    try:
        return Extrinsics(
            parent_frame=str(data["parent_frame"]), child_frame=str(data["child_frame"]), transform=T,
            mode=str(data.get("mode", "fixed")), method=str(data.get("method", "")), date=str(data.get("date", "")),
            residuals={str(k): float(v) for k, v in residuals.items()}, num_samples=int(data.get("num_samples", 0) or 0),
            target_transform=T_target, target_parent_frame=str(target.get("parent_frame")) if target else None,
            target_frame=str(target.get("child_frame", "calibration_board")) if target else "calibration_board")
    except CalibrationFileError as exc:
        raise CalibrationFileError(f"{source}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise CalibrationFileError(f"{source}: {exc}") from exc


def _read_transform(node: dict, where: str) -> np.ndarray:
    from_matrix = from_pose = None
    if "matrix" in node:
        try:
            M = np.asarray(node["matrix"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise CalibrationFileError(f"{where}: matrix must be 4 rows of 4 numbers ({exc})") from exc
        if M.shape != (4, 4):
            raise CalibrationFileError(f"{where}: matrix must be 4x4, got shape {M.shape}")
        from_matrix = _rigid(M, f"{where} matrix")
    if "translation" in node or "rotation_xyzw" in node:
        t = finite_vector(node.get("translation"), 3, f"{where}: translation")
        q = finite_vector(node.get("rotation_xyzw"), 4, f"{where}: rotation_xyzw")
        norm = np.linalg.norm(q)
        if abs(norm - 1.0) > 1e-3:
            raise CalibrationFileError(f"{where}: rotation_xyzw must be a unit quaternion, its norm is {norm:.6g}")
        from_pose = pose_to_matrix(t, q)
    if from_matrix is None and from_pose is None:
        raise CalibrationFileError(f"{where}: needs matrix or translation + rotation_xyzw")
    if from_matrix is not None and from_pose is not None and not np.allclose(from_matrix, from_pose, atol=1e-6):
        raise CalibrationFileError(f"{where}: matrix and translation + rotation_xyzw disagree; keep one")
    return from_matrix if from_matrix is not None else from_pose


def _rigid(T: object, where: str) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise CalibrationFileError(f"{where}: expected 4x4, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise CalibrationFileError(f"{where}: contains NaN or inf")
    R = T[:3, :3]
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-9) or not np.allclose(R.T @ R, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
        raise CalibrationFileError(f"{where}: not a rigid transform (rotation not orthonormal or last row not [0, 0, 0, 1])")
    return T.copy()


def _q(text: str) -> str:
    return json.dumps(str(text))  # a JSON string is a valid, safely quoted YAML scalar

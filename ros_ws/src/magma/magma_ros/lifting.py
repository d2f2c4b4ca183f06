"""Lift a predicted trace (pixels, optional depth and gripper per step) to base-frame waypoints.

Per step, the 3D point comes from the first source that works:
1. the trace's own depth (the 2.5D extension): pixel + depth -> base;
2. the depth image at that pixel (robust to holes and edges), for 2D-only traces;
3. the pixel ray meeting the work plane ``z = work_plane_z`` (base frame).
Which source each step used is reported, so a controller can log how a plan was built.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from magma_calibration.extrinsics import Extrinsics, read_extrinsics
from magma_calibration.projection import as_camera_pose, as_intrinsics, pixel_ray_to_plane, pixel_to_base, robust_depth
from magma_calibration.transforms import pose_to_matrix
from magma_core.errors import InvalidInputError
from magma_core.som.marks import MarkSet
from magma_core.tom.types import Trace

SOURCES = ("trace_depth", "depth_image", "plane")


@dataclass(frozen=True)
class LiftedTrace:
    """Base-frame positions (T, 3) of one mark's trace, its gripper per step (or None), and the source per step."""

    mark_id: int
    positions: np.ndarray
    gripper: np.ndarray | None
    sources: tuple[str, ...]

    def source_counts(self) -> dict[str, int]:
        return {s: self.sources.count(s) for s in SOURCES if s in self.sources}


def select_gripper_trace(traces: Sequence[Trace], marks: MarkSet | None = None) -> Trace:
    """The trace of the gripper mark: the mark of kind "gripper" when `marks` names one, else the first trace."""
    if not traces:
        raise InvalidInputError("the trace holds no marks")
    if marks is not None:
        gripper_ids = [m.id for m in marks if m.kind == "gripper"]
        for trace in traces:
            if trace.mark_id in gripper_ids:
                return trace
    return traces[0]


def camera_pose_from_extrinsics(ext: Extrinsics, ee_pose: np.ndarray | None = None) -> np.ndarray:
    """T_base_cam; a wrist camera (eye_in_hand) needs the end-effector pose (7: xyz + quat xyzw)."""
    T_base_ee = None if ee_pose is None else pose_to_matrix(np.asarray(ee_pose)[:3], np.asarray(ee_pose)[3:7])
    return ext.camera_in_base(T_base_ee)


def load_extrinsics(path: str | os.PathLike) -> Extrinsics:
    """The extrinsics YAML at `path` (CalibrationFileError names what is wrong)."""
    if not str(path):
        raise InvalidInputError("no extrinsics file given (parameter extrinsics_path is empty)")
    return read_extrinsics(path)


def lift_trace(trace: Trace, K: np.ndarray, T_base_cam: np.ndarray, *, dist: np.ndarray | None = None,
               depth_image: np.ndarray | None = None, work_plane_z: float = 0.0, depth_window: int = 5,
               image_size: tuple[int, int] | None = None) -> LiftedTrace:
    """Base-frame waypoints of every step of `trace` (pixels of the raw image `K`/`dist` describe).

    `image_size` (width, height), when given, must match the depth image. Raises InvalidInputError for
    NaN pixels, a mismatched depth image, or a step no source can lift (e.g. its ray misses the plane).
    """
    K = as_intrinsics(K)
    T_base_cam = as_camera_pose(T_base_cam)
    points = trace.points
    if trace.length == 0:
        raise InvalidInputError(f"trace of mark {trace.mark_id} has no steps")
    bad = ~np.all(np.isfinite(points), axis=1)
    if np.any(bad):
        raise InvalidInputError(f"trace of mark {trace.mark_id} has NaN/inf pixels at steps {np.flatnonzero(bad).tolist()}")
    if depth_image is not None:
        depth_image = np.asarray(depth_image)
        if depth_image.ndim != 2:
            raise InvalidInputError(f"depth image must be HxW, got shape {depth_image.shape}")
        if image_size is not None and depth_image.shape != (image_size[1], image_size[0]):
            raise InvalidInputError(f"depth image is {depth_image.shape[1]}x{depth_image.shape[0]} but camera_info says "
                                    f"{image_size[0]}x{image_size[1]}")
    positions = np.empty((trace.length, 3))
    sources: list[str] = []
    for step, (u, v) in enumerate(points):
        depth = _step_depth(trace, step, depth_image, u, v, depth_window)
        if depth is not None:
            positions[step] = pixel_to_base((u, v), depth[0], K, T_base_cam, dist)
            sources.append(depth[1])
            continue
        try:
            positions[step] = pixel_ray_to_plane((u, v), K, T_base_cam, (0.0, 0.0, 1.0), work_plane_z, dist)
        except InvalidInputError as exc:
            raise InvalidInputError(f"trace step {step} at pixel ({u:.1f}, {v:.1f}) has no depth and {exc}") from exc
        sources.append("plane")
    gripper = None if trace.gripper is None else np.asarray(trace.gripper, dtype=np.float64)
    return LiftedTrace(int(trace.mark_id), positions, gripper, tuple(sources))


def _step_depth(trace: Trace, step: int, depth_image: np.ndarray | None, u: float, v: float,
                window: int) -> tuple[float, str] | None:
    """(depth in metres, source) for one step, or None when neither the trace nor the image has one."""
    if trace.depth is not None:
        d = float(trace.depth[step])
        if np.isfinite(d) and d > 0:
            return d, "trace_depth"
    if depth_image is None:
        return None
    h, w = depth_image.shape
    if not (-0.5 <= u < w - 0.5 and -0.5 <= v < h - 0.5):
        return None  # predicted off-image: no measurement there
    reading = robust_depth(depth_image, float(u), float(v), window)
    return (reading.value, "depth_image") if reading.ok else None

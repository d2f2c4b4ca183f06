"""Ground-truth Trace-of-Mark from an episode's recorded 3D points (no simulator needed).

Given, for every step, the base-frame positions of M mark points (mark 0 the gripper's TCP,
then the task's objects) and the gripper state, each step gets the marks' pixel positions and
depths now and over the next n steps, as ``magma_core.data.episode.Episode`` stores them.
"""
from __future__ import annotations

import numpy as np

from magma_core.data.episode import CameraParams
from magma_core.errors import InvalidInputError
from magma_sim.camera import project_points


def future_indices(length: int, n_future: int) -> np.ndarray:
    """(length, n_future + 1) step indices t, t+1, ..., t+n, clamped to the last step."""
    return np.minimum(np.arange(length)[:, None] + np.arange(n_future + 1)[None, :], length - 1)


def compute_gt_traces(points: np.ndarray, gripper: np.ndarray, camera: CameraParams,
                      n_future: int) -> tuple[np.ndarray, np.ndarray]:
    """Traces (T, M, n+1, 3) of pixel u, v and depth (m), and gripper states (T, n+1).

    Args:
        points: (T, M, 3) base-frame mark positions per step.
        gripper: (T,) gripper state per step (0 open .. 1 closed).
        camera: the (static) camera the traces are drawn in.
        n_future: how many future steps each trace holds; steps past the end repeat the last one.
    """
    points = np.asarray(points, dtype=np.float64)
    gripper = np.asarray(gripper, dtype=np.float64).reshape(-1)
    if points.ndim != 3 or points.shape[-1] != 3 or points.shape[0] == 0:
        raise InvalidInputError(f"points must be (T, M, 3) with T > 0, got {points.shape}")
    if gripper.shape != (points.shape[0],):
        raise InvalidInputError(f"gripper must be ({points.shape[0]},) to match points, got {gripper.shape}")
    if not (np.all(np.isfinite(points)) and np.all(np.isfinite(gripper))):
        raise InvalidInputError("points or gripper contain NaN or inf")
    if int(n_future) != n_future or n_future < 0:
        raise InvalidInputError(f"n_future must be a non-negative integer, got {n_future!r}")
    uvd = project_points(points, camera.intrinsics, camera.extrinsics)  # (T, M, 3)
    idx = future_indices(points.shape[0], int(n_future))  # (T, n+1)
    traces = np.transpose(uvd[idx], (0, 2, 1, 3))  # (T, n+1, M, 3) -> (T, M, n+1, 3)
    return traces.astype(np.float32), gripper[idx].astype(np.float32)

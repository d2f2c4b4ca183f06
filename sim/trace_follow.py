"""Trace mode in the evaluation harness: lift a predicted gripper trace to a base-frame waypoint.

A policy in trace mode returns Trace-of-Mark traces in pixels of the current frame (2.5D: with
depth in metres and a gripper state per step). The follower picks the gripper's trace (the one
named by ``gripper_mark``, else the one starting nearest the projected TCP), takes its point
``lookahead`` steps ahead, unprojects it with the observation's intrinsics/extrinsics and sends
that point as the TCP target. A gripper change on the trace is tied to its place: the follower
aims at the first step whose gripper state differs, switches the gripper only once the TCP is
within ``gripper_tolerance`` of it and then holds there ``settle_steps`` steps while the fingers
move (as the ROS controller's WaypointFollower does, with its defaults: 5 mm, 0.5 s at 10 Hz).
Steps the TCP already stands at (within ``reach_tolerance``, the ROS follower's 1 cm) count as done:
the follower aims at the first step not reached, as the ROS follower walks its waypoints.
A 2D trace (no depth) is intersected
with the horizontal plane through the current TCP. Traces carry no orientation, so the TCP keeps
the orientation it had at the episode's first step unless the output names an ``orientation``.

Pure numpy and deliberately small: the calibration room's projection (with distortion and
checked calibration files) is meant to replace ``unproject``/``ray_plane_point`` here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from magma_core.errors import InvalidInputError
from magma_core.tom.types import Trace, TraceSet


def project(points: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """Base-frame points (..., 3) -> (..., 3) pixel u, v and depth along the camera z (metres)."""
    base_to_cam = np.linalg.inv(np.asarray(extrinsics, dtype=np.float64))
    cam = np.asarray(points, dtype=np.float64) @ base_to_cam[:3, :3].T + base_to_cam[:3, 3]
    z = cam[..., 2]
    safe = np.where(np.abs(z) < 1e-9, 1e-9, z)
    K = np.asarray(intrinsics, dtype=np.float64)
    return np.stack([K[0, 0] * cam[..., 0] / safe + K[0, 2], K[1, 1] * cam[..., 1] / safe + K[1, 2], z], axis=-1)


def unproject(uvd: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """Pixel u, v and depth (..., 3) -> base-frame points (..., 3); the inverse of `project`."""
    uvd = np.asarray(uvd, dtype=np.float64)
    K = np.asarray(intrinsics, dtype=np.float64)
    d = uvd[..., 2]
    cam = np.stack([(uvd[..., 0] - K[0, 2]) * d / K[0, 0], (uvd[..., 1] - K[1, 2]) * d / K[1, 1], d], axis=-1)
    E = np.asarray(extrinsics, dtype=np.float64)
    return cam @ E[:3, :3].T + E[:3, 3]


def ray_plane_point(uv: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray, plane_z: float) -> np.ndarray:
    """Where the pixel's viewing ray meets the horizontal plane z = plane_z (base frame)."""
    K = np.asarray(intrinsics, dtype=np.float64)
    E = np.asarray(extrinsics, dtype=np.float64)
    ray_cam = np.array([(uv[0] - K[0, 2]) / K[0, 0], (uv[1] - K[1, 2]) / K[1, 1], 1.0])
    ray = E[:3, :3] @ ray_cam
    origin = E[:3, 3]
    if abs(ray[2]) < 1e-9:
        raise InvalidInputError(f"pixel ({uv[0]:.1f}, {uv[1]:.1f}) looks parallel to the work plane z={plane_z:.3f}")
    s = (plane_z - origin[2]) / ray[2]
    if s <= 0:
        raise InvalidInputError(f"pixel ({uv[0]:.1f}, {uv[1]:.1f}) does not see the work plane z={plane_z:.3f}")
    return origin + s * ray


def as_traces(trace: Any, gripper: Any = None) -> list[Trace]:
    """A policy's "trace" output as Trace objects.

    Accepts a TraceSet, a list of Trace, or an array (M, S, 2) of u, v / (M, S, 3) of u, v, depth
    (marks numbered 1..M); `gripper` (S,) or (M, S) adds gripper states to an array.
    """
    if isinstance(trace, TraceSet):
        return list(trace.traces)
    if isinstance(trace, (list, tuple)) and trace and all(isinstance(t, Trace) for t in trace):
        return list(trace)
    try:
        arr = np.asarray(trace, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"policy trace is neither Trace objects nor a numeric array: {exc}") from exc
    if arr.ndim != 3 or arr.shape[-1] not in (2, 3) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInputError(f"policy trace array must be (M, S, 2) or (M, S, 3), got {arr.shape}")
    grip = None
    if gripper is not None:
        grip = np.asarray(gripper, dtype=np.float64)
        grip = np.broadcast_to(grip, arr.shape[:2]) if grip.ndim == 1 and grip.shape[0] == arr.shape[1] else grip
        if grip.shape != arr.shape[:2]:
            raise InvalidInputError(f"trace gripper must be (S,) or (M, S) for a trace {arr.shape}, got {np.shape(gripper)}")
    out = []
    for m in range(arr.shape[0]):
        out.append(Trace(mark_id=m + 1, points=arr[m, :, :2], visible=np.ones(arr.shape[1], bool),
                         depth=arr[m, :, 2] if arr.shape[-1] == 3 else None,
                         gripper=None if grip is None else grip[m]))
    return out


def gripper_trace(traces: list[Trace], ee_uv: np.ndarray, gripper_mark: int | None = None) -> Trace:
    """The trace named `gripper_mark`, else the one whose start is closest to the TCP's pixel."""
    if not traces:
        raise InvalidInputError("policy returned an empty trace")
    if gripper_mark is not None:
        for t in traces:
            if t.mark_id == gripper_mark:
                return t
        raise InvalidInputError(f"gripper_mark {gripper_mark} is not among the trace marks {[t.mark_id for t in traces]}")
    starts = np.array([t.points[0] for t in traces])
    distance = np.linalg.norm(np.nan_to_num(starts, nan=np.inf) - np.asarray(ee_uv)[:2], axis=1)
    return traces[int(np.argmin(distance))]


class TraceFollower:
    """Turns one trace-mode output per step into a waypoint (8: xyz, quaternion xyzw, gripper)."""

    def __init__(self, lookahead: int = 1, gripper_tolerance: float = 0.005, settle_steps: int = 5,
                 reach_tolerance: float = 0.01) -> None:
        if int(lookahead) != lookahead or lookahead < 1:
            raise InvalidInputError(f"lookahead must be a positive integer, got {lookahead!r}")
        if not gripper_tolerance > 0 or int(settle_steps) != settle_steps or settle_steps < 0:
            raise InvalidInputError(f"need gripper_tolerance > 0 and settle_steps >= 0, got {gripper_tolerance}, {settle_steps}")
        if not reach_tolerance > 0:
            raise InvalidInputError(f"need reach_tolerance > 0, got {reach_tolerance}")
        self.reach_tolerance = float(reach_tolerance)
        self.lookahead = int(lookahead)
        self.gripper_tolerance = float(gripper_tolerance)
        self.settle_steps = int(settle_steps)
        self.reset()

    def reset(self) -> None:
        self._hold_quat: np.ndarray | None = None
        self._grip = 0.0
        self._settle_left = 0
        self._settle_target: np.ndarray | None = None

    def waypoint(self, output: dict, obs: dict) -> np.ndarray:
        """The waypoint for `output` (a policy's dict with "trace") seen from `obs`."""
        K, E = obs["intrinsics"], obs["extrinsics"]
        tcp = np.asarray(obs["ee_pose"], dtype=np.float64)
        if self._hold_quat is None:
            self._hold_quat = tcp[3:7].copy()
        traces = as_traces(output["trace"], output.get("trace_gripper"))
        chosen = gripper_trace(traces, project(tcp[:3], K, E), output.get("gripper_mark"))
        quat = output.get("orientation")
        quat = self._hold_quat if quat is None else np.asarray(quat, dtype=np.float64).reshape(4)
        if self._settle_left > 0:
            # The fingers are still closing (or opening) where the trace said: stay put until they have.
            self._settle_left -= 1
            return np.concatenate([self._settle_target, quat, [self._grip]])
        k = min(self.lookahead, chosen.length - 1)
        # Steps the hand already stands at are done (a trace that keeps saying "stay here a moment, then lift" from
        # the same place would hold the arm forever): aim at the first one not reached, as the ROS follower does.
        while k < chosen.length - 1 and self._first_gripper_change(chosen, k) is None \
                and np.linalg.norm(self._lift(chosen, k, K, E, tcp) - tcp[:3]) <= self.reach_tolerance:
            k += 1
        change = self._first_gripper_change(chosen, k)
        if change is not None:
            # A gripper event belongs to a place on the trace: go there, and switch only once the TCP is there
            # (a trace sampled sparsely in time would otherwise close the hand before it reaches the object).
            point = self._lift(chosen, change, K, E, tcp)
            if np.linalg.norm(point - tcp[:3]) <= self.gripper_tolerance:
                self._grip = 1.0 if chosen.gripper[change] >= 0.5 else 0.0
                self._settle_left, self._settle_target = self.settle_steps, point
            return np.concatenate([point, quat, [self._grip]])
        target = self._lift(chosen, k, K, E, tcp)
        return np.concatenate([target, quat, [self._grip]])

    def _first_gripper_change(self, trace: Trace, k: int) -> int | None:
        """The first step in 1..k whose gripper state differs from the commanded one (None: no change)."""
        if trace.gripper is None:
            return None
        for step in range(1, k + 1):
            value = trace.gripper[step]
            if np.isfinite(value) and (1.0 if value >= 0.5 else 0.0) != self._grip:
                return step
        return None

    @staticmethod
    def _lift(trace: Trace, k: int, K: np.ndarray, E: np.ndarray, tcp: np.ndarray) -> np.ndarray:
        """Trace step `k` as a base-frame point (its depth, else the horizontal plane through the TCP)."""
        uv = trace.points[k]
        if not np.all(np.isfinite(uv)):
            raise InvalidInputError(f"trace of mark {trace.mark_id} has a non-finite point at step {k}")
        if trace.depth is not None:
            depth = float(trace.depth[k])
            if not (np.isfinite(depth) and depth > 0):
                raise InvalidInputError(f"trace of mark {trace.mark_id} has invalid depth {depth} at step {k}")
            return unproject(np.array([uv[0], uv[1], depth]), K, E)
        return ray_plane_point(uv, K, E, float(tcp[2]))

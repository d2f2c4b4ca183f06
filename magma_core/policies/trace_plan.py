"""From a list of 3D keyframes to a timed 2.5D Trace-of-Mark, the way a trace-mode model outputs it.

A plan is a sequence of `Keyframe`s (base-frame TCP position, gripper state, speed, dwell).
`sample_plan` walks it from the current TCP at a bounded speed per control step, one keyframe at a
time (as the simulator's scripted experts move), and returns the TCP's next positions.
`plan_to_traces` projects those positions, and the objects that move with the gripper, through
the camera: pixels + depth along the camera z + gripper state per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magma_core.errors import InvalidInputError
from magma_core.geometry import project
from magma_core.tom.types import Trace


@dataclass(frozen=True)
class Keyframe:
    """Go to `position` at `speed` (m/s) with the gripper at `gripper` (0 open, 1 closed), then stay `dwell` steps.

    carry: what the gripper moves along: None, "held" (the object rides with the TCP) or "pushed"
    (the object stays ahead of the TCP along `push_direction`, base xy).
    """

    position: np.ndarray
    gripper: float
    speed: float
    dwell: int = 0
    carry: str | None = None

    def __post_init__(self) -> None:
        pos = np.asarray(self.position, dtype=np.float64).reshape(-1)
        if pos.shape != (3,) or not np.all(np.isfinite(pos)):
            raise InvalidInputError(f"keyframe position must be 3 finite numbers, got {pos.tolist()}")
        if not self.speed > 0:
            raise InvalidInputError(f"keyframe speed must be positive, got {self.speed}")
        object.__setattr__(self, "position", pos)


@dataclass
class SampledPlan:
    """(n+1, 3) TCP positions (row 0 = now), (n+1,) gripper states, (n+1,) what is carried at each step."""

    positions: np.ndarray
    gripper: np.ndarray
    carry: list[str | None]


def sample_plan(start: np.ndarray, start_gripper: float, keyframes: list[Keyframe], n_steps: int,
                dt: float) -> SampledPlan:
    """Walk `keyframes` from `start` for `n_steps` control steps of `dt` seconds; stay at the end once done."""
    if n_steps < 1 or dt <= 0:
        raise InvalidInputError(f"need n_steps >= 1 and dt > 0, got {n_steps}, {dt}")
    pos = np.asarray(start, dtype=np.float64).reshape(3).copy()
    positions, grips, carries = [pos.copy()], [float(start_gripper)], [None]
    k, dwell_left = 0, None
    grip, carry = float(start_gripper), None
    for _ in range(n_steps):
        if k < len(keyframes):
            frame = keyframes[k]
            grip, carry = frame.gripper, frame.carry
            step = frame.position - pos
            dist = float(np.linalg.norm(step))
            limit = frame.speed * dt
            if dist > limit:
                pos = pos + step * (limit / dist)
            else:
                pos = frame.position.copy()
                if dwell_left is None:
                    dwell_left = frame.dwell
                if dwell_left <= 0:
                    k, dwell_left = k + 1, None
                else:
                    dwell_left -= 1
        positions.append(pos.copy())
        grips.append(grip)
        carries.append(carry)
    return SampledPlan(np.array(positions), np.array(grips), carries)


def object_path(plan: SampledPlan, object_top: np.ndarray, grasp_offset: np.ndarray | None,
                push_offset: np.ndarray | None) -> np.ndarray:
    """(n+1, 3) positions of the object's marked point along the plan.

    grasp_offset: object point minus TCP while held; push_offset: the same while pushed (the
    object then moves only once the TCP has reached it).
    """
    obj = np.asarray(object_top, dtype=np.float64).copy()
    out = []
    for pos, carry in zip(plan.positions, plan.carry):
        if carry == "held" and grasp_offset is not None:
            obj = pos + grasp_offset
        elif carry == "pushed" and push_offset is not None:
            ahead = pos + push_offset
            # Only the component along the push moves the object, and only forward.
            direction = push_offset[:2] / max(np.linalg.norm(push_offset[:2]), 1e-9)
            gain = float((ahead[:2] - obj[:2]) @ direction)
            if gain > 0:
                obj = obj.copy()
                obj[:2] = obj[:2] + direction * gain
        out.append(obj.copy())
    return np.array(out)


def to_trace(mark_id: int, points: np.ndarray, gripper: np.ndarray, intrinsics: np.ndarray,
             extrinsics: np.ndarray) -> Trace:
    """Base-frame points (T, 3) -> a 2.5D Trace (pixels, depth along the camera z, gripper)."""
    uvz = project(points, intrinsics, extrinsics)
    if np.any(uvz[:, 2] <= 0):
        raise InvalidInputError(f"mark {mark_id}: a planned point lies behind the camera")
    return Trace(mark_id=mark_id, points=uvz[:, :2], visible=np.ones(len(points), dtype=bool), moving=True,
                 depth=uvz[:, 2], gripper=np.clip(gripper, 0.0, 1.0))

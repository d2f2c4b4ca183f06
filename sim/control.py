"""The two command interfaces of the tabletop arm, and the checks every command goes through.

``ee_delta`` (7 numbers): dx, dy, dz (metres), droll, dpitch, dyaw as a rotation vector
(axis * angle, radians, base frame), gripper (0 open .. 1 closed). Each translation component
is clipped to +-MAX_TRANSLATION and each rotation component to +-MAX_ROTATION per control step;
the delta applies to the measured TCP pose.

``waypoint`` (8 numbers): absolute TCP target xyz + quaternion xyzw (base frame) + gripper.

Either way the TCP target is clipped to WORKSPACE_LOW..WORKSPACE_HIGH and reached through IK.
"""
from __future__ import annotations

import numpy as np

from magma_core.errors import InvalidInputError
from magma_sim.rotations import apply_rotation_delta, rotation_delta

CONTROL_MODES = ("ee_delta", "waypoint")
ACTION_SIZES = {"ee_delta": 7, "waypoint": 8}
MAX_TRANSLATION = 0.05  # metres per control step, per axis
MAX_ROTATION = 0.3  # radians per control step, per axis
WORKSPACE_LOW = np.array([0.15, -0.50, 0.005])
WORKSPACE_HIGH = np.array([0.85, 0.50, 0.65])


def check_control(control: str) -> str:
    if control not in CONTROL_MODES:
        raise InvalidInputError(f"unknown control mode {control!r}; valid modes: {', '.join(CONTROL_MODES)}")
    return control


def validate_action(action, control: str) -> np.ndarray:
    """The action as a float64 vector, or InvalidInputError naming what is wrong with it."""
    try:
        arr = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{control} action is not numeric: {exc}") from exc
    size = ACTION_SIZES[control]
    if arr.shape != (size,):
        raise InvalidInputError(f"{control} action must have shape ({size},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{control} action contains NaN or inf: {arr.tolist()}")
    if control == "waypoint" and np.linalg.norm(arr[3:7]) < 1e-6:
        raise InvalidInputError("waypoint quaternion has zero length")
    return arr


def target_from_action(action: np.ndarray, control: str, tcp_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """(target xyz, target quat xyzw, gripper in [0,1], whether anything was clipped) of a validated action."""
    if control == "ee_delta":
        d_pos = np.clip(action[:3], -MAX_TRANSLATION, MAX_TRANSLATION)
        d_rot = np.clip(action[3:6], -MAX_ROTATION, MAX_ROTATION)
        clipped = bool(np.any(d_pos != action[:3]) or np.any(d_rot != action[3:6]))
        position = tcp_pose[:3] + d_pos
        quat = apply_rotation_delta(tcp_pose[3:7], d_rot)
        grip = action[6]
    else:
        position = action[:3]
        quat = action[3:7] / np.linalg.norm(action[3:7])
        grip = action[7]
        clipped = False
    bounded = np.clip(position, WORKSPACE_LOW, WORKSPACE_HIGH)
    clipped = clipped or bool(np.any(bounded != position)) or not 0.0 <= grip <= 1.0
    return bounded, quat, float(np.clip(grip, 0.0, 1.0)), clipped


def waypoint_to_delta(waypoint: np.ndarray, tcp_pose: np.ndarray) -> np.ndarray:
    """The ee_delta action (7) that aims at `waypoint` (8) from the measured `tcp_pose` (7), before clipping."""
    waypoint = np.asarray(waypoint, dtype=np.float64)
    return np.concatenate([waypoint[:3] - tcp_pose[:3], rotation_delta(tcp_pose[3:7], waypoint[3:7]), waypoint[7:8]])


def delta_to_waypoint(delta: np.ndarray, tcp_pose: np.ndarray) -> np.ndarray:
    """The waypoint (8) an ee_delta action (7) reaches from the measured `tcp_pose`, with the env's clipping."""
    position, quat, grip, _ = target_from_action(np.asarray(delta, dtype=np.float64), "ee_delta", tcp_pose)
    return np.concatenate([position, quat, [grip]])

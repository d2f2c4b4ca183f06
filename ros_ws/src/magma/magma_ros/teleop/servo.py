"""The controller's teleop input: newest twist / pose / gripper -> one target pose per control step (pure numpy).

- A twist (base-frame velocity) is integrated over one control period from the *setpoint*, the last
  target the safety gate let through, so the commanded motion is exactly velocity x time however the
  arm lags; after any hold the setpoint restarts at the measured pose. A twist whose header stamp is
  older than ``twist_timeout_s`` counts as zero velocity (the operator let go, or the teleop died):
  the controller then holds the setpoint actively. The integrated position is kept inside the
  workspace box: a velocity into a wall slides along it, since a relative command cannot be a
  calibration error the way an absolute target outside the box can.
- A pose is an absolute target; it is followed while it is the newest motion command.
- The gripper (0 open .. 1 closed) is the newest value received (0 until one arrives).

Staleness, speed and step limits, the workspace check of absolute targets and the e-stop stay with
the SafetyGate, which gets the stamp of the command a target came from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magma_calibration.transforms import matrix_to_quat, quat_to_matrix, rotvec_to_matrix
from magma_core.errors import InvalidInputError


@dataclass(frozen=True)
class ServoTarget:
    """A target for the gate: pose (7), gripper, the stamp of the command behind it, and which input it came from."""

    target: np.ndarray
    gripper: float
    stamp_ns: int
    source: str  # "twist" | "pose" | "gripper"


@dataclass(frozen=True)
class ServoHold:
    level: str
    code: str
    reason: str


def integrate_twist(pose: np.ndarray, linear: np.ndarray, angular: np.ndarray, dt: float) -> np.ndarray:
    """`pose` (7) moved by a base-frame velocity for `dt` seconds (rotation about the TCP, base-frame axes)."""
    pose = np.asarray(pose, dtype=np.float64)
    out = pose.copy()
    out[:3] = pose[:3] + np.asarray(linear, dtype=np.float64) * dt
    out[3:7] = matrix_to_quat(rotvec_to_matrix(np.asarray(angular, dtype=np.float64) * dt) @ quat_to_matrix(pose[3:7]))
    return out


def _finite(values, what: str, size: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (size,):
        raise InvalidInputError(f"{what} needs {size} numbers, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{what} contains NaN or inf")
    return arr


class TeleopServo:
    """Keeps the newest teleop commands and turns them into a target each control step."""

    def __init__(self, control_hz: float, twist_timeout_s: float, workspace_low, workspace_high) -> None:
        if not control_hz > 0 or not twist_timeout_s > 0:
            raise InvalidInputError(f"control_hz and teleop_twist_timeout_s must be positive, got {control_hz}, {twist_timeout_s}")
        self.dt = 1.0 / float(control_hz)
        self.twist_timeout_ns = int(float(twist_timeout_s) * 1e9)
        self.low = np.asarray(workspace_low, dtype=np.float64)
        self.high = np.asarray(workspace_high, dtype=np.float64)
        self.setpoint: np.ndarray | None = None
        self.gripper = 0.0
        self._twist: tuple[np.ndarray, int] | None = None  # (linear 3 + angular 3, header stamp ns)
        self._pose: tuple[np.ndarray, int] | None = None  # (pose 7, header stamp ns)
        self._gripper_ns: int | None = None

    def clear(self) -> None:
        """Forget every command and the setpoint (source switched, e-stop)."""
        self.setpoint = None
        self._twist = self._pose = None
        self._gripper_ns = None

    def on_twist(self, linear, angular, stamp_ns: int) -> None:
        self._twist = (np.concatenate([_finite(linear, "twist linear", 3), _finite(angular, "twist angular", 3)]),
                       int(stamp_ns))

    def on_pose(self, pose, stamp_ns: int) -> None:
        pose = _finite(pose, "teleop pose", 7)
        if np.linalg.norm(pose[3:7]) < 1e-6:
            raise InvalidInputError("teleop pose orientation is a zero quaternion")
        self._pose = (pose, int(stamp_ns))

    def on_gripper(self, value: float, now_ns: int) -> None:
        value = _finite([value], "teleop gripper", 1)[0]
        self.gripper = float(np.clip(value, 0.0, 1.0))
        self._gripper_ns = int(now_ns)

    def accepted(self, target: np.ndarray) -> None:
        """The gate let `target` through: integrate on from it."""
        self.setpoint = np.asarray(target, dtype=np.float64).copy()

    def held(self) -> None:
        """Nothing went out this step: restart from the measured pose next time."""
        self.setpoint = None

    def step(self, measured: np.ndarray, now_ns: int) -> ServoTarget | ServoHold:
        """This step's target from the newest commands, or why there is none."""
        if self._twist is None and self._pose is None and self._gripper_ns is None:
            return ServoHold("OK", "waiting", "waiting for teleop commands")
        reference = self.setpoint if self.setpoint is not None else np.asarray(measured, dtype=np.float64)
        twist_ns = self._twist[1] if self._twist is not None else None
        if self._pose is not None and (twist_ns is None or self._pose[1] >= twist_ns):
            return ServoTarget(self._pose[0].copy(), self.gripper, self._pose[1], "pose")
        if self._twist is not None:
            velocity, stamp_ns = self._twist
            if now_ns - stamp_ns > self.twist_timeout_ns:
                velocity = np.zeros(6)
            target = integrate_twist(reference, velocity[:3], velocity[3:], self.dt)
            target[:3] = np.clip(target[:3], self.low, self.high)
            return ServoTarget(target, self.gripper, stamp_ns, "twist")
        # Only a gripper command: hold where we are and open/close there.
        return ServoTarget(reference.copy(), self.gripper, self._gripper_ns, "gripper")

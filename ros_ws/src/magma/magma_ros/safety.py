"""The controller's safety layer in pure numpy: every target passes here before it reaches the arm.

A target is held back (the robot holds still) when the e-stop is latched, the plan is stale, any
number is NaN/inf, or the target leaves the workspace box in "reject" mode. Otherwise it is clipped
to the box ("clip" mode) and rate-limited: it moves at most ``max_linear_speed / control_hz`` metres
(``max_angular_speed / control_hz`` radians) from the previous target, so the commanded motion never
exceeds the speed limits, and it never lies more than ``max_step`` metres (``max_step_angle``
radians) from the measured pose, so a lagging or blocked arm cannot be pulled hard toward a far
target. After a hold the first target is limited from the measured pose.

"reject" is the default because a target outside the box usually means a wrong calibration or a bad
prediction: sliding along the box wall toward it ("clip") would still act on garbage. A target just
outside it (within ``workspace_margin``, 1 cm by default) is clipped in both modes: a grasp point a few
millimetres below the table's floor of the box is a depth reading's rounding (one depth bin of a trace is
about 6 mm), not garbage, and holding there would stall every grasp of a low object.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from magma_calibration.transforms import matrix_to_quat, matrix_to_rotvec, quat_to_matrix, rotvec_to_matrix
from magma_core.errors import InvalidInputError

WORKSPACE_MODES = ("reject", "clip")


@dataclass(frozen=True)
class SafetyLimits:
    """Limits of the commanded motion. Positions in metres (base frame), speeds per second."""

    workspace_low: tuple[float, float, float] = (0.15, -0.5, 0.005)
    workspace_high: tuple[float, float, float] = (0.85, 0.5, 0.65)
    workspace_mode: str = "reject"
    workspace_margin: float = 0.01
    max_linear_speed: float = 0.25
    max_angular_speed: float = 1.0
    max_step: float = 0.05
    max_step_angle: float = 0.3
    control_hz: float = 20.0
    stale_after_s: float = 1.0

    def __post_init__(self) -> None:
        low = np.asarray(self.workspace_low, dtype=np.float64)
        high = np.asarray(self.workspace_high, dtype=np.float64)
        if low.shape != (3,) or high.shape != (3,) or not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise InvalidInputError(f"workspace box needs finite 3-vectors, got low={self.workspace_low}, high={self.workspace_high}")
        if np.any(low >= high):
            raise InvalidInputError(f"workspace box is empty: low {low.tolist()} must be below high {high.tolist()} on every axis")
        if self.workspace_mode not in WORKSPACE_MODES:
            raise InvalidInputError(f"workspace_mode must be one of {WORKSPACE_MODES}, got {self.workspace_mode!r}")
        if not (isinstance(self.workspace_margin, (int, float)) and math.isfinite(self.workspace_margin)
                and self.workspace_margin >= 0):
            raise InvalidInputError(f"workspace_margin must be a number >= 0, got {self.workspace_margin!r}")
        for name in ("max_linear_speed", "max_angular_speed", "max_step", "max_step_angle", "control_hz", "stale_after_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InvalidInputError(f"{name} must be a positive number, got {value!r}")

    @property
    def step_limit(self) -> float:
        """Metres the target may move in one control step."""
        return self.max_linear_speed / self.control_hz

    @property
    def angle_limit(self) -> float:
        """Radians the target may turn in one control step."""
        return self.max_angular_speed / self.control_hz


# --------------------------------------------------------------------------- the single checks


def in_workspace(position: np.ndarray, limits: SafetyLimits) -> bool:
    p = np.asarray(position, dtype=np.float64)
    return bool(np.all(p >= limits.workspace_low) and np.all(p <= limits.workspace_high))


def clip_to_workspace(position: np.ndarray, limits: SafetyLimits) -> np.ndarray:
    return np.clip(np.asarray(position, dtype=np.float64), limits.workspace_low, limits.workspace_high)


def nonfinite_reason(name: str, values: object) -> str | None:
    """Why `values` cannot be used (NaN/inf, or not numbers), or None when all are finite."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return f"{name} is not numeric"
    if not np.all(np.isfinite(arr)):
        return f"{name} contains NaN or inf"
    return None


def staleness_reason(stamp_ns: int | None, now_ns: int, stale_after_s: float, what: str = "plan") -> str | None:
    """Why data stamped `stamp_ns` may not be acted on at `now_ns`, or None when it is fresh.

    Data stamped more than `stale_after_s` in the future is refused too: the clocks disagree, so its
    age is unknown.
    """
    if stamp_ns is None or stamp_ns <= 0:
        return f"{what} has no stamp"
    age = (now_ns - stamp_ns) / 1e9
    if age > stale_after_s:
        return f"{what} is stale: {age:.2f} s old (limit {stale_after_s:g} s)"
    if age < -stale_after_s:
        return f"{what} is stamped {-age:.2f} s in the future: clocks disagree"
    return None


def limit_step(current: np.ndarray, target: np.ndarray, max_distance: float, max_angle: float) -> np.ndarray:
    """`target` (7: xyz + quat xyzw) pulled back toward `current` so it lies within one step of it."""
    current = np.asarray(current, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    out = target.copy()
    delta = target[:3] - current[:3]
    distance = float(np.linalg.norm(delta))
    if distance > max_distance:
        out[:3] = current[:3] + delta * (max_distance / distance)
    R_cur = quat_to_matrix(current[3:7])
    turn = matrix_to_rotvec(quat_to_matrix(target[3:7]) @ R_cur.T)
    angle = float(np.linalg.norm(turn))
    if angle > max_angle:
        out[3:7] = matrix_to_quat(rotvec_to_matrix(turn * (max_angle / angle)) @ R_cur)
    else:
        out[3:7] = target[3:7] / np.linalg.norm(target[3:7])
    return out


# --------------------------------------------------------------------------- e-stop


class EStopLatch:
    """A latched emergency stop. ``True`` latches; releasing takes two deliberate acts: arming the reset
    (the controller's ``estop_reset`` parameter), then a ``False`` on the e-stop topic. A ``False``
    without an armed reset is ignored, so a stale or repeated message cannot release it.
    """

    def __init__(self) -> None:
        self.engaged = False
        self.reset_armed = False

    def update(self, stop: bool) -> str:
        """Apply one e-stop message; returns what happened: "engaged", "released", "ignored" or "unchanged"."""
        if stop:
            was = self.engaged
            self.engaged, self.reset_armed = True, False
            return "unchanged" if was else "engaged"
        if not self.engaged:
            return "unchanged"
        if not self.reset_armed:
            return "ignored"
        self.engaged, self.reset_armed = False, False
        return "released"

    def arm_reset(self) -> bool:
        """Allow the next ``False`` to release the latch; returns whether there was anything to reset."""
        if self.engaged:
            self.reset_armed = True
        return self.engaged


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class Verdict:
    """What the gate decided: a target to command, or hold (target None) with a reason."""

    target: np.ndarray | None
    gripper: float | None
    code: str  # ok | clipped | estop | no_pose | nan | stale | workspace
    level: str  # OK | WARN | ERROR (diagnostic level)
    reason: str = ""

    @property
    def hold(self) -> bool:
        return self.target is None


class SafetyGate:
    """Applies SafetyLimits and the e-stop to one target per control step; remembers the last target
    it let through (the reference of the speed limit) until it holds."""

    def __init__(self, limits: SafetyLimits, estop: EStopLatch | None = None) -> None:
        self.limits = limits
        self.estop = estop if estop is not None else EStopLatch()
        self.last_target: np.ndarray | None = None

    def check(self, target: np.ndarray, gripper: float, current: np.ndarray | None, *, source_stamp_ns: int | None,
              now_ns: int) -> Verdict:
        """Vet a target pose (7) and gripper command for the arm whose measured pose is `current` (7)."""
        verdict = self._check(target, gripper, current, source_stamp_ns, now_ns)
        self.last_target = None if verdict.hold else verdict.target
        return verdict

    def _check(self, target, gripper, current, source_stamp_ns, now_ns) -> Verdict:
        if self.estop.engaged:
            return Verdict(None, None, "estop", "ERROR", "e-stop latched")
        if current is None:
            return Verdict(None, None, "no_pose", "WARN", "no end-effector pose yet")
        for name, values in (("measured pose", current), ("target", target), ("gripper command", gripper)):
            reason = nonfinite_reason(name, values)
            if reason:
                return Verdict(None, None, "nan", "ERROR", reason)
        reason = staleness_reason(source_stamp_ns, now_ns, self.limits.stale_after_s)
        if reason:
            return Verdict(None, None, "stale", "WARN", reason)
        target = np.asarray(target, dtype=np.float64)
        if np.linalg.norm(target[3:7]) < 1e-6:
            return Verdict(None, None, "nan", "ERROR", "target orientation is a zero quaternion")
        code, level, note = "ok", "OK", ""
        if not in_workspace(target[:3], self.limits):
            where = np.round(target[:3], 3).tolist()
            inside = clip_to_workspace(target[:3], self.limits)
            near = float(np.linalg.norm(inside - target[:3])) <= self.limits.workspace_margin
            if self.limits.workspace_mode == "reject" and not near:
                return Verdict(None, None, "workspace", "WARN", f"target {where} is outside the workspace box")
            target = target.copy()
            target[:3] = inside
            code, level, note = "clipped", "WARN", f"target {where} clipped to the workspace box"
        reference = self.last_target if self.last_target is not None else np.asarray(current, dtype=np.float64)
        limited = limit_step(reference, target, self.limits.step_limit, self.limits.angle_limit)
        limited = limit_step(current, limited, self.limits.max_step, self.limits.max_step_angle)
        return Verdict(limited, float(np.clip(gripper, 0.0, 1.0)), code, level, note)

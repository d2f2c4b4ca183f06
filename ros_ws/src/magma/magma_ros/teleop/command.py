"""What every teleop input produces each step: a base-frame velocity, a gripper command, episode actions."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from magma_core.errors import InvalidInputError

MIN_SPEED_SCALE = 0.1
MAX_SPEED_SCALE = 4.0


@dataclass(frozen=True)
class TeleopCommand:
    """One step of teleoperation: TCP velocity in the base frame, gripper (0 open .. 1 closed), and the
    episode actions (magma_ros.teleop.events.EPISODE_ACTIONS) asked for since the previous step."""

    linear: np.ndarray = field(default_factory=lambda: np.zeros(3))  # m/s
    angular: np.ndarray = field(default_factory=lambda: np.zeros(3))  # rad/s, rotation vector rate
    gripper: float = 0.0
    episode: tuple[str, ...] = ()

    @property
    def moving(self) -> bool:
        return bool(np.any(self.linear) or np.any(self.angular))


class SpeedScale:
    """The operator's speed multiplier, stepped up and down by a factor and kept within bounds."""

    def __init__(self, step: float) -> None:
        if not step > 1.0:
            raise InvalidInputError(f"speed_scale_step must be more than 1, got {step!r}")
        self.step = float(step)
        self.value = 1.0

    def faster(self) -> float:
        self.value = min(self.value * self.step, MAX_SPEED_SCALE)
        return self.value

    def slower(self) -> float:
        self.value = max(self.value / self.step, MIN_SPEED_SCALE)
        return self.value


def check_speeds(linear_speed: float, angular_speed: float) -> tuple[float, float]:
    for name, value in (("linear_speed", linear_speed), ("angular_speed", angular_speed)):
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise InvalidInputError(f"{name} must be a positive number, got {value!r}")
    return float(linear_speed), float(angular_speed)

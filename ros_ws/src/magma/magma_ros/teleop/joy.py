"""sensor_msgs/Joy teleoperation (gamepads, space mice): axes -> velocity, buttons -> actions (no ROS).

Axes are normalised to -1..1 by the drivers. A deadzone removes stick drift: values within it are
zero and the rest is rescaled so the command still starts at zero and reaches full speed at full
deflection. Buttons act on the press (the transition from released to pressed), never while held.
With an ``enable`` button (a dead-man switch) the arm moves only while it is held.

Presets:
- ``gamepad``: the ROS 2 ``joy`` package's game_controller_node layout (SDL order; axes 0 left x,
  1 left y, 2 right x, 3 right y, 4/5 triggers; buttons 0 A, 1 B, 2 X, 3 Y, 4 back, 5 guide, 6 start,
  7/8 stick presses, 9 LB, 10 RB, 11-14 d-pad up/down/left/right). Left stick: x/y, right stick up/down: z,
  right stick left/right: yaw; hold LB to move; RB toggles the gripper; start starts an episode or
  stops it with success, back stops it with failure; d-pad up/down change the speed.
- ``spacemouse``: spacenav_node (topic ``spacenav/joy``): six axes linear x y z, angular x y z; the
  left button toggles the gripper, the right one starts an episode or stops it with success.
Devices differ in axis signs: flip one with a negative ``joy_axis_scales`` entry.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from magma_core.errors import InvalidInputError
from magma_ros.teleop.command import SpeedScale, TeleopCommand, check_speeds

# The order of `JoyMapping.buttons()` and of the node's `joy_buttons` parameter.
BUTTON_ROLES = ("enable", "gripper", "episode", "failure", "speed_down", "speed_up")


@dataclass(frozen=True)
class JoyMapping:
    """Which axes and buttons do what. An index of -1 means "not used"."""

    linear_axes: tuple[int, int, int]
    angular_axes: tuple[int, int, int]
    axis_scales: tuple[float, float, float, float, float, float] = (1.0,) * 6
    deadzone: float = 0.1
    enable: int = -1
    gripper: int = -1
    episode: int = -1  # start when idle, stop with success when running
    failure: int = -1
    speed_down: int = -1
    speed_up: int = -1

    def __post_init__(self) -> None:
        axes = list(self.linear_axes) + list(self.angular_axes)
        if len(self.linear_axes) != 3 or len(self.angular_axes) != 3:
            raise InvalidInputError(f"joy axes need three indices each (linear x y z, angular x y z), got "
                                    f"{list(self.linear_axes)} and {list(self.angular_axes)}")
        if len(self.axis_scales) != 6 or not np.all(np.isfinite(np.asarray(self.axis_scales, dtype=float))):
            raise InvalidInputError(f"joy_axis_scales needs six finite numbers, got {list(self.axis_scales)}")
        for index in axes + [getattr(self, role) for role in BUTTON_ROLES]:
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < -1:
                raise InvalidInputError(f"joy axis and button indices must be integers >= -1 (-1: unused), got {index!r}")
        if not 0.0 <= self.deadzone < 1.0:
            raise InvalidInputError(f"joy_deadzone must be in [0, 1), got {self.deadzone!r}")

    def buttons(self) -> tuple[int, ...]:
        return tuple(getattr(self, role) for role in BUTTON_ROLES)

    def with_overrides(self, linear_axes: Sequence[int] | None = None, angular_axes: Sequence[int] | None = None,
                       axis_scales: Sequence[float] | None = None, buttons: Sequence[int] | None = None,
                       deadzone: float | None = None) -> "JoyMapping":
        """This mapping with the given parts replaced (None keeps a part)."""
        changes: dict = {}
        if linear_axes is not None:
            changes["linear_axes"] = tuple(int(i) for i in linear_axes)
        if angular_axes is not None:
            changes["angular_axes"] = tuple(int(i) for i in angular_axes)
        if axis_scales is not None:
            changes["axis_scales"] = tuple(float(s) for s in axis_scales)
        if buttons is not None:
            if len(buttons) != len(BUTTON_ROLES):
                raise InvalidInputError(f"joy_buttons needs {len(BUTTON_ROLES)} indices ({', '.join(BUTTON_ROLES)}), "
                                        f"got {list(buttons)}")
            changes.update({role: int(i) for role, i in zip(BUTTON_ROLES, buttons)})
        if deadzone is not None:
            changes["deadzone"] = float(deadzone)
        return replace(self, **changes)


PRESETS: dict[str, JoyMapping] = {
    "gamepad": JoyMapping(linear_axes=(1, 0, 3), angular_axes=(-1, -1, 2), enable=9, gripper=10, episode=6,
                          failure=4, speed_down=12, speed_up=11),
    "spacemouse": JoyMapping(linear_axes=(0, 1, 2), angular_axes=(3, 4, 5), gripper=0, episode=1),
}


def joy_mapping(preset: str) -> JoyMapping:
    if preset not in PRESETS:
        raise InvalidInputError(f"unknown joy preset {preset!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[preset]


def apply_deadzone(values: np.ndarray, deadzone: float) -> np.ndarray:
    """Zero within the deadzone, rescaled outside it so the output runs continuously from 0 to +-1."""
    values = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    magnitude = np.maximum(np.abs(values) - deadzone, 0.0) / (1.0 - deadzone)
    return np.sign(values) * magnitude


class JoyTeleop:
    """Joy messages (axes, buttons) in, one TeleopCommand per step out."""

    def __init__(self, mapping: JoyMapping, linear_speed: float = 0.1, angular_speed: float = 0.5,
                 speed_scale_step: float = 1.25) -> None:
        self.mapping = mapping
        self.linear_speed, self.angular_speed = check_speeds(linear_speed, angular_speed)
        self.scale = SpeedScale(speed_scale_step)
        self.gripper = 0.0
        self._axes = np.zeros(6)
        self._enabled = mapping.enable < 0
        self._pressed: set[int] = set()
        self._episode: list[str] = []

    def update(self, axes: Sequence[float], buttons: Sequence[int]) -> list[str]:
        """Apply one Joy message; returns lines for the operator. A message too short for the mapping raises
        InvalidInputError (and stops the motion)."""
        m = self.mapping
        axes = np.asarray(axes, dtype=np.float64)
        used_axes = [i for i in m.linear_axes + m.angular_axes if i >= 0]
        used_buttons = [i for i in m.buttons() if i >= 0]
        if (used_axes and max(used_axes) >= len(axes)) or (used_buttons and max(used_buttons) >= len(buttons)):
            self._axes[:] = 0.0
            raise InvalidInputError(f"Joy message has {len(axes)} axes and {len(buttons)} buttons, but the mapping "
                                    f"uses axes {used_axes} and buttons {used_buttons}: set joy_preset or the joy_* indices")
        if not np.all(np.isfinite(axes)):
            self._axes[:] = 0.0
            raise InvalidInputError("Joy message has NaN or inf axes")
        raw = np.array([axes[i] if i >= 0 else 0.0 for i in m.linear_axes + m.angular_axes])
        self._axes = apply_deadzone(raw, m.deadzone) * np.asarray(m.axis_scales, dtype=np.float64)
        pressed = {i for i in used_buttons if buttons[i]}
        new, self._pressed = pressed - self._pressed, pressed
        self._enabled = m.enable < 0 or m.enable in pressed
        notes = []
        if m.gripper in new:
            self.gripper = 0.0 if self.gripper >= 0.5 else 1.0
            notes.append("gripper " + ("closed" if self.gripper >= 0.5 else "open"))
        if m.speed_up in new or m.speed_down in new:
            scale = self.scale.faster() if m.speed_up in new else self.scale.slower()
            notes.append(f"speed x{scale:.2f}")
        if m.episode in new:
            self._episode.append("toggle")
        if m.failure in new:
            self._episode.append("failure")
        return notes

    def stop(self) -> None:
        """Forget the axes (the device went quiet): no motion until the next message."""
        self._axes[:] = 0.0

    def command(self) -> TeleopCommand:
        """The command for this step; episode actions are handed out once."""
        axes = self._axes if self._enabled else np.zeros(6)
        scale = self.scale.value
        episode, self._episode = tuple(self._episode), []
        return TeleopCommand(axes[:3] * self.linear_speed * scale, axes[3:] * self.angular_speed * scale,
                             self.gripper, episode)

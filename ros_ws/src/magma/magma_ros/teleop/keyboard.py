"""Keyboard teleoperation: the key map, and the key presses -> command state machine (no ROS, no terminal).

A terminal reports key presses, not key releases, and a held key repeats only after the terminal's
auto-repeat delay (about half a second). So a motion key keeps its axis moving for ``key_timeout_s``
after its last press: holding a key moves the arm smoothly, letting go stops it a moment later, and
the space bar stops everything at once. Keys on different axes combine (tap w and a for a diagonal).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magma_core.errors import InvalidInputError
from magma_ros.teleop.command import SpeedScale, TeleopCommand, check_speeds


@dataclass(frozen=True)
class MotionKey:
    kind: str  # "linear" | "angular"
    axis: int  # 0 x, 1 y, 2 z (base frame)
    sign: float
    help: str


# Base frame: x forward (away from the robot), y left, z up.
MOTION_KEYS: dict[str, MotionKey] = {
    "w": MotionKey("linear", 0, +1, "forward (+x)"),
    "s": MotionKey("linear", 0, -1, "back (-x)"),
    "a": MotionKey("linear", 1, +1, "left (+y)"),
    "d": MotionKey("linear", 1, -1, "right (-y)"),
    "r": MotionKey("linear", 2, +1, "up (+z)"),
    "f": MotionKey("linear", 2, -1, "down (-z)"),
    "up": MotionKey("linear", 0, +1, "forward (+x)"),
    "down": MotionKey("linear", 0, -1, "back (-x)"),
    "left": MotionKey("linear", 1, +1, "left (+y)"),
    "right": MotionKey("linear", 1, -1, "right (-y)"),
    "pageup": MotionKey("linear", 2, +1, "up (+z)"),
    "pagedown": MotionKey("linear", 2, -1, "down (-z)"),
    "u": MotionKey("angular", 0, +1, "roll + (about x)"),
    "o": MotionKey("angular", 0, -1, "roll - (about x)"),
    "i": MotionKey("angular", 1, +1, "pitch + (about y)"),
    "k": MotionKey("angular", 1, -1, "pitch - (about y)"),
    "j": MotionKey("angular", 2, +1, "yaw + (about z, counter-clockwise from above)"),
    "l": MotionKey("angular", 2, -1, "yaw - (about z)"),
}
# Everything else the keyboard does: key -> (action, help).
ACTION_KEYS: dict[str, tuple[str, str]] = {
    " ": ("stop", "stop moving now"),
    "g": ("gripper_toggle", "toggle the gripper (open <-> closed)"),
    "+": ("faster", "speed x step"),
    "=": ("faster", "speed x step"),
    "-": ("slower", "speed / step"),
    "n": ("start", "start an episode (with the instruction)"),
    "y": ("success", "stop the episode: success"),
    "x": ("failure", "stop the episode: failure"),
    "c": ("abort", "stop the episode: aborted (not for training)"),
    "h": ("help", "show this help"),
    "?": ("help", "show this help"),
}
# Escape sequences of the special keys (xterm/VT100, what Linux terminals send).
ESCAPE_SEQUENCES = {"\x1b[A": "up", "\x1b[B": "down", "\x1b[C": "right", "\x1b[D": "left",
                    "\x1bOA": "up", "\x1bOB": "down", "\x1bOC": "right", "\x1bOD": "left",
                    "\x1b[5~": "pageup", "\x1b[6~": "pagedown"}


def split_keys(text: str) -> list[str]:
    """Key names from what the terminal sent: single characters (lower-cased letters), special keys by
    name ("up", "pageup", ...), a lone escape as "esc"; unknown escape sequences are dropped."""
    keys: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\x1b":
            keys.append(ch.lower() if ch.isalpha() else ch)
            i += 1
            continue
        for seq, name in ESCAPE_SEQUENCES.items():
            if text.startswith(seq, i):
                keys.append(name)
                i += len(seq)
                break
        else:
            if i + 1 < len(text) and text[i + 1] in "[O":
                # An escape sequence we do not map (F-keys, Home...): skip to its final byte.
                j = i + 2
                while j < len(text) and not (0x40 <= ord(text[j]) <= 0x7E):
                    j += 1
                i = j + 1
            else:
                keys.append("esc")
                i += 1
    return keys


def key_help() -> str:
    """The key map as text for the terminal."""
    lines = ["keys (hold a motion key to keep moving):"]
    for key, motion in MOTION_KEYS.items():
        lines.append(f"  {key:>8}  {motion.help}")
    for key, (_, text) in ACTION_KEYS.items():
        lines.append(f"  {'space' if key == ' ' else key:>8}  {text}")
    lines.append("    Ctrl-C  quit")
    return "\n".join(lines)


class KeyboardTeleop:
    """Key presses in, one TeleopCommand per step out."""

    def __init__(self, linear_speed: float = 0.1, angular_speed: float = 0.5, key_timeout_s: float = 0.6,
                 speed_scale_step: float = 1.25) -> None:
        self.linear_speed, self.angular_speed = check_speeds(linear_speed, angular_speed)
        if not key_timeout_s > 0:
            raise InvalidInputError(f"key_timeout_s must be positive, got {key_timeout_s!r}")
        self.key_timeout_s = float(key_timeout_s)
        self.scale = SpeedScale(speed_scale_step)
        self.gripper = 0.0
        # (kind, axis) -> (sign, time of the last press)
        self._held: dict[tuple[str, int], tuple[float, float]] = {}
        self._episode: list[str] = []

    def press(self, key: str, now_s: float) -> str | None:
        """Apply one key press at time `now_s` (seconds); returns a line for the operator, or None."""
        motion = MOTION_KEYS.get(key)
        if motion is not None:
            self._held[(motion.kind, motion.axis)] = (motion.sign, now_s)
            return None
        action = ACTION_KEYS.get(key, (None, ""))[0]
        if action == "stop":
            self._held.clear()
            return "stop"
        if action == "gripper_toggle":
            self.gripper = 0.0 if self.gripper >= 0.5 else 1.0
            return "gripper " + ("closed" if self.gripper >= 0.5 else "open")
        if action in ("faster", "slower"):
            scale = self.scale.faster() if action == "faster" else self.scale.slower()
            return (f"speed x{scale:.2f}: {self.linear_speed * scale:.3f} m/s, "
                    f"{self.angular_speed * scale:.2f} rad/s")
        if action in ("start", "success", "failure", "abort"):
            self._episode.append(action)
            return None
        if action == "help":
            return key_help()
        return None

    def command(self, now_s: float) -> TeleopCommand:
        """The command for this step; episode actions are handed out once."""
        linear, angular = np.zeros(3), np.zeros(3)
        for (kind, axis), (sign, pressed) in list(self._held.items()):
            if now_s - pressed > self.key_timeout_s:
                del self._held[(kind, axis)]
                continue
            if kind == "linear":
                linear[axis] = sign * self.linear_speed * self.scale.value
            else:
                angular[axis] = sign * self.angular_speed * self.scale.value
        episode, self._episode = tuple(self._episode), []
        return TeleopCommand(linear, angular, self.gripper, episode)

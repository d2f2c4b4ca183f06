"""Shared machinery of the scripted experts: phases, bounded motion toward a goal pose, both action formats.

An expert reads privileged state from ``info["privileged"]`` (object poses, roles) and the
measured TCP pose from the observation, picks a goal pose for the current phase and moves
toward it at a bounded speed. Because every command is relative to the measured pose, the
same plan yields an ``ee_delta`` action or an equivalent ``waypoint``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from magma_sim.control import MAX_ROTATION, MAX_TRANSLATION, check_control
from magma_sim.rotations import apply_rotation_delta, rotation_delta

FAST = 0.35  # m/s in free space
SLOW = 0.18  # m/s near objects
TURN = 2.0  # rad/s


def closest_equivalent(angle: float, period: float, reference: float) -> float:
    """The angle equal to `angle` modulo `period` that is nearest to `reference`."""
    return float(reference + (angle - reference + period / 2) % period - period / 2)


class ScriptedExpert:
    """Base class: subclasses implement ``_plan`` returning (goal xyz, goal quat, gripper, speed m/s)."""

    task: str = ""

    def __init__(self, control: str = "waypoint", control_hz: int = 10) -> None:
        self.control = check_control(control)
        self.control_hz = int(control_hz)
        self.reset()

    def reset(self) -> None:
        self.phase = "start"
        self.phase_steps = 0
        self.done = False

    def act(self, obs: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        """The next action (7 numbers for ee_delta, 8 for waypoint) for this observation."""
        if info.get("step") == 0 and self.phase != "start":
            self.reset()  # a new episode began without an explicit reset()
        goal_pos, goal_quat, grip, speed = self._plan(obs, info["privileged"])
        self.phase_steps += 1
        return self._command(np.asarray(obs["ee_pose"], dtype=np.float64), goal_pos, goal_quat, grip, speed)

    def _plan(self, obs, priv) -> tuple[np.ndarray, np.ndarray, float, float]:
        raise NotImplementedError

    def _go(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    def _seconds(self, seconds: float) -> int:
        """How many control steps `seconds` lasts."""
        return max(1, int(round(seconds * self.control_hz)))

    def _command(self, tcp: np.ndarray, goal_pos: np.ndarray, goal_quat: np.ndarray, grip: float,
                 speed: float) -> np.ndarray:
        step = np.asarray(goal_pos, dtype=np.float64) - tcp[:3]
        limit = min(speed / self.control_hz, MAX_TRANSLATION)
        norm = float(np.linalg.norm(step))
        if norm > limit:
            step *= limit / norm
        turn = rotation_delta(tcp[3:7], goal_quat)
        turn_limit = min(TURN / self.control_hz, MAX_ROTATION)
        angle = float(np.linalg.norm(turn))
        if angle > turn_limit:
            turn *= turn_limit / angle
        if self.control == "ee_delta":
            return np.concatenate([step, turn, [grip]])
        return np.concatenate([tcp[:3] + step, apply_rotation_delta(tcp[3:7], turn), [grip]])


def reached(tcp: np.ndarray, goal_pos: np.ndarray, tol: float) -> bool:
    return float(np.linalg.norm(tcp[:3] - np.asarray(goal_pos))) < tol


def object_state(priv: dict, role: str) -> dict:
    return priv["objects"][priv["roles"][role]]

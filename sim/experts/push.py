"""Push expert: closed fingers behind the block, pushing it along the line to the zone's centre."""
from __future__ import annotations

import numpy as np

from magma_sim.experts.base import FAST, SLOW, ScriptedExpert, closest_equivalent, object_state, reached
from magma_sim.rotations import yaw_of, yaw_quat_down

PUSH_Z = 0.018  # TCP height while pushing: fingertips ~7 mm above the table
HOVER_Z = 0.10
FINGER_HALF_DEPTH = 0.015  # closed fingers reach this far from the TCP along the push
STANDOFF = 0.03  # extra gap behind the block before contact
PUSH_SPEED = 0.12  # m/s
DONE_RADIUS = 0.012  # stop pushing when the block's centre is this close to the goal
MAX_LATERAL = 0.018  # lateral drift (m) from the pushing line that forces a new approach


class PushExpert(ScriptedExpert):
    """approach -> descend -> push (re-aiming every step) -> retract; re-approaches when the block turns away."""

    task = "push"

    def _plan(self, obs, priv):
        tcp = np.asarray(obs["ee_pose"], dtype=np.float64)
        obj = object_state(priv, "object")
        obj_xy = np.asarray(obj["position"][:2])
        goal_xy = np.asarray(object_state(priv, "target")["position"][:2])
        half = float(np.max(obj["half_extents"][:2]))
        to_goal = goal_xy - obj_xy
        dist = float(np.linalg.norm(to_goal))
        d = to_goal / max(dist, 1e-9)
        yaw = closest_equivalent(float(np.arctan2(d[1], d[0])), np.pi, yaw_of(tcp[3:7]))
        quat = yaw_quat_down(yaw)
        behind = obj_xy - d * (half + FINGER_HALF_DEPTH + STANDOFF)

        if self.phase == "start":
            self._go("approach")
        if self.phase in ("approach", "descend", "push") and dist < DONE_RADIUS:
            self._retract_xy = tcp[:2] - d * 0.01
            self._go("retract")
        if self.phase == "approach":
            goal = np.array([behind[0], behind[1], HOVER_Z])
            if reached(tcp, goal, 0.01):
                self._go("descend")
            return goal, quat, 1.0, FAST
        if self.phase == "descend":
            goal = np.array([behind[0], behind[1], PUSH_Z])
            if reached(tcp, goal, 0.005):
                self._go("push")
            return goal, quat, 1.0, SLOW
        if self.phase == "push":
            rel = tcp[:2] - obj_xy
            lateral = abs(float(d[0] * rel[1] - d[1] * rel[0]))
            along = float(rel @ d)
            if lateral > MAX_LATERAL or along > -half:
                self._go("lift")
            contact = obj_xy - d * (half + FINGER_HALF_DEPTH)
            advance = min(PUSH_SPEED / self.control_hz, dist)
            goal_xy_tcp = contact + d * advance
            return np.array([goal_xy_tcp[0], goal_xy_tcp[1], PUSH_Z]), quat, 1.0, PUSH_SPEED
        if self.phase == "lift":  # back off and up, then approach again from behind
            goal = np.array([tcp[0], tcp[1], HOVER_Z])
            if tcp[2] > HOVER_Z - 0.02:
                self._go("approach")
            return goal, yaw_quat_down(yaw_of(tcp[3:7])), 1.0, SLOW
        # retract: straight up from where the push ended
        goal = np.array([self._retract_xy[0], self._retract_xy[1], HOVER_Z])
        return goal, yaw_quat_down(yaw_of(tcp[3:7])), 1.0, SLOW

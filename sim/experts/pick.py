"""Pick-and-place expert, shared by pick_place, stack and put_in_tray (they differ in where to put the block)."""
from __future__ import annotations

import numpy as np

from magma_sim.experts.base import FAST, SLOW, ScriptedExpert, closest_equivalent, object_state, reached
from magma_sim.rotations import quat_to_matrix, yaw_of, yaw_quat_down
from magma_sim.scene import TRAY_FLOOR

HOVER = 0.08  # m above the block's top while approaching
CARRY_CLEARANCE = 0.08  # m between the carried block's bottom and the target's top while moving
PLACE_CLEARANCE = 0.006  # m gap left under the block when it is let go
GRASP_DEPTH = 0.012  # m the TCP goes below the block's centre (clamped above the table)
MIN_GRASP_Z = 0.014  # keeps the fingertips (1.1 cm below the TCP) off the table


def _upright_half_height(state: dict) -> float:
    return float(np.abs(quat_to_matrix(state["orientation"])[2]) @ state["half_extents"])


class PickPlaceExpert(ScriptedExpert):
    """approach -> descend -> close -> lift -> transport -> lower -> release -> retract, with regrasping."""

    task = "pick_place"

    def reset(self) -> None:
        super().reset()
        self.yaw = 0.0
        self.grasp_offset = 0.0  # TCP z minus block centre z while held

    def take_over(self, obs: dict, info: dict) -> str:
        """Start acting from a state another controller left (a learned policy, for recovery data): holding the
        block -> lower and release it when it is over the place already, else lift and carry it on; fingers closed
        on nothing -> open and start over; else approach. Returns the phase chosen."""
        self.reset()
        priv = info["privileged"]
        tcp = np.asarray(obs["ee_pose"], dtype=np.float64)
        obj = object_state(priv, "object")
        obj_pos = np.asarray(obj["position"])
        closed = float(info.get("gripper_command", 0.0)) >= 0.5
        pinched = float(obs["gripper"][0]) > 0.6 * 2 * float(np.min(obj["half_extents"]))
        self.yaw = closest_equivalent(yaw_of(obj["orientation"]), np.pi / 2, yaw_of(tcp[3:7]))
        if closed and pinched and np.linalg.norm(obj_pos[:2] - tcp[:2]) < 0.03 and abs(obj_pos[2] - tcp[2]) < 0.05:
            self.grasp_offset = float(tcp[2] - obj_pos[2])
            # Already over the place (a policy that carried the block there but did not let go): lower and release
            # from here rather than lifting and carrying it over again.
            over_place = np.linalg.norm(obj_pos[:2] - self.place_xy(priv)) < 0.02
            self._go("lower" if over_place else "lift")
        elif closed:
            self._go("recover")
        else:
            self._go("approach")
        return self.phase

    # -- per-task place geometry -----------------------------------------------------------------
    def place_xy(self, priv: dict) -> np.ndarray:
        return np.asarray(object_state(priv, "target")["position"][:2])

    def support_top(self, priv: dict) -> float:
        """Height of the surface the block will rest on."""
        target = object_state(priv, "target")
        return float(target["position"][2] + _upright_half_height(target))

    def place_yaw(self, priv: dict) -> float:
        return self.yaw

    # -- the plan ---------------------------------------------------------------------------------
    def _plan(self, obs, priv):
        tcp = np.asarray(obs["ee_pose"], dtype=np.float64)
        obj = object_state(priv, "object")
        obj_pos = np.asarray(obj["position"])
        half_h = _upright_half_height(obj)
        held = self.phase in ("lift", "transport", "lower")
        if held and np.linalg.norm(obj_pos - (tcp[:3] - [0, 0, self.grasp_offset])) > 0.03:
            self._go("recover")  # the block slipped out: open, then start over

        if self.phase == "start":
            self.yaw = closest_equivalent(yaw_of(obj["orientation"]), np.pi / 2, yaw_of(tcp[3:7]))
            self._go("approach")
        grasp_z = max(obj_pos[2] - GRASP_DEPTH, MIN_GRASP_Z)
        down = yaw_quat_down(self.yaw)

        if self.phase == "recover":
            goal = np.array([tcp[0], tcp[1], max(tcp[2], obj_pos[2] + half_h + HOVER)])
            if self.phase_steps >= self._seconds(0.4):
                self.yaw = closest_equivalent(yaw_of(obj["orientation"]), np.pi / 2, self.yaw)
                self._go("approach")
            return goal, down, 0.0, SLOW
        if self.phase == "approach":
            goal = np.array([obj_pos[0], obj_pos[1], obj_pos[2] + half_h + HOVER])
            if reached(tcp, goal, 0.01):
                self._go("descend")
            return goal, down, 0.0, FAST
        if self.phase == "descend":
            goal = np.array([obj_pos[0], obj_pos[1], grasp_z])
            if reached(tcp, goal, 0.004):
                self._go("close")
            return goal, down, 0.0, SLOW
        if self.phase == "close":
            goal = np.array([obj_pos[0], obj_pos[1], grasp_z])
            if self.phase_steps >= self._seconds(0.5):
                pinched = float(obs["gripper"][0]) > 0.6 * 2 * float(np.min(obj["half_extents"]))
                self._go("lift" if pinched else "recover")
                self.grasp_offset = float(tcp[2] - obj_pos[2])
            return goal, down, 1.0, SLOW
        carry_z = self.support_top(priv) + CARRY_CLEARANCE + half_h + self.grasp_offset
        if self.phase == "lift":
            goal = np.array([tcp[0], tcp[1], carry_z])
            if tcp[2] > carry_z - 0.015:
                self._go("transport")
            return goal, down, 1.0, SLOW
        place_xy = self.place_xy(priv)
        place_quat = yaw_quat_down(self.place_yaw(priv))
        if self.phase == "transport":
            goal = np.array([place_xy[0], place_xy[1], carry_z])
            if reached(tcp, goal, 0.008):
                self._go("lower")
            return goal, place_quat, 1.0, FAST
        place_z = self.support_top(priv) + PLACE_CLEARANCE + half_h + self.grasp_offset
        if self.phase == "lower":
            goal = np.array([place_xy[0], place_xy[1], place_z])
            if reached(tcp, goal, 0.004):
                self._release_goal = np.array([tcp[0], tcp[1], place_z])
                self._go("release")
            return goal, place_quat, 1.0, SLOW
        if self.phase == "release":
            goal = self._release_goal
            if self.phase_steps >= self._seconds(0.4):
                self._go("retract")
            return goal, place_quat, 0.0, SLOW
        # retract, then hold still above the placed block
        goal = np.array([self._release_goal[0], self._release_goal[1], self._release_goal[2] + 0.10])
        return goal, place_quat, 0.0, SLOW


class StackExpert(PickPlaceExpert):
    """Puts the block on the target cube, turned to match it so the faces line up."""

    task = "stack"

    def place_yaw(self, priv: dict) -> float:
        return closest_equivalent(yaw_of(object_state(priv, "target")["orientation"]), np.pi / 2, self.yaw)


class PutInTrayExpert(PickPlaceExpert):
    """Lowers the block into the tray's middle and lets go just above the floor."""

    task = "put_in_tray"

    def support_top(self, priv: dict) -> float:
        tray = object_state(priv, "target")
        return float(tray["position"][2] - tray["half_extents"][2] + TRAY_FLOOR)

"""Follow a plan of base-frame waypoints one control step at a time (pure numpy, no ROS).

Step 0 of a plan is where the mark was when the camera frame was taken; by the time the plan
arrives the arm may have moved on. So a new plan starts at the waypoint nearest the end effector,
or the one after it when the arm is already past it. The follower aims at the first waypoint not
yet reached (plus ``lookahead`` steps) and advances, in order, when the end effector comes within
``reach_tolerance`` of it. The gripper command changes only when the arm *reaches* a waypoint
whose gripper state differs (within the tighter ``gripper_tolerance``: a grasp needs precision),
and the arm then dwells there for ``gripper_settle_s`` so the fingers close (or open) before it
moves on. A plan arrives a few hundred milliseconds after its frame, and a grasp point seen from
afar (the hand still centimetres above the block) is less exact than one seen from close by, so
the switch also needs a plan whose frame showed the hand (row 0) within ``gripper_confirm_distance``
of the switch: otherwise the arm waits there for the next plan (``confirming``). During the dwell
the gripper is locked: a new plan neither cuts the dwell short nor reverses the change. A plan
computed from a frame taken before the fingers settled (it arrives late when the machine is
loaded) still sees the old gripper state and would undo the change, so
`set_plan` turns down plans whose frame predates the end of the last switch (``source_stamp_ns``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magma_calibration.transforms import matrix_to_quat, quat_to_matrix, rotvec_to_matrix
from magma_core.errors import InvalidInputError

GRIPPER_CHANGE = 0.5  # a gripper value crossing this threshold is a change of state (open <-> closed)
# What a command does with its plan, and how the controller says so on magma/controller_state.
PHASE_MESSAGES = {
    "dwelling": "dwelling for the gripper",
    "confirming": "confirming the gripper switch from close by",
    "finished": "plan finished, holding the last waypoint",
    "following": "following",
}


@dataclass(frozen=True)
class FollowCommand:
    """One control step's command: target pose (7), gripper (0..1), and where in the plan it came from."""

    target: np.ndarray
    gripper: float
    index: int
    finished: bool
    dwelling: bool
    confirming: bool = False  # at a gripper change, waiting for a plan seen from close by

    @property
    def phase(self) -> str:
        """"dwelling", "confirming", "finished" or "following" (a key of PHASE_MESSAGES)."""
        return ("dwelling" if self.dwelling else "confirming" if self.confirming else
                "finished" if self.finished else "following")


def plan_from_deltas(ee_pose: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chain (N, 7) action-mode deltas (dx dy dz, base-frame rotation vector, gripper) from the
    measured pose (7) into a plan: poses (N+1, 7) starting at the pose, gripper (N+1,) (NaN first)."""
    ee_pose = np.asarray(ee_pose, dtype=np.float64)
    actions = np.asarray(actions, dtype=np.float64).reshape(-1, 7)
    poses = [ee_pose[:7].copy()]
    position, R = ee_pose[:3].copy(), quat_to_matrix(ee_pose[3:7])
    for action in actions:
        position = position + action[:3]
        R = rotvec_to_matrix(action[3:6]) @ R
        poses.append(np.concatenate([position, matrix_to_quat(R)]))
    return np.array(poses), np.concatenate([[np.nan], actions[:, 6]])


class WaypointFollower:
    def __init__(self, reach_tolerance: float = 0.01, lookahead: int = 0, gripper_settle_s: float = 0.5,
                 initial_gripper: float = 0.0, gripper_tolerance: float = 0.005,
                 gripper_confirm_distance: float = 0.02) -> None:
        if not reach_tolerance > 0 or not gripper_tolerance > 0:
            raise InvalidInputError(f"reach_tolerance and gripper_tolerance must be positive, got {reach_tolerance}, {gripper_tolerance}")
        if not gripper_confirm_distance > 0:
            raise InvalidInputError(f"gripper_confirm_distance must be positive, got {gripper_confirm_distance}")
        self.gripper_confirm_distance = float(gripper_confirm_distance)
        if lookahead < 0:
            raise InvalidInputError(f"lookahead must be >= 0, got {lookahead}")
        if gripper_settle_s < 0:
            raise InvalidInputError(f"gripper_settle_s must be >= 0, got {gripper_settle_s}")
        self.reach_tolerance = float(reach_tolerance)
        self.gripper_tolerance = min(float(gripper_tolerance), self.reach_tolerance)
        self.lookahead = int(lookahead)
        self.settle_ns = int(gripper_settle_s * 1e9)
        self.gripper = float(initial_gripper)
        self.poses: np.ndarray | None = None
        self.plan_gripper: np.ndarray | None = None
        self.index = 0
        self._dwell_until_ns = 0
        self._dwell_pose: np.ndarray | None = None
        self.switch_settled_ns = 0  # when the last gripper switch ended: older frames show the old state
        self.plans_valid_from_ns = 0  # plans made from frames before this are void (a new task began)

    @property
    def has_plan(self) -> bool:
        return self.poses is not None

    def set_plan(self, poses: np.ndarray, gripper: np.ndarray | None = None, ee_position: np.ndarray | None = None,
                 source_stamp_ns: int | None = None) -> bool:
        """Replace the plan: poses (N, 7) xyz + quat xyzw, row 0 being where the arm was at the frame;
        gripper (N,) in 0..1, NaN or None where the plan does not say (the command is kept); row 0's is
        ignored (it is the state the frame showed, not a command).
        Without `ee_position` following starts at step 1. Returns False (the plan is kept as it was)
        when `source_stamp_ns`, the plan's frame time, is before the last gripper switch settled or before
        `start_over`."""
        poses = np.asarray(poses, dtype=np.float64)
        if poses.ndim != 2 or poses.shape[1] != 7 or poses.shape[0] == 0:
            raise InvalidInputError(f"plan poses must have shape (N, 7) with N >= 1, got {poses.shape}")
        if not np.all(np.isfinite(poses)):
            raise InvalidInputError("plan poses contain NaN or inf")
        if gripper is not None:
            gripper = np.asarray(gripper, dtype=np.float64).reshape(-1)
            if gripper.shape[0] != poses.shape[0]:
                raise InvalidInputError(f"plan has {poses.shape[0]} poses but {gripper.shape[0]} gripper values")
            # Unknown gripper steps keep whatever the arm is doing.
            gripper = np.where(np.isfinite(gripper), np.clip(gripper, 0.0, 1.0), np.nan)
            # Row 0 is the hand as the frame showed it: its gripper state is what the policy saw, not a command.
            # Followed as one, a plan from a frame taken while the fingers were still moving switched them back
            # (open at the place, then a plan saying "closed now" closed them again, and so on).
            gripper[0] = np.nan
        if source_stamp_ns is not None and source_stamp_ns < max(self.switch_settled_ns, self.plans_valid_from_ns):
            return False
        self.poses, self.plan_gripper = poses, gripper
        if ee_position is None:
            self.index = 1 if poses.shape[0] > 1 else 0
        else:
            self.index = self._start_index(np.asarray(ee_position, dtype=np.float64)[:3])
        return True

    def _start_index(self, ee: np.ndarray) -> int:
        positions = self.poses[:, :3]
        k = int(np.argmin(np.linalg.norm(positions - ee, axis=1)))
        if k < len(positions) - 1 and not self._changes_gripper(k):
            # Past waypoint k already (on the far side of it, toward k+1)? Then do not go back to it.
            if float(np.dot(ee - positions[k], positions[k + 1] - positions[k])) > 0:
                k += 1
        return k

    def _tolerance(self, index: int) -> float:
        return self.gripper_tolerance if self._changes_gripper(index) else self.reach_tolerance

    def _changes_gripper(self, index: int) -> bool:
        if self.plan_gripper is None or not np.isfinite(self.plan_gripper[index]):
            return False
        return (self.plan_gripper[index] >= GRIPPER_CHANGE) != (self.gripper >= GRIPPER_CHANGE)

    def clear(self) -> None:
        self.poses = self.plan_gripper = None

    def start_over(self, now_ns: int) -> None:
        """A new task: drop the plan and turn down plans made from frames taken before `now_ns` (they were
        planned for the old task, e.g. the previous episode's scene, and can still be on their way)."""
        self.clear()
        self.plans_valid_from_ns = int(now_ns)

    def step(self, ee_position: np.ndarray, now_ns: int) -> FollowCommand | None:
        """The command for this control step given the measured TCP position; None without a plan."""
        if self.poses is None:
            return None
        ee = np.asarray(ee_position, dtype=np.float64)[:3]
        last = self.poses.shape[0] - 1
        if now_ns < self._dwell_until_ns and self._dwell_pose is not None:
            return FollowCommand(self._dwell_pose.copy(), self.gripper, self.index, False, True)
        while np.linalg.norm(self.poses[self.index, :3] - ee) <= self._tolerance(self.index):
            if self._changes_gripper(self.index) and not self._seen_from_close_by(self.index):
                # Wait here for a plan made from a frame that shows the hand at this place.
                return FollowCommand(self.poses[self.index].copy(), self.gripper, self.index, False, False, True)
            if self._reach(self.index, now_ns):
                return FollowCommand(self._dwell_pose.copy(), self.gripper, self.index, False, True)
            if self.index == last:
                break
            self.index += 1
        target_index = min(self.index + self.lookahead, last)
        if self.lookahead and self.plan_gripper is not None:
            # Never look past a gripper change: the arm must stop there first.
            for i in range(self.index, target_index):
                if self._changes_gripper(i):
                    target_index = i
                    break
        finished = self.index == last and np.linalg.norm(self.poses[last, :3] - ee) <= self._tolerance(last)
        return FollowCommand(self.poses[target_index].copy(), self.gripper, target_index, bool(finished), False)

    def _seen_from_close_by(self, index: int) -> bool:
        """Whether the plan was made with the hand (its row 0) within gripper_confirm_distance of waypoint `index`."""
        return float(np.linalg.norm(self.poses[0, :3] - self.poses[index, :3])) <= self.gripper_confirm_distance

    def _reach(self, index: int, now_ns: int) -> bool:
        """Apply the gripper state of a reached waypoint; True when that starts a dwell."""
        if self.plan_gripper is None or not np.isfinite(self.plan_gripper[index]):
            return False
        changed = self._changes_gripper(index)
        self.gripper = float(self.plan_gripper[index])
        if changed:
            self.switch_settled_ns = now_ns + self.settle_ns
        if changed and self.settle_ns > 0:
            self._dwell_until_ns = now_ns + self.settle_ns
            self._dwell_pose = self.poses[index].copy()
            if index < self.poses.shape[0] - 1:
                self.index = index + 1  # after the dwell, go on from the next waypoint
            return True
        return False

"""The Franka Panda from pybullet_data: joint-space position control driven by inverse kinematics.

The tool centre point (TCP) is the URDF's ``panda_grasptarget`` link, the point between the
fingertips; every end-effector pose in this package is that link's pose in the base frame.
"""
from __future__ import annotations

import numpy as np
import pybullet as p
import pybullet_data

ARM_JOINTS = tuple(range(7))
FINGER_JOINTS = (9, 10)
HAND_LINK = 8
TCP_LINK = 11
GRIPPER_LINKS = (8, 9, 10, 11)  # hand, both fingers, TCP: what "the gripper" covers in a segmentation mask
HOME_JOINTS = (0.0, -0.4, 0.0, -2.3, 0.0, 1.9, 0.785)  # TCP at (0.43, 0, 0.40), pointing down
ARM_FORCES = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
# Position gain of PyBullet's joint motors: at 240 Hz this settles a 10 Hz step with ~4 mm lag while moving.
ARM_POSITION_GAIN = 0.1
FINGER_FORCE = 20.0
FINGER_MAX = 0.04  # per finger, metres
MAX_OPENING = 2 * FINGER_MAX


class Panda:
    """Loads the arm at the base-frame origin and exposes what a controller and an observation need."""

    def __init__(self, client: int) -> None:
        self.client = client
        self.body_id = p.loadURDF("franka_panda/panda.urdf", (0.0, 0.0, 0.0), useFixedBase=True,
                                  flags=p.URDF_ENABLE_CACHED_GRAPHICS_SHAPES, physicsClientId=client)
        info = [p.getJointInfo(self.body_id, j, physicsClientId=client) for j in ARM_JOINTS + FINGER_JOINTS]
        self._lower = [i[8] for i in info]
        self._upper = [i[9] for i in info]
        self._ranges = [u - l for l, u in zip(self._lower, self._upper)]
        self._rest = list(HOME_JOINTS) + [FINGER_MAX, FINGER_MAX]
        for j in FINGER_JOINTS:
            p.changeDynamics(self.body_id, j, lateralFriction=1.5, spinningFriction=0.002, physicsClientId=client)
        # The real fingers are geared together; two independent force-limited joints would let a held
        # block slide sideways (one finger opening as the other closes) whenever the hand accelerates.
        gear = p.createConstraint(self.body_id, FINGER_JOINTS[0], self.body_id, FINGER_JOINTS[1], jointType=p.JOINT_GEAR,
                                  jointAxis=(1, 0, 0), parentFramePosition=(0, 0, 0), childFramePosition=(0, 0, 0),
                                  physicsClientId=client)
        p.changeConstraint(gear, gearRatio=-1, erp=0.1, maxForce=50, physicsClientId=client)
        self.reset()

    def reset(self, joints=HOME_JOINTS) -> None:
        """Teleport to `joints` with the gripper open and hold there."""
        for j, q in zip(ARM_JOINTS, joints):
            p.resetJointState(self.body_id, j, q, 0.0, physicsClientId=self.client)
        for j in FINGER_JOINTS:
            p.resetJointState(self.body_id, j, FINGER_MAX, 0.0, physicsClientId=self.client)
        self.command_joints(np.asarray(joints, dtype=np.float64))
        self.command_gripper(0.0)

    def inverse_kinematics(self, position: np.ndarray, quat_xyzw: np.ndarray) -> np.ndarray:
        """Arm joint angles (7) that put the TCP at `position` with orientation `quat_xyzw` (base frame)."""
        q = p.calculateInverseKinematics(
            self.body_id, TCP_LINK, list(map(float, position)), list(map(float, quat_xyzw)),
            lowerLimits=self._lower, upperLimits=self._upper, jointRanges=self._ranges, restPoses=self._rest,
            maxNumIterations=50, residualThreshold=1e-5, physicsClientId=self.client)
        return np.clip(np.asarray(q[:7]), self._lower[:7], self._upper[:7])

    def command_joints(self, joints: np.ndarray) -> None:
        p.setJointMotorControlArray(self.body_id, list(ARM_JOINTS), p.POSITION_CONTROL, targetPositions=list(joints),
                                    forces=list(ARM_FORCES), positionGains=[ARM_POSITION_GAIN] * 7,
                                    physicsClientId=self.client)

    def command_gripper(self, closure: float) -> None:
        """0 opens the fingers fully, 1 closes them; values between set a proportional opening."""
        target = FINGER_MAX * (1.0 - float(np.clip(closure, 0.0, 1.0)))
        p.setJointMotorControlArray(self.body_id, list(FINGER_JOINTS), p.POSITION_CONTROL, targetPositions=[target] * 2,
                                    forces=[FINGER_FORCE] * 2, physicsClientId=self.client)

    def tcp_pose(self) -> np.ndarray:
        """(7,) TCP position + quaternion xyzw in the base frame."""
        s = p.getLinkState(self.body_id, TCP_LINK, computeForwardKinematics=True, physicsClientId=self.client)
        return np.array(s[4] + s[5], dtype=np.float64)

    def hand_pose_matrix(self) -> np.ndarray:
        """4x4 pose of the hand link (where a wrist camera is mounted)."""
        s = p.getLinkState(self.body_id, HAND_LINK, computeForwardKinematics=True, physicsClientId=self.client)
        T = np.eye(4)
        T[:3, :3] = np.asarray(p.getMatrixFromQuaternion(s[5]), dtype=np.float64).reshape(3, 3)
        T[:3, 3] = s[4]
        return T

    def joint_positions(self) -> np.ndarray:
        states = p.getJointStates(self.body_id, list(ARM_JOINTS), physicsClientId=self.client)
        return np.array([s[0] for s in states], dtype=np.float64)

    def gripper_opening(self) -> float:
        """Distance between the fingers, metres (0 closed, 0.08 fully open)."""
        states = p.getJointStates(self.body_id, list(FINGER_JOINTS), physicsClientId=self.client)
        return float(states[0][0] + states[1][0])

    def touching(self, body_id: int) -> bool:
        """Whether any part of the arm or hand is in contact with `body_id`."""
        return len(p.getContactPoints(self.body_id, body_id, physicsClientId=self.client)) > 0

    def finger_contacts(self, body_id: int) -> int:
        """How many fingers touch `body_id` (2 means it is pinched)."""
        return sum(bool(p.getContactPoints(self.body_id, body_id, linkIndexA=j, physicsClientId=self.client))
                   for j in FINGER_JOINTS)


def data_path() -> str:
    return pybullet_data.getDataPath()

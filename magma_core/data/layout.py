"""How an Episode's arrays become the flat per-frame vectors datasets and models use.

``observation.state`` = end-effector pose (x, y, z, qx, qy, qz, qw) + gripper width + joints, the
same order everywhere (LeRobot columns, training samples), so a model trained on one source reads
another. ``action`` is Magma's 7 numbers (see magma_core.data.episode).

Readers of foreign data record what they could not fill in under these Episode.metadata keys;
absent means known:
- ``camera_known``: False when the camera parameters are a nominal placeholder.
- ``actions_known``: False when ``actions`` are zeros because the source's actions could not be
  mapped to the 7-number convention (the raw ones are kept in ``metadata["raw_actions"]``).
- ``ee_pose_known``: False when ``ee_pose``/``gripper`` are placeholders (raw state in
  ``metadata["raw_state"]``).
"""
from __future__ import annotations

import numpy as np

from magma_core.data.episode import CameraParams, Episode
from magma_core.errors import InvalidInputError

EE_POSE_NAMES = ["ee_x", "ee_y", "ee_z", "ee_qx", "ee_qy", "ee_qz", "ee_qw"]
ACTION_NAMES = ["delta_x", "delta_y", "delta_z", "delta_rx", "delta_ry", "delta_rz", "gripper_closed"]
WAYPOINT_NAMES = ["x", "y", "z", "qx", "qy", "qz", "qw", "gripper_closed"]
IDENTITY_POSE = np.array([0, 0, 0, 0, 0, 0, 1], dtype=np.float64)


def state_names(num_joints: int) -> list[str]:
    """Names of the observation.state entries for an arm with `num_joints` joints."""
    return EE_POSE_NAMES + ["gripper_width"] + [f"joint_{j}" for j in range(num_joints)]


def state_vectors(episode: Episode) -> np.ndarray:
    """(T, 8 + J) float32: ee_pose, gripper, joints per frame."""
    return np.concatenate([episode.ee_pose, episode.gripper, episode.joints], axis=1).astype(np.float32)


def split_state(state: np.ndarray, num_joints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of state_vectors: (T, 8 + J) -> ee_pose (T, 7), gripper (T, 1), joints (T, J)."""
    state = np.asarray(state, dtype=np.float64)
    if state.ndim != 2 or state.shape[1] != 8 + num_joints:
        raise InvalidInputError(f"state must be (T, {8 + num_joints}), got {state.shape}")
    return state[:, :7], state[:, 7:8], state[:, 8:]


def nominal_camera(width: int, height: int, name: str = "front") -> CameraParams:
    """A placeholder pinhole for data without calibration: ~53 degree horizontal field of view,
    principal point at the image centre, camera frame = base frame. Flag it with camera_known=False."""
    focal = float(width)
    intrinsics = np.array([[focal, 0, width / 2.0], [0, focal, height / 2.0], [0, 0, 1]])
    return CameraParams(width=int(width), height=int(height), intrinsics=intrinsics, extrinsics=np.eye(4), name=name)


def known(episode: Episode, what: str) -> bool:
    """Whether `what` ("camera", "actions", "ee_pose") is real data rather than a placeholder."""
    return bool(episode.metadata.get(f"{what}_known", True))

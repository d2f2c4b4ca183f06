"""Small quaternion helpers (xyzw, like PyBullet) in pure numpy, so labels need no simulator."""
from __future__ import annotations

import numpy as np


def normalize_quat(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return q / np.linalg.norm(q)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (3x3) of a unit quaternion xyzw."""
    x, y, z, w = normalize_quat(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (apply b first, then a), xyzw."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]], dtype=np.float64)


def axis_angle_to_quat(rotvec: np.ndarray) -> np.ndarray:
    """Quaternion xyzw of a rotation vector (axis * angle, radians)."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = rotvec / angle
    return np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, angle in [0, pi]) of a quaternion xyzw."""
    q = normalize_quat(q)
    if q[3] < 0:  # same rotation, shorter way round
        q = -q
    sin_half = float(np.linalg.norm(q[:3]))
    if sin_half < 1e-12:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(sin_half, q[3])
    return q[:3] / sin_half * angle


def rotation_delta(q_from: np.ndarray, q_to: np.ndarray) -> np.ndarray:
    """Rotation vector r (base frame) such that rotating q_from by r gives q_to: q_to = exp(r) * q_from."""
    return quat_to_axis_angle(quat_multiply(normalize_quat(q_to), quat_conjugate(normalize_quat(q_from))))


def apply_rotation_delta(q: np.ndarray, rotvec: np.ndarray) -> np.ndarray:
    """q rotated by the base-frame rotation vector rotvec."""
    return normalize_quat(quat_multiply(axis_angle_to_quat(rotvec), normalize_quat(q)))


def yaw_quat_down(yaw: float) -> np.ndarray:
    """Gripper pointing straight down (tool z along base -z), turned by yaw about the vertical."""
    # Roll pi about x flips the tool to point down; then yaw about the base z axis.
    down = np.array([1.0, 0.0, 0.0, 0.0])
    return quat_multiply(axis_angle_to_quat([0.0, 0.0, yaw]), down)


def yaw_of(q: np.ndarray) -> float:
    """Heading of the body's x axis in the base xy plane (radians)."""
    R = quat_to_matrix(q)
    return float(np.arctan2(R[1, 0], R[0, 0]))

"""Rigid transforms in pure numpy: 4x4 matrices, quaternions (xyzw, like ROS) and rotation vectors.

A transform ``T_a_b`` maps points from frame b to frame a (``p_a = T_a_b @ p_b``), i.e. it is the
pose of frame b expressed in frame a.
"""
from __future__ import annotations

import numpy as np

from magma_core.errors import InvalidInputError


def make_transform(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform (or a stack of them, shape (..., 4, 4)) without a general inverse."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    Rt = np.swapaxes(R, -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, T[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def quat_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """Rotation matrix of a quaternion xyzw (normalised first)."""
    q = np.asarray(q_xyzw, dtype=np.float64).reshape(4)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise InvalidInputError(f"quaternion {q.tolist()} has no direction (norm {n})")
    x, y, z, w = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Quaternion xyzw (w >= 0) of a rotation matrix; numerically safe for every angle."""
    R = np.asarray(R, dtype=np.float64)
    trace = R[0, 0] + R[1, 1] + R[2, 2]
    # Pick the largest of w, x, y, z to divide by, so no division by a value near zero.
    candidates = [trace, R[0, 0], R[1, 1], R[2, 2]]
    k = int(np.argmax(candidates))
    if k == 0:
        s = 2.0 * np.sqrt(max(1.0 + trace, 1e-300))
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif k == 1:
        s = 2.0 * np.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 1e-300))
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif k == 2:
        s = 2.0 * np.sqrt(max(1.0 + R[1, 1] - R[0, 0] - R[2, 2], 1e-300))
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(max(1.0 + R[2, 2] - R[0, 0] - R[1, 1], 1e-300))
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: rotation matrix of axis * angle (radians)."""
    r = np.asarray(rotvec, dtype=np.float64).reshape(3)
    angle = float(np.linalg.norm(r))
    K = np.array([[0.0, -r[2], r[1]], [r[2], 0.0, -r[0]], [-r[1], r[0], 0.0]])
    if angle < 1e-8:  # second-order series keeps tiny perturbations (used by the solvers) accurate
        return np.eye(3) + K + 0.5 * K @ K
    K /= angle
    return np.eye(3) + np.sin(angle) * K + (1.0 - np.cos(angle)) * K @ K


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Axis * angle (radians, angle in [0, pi]) of a rotation matrix."""
    q = matrix_to_quat(R)
    s = float(np.linalg.norm(q[:3]))
    if s < 1e-12:
        return np.zeros(3)
    return q[:3] / s * (2.0 * np.arctan2(s, q[3]))


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a rotation matrix in degrees, in [0, 180]."""
    cos = (np.trace(np.asarray(R, dtype=np.float64)) - 1.0) / 2.0
    # arccos is inaccurate near 0; the sine from the skew part keeps small angles exact.
    sin = np.linalg.norm([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / 2.0
    return float(np.degrees(np.arctan2(sin, np.clip(cos, -1.0, 1.0))))


def pose_to_matrix(position: np.ndarray, quat_xyzw: np.ndarray) -> np.ndarray:
    return make_transform(quat_to_matrix(quat_xyzw), position)


def matrix_to_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position xyz, quaternion xyzw) of a 4x4 transform."""
    T = np.asarray(T, dtype=np.float64)
    return T[:3, 3].copy(), matrix_to_quat(T[:3, :3])


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation matrix closest to M in the Frobenius norm (projection via SVD)."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def check_rigid_transform(T: object, name: str, tol: float = 1e-6) -> np.ndarray:
    """Return T as a float 4x4 array if it is a finite rigid transform; raise InvalidInputError otherwise."""
    try:
        T = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name}: not a numeric 4x4 matrix ({exc})") from exc
    if T.shape != (4, 4):
        raise InvalidInputError(f"{name}: expected a 4x4 transform, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise InvalidInputError(f"{name}: transform contains NaN or inf")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=tol):
        raise InvalidInputError(f"{name}: last row must be [0, 0, 0, 1], got {T[3].tolist()}")
    R = T[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=tol) or np.linalg.det(R) < 0:
        raise InvalidInputError(f"{name}: the 3x3 block is not a rotation (not orthonormal or a reflection)")
    return T

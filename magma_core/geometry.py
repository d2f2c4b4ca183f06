"""The little camera geometry a policy needs: project, unproject, lift a 2.5D trace, quaternions.

Conventions (the project's, see ``magma_core.data.episode``): pixel ``(u, v)`` with integer
values at pixel centres, OpenCV camera axes (x right, y down, z forward), ``depth`` is the
distance along the camera z axis, ``extrinsics`` is the 4x4 camera-to-base transform, poses
are xyz + quaternion xyzw in the base frame. No lens distortion: images reaching a policy
are rectified. The calibration room has the full-featured version; ``magma_core`` may not
import it, hence this small copy.
"""
from __future__ import annotations

import numpy as np

from magma_core.errors import InvalidInputError


def as_intrinsics(K: object) -> np.ndarray:
    """K as a float 3x3 pinhole matrix, or InvalidInputError naming what is wrong."""
    try:
        K = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"intrinsics: not numeric ({exc})") from exc
    if K.shape != (3, 3):
        raise InvalidInputError(f"intrinsics: expected a 3x3 matrix, got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise InvalidInputError("intrinsics contain NaN or inf")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0.0, 0.0, 1.0)):
        raise InvalidInputError(f"intrinsics: need positive focal lengths and last row [0, 0, 1], got {K.tolist()}")
    return K


def as_extrinsics(T: object) -> np.ndarray:
    """T (camera-to-base) as a float 4x4 rigid transform, or InvalidInputError."""
    try:
        T = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"extrinsics: not numeric ({exc})") from exc
    if T.shape != (4, 4):
        raise InvalidInputError(f"extrinsics: expected a 4x4 transform, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise InvalidInputError("extrinsics contain NaN or inf")
    R = T[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0 or not np.allclose(T[3], (0, 0, 0, 1)):
        raise InvalidInputError("extrinsics are not a rigid transform (rotation not orthonormal, or bad last row)")
    return T


def project(points: object, intrinsics: object, extrinsics: object) -> np.ndarray:
    """Base-frame points (..., 3) -> (..., 3): pixel u, v and depth along the camera z (metres).

    Points at or behind the camera keep their depth (<= 0); their u, v are then meaningless.
    """
    K, T = as_intrinsics(intrinsics), as_extrinsics(extrinsics)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 0 or pts.shape[-1] != 3:
        raise InvalidInputError(f"points: expected shape (..., 3), got {pts.shape}")
    return project_unchecked(pts, K, T)


def project_unchecked(pts: np.ndarray, K: np.ndarray, T: np.ndarray) -> np.ndarray:
    """`project` without the checks, for callers that validated K and T once."""
    R, t = T[:3, :3], T[:3, 3]
    cam = (pts - t) @ R  # R^T (p - t), row-vector form
    z = cam[..., 2]
    safe = np.where(np.abs(z) < 1e-9, 1e-9, z)
    u = K[0, 0] * cam[..., 0] / safe + K[0, 1] * cam[..., 1] / safe + K[0, 2]
    v = K[1, 1] * cam[..., 1] / safe + K[1, 2]
    return np.stack([u, v, z], axis=-1)


def pixel_rays(uv: object, intrinsics: object) -> np.ndarray:
    """Pixels (..., 2) -> camera-frame ray directions (..., 3) scaled so that z == 1."""
    K = as_intrinsics(intrinsics)
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim == 0 or uv.shape[-1] != 2:
        raise InvalidInputError(f"pixels: expected shape (..., 2), got {uv.shape}")
    y = (uv[..., 1] - K[1, 2]) / K[1, 1]
    x = (uv[..., 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def unproject(uv: object, depth: object, intrinsics: object, extrinsics: object) -> np.ndarray:
    """Pixels (..., 2) at `depth` (...) metres along the camera z -> base-frame points (..., 3).

    NaN depth gives NaN points (callers mask them); no error, since depth images have holes.
    """
    T = as_extrinsics(extrinsics)
    rays = pixel_rays(uv, intrinsics)
    depth = np.asarray(depth, dtype=np.float64)
    cam = rays * depth[..., None]
    return cam @ T[:3, :3].T + T[:3, 3]


def depth_to_points(depth: object, intrinsics: object, extrinsics: object) -> np.ndarray:
    """A depth image (H, W) -> base-frame points (H, W, 3); NaN where depth is NaN or <= 0."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise InvalidInputError(f"depth: expected an (H, W) image, got shape {depth.shape}")
    h, w = depth.shape
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    return unproject(np.stack([uu, vv], axis=-1), np.where(valid, depth, np.nan), intrinsics, extrinsics)


def ray_plane_intersection(uv: object, intrinsics: object, extrinsics: object, normal: object,
                           offset: float) -> np.ndarray:
    """Where pixel rays (..., 2) meet the base-frame plane ``normal . p + offset = 0``: (..., 3) points.

    NaN where a ray is parallel to the plane or meets it behind the camera.
    """
    T = as_extrinsics(extrinsics)
    n = np.asarray(normal, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(n)) or np.linalg.norm(n) < 1e-9 or not np.isfinite(offset):
        raise InvalidInputError(f"plane: need a finite non-zero normal and finite offset, got {n.tolist()}, {offset}")
    rays = pixel_rays(uv, intrinsics) @ T[:3, :3].T  # base-frame directions
    origin = T[:3, 3]
    denom = rays @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        s = -(origin @ n + offset) / denom
    s = np.where((np.abs(denom) > 1e-12) & (s > 0), s, np.nan)
    return origin + rays * s[..., None]


def lift_trace(trace, intrinsics: object, extrinsics: object) -> tuple[np.ndarray, np.ndarray]:
    """A 2.5D trace -> (N, 3) base-frame points and (N,) gripper states (0 open, 1 closed).

    Uses only the calibration and the trace's own depth, as a controller does. Raises
    InvalidInputError for a 2D trace (no depth), missing gripper, or non-finite/non-positive depth.
    """
    if getattr(trace, "depth", None) is None or getattr(trace, "gripper", None) is None:
        raise InvalidInputError(f"trace {getattr(trace, 'mark_id', '?')}: lifting needs depth and gripper per step (a 2.5D trace)")
    depth = np.asarray(trace.depth, dtype=np.float64)
    if not np.all(np.isfinite(depth)) or np.any(depth <= 0):
        raise InvalidInputError(f"trace {trace.mark_id}: depth must be finite and positive to lift it")
    points = np.asarray(trace.points, dtype=np.float64)
    if not np.all(np.isfinite(points)):
        raise InvalidInputError(f"trace {trace.mark_id}: points contain NaN or inf")
    return unproject(points, depth, intrinsics, extrinsics), np.asarray(trace.gripper, dtype=np.float64).copy()


# --------------------------------------------------------------------------- quaternions (xyzw)


def as_pose(pose: object, name: str = "ee_pose") -> np.ndarray:
    """A pose as 7 floats (xyz + unit quaternion xyzw), or InvalidInputError."""
    try:
        pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name}: not numeric ({exc})") from exc
    if pose.shape != (7,) or not np.all(np.isfinite(pose)):
        raise InvalidInputError(f"{name}: expected 7 finite numbers (xyz + quaternion xyzw), got {pose.tolist()}")
    norm = float(np.linalg.norm(pose[3:]))
    if norm < 1e-6:
        raise InvalidInputError(f"{name}: quaternion has zero length")
    return np.concatenate([pose[:3], pose[3:] / norm])


def quat_to_matrix(q: object) -> np.ndarray:
    """3x3 rotation matrix of a quaternion xyzw (normalised first)."""
    q = np.asarray(q, dtype=np.float64).reshape(4)
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def quat_multiply(a: object, b: object) -> np.ndarray:
    """Hamilton product a * b (b applied first), xyzw."""
    ax, ay, az, aw = np.asarray(a, dtype=np.float64)
    bx, by, bz, bw = np.asarray(b, dtype=np.float64)
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])


def yaw_down_quat(yaw: float) -> np.ndarray:
    """Tool pointing straight down (tool z along base -z), turned by `yaw` about the base z axis."""
    half = 0.5 * float(yaw)
    turn = np.array([0.0, 0.0, np.sin(half), np.cos(half)])
    return quat_multiply(turn, np.array([1.0, 0.0, 0.0, 0.0]))


def yaw_of(q: object) -> float:
    """Heading of the body's x axis in the base xy plane (radians)."""
    R = quat_to_matrix(q)
    return float(np.arctan2(R[1, 0], R[0, 0]))


def pose_matrix(pose: object) -> np.ndarray:
    """4x4 transform of a pose (xyz + quaternion xyzw)."""
    pose = as_pose(pose, "pose")
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(pose[3:])
    T[:3, 3] = pose[:3]
    return T

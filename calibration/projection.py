"""Pixels (+ depth) <-> camera <-> robot base frame, in pure numpy.

Conventions (the same as OpenCV and ROS camera_info):
- pixel coordinates ``(u, v)``: u to the right, v down, integer values at pixel centres;
- camera frame: x right, y down, z forward (the optical frame);
- ``depth`` is the distance along the camera z axis (what a depth image holds), not along the ray;
- ``T_base_cam`` is the 4x4 pose of the camera in the base frame (``p_base = T_base_cam @ p_cam``);
- distortion coefficients follow OpenCV's order ``k1, k2, p1, p2[, k3[, k4, k5, k6]]`` (plumb_bob has
  five, rational_polynomial eight). With coefficients given, pixels are undistorted before lifting
  and projected points are distorted, so ``uv`` always means pixels of the raw image.

Every function is vectorised over leading dimensions: ``uv`` (..., 2), ``depth`` (...), points (..., 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magma_core.errors import InvalidInputError

_UNDISTORT_ITERATIONS = 20
_UNDISTORT_TOL = 1e-12  # normalised image units: ~1e-9 px for a 1000 px focal length


# --------------------------------------------------------------------------- validation


def as_intrinsics(K: object) -> np.ndarray:
    """K as a float 3x3 pinhole matrix; raise InvalidInputError if it cannot be one."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise InvalidInputError(f"intrinsics K: expected a 3x3 matrix, got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise InvalidInputError("intrinsics K contains NaN or inf")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InvalidInputError(f"intrinsics K: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    if not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise InvalidInputError(f"intrinsics K: last row must be [0, 0, 1], got {K[2].tolist()}")
    return K


def as_camera_pose(T: object) -> np.ndarray:
    """T_base_cam as a float 4x4 rigid transform; raise InvalidInputError if it is not one."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise InvalidInputError(f"camera pose T_base_cam: expected a 4x4 transform, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise InvalidInputError("camera pose T_base_cam contains NaN or inf")
    R = T[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0 or not np.allclose(T[3], [0, 0, 0, 1]):
        raise InvalidInputError("camera pose T_base_cam is not a rigid transform (rotation block not orthonormal or bad last row)")
    return T


def as_distortion(dist: object) -> np.ndarray | None:
    """Distortion as 8 coefficients (k1 k2 p1 p2 k3 k4 k5 k6, zero-padded), or None when there is none."""
    if dist is None:
        return None
    d = np.asarray(dist, dtype=np.float64).reshape(-1)
    if d.size not in (0, 4, 5, 8):
        raise InvalidInputError(f"distortion: expected 4, 5 (plumb_bob) or 8 (rational_polynomial) coefficients, got {d.size}")
    if not np.all(np.isfinite(d)):
        raise InvalidInputError("distortion coefficients contain NaN or inf")
    if not np.any(d):
        return None
    return np.concatenate([d, np.zeros(8 - d.size)])


def _as_uv(uv: object) -> np.ndarray:
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim == 0 or uv.shape[-1] != 2:
        raise InvalidInputError(f"pixels uv: expected shape (..., 2), got {uv.shape}")
    if not np.all(np.isfinite(uv)):
        raise InvalidInputError(f"pixels uv contain NaN or inf at {_where(~np.all(np.isfinite(uv), axis=-1))}")
    return uv


def _as_points(points: object, name: str = "points") -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 0 or pts.shape[-1] != 3:
        raise InvalidInputError(f"{name}: expected shape (..., 3), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InvalidInputError(f"{name} contain NaN or inf at {_where(~np.all(np.isfinite(pts), axis=-1))}")
    return pts


def _where(mask: np.ndarray, limit: int = 5) -> str:
    """Human-readable indices of True entries (first few), for error messages."""
    idx = np.argwhere(np.atleast_1d(mask))
    shown = ", ".join(str(tuple(int(i) for i in row)) if len(row) > 1 else str(int(row[0])) for row in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"index {shown}{more}" if len(idx) else "no index"


# --------------------------------------------------------------------------- distortion


def distort_normalized(xy: np.ndarray, dist: object) -> np.ndarray:
    """Apply lens distortion to normalised image coordinates (x/z, y/z)."""
    d = as_distortion(dist)
    xy = np.asarray(xy, dtype=np.float64)
    if d is None:
        return xy.copy()
    return _distort(xy, d)


def _distort(xy: np.ndarray, d: np.ndarray) -> np.ndarray:
    k1, k2, p1, p2, k3, k4, k5, k6 = d
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


def _distort_jacobian(xy: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(..., 2, 2) derivative of the distorted coordinates with respect to the ideal ones."""
    k1, k2, p1, p2, k3, k4, k5, k6 = d
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    num = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    den = 1 + r2 * (k4 + r2 * (k5 + r2 * k6))
    radial = num / den
    d_num = k1 + r2 * (2 * k2 + 3 * k3 * r2)
    d_den = k4 + r2 * (2 * k5 + 3 * k6 * r2)
    d_radial = (d_num * den - num * d_den) / (den * den)  # d radial / d r2
    J = np.empty(xy.shape[:-1] + (2, 2))
    J[..., 0, 0] = radial + 2 * x * x * d_radial + 2 * p1 * y + 6 * p2 * x
    J[..., 0, 1] = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
    J[..., 1, 0] = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
    J[..., 1, 1] = radial + 2 * y * y * d_radial + 6 * p1 * y + 2 * p2 * x
    return J


def undistort_normalized(xy_distorted: np.ndarray, dist: object) -> np.ndarray:
    """Invert the distortion of normalised coordinates by Newton's method.

    Raises InvalidInputError for points where the model has no inverse (far outside the calibrated
    field of view, where the polynomial folds back).
    """
    d = as_distortion(dist)
    target = np.asarray(xy_distorted, dtype=np.float64)
    if d is None:
        return target.copy()
    xy = target.copy()
    for _ in range(_UNDISTORT_ITERATIONS):
        err = _distort(xy, d) - target
        if np.all(np.abs(err) < _UNDISTORT_TOL):
            break
        J = _distort_jacobian(xy, d)
        det = J[..., 0, 0] * J[..., 1, 1] - J[..., 0, 1] * J[..., 1, 0]
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        step_x = (J[..., 1, 1] * err[..., 0] - J[..., 0, 1] * err[..., 1]) / det
        step_y = (-J[..., 1, 0] * err[..., 0] + J[..., 0, 0] * err[..., 1]) / det
        xy = xy - np.stack([step_x, step_y], axis=-1)
    bad = ~np.all(np.abs(_distort(xy, d) - target) < 1e-9, axis=-1) | ~np.all(np.isfinite(xy), axis=-1)
    if np.any(bad):
        raise InvalidInputError(f"cannot undistort pixels at {_where(bad)}: outside the region where the distortion model is invertible")
    return xy


def undistort_pixels(uv: object, K: object, dist: object) -> np.ndarray:
    """Pixels of the raw image -> pixels an ideal (distortion-free) camera with the same K would see."""
    K = as_intrinsics(K)
    uv = _as_uv(uv)
    xy = undistort_normalized(_pixels_to_normalized(uv, K), dist)
    return _normalized_to_pixels(xy, K)


def distort_pixels(uv_ideal: object, K: object, dist: object) -> np.ndarray:
    """Inverse of undistort_pixels: ideal pinhole pixels -> pixels of the raw image."""
    K = as_intrinsics(K)
    uv = _as_uv(uv_ideal)
    return _normalized_to_pixels(distort_normalized(_pixels_to_normalized(uv, K), dist), K)


def _pixels_to_normalized(uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - s * y) / fx
    return np.stack([x, y], axis=-1)


def _normalized_to_pixels(xy: np.ndarray, K: np.ndarray) -> np.ndarray:
    u = K[0, 0] * xy[..., 0] + K[0, 1] * xy[..., 1] + K[0, 2]
    v = K[1, 1] * xy[..., 1] + K[1, 2]
    return np.stack([u, v], axis=-1)


# --------------------------------------------------------------------------- lifting and projecting


def pixel_to_camera(uv: object, depth: object, K: object, dist: object = None) -> np.ndarray:
    """Pixels and depth (metres along the optical axis) -> points (..., 3) in the camera frame."""
    K = as_intrinsics(K)
    uv = _as_uv(uv)
    depth = np.asarray(depth, dtype=np.float64)
    try:
        uv_b, depth_b = np.broadcast_arrays(uv, depth[..., None])
    except ValueError as exc:
        raise InvalidInputError(f"depth of shape {depth.shape} does not match pixels of shape {uv.shape}") from exc
    depth_b = depth_b[..., 0]
    bad = ~np.isfinite(depth_b) | (depth_b <= 0)
    if np.any(bad):
        raise InvalidInputError(f"depth must be finite and positive; invalid (NaN, inf, zero or negative) at {_where(bad)}")
    xy = undistort_normalized(_pixels_to_normalized(uv_b, K), dist)
    return np.concatenate([xy * depth_b[..., None], depth_b[..., None]], axis=-1)


def camera_to_pixel(points_cam: object, K: object, dist: object = None) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points -> (uv (..., 2), depth (...)). Points with depth <= 0 get uv = NaN."""
    K = as_intrinsics(K)
    pts = _as_points(points_cam, "camera points")
    z = pts[..., 2]
    in_front = z > 0
    safe_z = np.where(in_front, z, 1.0)
    xy = pts[..., :2] / safe_z[..., None]
    d = as_distortion(dist)
    if d is not None:
        xy = _distort(xy, d)
    uv = _normalized_to_pixels(xy, K)
    uv[~in_front] = np.nan
    return uv, z.copy()


def pixel_to_base(uv: object, depth: object, K: object, T_base_cam: object, dist: object = None) -> np.ndarray:
    """Pixels + depth -> points (..., 3) in the base frame."""
    T = as_camera_pose(T_base_cam)
    cam = pixel_to_camera(uv, depth, K, dist)
    return cam @ T[:3, :3].T + T[:3, 3]


def base_to_pixel(points: object, K: object, T_base_cam: object, dist: object = None) -> tuple[np.ndarray, np.ndarray]:
    """Base-frame points -> (uv (..., 2), depth (...) along the optical axis).

    Points behind the camera (depth <= 0) keep their depth and get uv = NaN.
    """
    T = as_camera_pose(T_base_cam)
    pts = _as_points(points)
    R, t = T[:3, :3], T[:3, 3]
    cam = (pts - t) @ R  # R^T (p - t), row-wise
    return camera_to_pixel(cam, K, dist)


def pixel_rays(uv: object, K: object, T_base_cam: object, dist: object = None) -> tuple[np.ndarray, np.ndarray]:
    """Rays through pixels in the base frame: (origin (3,), unit directions (..., 3))."""
    K = as_intrinsics(K)
    T = as_camera_pose(T_base_cam)
    uv = _as_uv(uv)
    xy = undistort_normalized(_pixels_to_normalized(uv, K), dist)
    d_cam = np.concatenate([xy, np.ones(xy.shape[:-1] + (1,))], axis=-1)
    d_base = d_cam @ T[:3, :3].T
    return T[:3, 3].copy(), d_base / np.linalg.norm(d_base, axis=-1, keepdims=True)


def pixel_ray_to_plane(uv: object, K: object, T_base_cam: object, plane_normal: object = (0.0, 0.0, 1.0),
                       plane_offset: float = 0.0, dist: object = None, min_cos: float = 1e-6) -> np.ndarray:
    """Where the rays through pixels meet the plane ``n . p = offset`` (base frame): points (..., 3).

    For 2D-only traces, e.g. the table top ``n = (0, 0, 1), offset = table height``. Raises
    InvalidInputError naming the pixels whose ray is parallel to the plane or meets it behind the camera.
    """
    n = np.asarray(plane_normal, dtype=np.float64).reshape(-1)
    if n.shape != (3,) or not np.all(np.isfinite(n)) or np.linalg.norm(n) < 1e-12:
        raise InvalidInputError(f"plane_normal must be a finite non-zero 3-vector, got {np.asarray(plane_normal).tolist()}")
    if not np.isfinite(plane_offset):
        raise InvalidInputError(f"plane_offset must be finite, got {plane_offset}")
    scale = np.linalg.norm(n)
    n, offset = n / scale, float(plane_offset) / scale
    origin, directions = pixel_rays(uv, K, T_base_cam, dist)
    cos = directions @ n
    parallel = np.abs(cos) < min_cos
    if np.any(parallel):
        raise InvalidInputError(f"pixel ray parallel to the plane (never meets it) at {_where(parallel)}")
    t = (offset - origin @ n) / cos
    behind = t <= 0
    if np.any(behind):
        raise InvalidInputError(f"the plane is behind the camera along the pixel ray at {_where(behind)}")
    return origin + t[..., None] * directions


# --------------------------------------------------------------------------- depth lookup


@dataclass(frozen=True)
class DepthReading:
    """Depth at one pixel: ``value`` in metres (NaN when unusable) and why it is unusable."""

    value: float
    n_valid: int
    n_window: int
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def __float__(self) -> float:
        return self.value


def robust_depth(depth_image: object, u: float, v: float, window: int = 5, *, min_valid: int = 1,
                 rel_tol: float = 0.02, abs_tol: float = 0.005) -> DepthReading:
    """Depth at pixel (u, v) from a ``window`` x ``window`` neighbourhood, robust to holes and edges.

    NaN, inf, zero and negative values are holes. The valid values are split into surfaces (sorted
    values whose gaps exceed ``max(abs_tol, rel_tol * depth)``); the surface with the most pixels wins,
    ties going to the one the centre pixel lies on, else the nearer one. So a speckle or a window
    straddling an object edge does not drag the estimate between two surfaces. The result is the
    median of the winning surface. When fewer than ``min_valid`` values remain the reading has value
    NaN and a ``reason``; pixels outside the image or a malformed image raise InvalidInputError.
    """
    img = np.asarray(depth_image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim != 2 or img.size == 0:
        raise InvalidInputError(f"depth image: expected an HxW array, got shape {img.shape}")
    if img.dtype.kind not in "uif":
        raise InvalidInputError(f"depth image: non-numeric dtype {img.dtype}")
    if not isinstance(window, (int, np.integer)) or window < 1 or window % 2 == 0:
        raise InvalidInputError(f"window must be a positive odd integer, got {window!r}")
    if not (np.isfinite(u) and np.isfinite(v)):
        raise InvalidInputError(f"pixel ({u}, {v}) is not finite")
    h, w = img.shape
    col, row = int(np.floor(u + 0.5)), int(np.floor(v + 0.5))  # integer coordinates are pixel centres
    if not (0 <= col < w and 0 <= row < h):
        raise InvalidInputError(f"pixel ({u}, {v}) is outside the {w}x{h} depth image")
    half = window // 2
    r0, r1, c0, c1 = max(row - half, 0), min(row + half + 1, h), max(col - half, 0), min(col + half + 1, w)
    patch = img[r0:r1, c0:c1].astype(np.float64)
    n_window = patch.size
    finite = np.isfinite(patch)
    valid = finite & (patch > 0)
    values = patch[valid]
    where = f"in the {window}x{window} window at ({u:g}, {v:g})"
    if values.size == 0:
        n_nan, n_nonpos = int((~finite).sum()), int((finite & (patch <= 0)).sum())
        return DepthReading(float("nan"), 0, n_window, f"no valid depth {where}: {n_nan} NaN/inf, {n_nonpos} zero or negative")
    centre = patch[row - r0, col - c0] if valid[row - r0, col - c0] else None
    surface = _dominant_surface(values, centre, rel_tol, abs_tol)
    if surface.size < min_valid:
        return DepthReading(float("nan"), int(surface.size), n_window,
                            f"only {surface.size} consistent depth values {where}, need {min_valid}")
    return DepthReading(float(np.median(surface)), int(surface.size), n_window)


def _dominant_surface(values: np.ndarray, centre: float | None, rel_tol: float, abs_tol: float) -> np.ndarray:
    ordered = np.sort(values)
    tol = np.maximum(abs_tol, rel_tol * ordered[:-1])
    breaks = np.flatnonzero(np.diff(ordered) > tol) + 1
    clusters = np.split(ordered, breaks)
    sizes = np.array([c.size for c in clusters])
    best = np.flatnonzero(sizes == sizes.max())
    if best.size > 1 and centre is not None:
        holding = [i for i in best if clusters[i][0] <= centre <= clusters[i][-1]]
        if holding:
            return clusters[holding[0]]
    return clusters[best[0]]  # ties without the centre: the nearest surface (clusters are sorted by depth)

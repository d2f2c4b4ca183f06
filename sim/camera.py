"""Cameras of the tabletop scene: pinhole parameters, PyBullet rendering and point projection.

Everything is expressed with OpenCV camera axes (x right, y down, z forward) and pixel
coordinates whose integer values are pixel centres, so the intrinsics handed to a policy
are the ones a calibrated real camera would have.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as p

from magma_core.data.episode import CameraParams
from magma_core.errors import InvalidInputError

# OpenGL cameras look down their -z axis with y up; OpenCV ones look down +z with y down.
_CV_TO_GL = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class CameraConfig:
    """A static camera looking from ``eye`` at ``target`` (base frame, metres); ``fov_deg`` is vertical."""

    eye: tuple[float, float, float] = (1.05, 0.0, 0.75)
    target: tuple[float, float, float] = (0.48, 0.0, 0.10)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_deg: float = 50.0
    near: float = 0.05
    far: float = 3.0
    name: str = "front"

    def __post_init__(self) -> None:
        if not 1.0 < self.fov_deg < 170.0:
            raise InvalidInputError(f"camera {self.name}: fov_deg must be in (1, 170), got {self.fov_deg}")
        if not 0.0 < self.near < self.far:
            raise InvalidInputError(f"camera {self.name}: need 0 < near < far, got near={self.near} far={self.far}")
        forward = np.subtract(self.target, self.eye)
        if np.linalg.norm(forward) < 1e-6 or np.linalg.norm(np.cross(forward, self.up)) < 1e-6:
            raise InvalidInputError(f"camera {self.name}: eye, target and up must not be collinear")

    def extrinsics(self) -> np.ndarray:
        """4x4 camera-to-base transform (OpenCV axes)."""
        z = np.subtract(self.target, self.eye).astype(np.float64)
        z /= np.linalg.norm(z)
        x = np.cross(z, self.up)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        T = np.eye(4)
        T[:3, :3] = np.stack([x, y, z], axis=1)
        T[:3, 3] = self.eye
        return T


@dataclass(frozen=True)
class WristCameraConfig:
    """A camera fixed to the hand: ``offset`` (hand frame, metres) and tilted ``pitch_deg`` toward the fingers."""

    offset: tuple[float, float, float] = (0.06, 0.0, 0.02)
    pitch_deg: float = 20.0
    fov_deg: float = 70.0
    near: float = 0.02
    far: float = 2.0
    name: str = "wrist"

    def hand_to_camera(self) -> np.ndarray:
        """4x4 camera pose in the hand frame: looking along the hand's z (toward the fingers)."""
        a = np.deg2rad(self.pitch_deg)
        # Camera x = hand y, camera z = hand z tilted by `a` toward -x (back to the finger axis).
        z = np.array([-np.sin(a), 0.0, np.cos(a)])
        x = np.array([0.0, 1.0, 0.0])
        y = np.cross(z, x)
        T = np.eye(4)
        T[:3, :3] = np.stack([x, y, z], axis=1)
        T[:3, 3] = self.offset
        return T


def intrinsics_from_fov(width: int, height: int, fov_deg: float) -> np.ndarray:
    """3x3 pinhole matrix matching PyBullet's projection (vertical field of view, square pixels)."""
    fy = (height / 2.0) / np.tan(np.deg2rad(fov_deg) / 2.0)
    # Where ER_TINY_RENDERER samples each pixel, measured against ray-cast boxes (tests check it):
    # column i sees the ray at x = i - W/2, row j the ray at y = j - H/2 + 1 (image y down).
    return np.array([[fy, 0.0, width / 2.0], [0.0, fy, height / 2.0 - 1.0], [0.0, 0.0, 1.0]])


def camera_params(name: str, width: int, height: int, fov_deg: float, extrinsics: np.ndarray) -> CameraParams:
    return CameraParams(width=width, height=height, intrinsics=intrinsics_from_fov(width, height, fov_deg),
                        extrinsics=extrinsics, name=name)


def view_matrix(extrinsics: np.ndarray) -> list[float]:
    """PyBullet view matrix (column-major OpenGL world-to-eye) from an OpenCV camera-to-base pose."""
    cam_to_base = np.eye(4)
    cam_to_base[:3, :3] = extrinsics[:3, :3] @ _CV_TO_GL
    cam_to_base[:3, 3] = extrinsics[:3, 3]
    return np.linalg.inv(cam_to_base).T.reshape(-1).tolist()


def zbuffer_to_depth(zbuffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """Metres along the camera z axis from PyBullet's non-linear [0, 1] depth buffer; NaN where nothing was hit."""
    zb = np.asarray(zbuffer, dtype=np.float64)
    depth = far * near / (far - (far - near) * zb)
    depth[zb >= 1.0 - 1e-7] = np.nan
    return depth.astype(np.float32)


def render(client: int, width: int, height: int, fov_deg: float, near: float, far: float, extrinsics: np.ndarray,
           segmentation: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Render RGB (uint8), depth (float32 metres) and optionally the segmentation (object id + (link+1) << 24)."""
    proj = p.computeProjectionMatrixFOV(fov=fov_deg, aspect=width / height, nearVal=near, farVal=far)
    flags = p.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX if segmentation else p.ER_NO_SEGMENTATION_MASK
    _, _, rgba, zbuf, seg = p.getCameraImage(width, height, viewMatrix=view_matrix(extrinsics), projectionMatrix=proj,
                                             renderer=p.ER_TINY_RENDERER, flags=flags, physicsClientId=client)
    rgb = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()
    depth = zbuffer_to_depth(np.asarray(zbuf).reshape(height, width), near, far)
    seg_img = np.asarray(seg, dtype=np.int64).reshape(height, width) if segmentation else None
    return rgb, depth, seg_img


def project_points(points: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """Project base-frame points (..., 3) to (..., 3): pixel u, v and depth along the camera z (metres).

    Points behind the camera keep their (negative) depth; their u, v are meaningless.
    """
    pts = np.asarray(points, dtype=np.float64)
    base_to_cam = np.linalg.inv(np.asarray(extrinsics, dtype=np.float64))
    cam = pts @ base_to_cam[:3, :3].T + base_to_cam[:3, 3]
    z = cam[..., 2]
    safe_z = np.where(np.abs(z) < 1e-9, 1e-9, z)
    K = np.asarray(intrinsics, dtype=np.float64)
    u = K[0, 0] * cam[..., 0] / safe_z + K[0, 2]
    v = K[1, 1] * cam[..., 1] / safe_z + K[1, 2]
    return np.stack([u, v, z], axis=-1)

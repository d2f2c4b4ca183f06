"""Shared by the perception tests: the tabletop simulation's camera pose and a pinhole K."""
from __future__ import annotations

import numpy as np


def sim_camera_pose() -> np.ndarray:
    """Camera-to-base 4x4 of a camera at (1.05, 0, 0.75) looking at (0.48, 0, 0.1), OpenCV axes (as in the sim)."""
    eye, target = np.array([1.05, 0.0, 0.75]), np.array([0.48, 0.0, 0.10])
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = eye
    return T


def pinhole(width: int, height: int, f: float) -> np.ndarray:
    """Intrinsics with focal length `f` pixels and the principal point at the image centre."""
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])

"""The table plane in the robot's base frame, fitted to depth points by RANSAC among near-horizontal planes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magma_core.errors import InvalidInputError


@dataclass(frozen=True)
class TablePlane:
    """The plane ``normal . p + offset = 0`` (base frame, unit normal pointing up)."""

    normal: np.ndarray
    offset: float
    inlier_fraction: float = 0.0
    rms: float = 0.0
    source: str = "depth"  # "depth" (fitted) or "default" (assumed height)

    def height_of(self, points: np.ndarray) -> np.ndarray:
        """Signed height (m) of base-frame points (..., 3) above the plane."""
        return np.asarray(points, dtype=np.float64) @ self.normal + self.offset

    def z_at(self, x: float, y: float) -> float:
        """The plane's z at base-frame (x, y)."""
        n = self.normal
        return float(-(self.offset + n[0] * x + n[1] * y) / n[2])

    def to_dict(self) -> dict:
        return {"normal": self.normal.tolist(), "offset": float(self.offset), "inlier_fraction": float(self.inlier_fraction),
                "rms": float(self.rms), "source": self.source}


def horizontal_plane(z: float) -> TablePlane:
    """The plane z = `z` (when depth cannot give one)."""
    return TablePlane(normal=np.array([0.0, 0.0, 1.0]), offset=-float(z), source="default")


def fit_table_plane(points: np.ndarray, *, up=(0.0, 0.0, 1.0), max_tilt_deg: float = 20.0, inlier: float = 0.004,
                    iterations: int = 100, sample_size: int = 2000, min_fraction: float = 0.2,
                    seed: int = 0) -> TablePlane | None:
    """The plane holding most of the base-frame points (N, 3) among those within `max_tilt_deg` of `up`.

    RANSAC on a random sample of `sample_size` points (deterministic for a seed), then two
    least-squares refits on every point within `inlier` metres. None when no candidate plane
    holds `min_fraction` of the sample (a wall, clutter, too few points).
    """
    up = np.asarray(up, dtype=np.float64).reshape(-1)
    if up.shape != (3,) or not np.all(np.isfinite(up)) or np.linalg.norm(up) < 1e-9:
        raise InvalidInputError(f"up must be a finite non-zero 3-vector, got {up.tolist()}")
    up = up / np.linalg.norm(up)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) < 50:
        return None
    rng = np.random.default_rng(seed)
    sample = pts[rng.choice(len(pts), size=min(len(pts), sample_size), replace=False)]
    triples = sample[rng.integers(0, len(sample), size=(iterations, 3))]
    normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])
    norms = np.linalg.norm(normals, axis=1)
    ok = norms > 1e-9
    normals[ok] /= norms[ok, None]
    normals *= np.where(normals @ up < 0, -1.0, 1.0)[:, None]
    ok &= normals @ up > np.cos(np.deg2rad(max_tilt_deg))
    if not ok.any():
        return None
    normals, triples = normals[ok], triples[ok]
    offsets = -np.einsum("ij,ij->i", normals, triples[:, 0])
    counts = (np.abs(sample @ normals.T + offsets) < inlier).sum(axis=0)
    best = int(np.argmax(counts))
    if counts[best] < min_fraction * len(sample):
        return None
    normal, offset = normals[best], float(offsets[best])
    for _ in range(2):  # least squares through the inliers' centroid: the scatter's weakest direction
        near = pts[np.abs(pts @ normal + offset) < inlier]
        if len(near) < 3:
            break
        centroid = near.mean(axis=0)
        centred = near - centroid
        _, vectors = np.linalg.eigh(centred.T @ centred)
        normal = vectors[:, 0] * (1.0 if vectors[:, 0] @ up >= 0 else -1.0)
        offset = -float(normal @ centroid)
    residual = pts @ normal + offset
    inl = np.abs(residual) < inlier
    rms = float(np.sqrt(np.mean(residual[inl] ** 2))) if inl.any() else 0.0
    return TablePlane(normal=normal, offset=offset, inlier_fraction=float(inl.mean()), rms=rms, source="depth")

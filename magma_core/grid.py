"""Conversions between image pixels and Magma's 256x256 coordinate grid."""
from __future__ import annotations

import numpy as np

GRID_SIZE = 256


def pixels_to_grid(points_xy: np.ndarray, width: int, height: int, grid: int = GRID_SIZE) -> np.ndarray:
    """Map pixel coordinates (x, y) to integer cells of a `grid` x `grid` lattice, clipped to range."""
    pts = np.asarray(points_xy, dtype=np.float64)
    scale = np.array([grid / float(width), grid / float(height)])
    cells = np.floor(pts * scale)
    return np.clip(cells, 0, grid - 1).astype(np.int64)


def grid_to_pixels(cells_xy: np.ndarray, width: int, height: int, grid: int = GRID_SIZE) -> np.ndarray:
    """Map grid cells back to the pixel at the centre of each cell."""
    cells = np.asarray(cells_xy, dtype=np.float64)
    scale = np.array([width / float(grid), height / float(grid)])
    return (cells + 0.5) * scale

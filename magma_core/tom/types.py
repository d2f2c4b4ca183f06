"""Data types shared by Trace-of-Mark extraction, drawing and the text codecs."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from magma_core.errors import InvalidInputError


@dataclass
class Trace:
    """One mark's path over the current frame and the next frames, in pixels of the current frame.

    points:  (T, 2) float x, y. Row 0 is the current frame (the mark's position).
    visible: (T,) bool, False where the tracker lost the point (its position is then a guess).
    depth:   optional (T,) metres along the camera z axis (the 2.5D extension).
    gripper: optional (T,) in [0, 1]: 0 open, 1 closed (the 2.5D extension).
    """

    mark_id: int
    points: np.ndarray
    visible: np.ndarray
    moving: bool = True
    depth: np.ndarray | None = None
    gripper: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        self.visible = np.asarray(self.visible, dtype=bool).reshape(-1)
        if self.visible.shape[0] != self.points.shape[0]:
            raise InvalidInputError(f"trace {self.mark_id}: {self.points.shape[0]} points but {self.visible.shape[0]} visibility flags")
        for name in ("depth", "gripper"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.float64).reshape(-1)
                if value.shape[0] != self.points.shape[0]:
                    raise InvalidInputError(f"trace {self.mark_id}: {name} has {value.shape[0]} steps, points have {self.points.shape[0]}")
                setattr(self, name, value)

    @property
    def length(self) -> int:
        return int(self.points.shape[0])

    @property
    def start(self) -> np.ndarray:
        return self.points[0]


@dataclass
class TraceSet:
    """All traces extracted from one clip, plus what the extraction found about the camera."""

    traces: list[Trace]
    image_size: tuple[int, int]  # (width, height)
    camera_moving: bool = False
    homographies: np.ndarray | None = None  # (T, 3, 3) frame t -> frame 0, when camera motion was removed
    stats: dict = field(default_factory=dict)

    @property
    def moving(self) -> list[Trace]:
        return [t for t in self.traces if t.moving]

    @property
    def static(self) -> list[Trace]:
        return [t for t in self.traces if not t.moving]

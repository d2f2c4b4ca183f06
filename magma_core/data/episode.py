"""The in-memory record of one robot episode, shared by simulation, teleoperation and dataset formats.

Conventions:
- Images are RGB uint8 (T, H, W, 3); depth is float32 metres along the camera z axis (T, H, W),
  NaN where unknown.
- Poses are xyz + quaternion xyzw, in the robot base frame, metres.
- ``actions`` are Magma's 7 numbers per step: end-effector delta position (3, metres),
  delta rotation (3, axis-angle radians, base frame) and the gripper command (1: 0 open, 1 closed).
- ``waypoints`` are the absolute command the controller sends: target xyz + quaternion xyzw + gripper (8).
- Ground-truth Trace-of-Mark per step: ``gt_traces[t]`` is (M, n+1, 3): for each of M mark points
  (mark 0 is the gripper), its pixel u, v and depth (metres) now and over the next n steps;
  ``gt_trace_gripper[t]`` is (n+1,) the gripper state over the same steps. Steps past the end of
  the episode repeat the last position.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from magma_core.errors import InvalidInputError


@dataclass
class CameraParams:
    """Pinhole intrinsics and camera-to-base extrinsics (OpenCV camera axes: x right, y down, z forward)."""

    width: int
    height: int
    intrinsics: np.ndarray  # (3, 3)
    extrinsics: np.ndarray  # (4, 4) camera -> base
    name: str = "front"

    def __post_init__(self) -> None:
        self.intrinsics = np.asarray(self.intrinsics, dtype=np.float64).reshape(3, 3)
        self.extrinsics = np.asarray(self.extrinsics, dtype=np.float64).reshape(4, 4)
        if not (np.all(np.isfinite(self.intrinsics)) and np.all(np.isfinite(self.extrinsics))):
            raise InvalidInputError(f"camera {self.name}: intrinsics/extrinsics contain NaN or inf")
        if self.width <= 0 or self.height <= 0:
            raise InvalidInputError(f"camera {self.name}: bad image size {self.width}x{self.height}")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "width": int(self.width),
            "height": int(self.height),
            "intrinsics": self.intrinsics.tolist(),
            "extrinsics": self.extrinsics.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CameraParams":
        try:
            return cls(width=int(d["width"]), height=int(d["height"]), intrinsics=np.array(d["intrinsics"]),
                       extrinsics=np.array(d["extrinsics"]), name=str(d.get("name", "front")))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed camera parameters: {exc}") from exc


@dataclass
class Episode:
    """One episode: what the robot saw and did, its instruction and its outcome."""

    instruction: str
    task: str
    rgb: np.ndarray  # (T, H, W, 3) uint8
    ee_pose: np.ndarray  # (T, 7)
    gripper: np.ndarray  # (T, 1) opening width, metres
    joints: np.ndarray  # (T, J)
    actions: np.ndarray  # (T, 7)
    camera: CameraParams
    fps: float = 10.0
    depth: np.ndarray | None = None  # (T, H, W) float32 metres
    waypoints: np.ndarray | None = None  # (T, 8)
    gt_traces: np.ndarray | None = None  # (T, M, n+1, 3)
    gt_trace_gripper: np.ndarray | None = None  # (T, n+1)
    success: bool | None = None
    seed: int | None = None
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def validate(self) -> "Episode":
        """Check shapes and dtypes; raise InvalidInputError naming the first inconsistency."""
        T = len(self)
        if self.rgb.ndim != 4 or self.rgb.shape[-1] != 3 or self.rgb.dtype != np.uint8:
            raise InvalidInputError(f"episode rgb must be (T,H,W,3) uint8, got {self.rgb.shape} {self.rgb.dtype}")
        if T == 0:
            raise InvalidInputError("episode has no steps")
        expect = {"ee_pose": 7, "gripper": 1, "actions": 7}
        for name, width in expect.items():
            arr = getattr(self, name)
            if arr.shape != (T, width):
                raise InvalidInputError(f"episode {name} must be ({T}, {width}), got {arr.shape}")
        if self.joints.ndim != 2 or self.joints.shape[0] != T:
            raise InvalidInputError(f"episode joints must be ({T}, J), got {self.joints.shape}")
        if self.depth is not None and self.depth.shape != self.rgb.shape[:3]:
            raise InvalidInputError(f"episode depth {self.depth.shape} does not match rgb {self.rgb.shape[:3]}")
        if self.waypoints is not None and self.waypoints.shape != (T, 8):
            raise InvalidInputError(f"episode waypoints must be ({T}, 8), got {self.waypoints.shape}")
        if self.gt_traces is not None:
            if self.gt_traces.ndim != 4 or self.gt_traces.shape[0] != T or self.gt_traces.shape[-1] != 3:
                raise InvalidInputError(f"episode gt_traces must be ({T}, M, n+1, 3), got {self.gt_traces.shape}")
            if self.gt_trace_gripper is None or self.gt_trace_gripper.shape != (T, self.gt_traces.shape[2]):
                raise InvalidInputError("episode gt_trace_gripper must be (T, n+1) alongside gt_traces")
        if (self.camera.height, self.camera.width) != self.rgb.shape[1:3]:
            raise InvalidInputError(
                f"camera size {self.camera.width}x{self.camera.height} does not match images {self.rgb.shape[2]}x{self.rgb.shape[1]}")
        return self

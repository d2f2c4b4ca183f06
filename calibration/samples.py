"""Hand-eye sample folders: images of the board, each with the end-effector pose when it was taken.

Layout (written by ``SampleWriter``, read by ``read_samples``; the simulator and the ROS recorder
both write it)::

    samples_dir/
      samples.yaml          # or samples.json with the same keys
      0000.png, 0001.png, ...

``samples.yaml``::

    format: magma.handeye_samples.v1
    base_frame: base        # frame of the poses below (the robot base)
    ee_frame: ee            # the end-effector frame whose pose is recorded
    camera_name: camera
    samples:
      - image: 0000.png     # relative to the folder
        ee_position: [0.45, 0.02, 0.31]            # metres, in base_frame
        ee_orientation_xyzw: [1.0, 0.0, 0.0, 0.0]  # unit quaternion x, y, z, w
      - ...

Each pose must be the one the robot had when the image was exposed (stop the arm before taking
it). Both eye-to-hand and eye-in-hand use the same file; the mode is chosen when solving.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from magma_calibration.errors import CalibrationFileError
from magma_calibration.transforms import matrix_to_pose, pose_to_matrix
from magma_calibration.yaml_io import atomic_write_text, finite_vector, format_floats, load_mapping

FORMAT = "magma.handeye_samples.v1"
SAMPLES_FILES = ("samples.yaml", "samples.json")


@dataclass(frozen=True)
class HandEyeSample:
    image_path: Path
    T_base_ee: np.ndarray  # 4x4 end-effector pose in the base frame


@dataclass(frozen=True)
class SampleSet:
    folder: Path
    samples: list[HandEyeSample]
    base_frame: str = "base"
    ee_frame: str = "ee"
    camera_name: str = "camera"


class SampleWriter:
    """Collects (image, end-effector pose) pairs into a samples folder.

    The index file is rewritten atomically after every ``add``, so an interrupted collection leaves
    a valid folder holding the samples taken so far.
    """

    def __init__(self, folder: str | os.PathLike, base_frame: str = "base", ee_frame: str = "ee",
                 camera_name: str = "camera", overwrite: bool = False):
        self.folder = Path(folder)
        existing = [name for name in SAMPLES_FILES if (self.folder / name).exists()]
        if existing and not overwrite:
            raise CalibrationFileError(f"{self.folder / existing[0]} already exists; pass overwrite=True or pick an empty folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in existing:
            (self.folder / name).unlink()
        if existing:  # images of the previous collection would otherwise linger beside the new ones
            for old in self.folder.glob("[0-9][0-9][0-9][0-9].png"):
                old.unlink()
        self.base_frame, self.ee_frame, self.camera_name = base_frame, ee_frame, camera_name
        self._entries: list[tuple[str, np.ndarray, np.ndarray]] = []

    def add(self, image_rgb: np.ndarray, T_base_ee: np.ndarray | None = None, *, position=None, quat_xyzw=None) -> Path:
        """Save an RGB (or grey) uint8 image and its end-effector pose (4x4, or position + quaternion)."""
        if T_base_ee is None:
            if position is None or quat_xyzw is None:
                raise CalibrationFileError("give the end-effector pose as T_base_ee or as position + quat_xyzw")
            T_base_ee = pose_to_matrix(position, quat_xyzw)
        T = _checked_pose(np.asarray(T_base_ee, dtype=np.float64), f"sample {len(self._entries)}")
        image = np.asarray(image_rgb)
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise CalibrationFileError(f"sample image must be a uint8 HxW or HxWx3 array, got {image.dtype} {image.shape}")
        name = f"{len(self._entries):04d}.png"
        bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(self.folder / name), bgr):
            raise CalibrationFileError(f"could not write {self.folder / name}")
        position, quat = matrix_to_pose(T)
        self._entries.append((name, position, quat))
        self._write_index()
        return self.folder / name

    def __len__(self) -> int:
        return len(self._entries)

    def _write_index(self) -> None:
        lines = [
            "# magma hand-eye samples: end-effector pose (in base_frame) at the moment each image was taken",
            f"format: {FORMAT}",
            f"base_frame: {json.dumps(self.base_frame)}",
            f"ee_frame: {json.dumps(self.ee_frame)}",
            f"camera_name: {json.dumps(self.camera_name)}",
            "samples:",
        ]
        for name, position, quat in self._entries:
            lines += [f"  - image: {name}", f"    ee_position: {format_floats(position)}",
                      f"    ee_orientation_xyzw: {format_floats(quat)}"]
        atomic_write_text(self.folder / "samples.yaml", "\n".join(lines) + "\n")


def read_samples(folder: str | os.PathLike) -> SampleSet:
    """Read and validate a samples folder; errors name the file, the sample and the problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationFileError(f"samples folder not found: {folder}")
    present = [folder / name for name in SAMPLES_FILES if (folder / name).is_file()]
    if not present:
        raise CalibrationFileError(f"no samples.yaml or samples.json in {folder} (see magma_calibration.samples for the format)")
    if len(present) > 1:
        raise CalibrationFileError(f"both samples.yaml and samples.json in {folder}; keep one")
    path = present[0]
    data = load_mapping(path, "hand-eye samples")
    entries = data.get("samples")
    if not isinstance(entries, list) or not entries:
        raise CalibrationFileError(f"{path}: 'samples' must be a non-empty list")
    samples = []
    for i, entry in enumerate(entries):
        where = f"{path}: sample {i}"
        if not isinstance(entry, dict):
            raise CalibrationFileError(f"{where}: expected a mapping with image, ee_position, ee_orientation_xyzw")
        missing = [k for k in ("image", "ee_position", "ee_orientation_xyzw") if k not in entry]
        if missing:
            raise CalibrationFileError(f"{where}: missing {', '.join(missing)}")
        image_path = folder / str(entry["image"])
        if not image_path.is_file():
            raise CalibrationFileError(f"{where}: image {image_path} not found")
        position = finite_vector(entry["ee_position"], 3, f"{where} ee_position")
        quat = finite_vector(entry["ee_orientation_xyzw"], 4, f"{where} ee_orientation_xyzw")
        norm = np.linalg.norm(quat)
        if abs(norm - 1.0) > 1e-3:
            raise CalibrationFileError(f"{where}: ee_orientation_xyzw must be a unit quaternion, its norm is {norm:.6g}")
        samples.append(HandEyeSample(image_path, pose_to_matrix(position, quat)))
    return SampleSet(folder, samples, str(data.get("base_frame", "base")), str(data.get("ee_frame", "ee")),
                     str(data.get("camera_name", "camera")))


def _checked_pose(T: np.ndarray, where: str) -> np.ndarray:
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise CalibrationFileError(f"{where}: end-effector pose must be a finite 4x4 transform")
    R = T[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
        raise CalibrationFileError(f"{where}: end-effector pose rotation is not orthonormal")
    return T

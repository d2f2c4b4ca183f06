"""Where the camera node's frames come from: an OpenCV device, a video file, or a folder of frames.

A folder may hold depth beside the colour frames: ``depth/<stem>.npy`` (float metres, NaN unknown)
or ``depth/<stem>.png`` (16-bit millimetres, 0 unknown) for colour frame ``<stem>.<ext>``.
Every source returns RGB uint8 (OpenCV's BGR is converted once, here).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from magma_core.errors import InvalidInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


@dataclass
class Frame:
    rgb: np.ndarray  # HxWx3 uint8
    depth: np.ndarray | None = None  # HxW float32 metres, NaN unknown
    name: str = ""


class FrameSource(Protocol):
    has_depth: bool
    description: str

    def read(self) -> Frame | None:
        """The next frame; None when the source has ended. A frame that cannot be decoded raises InvalidInputError."""

    def close(self) -> None: ...


class FolderSource:
    """Image files of a folder in name order, optionally looping, with matching depth files when present."""

    def __init__(self, folder: str | os.PathLike, loop: bool = True) -> None:
        self.folder = Path(folder)
        self.frames = sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.frames:
            raise InvalidInputError(f"{self.folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        depth_dir = self.folder / "depth"
        self.depth_files = [_depth_file(depth_dir, p.stem) for p in self.frames]
        self.has_depth = any(d is not None for d in self.depth_files)
        self.loop = loop
        self.index = 0
        self.description = f"folder {self.folder} ({len(self.frames)} frames{', with depth' if self.has_depth else ''})"

    def read(self) -> Frame | None:
        if self.index >= len(self.frames):
            if not self.loop:
                return None
            self.index = 0
        path, depth_path = self.frames[self.index], self.depth_files[self.index]
        self.index += 1
        rgb = read_rgb(path)
        depth = read_depth(depth_path) if depth_path is not None else None
        if depth is not None and depth.shape != rgb.shape[:2]:
            raise InvalidInputError(f"{depth_path}: depth is {depth.shape[1]}x{depth.shape[0]}, colour frame {rgb.shape[1]}x{rgb.shape[0]}")
        return Frame(rgb, depth, path.name)

    def close(self) -> None:
        pass


class CaptureSource:
    """An OpenCV VideoCapture: a device index or a video file (looping files by seeking back)."""

    def __init__(self, target: int | str, loop: bool = True, size: tuple[int, int] | None = None) -> None:
        self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            kind = "camera device" if isinstance(target, int) else "video file"
            raise InvalidInputError(f"cannot open {kind} {target!r}")
        if isinstance(target, int) and size:
            self.capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
            self.capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        self.is_file = not isinstance(target, int)
        self.loop = loop
        self.has_depth = False
        self.description = f"{'video' if self.is_file else 'device'} {target}"

    def read(self) -> Frame | None:
        ok, bgr = self.capture.read()
        if not ok and self.is_file and self.loop:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self.capture.read()
        if not ok or bgr is None:
            return None
        return Frame(_bgr_to_rgb(bgr, self.description))

    def close(self) -> None:
        self.capture.release()


def open_source(spec: str, loop: bool = True, size: tuple[int, int] | None = None) -> FrameSource:
    """A device index ("0"), a folder of frames, or a video file."""
    spec = str(spec).strip()
    if not spec:
        raise InvalidInputError("no camera source given (a device index, a video file or a folder of frames)")
    if spec.isdigit():
        return CaptureSource(int(spec), loop, size)
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(path, loop)
    if path.is_file():
        return CaptureSource(str(path), loop)
    raise InvalidInputError(f"camera source {spec!r} is neither a device index, a folder nor a file")


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidInputError(f"{path}: cannot decode the image")
    return _bgr_to_rgb(bgr, str(path))


def read_depth(path: Path) -> np.ndarray:
    """float32 metres with NaN unknown, from .npy (metres) or a 16-bit PNG (millimetres)."""
    if path.suffix == ".npy":
        depth = np.load(path, allow_pickle=False)
        if depth.ndim != 2 or depth.dtype.kind != "f":
            raise InvalidInputError(f"{path}: depth .npy must be a 2-D float array (metres), got {depth.dtype} {depth.shape}")
        depth = depth.astype(np.float32)
    else:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.ndim != 2 or raw.dtype != np.uint16:
            raise InvalidInputError(f"{path}: depth PNG must be single-channel 16-bit millimetres")
        depth = raw.astype(np.float32) / 1000.0
    return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan)).astype(np.float32)


def _depth_file(depth_dir: Path, stem: str) -> Path | None:
    for suffix in (".npy", ".png"):
        candidate = depth_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _bgr_to_rgb(bgr: np.ndarray, what: str) -> np.ndarray:
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise InvalidInputError(f"{what}: expected an 8-bit colour frame, got {bgr.dtype} {bgr.shape}")
    return np.ascontiguousarray(bgr[:, :, ::-1])

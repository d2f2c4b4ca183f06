"""Loading and validating video clips for Trace-of-Mark extraction.

A clip is a (T, H, W, 3) uint8 RGB array: the current frame followed by the future frames.
`load_clip` reads one from a video file (anything OpenCV's FFmpeg backend decodes: mp4, avi,
mkv, ...) or from a folder of image files; `validate_clip` checks frames a caller already holds
and names the first thing wrong with them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from magma_core.errors import InvalidInputError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class Clip:
    """Frames (T, H, W, 3) uint8 RGB read from `source`; frame i is source frame start + i * stride."""

    frames: np.ndarray
    fps: float
    source: str
    start: int = 0
    stride: int = 1

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height)."""
        return (int(self.frames.shape[2]), int(self.frames.shape[1]))


def load_clip(
    path: str | os.PathLike,
    max_frames: int | None = None,
    start: int = 0,
    stride: int = 1,
    allow_gray: bool = False,
) -> Clip:
    """Read frames start, start + stride, ... (at most `max_frames`) from a video file or a frame folder.

    Folder frames are sorted naturally ("frame2.png" before "frame10.png"). The result is validated
    with `validate_clip`, so it always holds at least two frames of one size.
    """
    if start < 0:
        raise InvalidInputError(f"start must be >= 0, got {start}")
    if stride < 1:
        raise InvalidInputError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise InvalidInputError(f"max_frames must be >= 1, got {max_frames}")
    source = Path(path)
    if not source.exists():
        raise InvalidInputError(f"clip not found: {source}")
    if source.is_dir():
        frames, fps = _read_folder(source, max_frames, start, stride)
    else:
        frames, fps = _read_video(source, max_frames, start, stride)
    return Clip(validate_clip(frames, allow_gray=allow_gray), fps, str(source), start, stride)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _wanted(start: int, stride: int, max_frames: int | None, index: int) -> bool:
    if index < start or (index - start) % stride:
        return False
    return max_frames is None or (index - start) // stride < max_frames


def _read_folder(folder: Path, max_frames: int | None, start: int, stride: int) -> tuple[list[np.ndarray], float]:
    from magma_core.imageio import load_image

    files = sorted((f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in FRAME_SUFFIXES), key=lambda f: _natural_key(f.name))
    if not files:
        raise InvalidInputError(f"no image frames ({', '.join(sorted(FRAME_SUFFIXES))}) in folder {folder}")
    chosen = [f for i, f in enumerate(files) if _wanted(start, stride, max_frames, i)]
    if not chosen:
        raise InvalidInputError(f"folder {folder} has {len(files)} frames; start={start} skips all of them")
    return [load_image(f) for f in chosen], 0.0


def _read_video(file: Path, max_frames: int | None, start: int, stride: int) -> tuple[list[np.ndarray], float]:
    import cv2

    if file.suffix.lower() not in VIDEO_SUFFIXES:
        raise InvalidInputError(f"not a video file or frame folder: {file} (video suffixes: {', '.join(sorted(VIDEO_SUFFIXES))})")
    capture = cv2.VideoCapture(str(file))
    try:
        if not capture.isOpened():
            raise InvalidInputError(f"cannot open video {file}: corrupt, empty or a codec OpenCV's FFmpeg cannot decode")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        frames: list[np.ndarray] = []
        index = 0
        while max_frames is None or len(frames) < max_frames:
            # grab() skips decoding-to-BGR for frames we do not keep (seeking by index is unreliable in FFmpeg).
            if not capture.grab():
                break
            if _wanted(start, stride, max_frames, index):
                ok, bgr = capture.retrieve()
                if not ok:
                    raise InvalidInputError(f"cannot decode frame {index} of {file}")
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        capture.release()
    if not frames:
        raise InvalidInputError(f"video {file} has {index} frames; start={start} leaves none")
    return frames, fps


def validate_clip(
    frames: np.ndarray | Sequence[np.ndarray],
    allow_gray: bool = False,
    allow_float: bool = False,
    name: str = "clip",
) -> np.ndarray:
    """Return the clip as a contiguous (T, H, W, 3) uint8 RGB array, or raise InvalidInputError.

    Needs at least two frames (the current one and a future one), all of one size. Grayscale
    frames are expanded to RGB only with `allow_gray`; float frames in [0, 1] are scaled to uint8
    only with `allow_float`. NaN or infinite values are always refused.
    """
    if isinstance(frames, np.ndarray):
        if frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8 and frames.shape[0] >= 2 and frames.size:
            return np.ascontiguousarray(frames)  # the common case, without a per-frame loop
        if frames.ndim == 3 and frames.shape[2] in (3, 4):
            raise InvalidInputError(
                f"{name}: got one image shaped {frames.shape}, not a clip; stack at least two frames into (T, H, W, 3)"
            )
        if frames.ndim not in (3, 4):
            raise InvalidInputError(
                f"{name}: expected frames shaped (T, H, W, 3) (or (T, H, W) grayscale), got shape {frames.shape}"
            )
        frame_list = list(frames)
    else:
        try:
            frame_list = list(frames)
        except TypeError:
            raise InvalidInputError(f"{name}: expected an array or a sequence of frames, got {type(frames).__name__}") from None
    if not frame_list:
        raise InvalidInputError(f"{name} is empty: need the current frame and at least one future frame")
    if len(frame_list) == 1:
        raise InvalidInputError(f"{name} has only 1 frame: need the current frame and at least one future frame")

    out: list[np.ndarray] = []
    first_size: tuple[int, int] | None = None
    for index, frame in enumerate(frame_list):
        rgb = _validate_frame(frame, f"{name} frame {index}", allow_gray, allow_float)
        size = (rgb.shape[1], rgb.shape[0])
        if first_size is None:
            first_size = size
        elif size != first_size:
            raise InvalidInputError(
                f"{name} frame {index} is {size[0]}x{size[1]} but frame 0 is {first_size[0]}x{first_size[1]}: all frames must have one size"
            )
        out.append(rgb)
    return np.ascontiguousarray(np.stack(out))


def _validate_frame(frame: object, label: str, allow_gray: bool, allow_float: bool) -> np.ndarray:
    from magma_core.imageio import to_rgb_uint8

    if not isinstance(frame, np.ndarray):
        raise InvalidInputError(f"{label}: expected a numpy array, got {type(frame).__name__}")
    if frame.size == 0:
        raise InvalidInputError(f"{label}: empty frame (shape {frame.shape})")
    if frame.dtype.kind not in "uif":
        raise InvalidInputError(f"{label}: wrong dtype {frame.dtype}; expected uint8 RGB")
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        bad = int(frame.size - np.count_nonzero(np.isfinite(frame)))
        raise InvalidInputError(f"{label}: contains {bad} NaN or infinite values")
    gray = frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1)
    if gray and not allow_gray:
        raise InvalidInputError(f"{label}: grayscale frame (shape {frame.shape}); expected RGB (pass allow_gray=True to expand it)")
    if frame.ndim == 3 and frame.shape[2] not in (1, 3):
        raise InvalidInputError(f"{label}: expected 3 colour channels, got {frame.shape[2]} (shape {frame.shape})")
    if frame.ndim not in (2, 3):
        raise InvalidInputError(f"{label}: expected an HxWx3 frame, got shape {frame.shape}")
    if frame.dtype.kind == "f" and not allow_float:
        raise InvalidInputError(f"{label}: float frame ({frame.dtype}); expected uint8 (pass allow_float=True to scale [0, 1] floats)")
    if frame.dtype.kind in "ui" and frame.dtype != np.uint8:
        raise InvalidInputError(f"{label}: wrong dtype {frame.dtype}; expected uint8 (cast explicitly if values are 0..255)")
    return to_rgb_uint8(frame, allow_gray=allow_gray, allow_float=allow_float, name=label)

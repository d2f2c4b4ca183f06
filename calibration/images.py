"""Loading calibration images and finding the board in each, with the checks every command shares."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from magma_calibration.boards import BoardDetection, BoardSpec, detect_board
from magma_calibration.errors import BoardNotFoundError, CalibrationError, CalibrationFileError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationFileError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CalibrationFileError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return paths


def read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise CalibrationFileError(f"cannot decode image {path}")
    return image


def detect_in_images(paths: Sequence[Path], board: BoardSpec, progress: bool = True) -> tuple[dict[str, BoardDetection], tuple[int, int]]:
    """Detect the board in every image. Returns ({image name: detection}, (width, height)).

    Raises CalibrationError when the images differ in size (they must come from one camera at one
    resolution) and BoardNotFoundError, naming the images, when no image shows the board.
    """
    detections: dict[str, BoardDetection] = {}
    sizes: dict[tuple[int, int], list[str]] = {}
    for path in tqdm(paths, desc=f"detecting {board.kind}", unit="img", disable=not progress, leave=False):
        gray = read_gray(path)
        size = (gray.shape[1], gray.shape[0])
        sizes.setdefault(size, []).append(path.name)
        found = detect_board(gray, board)
        if found is not None:
            detections[path.name] = found
    check_one_size(sizes)
    if not detections:
        raise BoardNotFoundError(f"no {board} board found in any of the {len(paths)} images: {_names(p.name for p in paths)}")
    return detections, next(iter(sizes))


def check_one_size(sizes: dict[tuple[int, int], list[str]]) -> None:
    if len(sizes) > 1:
        common = max(sizes, key=lambda s: len(sizes[s]))
        odd = [f"{name} ({w}x{h})" for (w, h), names in sizes.items() if (w, h) != common for name in names]
        raise CalibrationError(f"images differ in size: most are {common[0]}x{common[1]}, but {_names(odd)}")


def _names(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")

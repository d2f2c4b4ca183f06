"""Images -> crops for the vision tower, without torchvision: validate, pick a crop grid, resize, normalise.

Magma's "anyres crop": an image is resized (aspect not kept, so the 256 trace grid stays aligned
with the image) to the grid of ``rows x cols`` crops, ``rows * cols <= max_num_crops``, that keeps
the most of its resolution and wastes the least, then cut into `image_size` squares, row-major.
Resizing is bilinear like Magma's; normalisation uses OpenAI CLIP's mean and std.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from magma_core.errors import InvalidInputError
from magma_core.imageio import validate_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_IMAGE_SIDE = 16
MAX_IMAGE_SIDE = 8192
_RESAMPLE = ("linear", "area")


@dataclass
class MagmaImageProcessor:
    """Settings and the transform; `preprocess(image) -> (crops (n, 3, S, S) float32, (rows, cols))`."""

    image_size: int = 128
    max_num_crops: int = 1
    image_mean: tuple[float, float, float] = field(default=CLIP_MEAN)
    image_std: tuple[float, float, float] = field(default=CLIP_STD)
    resample: str = "linear"

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 8:
            raise InvalidInputError(f"image_size must be an integer >= 8, got {self.image_size!r}")
        if not isinstance(self.max_num_crops, (int, np.integer)) or self.max_num_crops < 1:
            raise InvalidInputError(f"max_num_crops must be an integer >= 1, got {self.max_num_crops!r}")
        self.image_mean = _three_floats(self.image_mean, "image_mean")
        self.image_std = _three_floats(self.image_std, "image_std")
        if min(self.image_std) <= 0:
            raise InvalidInputError(f"image_std must be positive, got {self.image_std}")
        if self.resample not in _RESAMPLE:
            raise InvalidInputError(f"resample must be one of {_RESAMPLE}, got {self.resample!r}")

    def select_grid(self, width: int, height: int) -> tuple[int, int]:
        """(rows, cols) of crops for a `width` x `height` image (Magma's best-resolution rule)."""
        best, best_effective, best_waste = (1, 1), -1, float("inf")
        # Same candidate order as Magma (width multiple outer), so ties resolve the same way.
        for cols in range(1, self.max_num_crops + 1):
            for rows in range(1, self.max_num_crops // cols + 1):
                target_w, target_h = cols * self.image_size, rows * self.image_size
                scale = min(target_w / width, target_h / height)
                effective = min(int(width * scale) * int(height * scale), width * height)
                waste = target_w * target_h - effective
                if effective > best_effective or (effective == best_effective and waste < best_waste):
                    best, best_effective, best_waste = (rows, cols), effective, waste
        return best

    def preprocess(self, image) -> tuple[np.ndarray, tuple[int, int]]:
        """One image (HxWx3 uint8, or a PIL image) -> crops (rows*cols, 3, S, S) float32 and (rows, cols)."""
        import cv2

        rgb = to_rgb_array(image)
        height, width = rgb.shape[:2]
        rows, cols = self.select_grid(width, height)
        size = (cols * self.image_size, rows * self.image_size)
        if size != (width, height):
            interpolation = cv2.INTER_AREA if self.resample == "area" else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, size, interpolation=interpolation)
        pixels = (rgb.astype(np.float32) / 255.0 - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        s = self.image_size
        crops = pixels.reshape(rows, s, cols, s, 3).transpose(0, 2, 4, 1, 3).reshape(rows * cols, 3, s, s)
        return np.ascontiguousarray(crops), (rows, cols)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["image_mean"], data["image_std"] = list(self.image_mean), list(self.image_std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "MagmaImageProcessor":
        known = {"image_size", "max_num_crops", "image_mean", "image_std", "resample"}
        return cls(**{key: value for key, value in data.items() if key in known})


def to_rgb_array(image) -> np.ndarray:
    """Validate an image for the model: HxWx3 uint8 (a PIL image is converted), sides within limits."""
    if type(image).__module__.startswith("PIL."):
        image = np.asarray(image.convert("RGB"))
    array = validate_rgb(image, "model image")
    height, width = array.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise InvalidInputError(f"model image is {width}x{height} pixels; each side needs at least {MIN_IMAGE_SIDE}")
    if max(height, width) > MAX_IMAGE_SIDE:
        raise InvalidInputError(f"model image is {width}x{height} pixels; sides above {MAX_IMAGE_SIDE} are refused")
    return array


def _three_floats(value, name: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be three numbers, got {value!r}") from exc
    if len(values) != 3 or not all(np.isfinite(values)):
        raise InvalidInputError(f"{name} must be three finite numbers, got {value!r}")
    return values


__all__ = ["MagmaImageProcessor", "CLIP_MEAN", "CLIP_STD", "MIN_IMAGE_SIDE", "MAX_IMAGE_SIDE", "to_rgb_array"]

"""Image validation, explicit conversion, loading and saving.

Every image inside magma_core is an HxWx3 uint8 RGB numpy array. `validate_rgb` checks that
contract and names what is wrong; `to_rgb_uint8` performs the few conversions that are
unambiguous (gray -> RGB, RGBA -> RGB, float in [0, 1] -> uint8) and refuses the rest.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from magma_core.errors import InvalidInputError

# Encoders OpenCV ships in the headless wheel; anything else is refused up front with a clear message.
_WRITABLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def _as_array(image: object, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise InvalidInputError(f"{name}: empty image (shape {image.shape})")
    if image.dtype.kind not in "uif":
        raise InvalidInputError(f"{name}: non-numeric dtype {image.dtype}; expected uint8 RGB")
    return image


def _describe_shape_problem(image: np.ndarray, name: str) -> str | None:
    """Why `image` is not HxWx3, or None when it is."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return f"{name}: grayscale image (shape {image.shape}); convert to RGB, e.g. to_rgb_uint8(image, allow_gray=True)"
    if image.ndim != 3:
        return f"{name}: expected an HxWx3 RGB image, got {image.ndim} dimensions (shape {image.shape})"
    if image.shape[2] == 4:
        return f"{name}: RGBA image with 4 channels (shape {image.shape}); drop the alpha channel, e.g. to_rgb_uint8(image)"
    if image.shape[2] != 3:
        return f"{name}: expected 3 colour channels, got {image.shape[2]} (shape {image.shape})"
    return None


def validate_rgb(image: object, name: str = "image") -> np.ndarray:
    """Return `image` unchanged if it is an HxWx3 uint8 array; raise InvalidInputError naming the problem."""
    array = _as_array(image, name)
    problem = _describe_shape_problem(array, name)
    if problem:
        raise InvalidInputError(problem)
    if array.dtype != np.uint8:
        hint = "convert with to_rgb_uint8(image, allow_float=True)" if array.dtype.kind == "f" else "cast explicitly if values are 0..255"
        raise InvalidInputError(f"{name}: dtype {array.dtype}, expected uint8 ({hint})")
    return array


def to_rgb_uint8(image: object, allow_gray: bool = True, allow_float: bool = True, name: str = "image") -> np.ndarray:
    """Convert an image to HxWx3 uint8 RGB where the conversion is unambiguous.

    Gray (HxW, HxWx1) is repeated into 3 channels when `allow_gray`; RGBA loses its alpha; floats
    must lie in [0, 1] (scaled by 255) when `allow_float`; integers must already lie in 0..255.
    A valid uint8 RGB input is returned as is (no copy).
    """
    array = _as_array(image, name)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim == 3 and array.shape[2] == 1:
        if not allow_gray:
            raise InvalidInputError(f"{name}: grayscale image (shape {np.shape(image)}) and allow_gray=False")
        array = np.repeat(array, 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    problem = _describe_shape_problem(array, name)
    if problem:
        raise InvalidInputError(problem)

    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind == "f":
        return _float_to_uint8(array, allow_float, name)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 255:
        raise InvalidInputError(f"{name}: {array.dtype} values span [{low}, {high}], outside 0..255; scale it to uint8 explicitly")
    return array.astype(np.uint8)


def _float_to_uint8(array: np.ndarray, allow_float: bool, name: str) -> np.ndarray:
    if not allow_float:
        raise InvalidInputError(f"{name}: float image ({array.dtype}) and allow_float=False")
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise InvalidInputError(f"{name}: {bad} NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        if low >= 0.0 and high <= 255.0:
            raise InvalidInputError(
                f"{name}: float values span [{low:g}, {high:g}], outside [0, 1]; this looks like a 0..255 float image: "
                "divide by 255 or cast to uint8"
            )
        raise InvalidInputError(f"{name}: float values span [{low:g}, {high:g}], outside [0, 1]")
    return np.rint(array * 255.0).astype(np.uint8)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (alpha dropped, gray expanded, 16-bit reduced to 8-bit)."""
    import cv2

    file = Path(path)
    if not file.exists():
        raise InvalidInputError(f"image file not found: {file}")
    if file.is_dir():
        raise InvalidInputError(f"image path is a directory, not a file: {file}")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read image file {file}: {exc.strerror or exc}") from exc
    # imdecode on bytes (not imread) so non-ASCII paths work and a read failure differs from a decode failure.
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise InvalidInputError(f"cannot decode image file {file}: empty, corrupt or not an image format OpenCV reads")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def save_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an HxWx3 uint8 RGB image; the format follows the suffix. Parent folders are created."""
    import cv2

    validate_rgb(rgb, name="image to save")
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in _WRITABLE_SUFFIXES:
        raise InvalidInputError(f"cannot save {file}: unsupported suffix {suffix or '(none)'}; use one of {sorted(_WRITABLE_SUFFIXES)}")
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InvalidInputError(f"cannot encode image as {suffix} for {file}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(encoded.tobytes())
    except OSError as exc:
        raise InvalidInputError(f"cannot write image file {file}: {exc.strerror or exc}") from exc
    return file

"""Colour names <-> RGB, matched so that shading does not change a colour's name.

A lit face and a shaded face of one block differ mostly in brightness, while hue and
saturation stay (nearly) constant. So colours are compared in a "shading-tolerant" space:
the HSV colour disc (saturation * (cos hue, sin hue)) plus the value axis with a small weight.
The same distance separates a coloured pad from the table it lies on.
"""
from __future__ import annotations

import re

import numpy as np

from magma_core.errors import InvalidInputError

# Reference colours (RGB in 0..1). The chromatic ones match the simulator's palette; brown is its tray.
COLOR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.12),
    "orange": (1.00, 0.50, 0.05),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.15, 0.70, 0.20),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.12, 0.30, 0.90),
    "purple": (0.55, 0.20, 0.75),
    "pink": (1.00, 0.50, 0.75),
    "brown": (0.45, 0.36, 0.28),
    "white": (0.95, 0.95, 0.95),
    "grey": (0.50, 0.50, 0.50),
    "black": (0.08, 0.08, 0.08),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLOR_RGB)
ACHROMATIC = frozenset({"white", "grey", "black"})
# Words an instruction may use for a palette name.
COLOR_ALIASES: dict[str, str] = {
    "gray": "grey",
    "violet": "purple",
    "magenta": "pink",
    "teal": "cyan",
    "turquoise": "cyan",
    "aqua": "cyan",
    "navy": "blue",
    "lime": "green",
    "gold": "yellow",
    "golden": "yellow",
    "tan": "brown",
    "crimson": "red",
}
VALUE_WEIGHT = 0.3  # brightness counts this much relative to the colour disc (whose radius is 1)


def _as_rgb01(rgb: object) -> np.ndarray:
    """(..., 3) colours as floats in 0..1; uint8 input (or any value above 1) is read as 0..255."""
    arr = np.asarray(rgb)
    if arr.ndim == 0 or arr.shape[-1] != 3:
        raise InvalidInputError(f"colours: expected shape (..., 3), got {arr.shape}")
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise InvalidInputError("colours contain NaN or inf")
    if arr.dtype == np.uint8 or (out.size and out.max() > 1.0):
        out = out / 255.0
    return np.clip(out, 0.0, 1.0)


def color_features(rgb: object) -> np.ndarray:
    """(..., 3) shading-tolerant features: s*cos(h), s*sin(h), VALUE_WEIGHT * v (HSV)."""
    c = _as_rgb01(rgb)
    v = c.max(axis=-1)
    chroma = v - c.min(axis=-1)
    s = np.where(v > 1e-9, chroma / np.maximum(v, 1e-9), 0.0)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    safe = np.maximum(chroma, 1e-9)
    hue = np.where(v == r, ((g - b) / safe) % 6.0, np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    angle = hue * (np.pi / 3.0)
    return np.stack([s * np.cos(angle), s * np.sin(angle), VALUE_WEIGHT * v], axis=-1)


_PALETTE = color_features(np.array(list(COLOR_RGB.values())))

# Whole images are uint8: look their features up in a table over 5-bit channels (32768 entries),
# ~10x faster than computing HSV per pixel and well within the colours' spacing.
_LUT_SHIFT = 3
_lut_cache: dict[str, np.ndarray] = {}


def _lut(kind: str) -> np.ndarray:
    if kind not in _lut_cache:
        levels = (np.arange(256 >> _LUT_SHIFT) << _LUT_SHIFT) + (1 << (_LUT_SHIFT - 1))
        r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
        feats = color_features(np.stack([r, g, b], axis=-1).reshape(-1, 3).astype(np.uint8))
        _lut_cache["features"] = feats
        _lut_cache["index"] = np.argmin(np.linalg.norm(feats[:, None, :] - _PALETTE, axis=-1), axis=-1)
    return _lut_cache[kind]


def _lut_keys(rgb: np.ndarray) -> np.ndarray:
    q = (rgb >> _LUT_SHIFT).astype(np.int64)
    bits = 8 - _LUT_SHIFT
    return (q[..., 0] << (2 * bits)) | (q[..., 1] << bits) | q[..., 2]


def _features_fast(rgb: object) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype == np.uint8 and arr.ndim >= 1 and arr.shape[-1] == 3 and arr.size > 3 * 64:
        return _lut("features")[_lut_keys(arr)]
    return color_features(arr)


def color_distance(a: object, b: object) -> np.ndarray:
    """Shading-tolerant distance between colours (broadcast over leading dimensions); about 0..1.3."""
    return np.linalg.norm(_features_fast(a) - _features_fast(b), axis=-1)


def color_index(rgb: object) -> np.ndarray:
    """(...) index into COLOR_NAMES of the nearest palette colour of each colour in `rgb` (..., 3)."""
    arr = np.asarray(rgb)
    if arr.dtype == np.uint8 and arr.ndim >= 1 and arr.shape[-1] == 3 and arr.size > 3 * 64:
        return _lut("index")[_lut_keys(arr)]
    feats = color_features(arr)
    d = np.linalg.norm(feats[..., None, :] - _PALETTE, axis=-1)
    return np.argmin(d, axis=-1)


def nearest_color(rgb: object) -> tuple[str, float]:
    """(name, distance) of the palette colour nearest to one RGB colour (0..1 floats or 0..255)."""
    if np.asarray(rgb).size != 3:
        raise InvalidInputError(f"nearest_color takes one colour (3 numbers), got shape {np.asarray(rgb).shape}")
    feats = color_features(np.asarray(rgb).reshape(3))
    d = np.linalg.norm(_PALETTE - feats, axis=-1)
    i = int(np.argmin(d))
    return COLOR_NAMES[i], float(d[i])


def color_rgb(name: str) -> tuple[int, int, int]:
    """A palette (or alias) name -> RGB 0..255, for drawing."""
    key = canonical_color(name)
    if key is None:
        raise InvalidInputError(f"unknown colour {name!r}; known: {', '.join(COLOR_NAMES)}")
    return tuple(int(round(255 * x)) for x in COLOR_RGB[key])  # type: ignore[return-value]


def canonical_color(word: str) -> str | None:
    """The palette name a word denotes ('gray' -> 'grey'), or None if it is not a colour word."""
    if not isinstance(word, str):
        return None
    w = word.strip().lower()
    if w in COLOR_RGB:
        return w
    return COLOR_ALIASES.get(w)


_WORD = re.compile(r"[a-z]+")


def color_words(text: str) -> list[tuple[int, str]]:
    """Colour words in `text`, in order, as (word index, palette name)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"expected text, got {type(text).__name__}")
    out = []
    for i, word in enumerate(_WORD.findall(text.lower())):
        name = canonical_color(word)
        if name is not None:
            out.append((i, name))
    return out


def hue_group(names: np.ndarray) -> np.ndarray:
    """Collapse palette indices so that white, grey and black (one surface under light and shade) share a group."""
    names = np.asarray(names)
    achromatic = [COLOR_NAMES.index(n) for n in sorted(ACHROMATIC)]
    out = names.copy()
    out[np.isin(names, achromatic)] = COLOR_NAMES.index("grey")
    return out

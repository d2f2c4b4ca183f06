"""Draw Set-of-Mark marks: numbered filled circles for points, outlined boxes with a numbered tab.

Label text is at least 3% of the image width tall, drawn black or white (whichever contrasts more
with the mark's fill) with an outline of the opposite colour, so it reads on any background. Box
labels go where they overlap other boxes, other labels and the image border least.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import cv2
import numpy as np

from magma_core.errors import InvalidInputError
from magma_core.imageio import validate_rgb
from magma_core.som.marks import Mark, MarkSet

FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)
MIN_TEXT_HEIGHT_FRACTION = 0.03  # of the image width: the legibility floor this module guarantees
_TEXT_HEIGHT_FRACTION = 0.035  # what it aims for, a margin above the floor
_MIN_TEXT_PX = 7  # below this digits stop being readable whatever the image size


def _build_palette() -> tuple[tuple[int, int, int], ...]:
    # Hues ordered so that consecutive ids land far apart on the colour wheel; saturation and value
    # alternate so the second round of hues still differs from the first. No near-black or near-white
    # entries: those vanish on dark or bright scenes.
    hues = (0, 125, 220, 50, 285, 175, 25, 320, 90, 200, 60, 255, 150, 340, 10, 235)
    colours = []
    for i, hue in enumerate(hues):
        sat = 0.9 if i < 8 else 0.6
        val = 0.95 if i % 3 != 2 else 0.75
        r, g, b = colorsys.hsv_to_rgb(hue / 360.0, sat, val)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colours)


PALETTE: tuple[tuple[int, int, int], ...] = _build_palette()


def mark_color(mark_id: int) -> tuple[int, int, int]:
    """The RGB colour of a mark id; stable across frames so a mark keeps its colour in videos."""
    return PALETTE[(int(mark_id) - 1) % len(PALETTE)]


def relative_luminance(rgb: Iterable[float]) -> float:
    """WCAG relative luminance of an sRGB colour given as 0..255 values."""
    channels = []
    for c in rgb:
        c = float(c) / 255.0
        channels.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    r, g, b = channels
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def text_color_for(fill_rgb: Iterable[float]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher contrast ratio against `fill_rgb`."""
    lum = relative_luminance(fill_rgb)
    contrast_black = (lum + 0.05) / 0.05
    contrast_white = 1.05 / (lum + 0.05)
    return BLACK if contrast_black >= contrast_white else WHITE


def _opposite(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    return WHITE if colour == BLACK else BLACK


@dataclass(frozen=True)
class LabelStyle:
    """Sizes in pixels for one image size: text, strokes, padding, box line and circle radius."""

    font_scale: float
    thickness: int  # text stroke
    outline: int  # stroke of the contrasting outline drawn under the text
    text_height: int  # rendered height of digits (with outline)
    pad: int
    line: int  # box outline
    ring: int  # contrasting ring around circles and badges


@lru_cache(maxsize=4096)
def _text_extent(text: str, font_scale: float, stroke: int) -> tuple[int, int, int, int]:
    """Rendered footprint of `text` relative to its putText origin: (dx, dy, width, height).

    Measured by rendering rather than getTextSize, whose height includes room for descenders and
    differs between OpenCV versions.
    """
    (w, h), base = cv2.getTextSize(text, FONT, font_scale, stroke)
    margin = stroke + 4
    scratch = np.zeros((h + base + 2 * margin, w + 2 * margin), np.uint8)
    origin = (margin, margin + h)
    cv2.putText(scratch, text, origin, FONT, font_scale, 255, stroke, cv2.LINE_AA)
    ys, xs = np.nonzero(scratch > 40)
    if ys.size == 0:
        return 0, -h, w, h
    return int(xs.min() - origin[0]), int(ys.min() - origin[1]), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@lru_cache(maxsize=256)
def label_style(width: int, height: int, label_scale: float = 1.0) -> LabelStyle:
    """Label sizes for an image of width x height pixels; digits are >= 3% of the width tall at scale 1."""
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"image size must be positive, got {width}x{height}")
    if not (label_scale > 0 and math.isfinite(label_scale)):
        raise InvalidInputError(f"label_scale must be a positive number, got {label_scale}")
    target = max(_MIN_TEXT_PX, math.ceil(_TEXT_HEIGHT_FRACTION * width * label_scale))
    thickness = max(1, round(target / 11))
    scale = target / 21.0  # Hershey simplex digits are ~21 px tall at scale 1; refined below
    for _ in range(40):
        if _text_extent("0123456789", scale, thickness)[3] >= target:
            break
        scale *= 1.05
    outline = thickness + 2 * max(1, round(thickness / 2))
    line = max(2, round(width / 256))
    return LabelStyle(
        font_scale=round(scale, 4),
        thickness=thickness,
        outline=outline,
        text_height=_text_extent("0123456789", scale, outline)[3],
        pad=max(1, round(0.2 * target)),
        line=line,
        ring=max(1, line // 2),
    )


@dataclass(frozen=True)
class MarkLayout:
    """Where one mark's graphics go. label_rect is (x0, y0, x1, y1), end-exclusive, in pixels."""

    mark: Mark
    color: tuple[int, int, int]
    text: str
    label_rect: tuple[int, int, int, int]
    text_origin: tuple[int, int]


def _overlap_area(candidates: np.ndarray, obstacles: list[tuple[float, float, float, float]]) -> np.ndarray:
    """Summed intersection area of each candidate rect (C, 4) with every obstacle rect."""
    if not obstacles:
        return np.zeros(len(candidates))
    obs = np.asarray(obstacles, dtype=np.float64)
    w = np.minimum(candidates[:, None, 2], obs[None, :, 2]) - np.maximum(candidates[:, None, 0], obs[None, :, 0])
    h = np.minimum(candidates[:, None, 3], obs[None, :, 3]) - np.maximum(candidates[:, None, 1], obs[None, :, 1])
    return (np.clip(w, 0, None) * np.clip(h, 0, None)).sum(axis=1)


def _label_candidates(box: tuple[float, float, float, float], w: float, h: float) -> np.ndarray:
    """Label rects around a box (its outer drawn edge), in order of preference."""
    x0, y0, x1, y1 = box
    corners = [
        (x0, y0 - h),  # above, left-aligned: the usual tab
        (x0, y0),  # inside top-left
        (x0, y1),  # below, left-aligned
        (x1 - w, y0 - h),  # above, right-aligned
        (x1 - w, y1),  # below, right-aligned
        (x1, y0),  # right of the box, top
        (x0 - w, y0),  # left of the box, top
        (x1 - w, y0),  # inside top-right
        (x0, y1 - h),  # inside bottom-left
        (x1 - w, y1 - h),  # inside bottom-right
        (x1, y1 - h),  # right of the box, bottom
        (x0 - w, y1 - h),  # left of the box, bottom
    ]
    c = np.asarray(corners, dtype=np.float64)
    return np.column_stack([c[:, 0], c[:, 1], c[:, 0] + w, c[:, 1] + h])


def _clip_coord(value: float, limit: int) -> float:
    # Far-off coordinates would overflow OpenCV's int32 drawing; anything this far out is invisible anyway.
    return float(np.clip(value, -4 * limit, 5 * limit))


def plan_marks(marks: MarkSet | Iterable[Mark], width: int, height: int, label_scale: float = 1.0) -> list[MarkLayout]:
    """Decide each mark's colour and label rectangle (point circles first, then box tabs greedily)."""
    marks = marks if isinstance(marks, MarkSet) else MarkSet(marks)
    style = label_style(int(width), int(height), float(label_scale))
    edge = style.line / 2.0 + style.ring
    layouts: dict[int, MarkLayout] = {}
    taken: list[tuple[float, float, float, float]] = []  # circles and labels already placed

    for mark in marks:
        if mark.point is None:
            continue
        text = str(mark.id)
        dx, dy, tw, th = _text_extent(text, style.font_scale, style.outline)
        # Big enough that the digits' bounding box (nearly) fits inside the disc.
        radius = max(math.ceil(0.6 * style.text_height), math.ceil(0.5 * math.hypot(tw, th))) + style.pad // 2
        cx, cy = _clip_coord(mark.point[0], width), _clip_coord(mark.point[1], height)
        rect = (round(cx) - radius, round(cy) - radius, round(cx) + radius + 1, round(cy) + radius + 1)
        origin = (round(cx - tw / 2.0) - dx, round(cy - th / 2.0) - dy)
        layouts[mark.id] = MarkLayout(mark, mark_color(mark.id), text, rect, origin)
        taken.append(rect)

    boxes = {m.id: tuple(_clip_coord(v, width if i % 2 == 0 else height) for i, v in enumerate(m.box)) for m in marks if m.box is not None}
    outer = {i: (b[0] - edge, b[1] - edge, b[2] + edge, b[3] + edge) for i, b in boxes.items()}
    for mark_id, box in outer.items():
        text = str(mark_id)
        dx, dy, tw, th = _text_extent(text, style.font_scale, style.outline)
        w, h = tw + 2 * style.pad, max(th, style.text_height) + 2 * style.pad
        cands = _label_candidates(box, w, h)
        inside_x = np.clip(cands[:, 2], 0, width) - np.clip(cands[:, 0], 0, width)
        inside_y = np.clip(cands[:, 3], 0, height) - np.clip(cands[:, 1], 0, height)
        outside = w * h - np.clip(inside_x, 0, None) * np.clip(inside_y, 0, None)
        other_boxes = [b for i, b in boxes.items() if i != mark_id]
        score = (
            10.0 * outside
            + 3.0 * _overlap_area(cands, taken)
            + 1.0 * _overlap_area(cands, other_boxes)
            + 0.02 * w * h * np.arange(len(cands))  # tie-break towards the preferred positions
        )
        x0, y0, x1, y1 = cands[int(np.argmin(score))]
        # Still partly outside (tiny image or box at a corner): slide it in rather than lose digits.
        shift_x = max(0.0, -x0) - max(0.0, x1 - width) if w <= width else -x0
        shift_y = max(0.0, -y0) - max(0.0, y1 - height) if h <= height else -y0
        rect = (round(x0 + shift_x), round(y0 + shift_y), round(x1 + shift_x), round(y1 + shift_y))
        origin = (rect[0] + (rect[2] - rect[0] - tw) // 2 - dx, rect[1] + (rect[3] - rect[1] - th) // 2 - dy)
        layouts[mark_id] = MarkLayout(marks[mark_id], mark_color(mark_id), text, rect, origin)
        taken.append(rect)
    return [layouts[m.id] for m in marks]


def _background_contrast(image: np.ndarray, rect: tuple[float, float, float, float]) -> tuple[int, int, int]:
    """Black or white, whichever stands out from the image under `rect` (its mean colour)."""
    h, w = image.shape[:2]
    x0, y0 = max(0, int(rect[0])), max(0, int(rect[1]))
    x1, y1 = min(w, int(math.ceil(rect[2]))), min(h, int(math.ceil(rect[3])))
    if x1 <= x0 or y1 <= y0:
        return BLACK
    # A strided sample is enough for a mean colour and keeps large boxes cheap.
    step = max(1, min(x1 - x0, y1 - y0) // 16)
    mean = image[y0:y1:step, x0:x1:step].reshape(-1, 3).mean(axis=0)
    return text_color_for(mean)


def _put_label_text(canvas: np.ndarray, layout: MarkLayout, style: LabelStyle) -> None:
    text_rgb = text_color_for(layout.color)
    cv2.putText(canvas, layout.text, layout.text_origin, FONT, style.font_scale, _opposite(text_rgb), style.outline, cv2.LINE_AA)
    cv2.putText(canvas, layout.text, layout.text_origin, FONT, style.font_scale, text_rgb, style.thickness, cv2.LINE_AA)


def draw_marks(image: np.ndarray, marks: MarkSet | Iterable[Mark], *, label_scale: float = 1.0) -> np.ndarray:
    """Return a copy of an RGB uint8 image with the marks drawn; the input is never modified.

    Points become numbered filled circles centred on the point; boxes become outlined rectangles with
    a numbered tab placed where it covers the least of other boxes and labels. `label_scale` > 1
    enlarges labels (below 1 drops under the 3%-of-width guarantee).
    """
    validate_rgb(image)
    canvas = np.ascontiguousarray(image).copy()
    height, width = image.shape[:2]
    layouts = plan_marks(marks, width, height, label_scale)
    style = label_style(width, height, float(label_scale))

    # Boxes first so that every label and circle sits on top of every outline.
    for layout in layouts:
        box = layout.mark.box
        if box is None:
            continue
        x0, y0 = round(_clip_coord(box[0], width)), round(_clip_coord(box[1], height))
        x1, y1 = round(_clip_coord(box[2], width)), round(_clip_coord(box[3], height))
        edge_rgb = _background_contrast(image, (x0, y0, x1, y1))
        cv2.rectangle(canvas, (x0, y0), (x1, y1), edge_rgb, style.line + 2 * style.ring, cv2.LINE_8)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), layout.color, style.line, cv2.LINE_8)

    for layout in layouts:
        rect = layout.label_rect
        ring_rgb = _background_contrast(image, rect)
        if layout.mark.point is not None:
            radius = (rect[2] - rect[0] - 1) // 2
            centre = (rect[0] + radius, rect[1] + radius)
            cv2.circle(canvas, centre, radius + style.ring, ring_rgb, -1, cv2.LINE_AA)
            cv2.circle(canvas, centre, radius, layout.color, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(canvas, (rect[0], rect[1]), (rect[2] - 1, rect[3] - 1), ring_rgb, -1)
            r = style.ring
            cv2.rectangle(canvas, (rect[0] + r, rect[1] + r), (rect[2] - 1 - r, rect[3] - 1 - r), layout.color, -1)
        _put_label_text(canvas, layout, style)
    return canvas

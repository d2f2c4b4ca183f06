"""Draw Trace-of-Mark overlays: traces on an image, progressive overlay videos, contact sheets.

Moving traces are polylines whose colour runs from blue (now) to red (furthest future) over a dark
under-stroke, end in an arrowhead and start at a numbered circle in the mark's Set-of-Mark colour.
Steps the tracker lost are dashed. Static traces are thin and grey so they do not compete.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from magma_core.errors import InvalidInputError
from magma_core.imageio import validate_rgb
from magma_core.som.draw import FONT, draw_marks, label_style, text_color_for
from magma_core.som.marks import Mark, MarkSet
from magma_core.tom.types import Trace, TraceSet

STATIC_RGB = (150, 150, 150)
UNDERSTROKE_RGB = (20, 20, 20)
_SHIFT = 4  # OpenCV fixed-point bits: sub-pixel trace positions stay sub-pixel on small images
_SCALE = 1 << _SHIFT


def _gradient_lut() -> np.ndarray:
    # Turbo without its darkest and most saturated ends, so every step stands out on dark and light scenes.
    ramp = np.linspace(0.1 * 255, 0.9 * 255, 256).astype(np.uint8).reshape(-1, 1)
    return cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO)[:, 0, ::-1].copy()


_LUT = _gradient_lut()


def time_color(fraction: float) -> tuple[int, int, int]:
    """Colour of a trace step at `fraction` of the way from now (0) to its last step (1)."""
    index = int(round(min(max(fraction, 0.0), 1.0) * 255))
    return tuple(int(c) for c in _LUT[index])  # type: ignore[return-value]


def _fixed(point: np.ndarray) -> tuple[int, int]:
    return int(round(point[0] * _SCALE)), int(round(point[1] * _SCALE))


def _dashed_line(canvas: np.ndarray, p0: np.ndarray, p1: np.ndarray, colour, thickness: int, dash: float, gap: float) -> None:
    length = float(np.hypot(*(p1 - p0)))
    if length < 1e-6:
        return
    direction = (p1 - p0) / length
    start = 0.0
    while start < length:
        end = min(start + dash, length)
        cv2.line(canvas, _fixed(p0 + direction * start), _fixed(p0 + direction * end), colour, thickness, cv2.LINE_AA, _SHIFT)
        start += dash + gap


def _arrowhead(canvas: np.ndarray, points: np.ndarray, colour, size: float) -> None:
    """A filled triangle whose tip is the last point, pointing along the trace's final direction."""
    tip = points[-1]
    # Look back far enough that jitter in the last tiny step does not set the direction.
    for back in points[-2::-1]:
        if np.hypot(*(tip - back)) >= size * 0.5:
            break
    else:
        back = points[0]
    length = float(np.hypot(*(tip - back)))
    if length < 1.0:
        return
    u = (tip - back) / length
    normal = np.array([-u[1], u[0]])
    base = tip - u * size
    triangle = np.array([_fixed(tip), _fixed(base + normal * size * 0.55), _fixed(base - normal * size * 0.55)], np.int32)
    cv2.fillPoly(canvas, [triangle], colour, cv2.LINE_AA, _SHIFT)
    cv2.polylines(canvas, [triangle], True, UNDERSTROKE_RGB, 1, cv2.LINE_AA, _SHIFT)


def _finite_limited(points: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    finite = np.isfinite(points).all(axis=1)
    # Keep far-off guesses from overflowing OpenCV's fixed-point coordinates.
    limited = np.clip(np.nan_to_num(points), [-4 * width, -4 * height], [5 * width, 5 * height])
    return limited, finite


def _runs(ok: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index ranges of consecutive True values."""
    edges = np.flatnonzero(np.diff(np.r_[0, ok.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _draw_static(canvas: np.ndarray, trace: Trace, steps: int, width: int) -> None:
    points, finite = _finite_limited(trace.points[:steps], width, canvas.shape[0])
    fixed = np.rint(points * _SCALE).astype(np.int32)
    polylines = [fixed[a:b] for a, b in _runs(finite) if b - a >= 2]
    if polylines:
        cv2.polylines(canvas, polylines, False, STATIC_RGB, 1, cv2.LINE_AA, _SHIFT)
    if len(points) and finite[0]:
        cv2.circle(canvas, tuple(fixed[0].tolist()), 2 * _SCALE, STATIC_RGB, -1, cv2.LINE_AA, _SHIFT)


def _draw_moving(canvas: np.ndarray, trace: Trace, steps: int, width: int, line: int, arrow: float) -> None:
    points, finite = _finite_limited(trace.points[:steps], width, canvas.shape[0])
    n = len(points)
    if n < 2:
        return
    fixed = [tuple(p) for p in np.rint(points * _SCALE).astype(np.int64).tolist()]
    drawable = finite[:-1] & finite[1:]
    solid = trace.visible[:steps][:-1] & trace.visible[:steps][1:]
    total = max(trace.length - 1, 1)  # colour by position in the full trace so progressive drawing keeps colours
    colours = [tuple(c) for c in _LUT[np.rint((np.arange(n - 1) + 0.5) / total * 255).clip(0, 255).astype(int)].tolist()]
    # Round caps of the thick under-stroke eat into gaps, so the gap allows for them.
    dash, gap = 2.0 * line + 2.0, 3.0 * line + 5.0
    for under in (True, False):
        thickness = line + 2 if under else line
        for i in np.flatnonzero(drawable).tolist():
            colour = UNDERSTROKE_RGB if under else colours[i]
            if solid[i]:
                cv2.line(canvas, fixed[i], fixed[i + 1], colour, thickness, cv2.LINE_AA, _SHIFT)
            else:
                _dashed_line(canvas, points[i], points[i + 1], colour, thickness, dash, gap)
    drawn = points[finite]
    if len(drawn) >= 2:
        _arrowhead(canvas, drawn, time_color((n - 1) / total), arrow)


def _as_trace_list(traces: TraceSet | Iterable[Trace]) -> list[Trace]:
    items = traces.traces if isinstance(traces, TraceSet) else list(traces)
    for t in items:
        if not isinstance(t, Trace):
            raise InvalidInputError(f"expected Trace objects, got {type(t).__name__}")
    return items


def draw_traces(
    image: np.ndarray,
    traces: TraceSet | Iterable[Trace],
    marks: MarkSet | None = None,
    *,
    steps: int | None = None,
    show_static: bool = True,
    label_scale: float = 1.0,
) -> np.ndarray:
    """Return a copy of an RGB uint8 image with the traces (and `marks`, if given) drawn on it.

    Each moving trace's start is labelled with its mark_id (1-based, as in Set-of-Mark); when `marks`
    holds that id, the mark itself is drawn instead. `steps` draws only each trace's first steps
    (progressive videos). Static traces are drawn thin and grey, unlabelled, unless `show_static` is False.
    """
    validate_rgb(image)
    items = _as_trace_list(traces)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InvalidInputError(f"steps must be a positive integer, got {steps!r}")
    height, width = image.shape[:2]
    line = max(2, round(width / 160))
    arrow = max(8.0, 4.0 * line + 4.0, 0.04 * width)

    canvas = np.ascontiguousarray(image).copy()
    if show_static:
        for trace in items:
            if not trace.moving:
                _draw_static(canvas, trace, steps or trace.length, width)
    for trace in items:
        if trace.moving:
            _draw_moving(canvas, trace, steps or trace.length, width, line, arrow)

    labels = MarkSet(marks) if marks is not None else MarkSet()
    for trace in items:
        start = trace.points[0] if trace.length else None
        if not trace.moving or trace.mark_id in labels or start is None or not np.isfinite(start).all():
            continue
        if isinstance(trace.mark_id, bool) or int(trace.mark_id) < 1:
            raise InvalidInputError(f"trace mark_id {trace.mark_id!r}: mark ids are 1-based, as shown to the model")
        labels.add(Mark(id=int(trace.mark_id), point=(float(start[0]), float(start[1])), kind="trace"))
    return draw_marks(canvas, labels, label_scale=label_scale) if len(labels) else canvas


def contact_sheet(
    images: Sequence[np.ndarray],
    cols: int,
    *,
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
    titles: Sequence[str] | None = None,
) -> np.ndarray:
    """Tile RGB images row by row into one image, `cols` per row; cells take the largest image's size.

    Smaller images are centred in their cell. `titles` (one per image) are written on each tile.
    """
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise InvalidInputError(f"cols must be a positive integer, got {cols!r}")
    images = [validate_rgb(im, name=f"images[{i}]") for i, im in enumerate(images)]
    if not images:
        raise InvalidInputError("contact_sheet: no images given")
    if titles is not None and len(titles) != len(images):
        raise InvalidInputError(f"{len(titles)} titles for {len(images)} images")
    if pad < 0:
        raise InvalidInputError(f"pad must be >= 0, got {pad}")
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    rows = math.ceil(len(images) / cols)
    used_cols = min(cols, len(images))
    sheet = np.empty((rows * cell_h + (rows + 1) * pad, used_cols * cell_w + (used_cols + 1) * pad, 3), np.uint8)
    sheet[:] = background
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y = pad + r * (cell_h + pad) + (cell_h - im.shape[0]) // 2
        x = pad + c * (cell_w + pad) + (cell_w - im.shape[1]) // 2
        tile = sheet[y : y + im.shape[0], x : x + im.shape[1]]
        tile[:] = im
        if titles is not None and titles[i]:
            _write_title(tile, str(titles[i]))
    return sheet


def _write_title(tile: np.ndarray, text: str) -> None:
    style = label_style(tile.shape[1], tile.shape[0])
    (tw, th), base = cv2.getTextSize(text, FONT, style.font_scale, style.thickness)
    origin = (style.pad + style.outline, style.pad + th + style.outline)
    colour = text_color_for(tile[: th + base + 2 * style.pad, : tw + 2 * style.pad].reshape(-1, 3).mean(axis=0))
    outline = (255, 255, 255) if colour == (0, 0, 0) else (0, 0, 0)
    cv2.putText(tile, text, origin, FONT, style.font_scale, outline, style.outline, cv2.LINE_AA)
    cv2.putText(tile, text, origin, FONT, style.font_scale, colour, style.thickness, cv2.LINE_AA)


def _map_points(trace: Trace, matrix: np.ndarray) -> Trace:
    """The trace with its points moved by a 3x3 homography (visibility and extras kept)."""
    pts = np.c_[trace.points, np.ones(trace.length)] @ matrix.T
    with np.errstate(divide="ignore", invalid="ignore"):
        mapped = pts[:, :2] / pts[:, 2:3]
    return Trace(trace.mark_id, mapped, trace.visible, trace.moving, trace.depth, trace.gripper)


def overlay_frames(
    frames: Sequence[np.ndarray],
    traces: TraceSet | Sequence[Trace] | Sequence[Sequence[Trace]],
    marks: MarkSet | None = None,
    label_scale: float = 1.0,
) -> Iterator[np.ndarray]:
    """One overlay per frame, drawn lazily; `traces` is checked against the clip before the first one.

    A TraceSet (or a flat list of Trace) covers the whole clip and is drawn progressively: frame t
    shows each trace up to step t, mapped into frame t by the set's homographies when it has them.
    A list of trace lists gives each frame its own traces.
    """
    if isinstance(traces, TraceSet) or (isinstance(traces, (list, tuple)) and all(isinstance(t, Trace) for t in traces)):
        # One trace set for the whole clip: point t belongs to frame t, so draw up to the current frame.
        items = _as_trace_list(traces)
        homographies = traces.homographies if isinstance(traces, TraceSet) else None
        if homographies is not None and len(homographies) < len(frames):
            homographies = None  # cannot map every frame; draw in frame-0 coordinates rather than guess
        return _progressive(frames, items, homographies, marks, label_scale)
    per_frame = [_as_trace_list(frame_traces) for frame_traces in traces]
    if len(per_frame) != len(frames):
        raise InvalidInputError(f"{len(per_frame)} trace lists for {len(frames)} frames")
    return (draw_traces(f, ft, marks, label_scale=label_scale) for f, ft in zip(frames, per_frame))


def _progressive(frames, items: list[Trace], homographies, marks, label_scale: float) -> Iterator[np.ndarray]:
    for t, frame in enumerate(frames):
        shown = items
        if homographies is not None and t > 0:
            # Traces live in frame-0 pixels; homographies map frame t -> frame 0, so invert.
            to_frame = np.linalg.inv(np.asarray(homographies[t], dtype=np.float64))
            shown = [_map_points(tr, to_frame) for tr in items]
        yield draw_traces(frame, shown, marks, steps=t + 1, label_scale=label_scale)


def write_overlay_video(
    frames: Sequence[np.ndarray] | np.ndarray,
    traces: TraceSet | Sequence[Trace] | Sequence[Sequence[Trace]],
    path: str | os.PathLike,
    fps: float = 10.0,
    *,
    marks: MarkSet | None = None,
    label_scale: float = 1.0,
) -> Path:
    """Write the clip with traces drawn on it as an mp4 ('mp4v'); return the path written.

    `traces` is either one TraceSet / list of Trace for the whole clip (drawn progressively: frame t
    shows each trace up to step t) or one list of traces per frame (e.g. a policy's prediction at
    each step). If no mp4 writer opens, the frames go to a folder of PNGs next to `path` instead,
    with a warning, and that folder is returned.
    """
    frames = [validate_rgb(f, name=f"frames[{i}]") for i, f in enumerate(frames)]
    if not frames:
        raise InvalidInputError("write_overlay_video: no frames given")
    size = frames[0].shape
    for i, f in enumerate(frames):
        if f.shape != size:
            raise InvalidInputError(f"frames[{i}] has shape {f.shape}, frames[0] has {size}; all frames must match")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise InvalidInputError(f"fps must be a positive number, got {fps!r}")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create folder for {target}: {exc.strerror or exc}") from exc
    return write_video(overlay_frames(frames, traces, marks, label_scale), target, fps, size=(size[1], size[0]))


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float, *, size: tuple[int, int]) -> Path:
    """Write RGB uint8 frames of `size` (width, height) as an mp4 ('mp4v') and return the path.

    If no mp4 writer opens, the frames go to a folder of PNGs next to `path` instead, with a
    warning, and that folder is returned.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size)
    if writer.isOpened():
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        return target

    folder = target.with_suffix("") if target.suffix else target.with_name(target.name + "_frames")
    if folder.exists() and not folder.is_dir():
        folder = folder.with_name(folder.name + "_frames")
    warnings.warn(
        f"could not open an mp4 ('mp4v') video writer for {target}; writing PNG frames to {folder}/ instead",
        RuntimeWarning,
        stacklevel=2,
    )
    from magma_core.imageio import save_image

    for t, frame in enumerate(frames):
        save_image(folder / f"frame_{t:05d}.png", frame)
    return folder

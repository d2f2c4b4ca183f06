"""Synthetic video clips with known ground-truth motion, for testing and benchmarking trackers.

A clip is a stack of layers composited back to front: a textured background, textured objects
(rectangles and discs) that translate and rotate, and optional occluders (textured bars that
sweep across the view in front of everything). A camera transform (pan, and optionally a small
rotation and zoom about the image centre) maps the world to the view.

Every layer's motion is an analytic 2D similarity, so for any query point of frame 0 we know
which layer it lies on, where it is in every later frame, and whether a layer in front hides it
there (or it left the view). Pixel centres sit at integer coordinates (OpenCV's convention), the
same convention the trackers use.

Deterministic per seed: the same config gives bit-identical frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from magma_core.errors import InvalidInputError

# Presets for `make_clip(kind)`. Each is a set of overrides on SyntheticClipConfig's defaults.
CLIP_KINDS: dict[str, dict] = {
    "static": {"n_objects": 0},
    "objects": {},
    "pan": {"pan": (2.0, 1.0)},
    "occlusion": {"occlusion": True},
    # The tracking benchmark: everything at once.
    "benchmark": {"pan": (1.5, -0.75), "camera_rotation": 0.1, "rotate": True, "occlusion": True, "noise_std": 1.0},
}


@dataclass(frozen=True)
class SyntheticClipConfig:
    """What to generate. Sizes and speeds are in pixels of the view; angles in degrees.

    pan: apparent motion of the static background, pixels per frame (camera panning).
    camera_rotation / camera_zoom: per-frame rotation (deg) and relative scale change of the view
    about the image centre. n_objects moving objects each get a speed drawn from object_speed and,
    when `rotate`, an angular speed up to max_rotation. `occlusion` adds a bar sweeping across the
    view in front of everything, so points disappear for a few frames and come back.
    """

    size: int | tuple[int, int] = 256  # int: square; tuple: (width, height)
    frames: int = 17
    pan: tuple[float, float] = (0.0, 0.0)
    camera_rotation: float = 0.0
    camera_zoom: float = 0.0
    n_objects: int = 2
    object_speed: tuple[float, float] = (1.5, 3.0)
    rotate: bool = True
    max_rotation: float = 2.0
    occlusion: bool = False
    noise_std: float = 0.0
    seed: int = 0

    @property
    def width(self) -> int:
        return int(self.size if isinstance(self.size, int) else self.size[0])

    @property
    def height(self) -> int:
        return int(self.size if isinstance(self.size, int) else self.size[1])

    def validate(self) -> None:
        if self.width < 32 or self.height < 32:
            raise InvalidInputError(f"synthetic clip size {self.width}x{self.height} is too small (minimum 32x32)")
        if self.frames < 2:
            raise InvalidInputError(f"synthetic clip needs at least 2 frames, got {self.frames}")
        if self.n_objects < 0:
            raise InvalidInputError(f"n_objects must be >= 0, got {self.n_objects}")
        low, high = self.object_speed
        if not 0 < low <= high:
            raise InvalidInputError(f"object_speed must be (low, high) with 0 < low <= high, got {self.object_speed}")
        if self.noise_std < 0:
            raise InvalidInputError(f"noise_std must be >= 0, got {self.noise_std}")


@dataclass
class GroundTruth:
    """Ground truth for query points given in frame 0 (view pixels).

    points (T, N, 2) positions in every frame; visible (T, N) False where a layer in front hides the
    point or it is outside the view; layer (N,) the layer each point lies on (0 = background,
    1..n_objects objects, then occluders); moving (N,) whether that layer moves in the world.
    """

    points: np.ndarray
    visible: np.ndarray
    layer: np.ndarray
    moving: np.ndarray


@dataclass
class _Layer:
    """One textured layer: a shape in its own local frame plus a world pose per frame."""

    texture: np.ndarray  # (h, w, 3) float32, the shape's local origin at the texture centre
    alpha: np.ndarray  # (h, w) float32 in [0, 1]
    shape: str  # "rect" or "disc" ("plane" for the background)
    half_size: tuple[float, float]  # rect: half width/height; disc: (radius, radius)
    start: np.ndarray  # world position of the local origin at frame 0
    velocity: np.ndarray  # px/frame in the world
    spin: float  # rad/frame
    angle0: float = 0.0

    @property
    def moving(self) -> bool:
        return bool(np.any(self.velocity != 0) or self.spin != 0)

    def local_to_world(self, t: int) -> np.ndarray:
        angle = self.angle0 + self.spin * t
        c, s = math.cos(angle), math.sin(angle)
        x, y = self.start + self.velocity * t
        return np.array([[c, -s, x], [s, c, y], [0.0, 0.0, 1.0]])

    def contains(self, local_xy: np.ndarray) -> np.ndarray:
        """Whether local points fall inside the shape (the alpha = 0.5 boundary)."""
        if self.shape == "plane":
            return np.ones(local_xy.shape[0], dtype=bool)
        if self.shape == "disc":
            return np.hypot(local_xy[:, 0], local_xy[:, 1]) <= self.half_size[0]
        return (np.abs(local_xy[:, 0]) <= self.half_size[0]) & (np.abs(local_xy[:, 1]) <= self.half_size[1])

    def texture_origin(self) -> np.ndarray:
        h, w = self.alpha.shape
        return np.array([(w - 1) / 2.0, (h - 1) / 2.0])


@dataclass
class SyntheticClip:
    """Frames (T, H, W, 3) uint8 RGB plus everything needed to answer ground-truth queries."""

    frames: np.ndarray
    config: SyntheticClipConfig
    camera: np.ndarray  # (T, 3, 3) world -> view; camera[0] is the identity
    layers: list[_Layer] = field(repr=False)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.config.width, self.config.height)

    @property
    def moving_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if layer.moving]

    def frame_to_frame0(self) -> np.ndarray:
        """(T, 3, 3) true homographies mapping static-scene points of frame t to frame 0."""
        return np.stack([np.linalg.inv(c) for c in self.camera])

    def ground_truth(self, points: np.ndarray) -> GroundTruth:
        """Where each frame-0 query point (N, 2) is in every frame, and whether it is visible."""
        query = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        n = query.shape[0]
        t_count = self.n_frames
        world0 = _apply(np.linalg.inv(self.camera[0]), query)
        layer_of = self._top_layer(world0, 0)

        out_points = np.zeros((t_count, n, 2))
        visible = np.zeros((t_count, n), dtype=bool)
        width, height = self.image_size
        for index, layer in enumerate(self.layers):
            sel = np.flatnonzero(layer_of == index)
            if sel.size == 0:
                continue
            local = _apply(np.linalg.inv(layer.local_to_world(0)), world0[sel])
            for t in range(t_count):
                world_t = _apply(layer.local_to_world(t), local)
                view_t = _apply(self.camera[t], world_t)
                out_points[t, sel] = view_t
                inside = (view_t[:, 0] >= 0) & (view_t[:, 0] <= width - 1) & (view_t[:, 1] >= 0) & (view_t[:, 1] <= height - 1)
                hidden = np.zeros(sel.size, dtype=bool)
                for above in self.layers[index + 1 :]:
                    hidden |= above.contains(_apply(np.linalg.inv(above.local_to_world(t)), world_t))
                visible[t, sel] = inside & ~hidden
        moving = np.array([self.layers[i].moving for i in layer_of], dtype=bool)
        return GroundTruth(points=out_points, visible=visible, layer=layer_of, moving=moving)

    def layer_maps(self) -> np.ndarray:
        """(T, H, W) int16: the front-most layer at every pixel of every frame (object masks)."""
        width, height = self.image_size
        ys, xs = np.mgrid[0:height, 0:width]
        pixels = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
        maps = np.zeros((self.n_frames, height, width), dtype=np.int16)
        for t in range(self.n_frames):
            world = _apply(np.linalg.inv(self.camera[t]), pixels)
            maps[t] = self._top_layer(world, t).reshape(height, width)
        return maps

    def _top_layer(self, world: np.ndarray, t: int) -> np.ndarray:
        top = np.zeros(world.shape[0], dtype=np.int64)
        for index, layer in enumerate(self.layers):
            if index == 0:
                continue
            inside = layer.contains(_apply(np.linalg.inv(layer.local_to_world(t)), world))
            top[inside] = index
        return top


def make_clip(kind: str | SyntheticClipConfig = "objects", seed: int | None = None, **overrides) -> SyntheticClip:
    """Generate a clip from a preset name (see CLIP_KINDS) or a config; keyword overrides win."""
    if isinstance(kind, SyntheticClipConfig):
        config = kind
    else:
        if kind not in CLIP_KINDS:
            raise InvalidInputError(f"unknown synthetic clip kind {kind!r}; choose one of {sorted(CLIP_KINDS)}")
        config = SyntheticClipConfig(**CLIP_KINDS[kind])
    if seed is not None:
        overrides["seed"] = seed
    if overrides:
        config = replace(config, **overrides)
    config.validate()
    return _generate(config)


def _generate(config: SyntheticClipConfig) -> SyntheticClip:
    rng = np.random.default_rng(config.seed)
    width, height = config.width, config.height
    camera = np.stack([_camera_matrix(config, t) for t in range(config.frames)])

    # The background must cover every view: grow it by how far the camera wanders.
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], dtype=np.float64)
    seen = np.concatenate([_apply(np.linalg.inv(c), corners) for c in camera])
    margin = 8
    x0, y0 = np.floor(seen.min(axis=0)) - margin
    x1, y1 = np.ceil(seen.max(axis=0)) + margin
    bg_w, bg_h = int(x1 - x0) + 1, int(y1 - y0) + 1
    background = _Layer(
        texture=_texture(rng, bg_w, bg_h, mean_colour=np.full(3, 128.0)),
        alpha=np.ones((bg_h, bg_w), dtype=np.float32),
        shape="plane",
        half_size=(0.0, 0.0),
        # The background's local origin is the centre of its texture, placed so texture covers `seen`.
        start=np.array([x0 + (bg_w - 1) / 2.0, y0 + (bg_h - 1) / 2.0]),
        velocity=np.zeros(2),
        spin=0.0,
    )
    layers = [background]
    layers += [_make_object(rng, config) for _ in range(config.n_objects)]
    if config.occlusion:
        layers.append(_make_occluder(rng, config))

    frames = np.empty((config.frames, height, width, 3), dtype=np.uint8)
    for t in range(config.frames):
        canvas = np.zeros((height, width, 3), dtype=np.float32)
        for layer in layers:
            _composite(canvas, layer, camera[t], t)
        if config.noise_std > 0:
            canvas += rng.normal(0.0, config.noise_std, canvas.shape).astype(np.float32)
        frames[t] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return SyntheticClip(frames=frames, config=config, camera=camera, layers=layers)


def _camera_matrix(config: SyntheticClipConfig, t: int) -> np.ndarray:
    """World -> view at frame t: rotate and zoom about the image centre, then shift by the pan."""
    centre = np.array([(config.width - 1) / 2.0, (config.height - 1) / 2.0])
    angle = math.radians(config.camera_rotation * t)
    scale = (1.0 + config.camera_zoom) ** t
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    linear = np.array([[c, -s], [s, c]])
    shift = centre + np.asarray(config.pan, dtype=np.float64) * t - linear @ centre
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = shift
    return matrix


def _make_object(rng: np.random.Generator, config: SyntheticClipConfig) -> _Layer:
    width, height = config.width, config.height
    short = min(width, height)
    shape = "rect" if rng.random() < 0.6 else "disc"
    if shape == "rect":
        half = (float(rng.uniform(0.07, 0.15) * short), float(rng.uniform(0.07, 0.15) * short))
    else:
        r = float(rng.uniform(0.07, 0.13) * short)
        half = (r, r)
    speed = rng.uniform(*config.object_speed)
    heading = rng.uniform(0, 2 * math.pi)
    velocity = speed * np.array([math.cos(heading), math.sin(heading)])
    # Start where the whole path, as the panning camera sees it, stays inside the view.
    travel = (velocity + np.asarray(config.pan, dtype=np.float64)) * (config.frames - 1)
    reach = max(half) * 1.2
    lo = np.array([reach, reach]) - np.minimum(travel, 0)
    hi = np.array([width - 1 - reach, height - 1 - reach]) - np.maximum(travel, 0)
    start = np.where(hi > lo, rng.uniform(lo, np.maximum(hi, lo + 1e-6)), (np.array([width, height]) - 1) / 2.0)
    spin = math.radians(rng.uniform(-config.max_rotation, config.max_rotation)) if config.rotate else 0.0
    texture, alpha = _shaped_texture(rng, shape, half)
    return _Layer(texture, alpha, shape, half, start, velocity, spin, angle0=float(rng.uniform(0, 2 * math.pi)))


def _make_occluder(rng: np.random.Generator, config: SyntheticClipConfig) -> _Layer:
    """A tall bar entering from the left and sweeping about 70 % of the way across."""
    width, height = config.width, config.height
    half = (max(6.0, width / 12.0), height * 0.75)
    tilt = math.radians(float(rng.uniform(-10, 10)))
    # Fully outside the view at frame 0 (a tilted bar reaches further sideways), so no query starts on it.
    start_x = -(half[0] * math.cos(tilt) + half[1] * abs(math.sin(tilt))) - 2.0
    speed = (0.7 * width - start_x) / max(config.frames - 1, 1)
    texture, alpha = _shaped_texture(rng, "rect", half)
    return _Layer(texture, alpha, "rect", half, np.array([start_x, (height - 1) / 2.0]), np.array([speed, 0.0]), 0.0, tilt)


def _shaped_texture(rng: np.random.Generator, shape: str, half: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    w = int(2 * math.ceil(half[0]) + 5)
    h = int(2 * math.ceil(half[1]) + 5)
    texture = _texture(rng, w, h, mean_colour=rng.uniform(50.0, 200.0, size=3))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    local = np.stack([xs.ravel() - (w - 1) / 2.0, ys.ravel() - (h - 1) / 2.0], axis=1)
    probe = _Layer(texture, np.zeros((h, w), np.float32), shape, half, np.zeros(2), np.zeros(2), 0.0)
    alpha = probe.contains(local).reshape(h, w).astype(np.float32)
    return texture, alpha


def _texture(rng: np.random.Generator, width: int, height: int, mean_colour: np.ndarray) -> np.ndarray:
    """Multi-scale noise plus random blobs: gradients everywhere, so LK can lock on anywhere.

    Most of the contrast is in a shared luminance component (trackers work on gray images); a
    weaker per-channel component adds colour so layers look distinct.
    """

    def noise(channels: int) -> np.ndarray:
        out = np.zeros((height, width, channels), dtype=np.float32)
        for cell, weight in ((2, 0.5), (4, 0.8), (8, 0.8), (24, 0.6)):
            coarse = rng.normal(0.0, 1.0, (max(height // cell, 2), max(width // cell, 2), channels)).astype(np.float32)
            out += weight * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, channels)
        return (out - out.mean()) / (out.std() + 1e-6)

    luminance = noise(1)
    blobs = np.zeros((height, width, 1), dtype=np.float32)
    for _ in range(max(4, width * height // 2500)):
        value = float(rng.normal(0.0, 1.5))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = int(rng.integers(3, 12))
        if rng.random() < 0.5:
            cv2.circle(blobs, centre, size, value, -1, lineType=cv2.LINE_AA)
        else:
            cv2.rectangle(blobs, centre, (centre[0] + size, centre[1] + size // 2 + 2), value, -1, lineType=cv2.LINE_AA)
    texture = mean_colour[None, None, :] + 40.0 * (luminance + blobs) + 15.0 * noise(3)
    # A little blur keeps the texture band-limited, so sub-pixel warps resample it faithfully.
    texture = cv2.GaussianBlur(texture, (0, 0), 0.8)
    return np.clip(texture, 0, 255).astype(np.float32)


def _composite(canvas: np.ndarray, layer: _Layer, camera: np.ndarray, t: int) -> None:
    """Paint `layer` onto `canvas` at frame t (alpha blending, soft one-pixel edges)."""
    height, width = canvas.shape[:2]
    to_texture = np.eye(3)
    to_texture[:2, 2] = layer.texture_origin()
    view_to_texture = to_texture @ np.linalg.inv(layer.local_to_world(t)) @ np.linalg.inv(camera)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    colour = cv2.warpAffine(layer.texture, view_to_texture[:2], (width, height), flags=flags, borderMode=cv2.BORDER_REFLECT101)
    if layer.shape == "plane":
        canvas[:] = colour
        return
    alpha = cv2.warpAffine(layer.alpha, view_to_texture[:2], (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    canvas += alpha[:, :, None] * (colour - canvas)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine matrix to (N, 2) points."""
    return points @ matrix[:2, :2].T + matrix[:2, 2]

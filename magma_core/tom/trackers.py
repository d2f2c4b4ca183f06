"""Point trackers for Trace-of-Mark extraction: follow query points of frame 0 through a clip.

`LucasKanadeTracker` (OpenCV pyramidal Lucas-Kanade with a forward-backward check) is the
default and needs nothing but OpenCV. `CoTrackerTracker` runs Meta's CoTracker when the
`cotracker` package is importable and its weights are on local disk. `make_tracker(name)` picks
one by name.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from magma_core.errors import InvalidInputError, TrackerUnavailableError
from magma_core.tom.clip import validate_clip


@dataclass
class TrackResult:
    """Tracks of N query points over T frames.

    points (T, N, 2) float x, y in pixels (row 0 = the queries); visible (T, N) bool; fb_error
    (T, N) float, the forward-backward error in pixels of the check that decided visibility (0 in
    frame 0, NaN where no check ran, e.g. for trackers without one).
    """

    points: np.ndarray
    visible: np.ndarray
    fb_error: np.ndarray

    def __post_init__(self) -> None:
        t, n = self.visible.shape
        if self.points.shape != (t, n, 2) or self.fb_error.shape != (t, n):
            raise ValueError(f"inconsistent TrackResult shapes: points {self.points.shape}, visible {self.visible.shape}, fb_error {self.fb_error.shape}")


@runtime_checkable
class PointTracker(Protocol):
    """Anything that tracks frame-0 points through a (T, H, W, 3) uint8 clip."""

    name: str

    def track(self, frames: np.ndarray, points: np.ndarray) -> TrackResult: ...


def validate_points(points: object, width: int, height: int) -> np.ndarray:
    """Query points as an (N, 2) float64 array of finite x, y inside the frame, or InvalidInputError."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise InvalidInputError(f"query points must be shaped (N, 2) as x, y; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidInputError("query points contain NaN or infinite values")
    outside = (array[:, 0] < 0) | (array[:, 0] > width - 1) | (array[:, 1] < 0) | (array[:, 1] > height - 1)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise InvalidInputError(
            f"{int(outside.sum())} query points lie outside the {width}x{height} frame, e.g. #{first} at {tuple(array[first].round(2))}"
        )
    return array


class LucasKanadeTracker:
    """Frame-to-frame pyramidal Lucas-Kanade with a forward-backward check and re-acquisition.

    Each step tracks every live point from frame t-1 to t, then back. The point stays visible when
    both passes converge, the round trip returns within `fb_threshold` pixels, it stays inside the
    frame, its velocity changes by at most `max_jump` pixels (a jump onto a look-alike, typically
    an occluder's edge), and (unless `min_similarity` is None) its neighbourhood still correlates
    with how it looked in frame 0 (normalised cross-correlation of a small patch, which catches
    an occluder that LK would happily follow).

    A point that fails is *lost*: it stays invisible for the following steps, because after a
    failure its frame-to-frame position can no longer be trusted. Lost points are re-acquired
    when possible: every later frame, each is matched directly from its frame-0 query (so no drift
    accumulates through the gap), starting from a prediction of where it went (the median motion
    of its visible neighbours, then its own last velocity); it becomes visible again only if that
    match passes the forward-backward check, lands within `reacquire_radius` of the prediction and
    passes a stricter appearance check (a larger, high-passed patch, since smooth shading makes
    unrelated patches correlate). While lost, its position is the prediction.

    Defaults (window 9, 3 levels) favour accuracy near object edges and rotations; measured with
    `magma bench tracking`.
    """

    name = "lk"

    def __init__(
        self,
        window: int = 9,
        levels: int = 3,
        fb_threshold: float = 1.0,
        min_similarity: float | None = 0.7,
        patch_radius: int = 3,
        reacquire: bool = True,
        reacquire_radius: float = 6.0,
        reacquire_patch_radius: int = 6,
        reacquire_iterations: int = 10,
        reacquire_similarity: float = 0.5,
        max_jump: float | None = 8.0,
        max_iterations: int = 20,
        epsilon: float = 0.03,
    ) -> None:
        if window < 3 or window % 2 == 0:
            raise InvalidInputError(f"LK window must be an odd number >= 3, got {window}")
        if levels < 0:
            raise InvalidInputError(f"LK pyramid levels must be >= 0, got {levels}")
        if fb_threshold <= 0:
            raise InvalidInputError(f"fb_threshold must be > 0 pixels, got {fb_threshold}")
        if min_similarity is not None and not -1.0 <= min_similarity <= 1.0:
            raise InvalidInputError(f"min_similarity is a correlation in [-1, 1] (or None to skip the check), got {min_similarity}")
        self.window = int(window)
        self.levels = int(levels)
        self.fb_threshold = float(fb_threshold)
        self.min_similarity = None if min_similarity is None else float(min_similarity)
        self.patch_radius = int(patch_radius)
        self.reacquire = bool(reacquire)
        self.reacquire_radius = float(reacquire_radius)
        self.reacquire_patch_radius = int(reacquire_patch_radius)
        self.reacquire_iterations = int(reacquire_iterations)
        self.reacquire_similarity = float(reacquire_similarity)
        self.max_jump = None if max_jump is None else float(max_jump)
        self.max_iterations = int(max_iterations)
        self.epsilon = float(epsilon)

    def track(self, frames: np.ndarray, points: np.ndarray) -> TrackResult:
        """Track `points` (N, 2) of frame 0 through `frames` (T, H, W, 3) uint8."""
        import cv2

        clip = validate_clip(frames)
        count, height, width = clip.shape[:3]
        query = validate_points(points, width, height).astype(np.float32)
        gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in clip]  # once per frame, shared by every pass
        state = _LKState(query, count)
        if query.shape[0]:
            if self.min_similarity is not None:
                state.templates = _patches(gray[0], query, self.patch_radius)
                state.wide_templates = _patches(_highpass(gray[0]), query, self.reacquire_patch_radius)
            for t in range(1, count):
                self._step(gray, t, state)
                gone = np.flatnonzero(state.lost)
                if gone.size:
                    self._handle_lost(gray, t, state, gone)
        return TrackResult(state.points.astype(np.float64), state.visible, state.fb_error.astype(np.float64))

    def _step(self, gray: list[np.ndarray], t: int, state: "_LKState") -> None:
        """Frame-to-frame tracking of the live points from t-1 to t."""
        live = np.flatnonzero(~state.lost)
        if live.size == 0:
            return
        height, width = gray[0].shape
        found, ok, fb = self._forward_backward(gray[t - 1], gray[t], state.current[live])
        ok &= _inside(found, width, height)
        if state.templates is not None:
            ok &= _similarity(state.templates[live], _patches(gray[t], found, self.patch_radius)) >= self.min_similarity
        if self.max_jump is not None and t > 1:
            # A sudden change of velocity is far likelier a jump onto a look-alike (often an occluder's
            # edge) than real motion; a true acceleration is re-acquired from its moving neighbours.
            ok &= np.linalg.norm(found - state.current[live] - state.velocity[live], axis=1) <= self.max_jump
        state.points[t, live], state.visible[t, live], state.fb_error[t, live] = found, ok, fb
        # Smoothed per-step velocity of the points still tracked, to predict them if they get lost.
        step = found[ok] - state.current[live[ok]]
        state.velocity[live[ok]] = step if t == 1 else 0.5 * (state.velocity[live[ok]] + step)
        state.current[live] = found
        state.last_seen[live[ok]] = t
        state.lost[live[~ok]] = True

    def _handle_lost(self, gray: list[np.ndarray], t: int, state: "_LKState", gone: np.ndarray) -> None:
        """Give lost points a predicted position at t, then try to re-acquire them from frame 0."""
        by_velocity = state.points[state.last_seen[gone], gone] + state.velocity[gone] * (t - state.last_seen[gone])[:, None]
        by_neighbours = state.neighbour_prediction(t, gone)
        has_neighbours = np.isfinite(by_neighbours[:, 0])
        predicted = np.where(has_neighbours[:, None], by_neighbours, by_velocity).astype(np.float32)
        state.points[t, gone], state.visible[t, gone] = predicted, False
        state.current[gone] = predicted
        if not self.reacquire:
            return
        # Only points predicted inside the frame can come back; skipping the rest keeps this cheap.
        height, width = gray[0].shape
        pending = gone[_inside(predicted, width, height)]
        # Neighbours first (they follow camera and object motion as it happens), then the point's own
        # velocity where that predicts somewhere else.
        if pending.size:
            pending = self._reacquire(gray, t, state, pending, predicted[np.searchsorted(gone, pending)])
        if pending.size:
            rows = np.searchsorted(gone, pending)
            differs = np.linalg.norm(by_velocity[rows] - predicted[rows], axis=1) > 1.0
            differs &= _inside(by_velocity[rows], width, height)
            if differs.any():
                self._reacquire(gray, t, state, pending[differs], by_velocity[rows[differs]].astype(np.float32))

    def _reacquire(self, gray: list[np.ndarray], t: int, state: "_LKState", gone: np.ndarray, guess: np.ndarray) -> np.ndarray:
        """Match lost points straight from frame 0 into frame t, starting at `guess`; return those still lost."""
        height, width = gray[0].shape
        # With a good guess, coarse pyramid levels only hurt: they see a blurred, wider neighbourhood
        # that can pull a long-range match off a correct start.
        found, ok, fb = self._forward_backward(
            gray[0], gray[t], state.query[gone], guess=guess, levels=min(self.levels, 1), iterations=self.reacquire_iterations
        )
        ok &= _inside(found, width, height)
        ok &= np.linalg.norm(found - guess, axis=1) <= self.reacquire_radius
        if state.wide_templates is not None:
            similar = _similarity(state.wide_templates[gone], _patches(state.highpass(gray, t), found, self.reacquire_patch_radius))
            ok &= similar >= self.reacquire_similarity
        back = gone[ok]
        state.fb_error[t, gone] = fb
        state.points[t, back], state.visible[t, back] = found[ok], True
        state.current[back] = found[ok]
        state.lost[back] = False
        state.last_seen[back] = t
        return gone[~ok]

    def _forward_backward(self, first, second, points, guess=None, levels=None, iterations=None):
        """LK from `first` to `second` and back: (found (M, 2), converged both ways (M,), round-trip error (M,))."""
        import cv2

        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations or self.max_iterations, self.epsilon)
        size = (self.window, self.window)
        levels = self.levels if levels is None else levels
        start = np.ascontiguousarray(points, dtype=np.float32).reshape(-1, 1, 2)
        if guess is None:
            found, status, _ = cv2.calcOpticalFlowPyrLK(first, second, start, None, winSize=size, maxLevel=levels, criteria=criteria)
            back, status_back, _ = cv2.calcOpticalFlowPyrLK(second, first, found, None, winSize=size, maxLevel=levels, criteria=criteria)
        else:
            init = np.ascontiguousarray(guess, dtype=np.float32).reshape(-1, 1, 2)
            found, status, _ = cv2.calcOpticalFlowPyrLK(
                first, second, start, init.copy(), winSize=size, maxLevel=levels, criteria=criteria, flags=cv2.OPTFLOW_USE_INITIAL_FLOW
            )
            # The way back starts from the predicted motion undone, never from the answer itself.
            back_init = (found - (init - start)).astype(np.float32)
            back, status_back, _ = cv2.calcOpticalFlowPyrLK(
                second, first, found, back_init, winSize=size, maxLevel=levels, criteria=criteria, flags=cv2.OPTFLOW_USE_INITIAL_FLOW
            )
        found = found.reshape(-1, 2)
        error = np.linalg.norm(back.reshape(-1, 2) - start.reshape(-1, 2), axis=1)
        ok = (status.ravel() == 1) & (status_back.ravel() == 1) & np.isfinite(error) & (error < self.fb_threshold)
        return found, ok, np.where(np.isfinite(error), error, np.inf)


class _LKState:
    """Working arrays of one `LucasKanadeTracker.track` call."""

    def __init__(self, query: np.ndarray, count: int, neighbours: int = 4) -> None:
        n = query.shape[0]
        self.query = query
        self.points = np.zeros((count, n, 2), dtype=np.float32)
        self.visible = np.zeros((count, n), dtype=bool)
        self.fb_error = np.full((count, n), np.nan, dtype=np.float32)
        self.points[0], self.visible[0], self.fb_error[0] = query, True, 0.0
        self.current = query.copy()  # where frame-to-frame tracking continues from
        self.lost = np.zeros(n, dtype=bool)
        self.last_seen = np.zeros(n, dtype=np.int64)  # last frame each point was visible in
        self.velocity = np.zeros((n, 2), dtype=np.float32)  # px/step
        self.templates: np.ndarray | None = None
        self.wide_templates: np.ndarray | None = None
        self.neighbours = neighbours
        self._candidates: tuple[np.ndarray, np.ndarray] | None = None
        self._highpass: dict[int, np.ndarray] = {}

    def highpass(self, gray: list[np.ndarray], t: int) -> np.ndarray:
        if t not in self._highpass:
            self._highpass[t] = _highpass(gray[t])
        return self._highpass[t]

    def candidates(self, count: int = 12) -> tuple[np.ndarray, np.ndarray]:
        """For every query, its nearest other queries by frame-0 distance (N, C) and which are near enough.

        Near enough: within 2.5 typical query spacings (for a grid, the 5x5 block around a point).
        Computed once, on first need.
        """
        if self._candidates is None:
            n = self.query.shape[0]
            squared = ((self.query[:, None, :] - self.query[None, :, :]) ** 2).sum(axis=-1)
            np.fill_diagonal(squared, np.inf)
            c = max(min(count, n - 1), 1)
            nearest = np.argpartition(squared, c - 1, axis=1)[:, :c] if n > 1 else np.zeros((n, 1), np.int64)
            order = np.argsort(np.take_along_axis(squared, nearest, axis=1), axis=1)
            nearest = np.take_along_axis(nearest, order, axis=1)
            radius_squared = (2.5**2) * float(np.median(squared.min(axis=1))) if n > 1 else -1.0
            self._candidates = (nearest, np.take_along_axis(squared, nearest, axis=1) <= radius_squared)
        return self._candidates

    def neighbour_prediction(self, t: int, gone: np.ndarray) -> np.ndarray:
        """(M, 2) query + median frame-0-to-t motion of the nearest visible neighbours; NaN where fewer than 2."""
        nearest, near = self.candidates()
        nearest, near = nearest[gone], near[gone]
        usable = near & self.visible[t][nearest]
        chosen = usable & (np.cumsum(usable, axis=1) <= self.neighbours)  # the k closest visible ones
        motion = self.points[t][nearest] - self.query[nearest]  # (M, C, 2)
        # Median over the chosen neighbours only (np.nanmedian is slow for this many tiny rows).
        motion = np.sort(np.where(chosen[..., None], motion, np.inf), axis=1)
        count = chosen.sum(axis=1)
        low = np.take_along_axis(motion, np.maximum((count - 1) // 2, 0)[:, None, None].repeat(2, axis=2), axis=1)[:, 0]
        high = np.take_along_axis(motion, (count // 2)[:, None, None].repeat(2, axis=2), axis=1)[:, 0]
        out = np.full((gone.size, 2), np.nan, dtype=np.float32)
        enough = count >= 2
        out[enough] = self.query[gone[enough]] + 0.5 * (low[enough] + high[enough])
        return out


def _inside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    return (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0) & (points[:, 1] <= height - 1)


@functools.lru_cache(maxsize=8)
def _patch_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    dx, dy = np.meshgrid(offsets, offsets)
    return dx.ravel(), dy.ravel()


def _patches(gray: np.ndarray, points: np.ndarray, radius: int) -> np.ndarray:
    """(M, (2r+1)^2) float32 bilinear samples of a square patch around each point."""
    import cv2

    dx, dy = _patch_offsets(radius)
    map_x = (points[:, 0:1] + dx[None]).astype(np.float32)
    map_y = (points[:, 1:2] + dy[None]).astype(np.float32)
    return cv2.remap(gray, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)


def _highpass(gray: np.ndarray) -> np.ndarray:
    """Image minus its blur: smooth shading removed, so a correlation compares fine structure only."""
    import cv2

    # Blurring the uint8 image is several times faster than blurring floats; the rounding is harmless.
    return gray.astype(np.float32) - cv2.GaussianBlur(gray, (0, 0), 1.5).astype(np.float32)


def _similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Zero-mean normalised cross-correlation per row; a flat template counts as similar (nothing to compare)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norm_a = np.sqrt((a * a).sum(axis=1))
    norm_b = np.sqrt((b * b).sum(axis=1))
    flat = norm_a < 1e-3 * a.shape[1]
    score = (a * b).sum(axis=1) / np.maximum(norm_a * norm_b, 1e-6)
    return np.where(flat, 1.0, score)


class CoTrackerTracker:
    """Meta's CoTracker (offline model), from the `cotracker` package and a local checkpoint.

    Weights load without unpickling: a .safetensors file, or a .pth/.pt read with
    torch.load(weights_only=True). Nothing is downloaded. Raises TrackerUnavailableError naming
    what is missing (the package, the checkpoint, or both).
    """

    name = "cotracker"

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str = "cpu", visibility_threshold: float = 0.9) -> None:
        missing = []
        if importlib.util.find_spec("cotracker") is None:
            missing.append("the `cotracker` package is not importable (install it from https://github.com/facebookresearch/co-tracker)")
        if checkpoint is None:
            missing.append("no checkpoint given (pass a local CoTracker checkpoint path, e.g. --cotracker-checkpoint scaled_offline.pth)")
        elif not Path(checkpoint).is_file():
            missing.append(f"checkpoint file not found: {checkpoint}")
        if missing:
            raise TrackerUnavailableError("CoTracker unavailable: " + "; ".join(missing) + ". Use --tracker lk instead.")
        self.checkpoint = Path(checkpoint)
        self.device = device
        self.visibility_threshold = float(visibility_threshold)
        self._predictor = None

    def _load(self):
        if self._predictor is None:
            import torch
            from cotracker.predictor import CoTrackerPredictor

            predictor = CoTrackerPredictor(checkpoint=None)  # architecture only; weights below, without unpickling
            state = _load_state_dict(self.checkpoint)
            try:
                predictor.model.load_state_dict(state)
            except RuntimeError as exc:
                raise TrackerUnavailableError(f"checkpoint {self.checkpoint} does not fit CoTracker's offline model: {exc}") from exc
            self._predictor = predictor.to(torch.device(self.device)).eval()
        return self._predictor

    def track(self, frames: np.ndarray, points: np.ndarray) -> TrackResult:
        import torch

        clip = validate_clip(frames)
        count, height, width = clip.shape[:3]
        query = validate_points(points, width, height)
        predictor = self._load()
        video = torch.from_numpy(clip).permute(0, 3, 1, 2)[None].float().to(self.device)
        queries = torch.zeros((1, query.shape[0], 3), dtype=torch.float32)
        queries[0, :, 1:] = torch.from_numpy(query).float()
        with torch.no_grad():
            tracks, vis = predictor(video, queries=queries.to(self.device))
        out_points = tracks[0].cpu().numpy().astype(np.float64)
        visible = vis[0].cpu().numpy().reshape(count, -1) > 0
        visible[0] = True
        fb_error = np.full(visible.shape, np.nan)
        fb_error[0] = 0.0
        return TrackResult(out_points, visible, fb_error)


def _load_state_dict(path: Path) -> dict:
    """Weights only: safetensors, or torch.load(weights_only=True), which refuses arbitrary pickles."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError for unsafe or corrupt files
        raise TrackerUnavailableError(f"cannot load {path} as plain weights (weights_only=True): {exc}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise TrackerUnavailableError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


TRACKERS: dict[str, Callable[..., PointTracker]] = {
    "lk": LucasKanadeTracker,
    "cotracker": CoTrackerTracker,
}


def make_tracker(name: str = "lk", **kwargs) -> PointTracker:
    """Build a tracker by registry name ('lk', 'cotracker'); kwargs go to its constructor."""
    if name not in TRACKERS:
        raise InvalidInputError(f"unknown tracker {name!r}; choose one of {', '.join(sorted(TRACKERS))}")
    return TRACKERS[name](**kwargs)

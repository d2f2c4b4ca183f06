"""Normalisation statistics in LeRobot's stats.json shape: per feature min/max/mean/std/count and
the quantiles q01/q10/q50/q90/q99 (the action tokenizer bins actions between q01 and q99)."""
from __future__ import annotations

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics over axis 0 of (N, D) values (D may be 1), NaNs ignored per entry."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.shape[0] == 0:
        raise ValueError("cannot compute statistics of an empty feature")
    with np.errstate(all="ignore"):
        out = {
            "min": np.nanmin(values, axis=0),
            "max": np.nanmax(values, axis=0),
            "mean": np.nanmean(values, axis=0),
            "std": np.nanstd(values, axis=0),
            "count": np.array([values.shape[0]]),
        }
        for name, q in QUANTILES.items():
            out[name] = np.nanquantile(values, q, axis=0)
    return out


class HistogramStats:
    """Exact per-channel statistics of integer images, accumulated frame by frame as histograms.

    ``levels`` values (256 for uint8 RGB, 65536 for uint16 depth); ``scale`` maps a level to the
    unit the statistics are reported in (1/255 for RGB in [0, 1], 1/1000 for depth in metres);
    ``ignore`` is a level left out (depth's "unknown" 0). Results are shaped (C, 1, 1) like LeRobot's.
    """

    def __init__(self, channels: int, levels: int = 256, scale: float = 1 / 255.0, ignore: int | None = None):
        self.hist = np.zeros((channels, levels), dtype=np.int64)
        self.values = np.arange(levels) * scale
        self.ignore = ignore
        self.frames = 0

    def add(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[..., None]
        pixels = frames.reshape(-1, frames.shape[-1])
        for c in range(self.hist.shape[0]):
            self.hist[c] += np.bincount(pixels[:, c], minlength=self.hist.shape[1])
        self.frames += frames.shape[0]

    def result(self) -> dict[str, np.ndarray] | None:
        hist = self.hist.copy()
        if self.ignore is not None:
            hist[:, self.ignore] = 0
        total = hist.sum(axis=1)
        if np.any(total == 0):
            return None
        levels = self.values
        mean = (hist * levels).sum(axis=1) / total
        std = np.sqrt(np.maximum((hist * levels**2).sum(axis=1) / total - mean**2, 0.0))
        cdf = np.cumsum(hist, axis=1) / total[:, None]
        out = {
            "min": levels[np.argmax(hist > 0, axis=1)],
            "max": levels[hist.shape[1] - 1 - np.argmax(hist[:, ::-1] > 0, axis=1)],
            "mean": mean,
            "std": std,
        }
        for name, q in QUANTILES.items():
            out[name] = levels[np.argmax(cdf >= q, axis=1)]
        channels = hist.shape[0]
        out = {k: v.reshape(channels, 1, 1) for k, v in out.items()}
        out["count"] = np.array([self.frames])
        return out


def to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict:
    """Nested lists for json.dump."""
    return {feat: {k: np.asarray(v).tolist() for k, v in entry.items()} for feat, entry in stats.items()}


def from_json(raw: dict) -> dict[str, dict[str, np.ndarray]]:
    return {feat: {k: np.asarray(v) for k, v in entry.items()} for feat, entry in raw.items()}

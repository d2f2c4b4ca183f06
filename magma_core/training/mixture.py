"""A weighted mixture of datasets and objectives, deterministic by (seed, example index).

Example `i` is built from its own generator seeded with ``(seed, i)``: which dataset (by
weight), which frame, which objective (by weight, among those the frame supports), which mark
ids and prompt paraphrase, and the augmentation. So a run can stop and resume at any example
index and see exactly the examples it would have seen, with no iterator state to save.

Augmentation is light and label-safe: colour jitter (brightness, contrast, per-channel gain) is
applied before marks are drawn, so mark colours stay exact; a small integer shift of the image
moves the ground-truth trace pixels by the same amount (actions are unaffected by either).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from magma_core.codecs.action_tokenizer import ActionNormStats, ActionTokenizer
from magma_core.codecs.trace_text import DepthBinning
from magma_core.data.samples import Sample
from magma_core.errors import InvalidInputError
from magma_core.prompts import DEFAULT_TEMPLATES
from magma_core.training.config import OBJECTIVES, TrainConfig
from magma_core.training.samples_builder import (TrainingItem, build_action, build_goal_proposed, build_grounding, build_grounding_proposed,
                                                 build_locate_proposed, build_refer_proposed, build_trace, build_trace_proposed, has_traces, mark_ids_for,
                                                 propose_for_sample)


@dataclass
class MixtureSource:
    """One dataset's frames, its mixture weight and its action statistics (None: no action objective)."""

    name: str
    samples: list[Sample]
    weight: float
    action_stats: ActionNormStats | None = None


def load_source(path: str, weight: float = 1.0, stride: int = 1) -> MixtureSource:
    """Read every `stride`-th frame of a LeRobot v3 dataset folder, with its action q01/q99."""
    from magma_core.data.lerobot_v3 import LeRobotV3Dataset
    from magma_core.data.samples import iter_samples

    dataset = LeRobotV3Dataset(path)
    samples = list(iter_samples(dataset, stride=stride))
    if not samples:
        raise InvalidInputError(f"dataset {path} has no frames")
    stats = getattr(dataset, "stats", {}).get("action") or {}
    action_stats = ActionNormStats(stats["q01"], stats["q99"]) if "q01" in stats and "q99" in stats else None
    return MixtureSource(str(path), samples, float(weight), action_stats)


class TrainingMixture:
    """`item(i)` -> the i-th TrainingItem of the run (see the module docstring)."""

    def __init__(self, sources: list[MixtureSource], config: TrainConfig, vocab_size: int,
                 depth_binning: DepthBinning = DepthBinning()) -> None:
        if not sources:
            raise InvalidInputError("a mixture needs at least one dataset")
        self.sources = sources
        self.config = config
        self.depth_binning = depth_binning
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        self.source_p = weights / weights.sum()
        self.objective_weights = config.objective_weights
        self.tokenizers = [ActionTokenizer(vocab_size, s.action_stats) if s.action_stats is not None else None for s in sources]
        if not any(self._supported(source.samples[0], k) for k, source in enumerate(sources)):
            raise InvalidInputError("no dataset supports any objective with a non-zero weight (traces or actions missing)")
        # Run-time mark proposals per frame (source, frame): computed once, on the frame before augmentation.
        self._proposals: dict[tuple[int, int], list | None] = {}

    def proposed_marks(self, source_index: int, frame_index: int):
        """The described run-time marks of one frame (cached), or None where the frame cannot have them."""
        key = (int(source_index), int(frame_index))
        if key not in self._proposals:
            self._proposals[key] = propose_for_sample(self.sources[key[0]].samples[key[1]])
        return self._proposals[key]

    @classmethod
    def from_config(cls, config: TrainConfig, vocab_size: int) -> "TrainingMixture":
        return cls([load_source(s.path, s.weight, s.stride) for s in config.datasets], config, vocab_size,
                   depth_binning=config.make_depth_binning())

    def _supported(self, sample: Sample, source_index: int) -> list[str]:
        out = []
        for name in OBJECTIVES:
            if self.objective_weights[name] <= 0:
                continue
            if name in ("grounding", "trace", "locate", "refer", "goal") and not has_traces(sample):
                continue
            if name == "action" and (sample.action is None or self.tokenizers[source_index] is None):
                continue
            out.append(name)
        return out

    def item(self, index: int) -> TrainingItem:
        """The example at position `index` of the run's stream."""
        if int(index) < 0:
            raise InvalidInputError(f"example index must be >= 0, got {index}")
        rng = np.random.default_rng([self.config.seed, int(index)])
        for _ in range(16):  # a frame may support no weighted objective; draw another
            k = int(rng.choice(len(self.sources), p=self.source_p))
            frame = int(rng.integers(len(self.sources[k].samples)))
            sample = self.sources[k].samples[frame]
            names = self._supported(sample, k)
            if names:
                break
        else:
            raise InvalidInputError("16 frames in a row supported no objective; check the datasets and objective weights")
        p = np.array([self.objective_weights[n] for n in names])
        objective = names[int(rng.choice(len(names), p=p / p.sum()))]
        sample, dx, dy = augment_with_shift(sample, rng, self.config.color_jitter, self.config.max_shift_px)
        if objective == "action":
            return build_action(sample, self.tokenizers[k], variant=int(rng.integers(len(DEFAULT_TEMPLATES.action))))
        marks = self.proposed_marks(k, frame) if self.config.marks == "proposed" else None
        if marks is not None:
            marks = [m.shifted(dx, dy) for m in marks]
            if objective == "locate":
                return build_locate_proposed(sample, marks, self.depth_binning, rng,
                                             variant=int(rng.integers(len(DEFAULT_TEMPLATES.locate))))
            if objective == "goal":
                item = build_goal_proposed(sample, marks, self.config.trace_steps, self.depth_binning, rng,
                                           variant=int(rng.integers(len(DEFAULT_TEMPLATES.trace))))
                if item is not None:
                    return item
            if objective == "refer":
                item = build_refer_proposed(sample, marks, self.depth_binning, rng,
                                            variant=int(rng.integers(len(DEFAULT_TEMPLATES.refer))))
                if item is not None:
                    return item
            if objective == "grounding":
                item = build_grounding_proposed(sample, marks, self.depth_binning,
                                                variant=int(rng.integers(len(DEFAULT_TEMPLATES.grounding))))
                if item is not None:
                    return item
            return build_trace_proposed(sample, marks, self.config.trace_steps, self.config.trace_stride, self.depth_binning,
                                        variant=int(rng.integers(len(DEFAULT_TEMPLATES.trace))), order=self.config.trace_order,
                                        with_goal_header=self.config.goal_header)
        ids = mark_ids_for(sample, rng, self.config.object_id_range)
        if objective == "grounding":
            return build_grounding(sample, ids, variant=int(rng.integers(len(DEFAULT_TEMPLATES.grounding))))
        return build_trace(sample, ids, self.config.trace_steps, self.config.trace_stride, self.depth_binning,
                           variant=int(rng.integers(len(DEFAULT_TEMPLATES.trace))), order=self.config.trace_order)


def augment(sample: Sample, rng: np.random.Generator, color_jitter: float, max_shift_px: int) -> Sample:
    """A copy of `sample` with jittered colours and the image (and its trace pixels) shifted."""
    return augment_with_shift(sample, rng, color_jitter, max_shift_px)[0]


def augment_with_shift(sample: Sample, rng: np.random.Generator, color_jitter: float,
                       max_shift_px: int) -> tuple[Sample, int, int]:
    """`augment`, also returning the shift (dx, dy) in pixels so marks can move with the image."""
    dx = dy = 0
    rgb = sample.rgb.astype(np.float32)
    if color_jitter > 0:
        brightness, contrast = rng.uniform(1 - color_jitter, 1 + color_jitter, size=2)
        gain = rng.uniform(1 - color_jitter / 2, 1 + color_jitter / 2, size=3)
        mean = rgb.mean()
        rgb = ((rgb - mean) * contrast + mean) * brightness * gain
    gt_trace = sample.gt_trace
    if max_shift_px > 0:
        dx, dy = (int(v) for v in rng.integers(-max_shift_px, max_shift_px + 1, size=2))
        rgb = shift_image(rgb, dx, dy)
        if gt_trace is not None:
            gt_trace = np.array(gt_trace, dtype=np.float64, copy=True)
            gt_trace[..., 0] += dx
            gt_trace[..., 1] += dy
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return dataclasses.replace(sample, rgb=rgb, gt_trace=gt_trace), dx, dy


def shift_image(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Move the content by (dx, dy) pixels; the uncovered border repeats the edge."""
    h, w = image.shape[:2]
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)


__all__ = ["MixtureSource", "TrainingMixture", "load_source", "augment", "augment_with_shift", "shift_image"]

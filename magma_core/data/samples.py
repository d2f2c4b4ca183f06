"""Training samples: one frame of one episode, the same whatever format the episode came from.

``iter_samples`` walks a LeRobotV3Dataset, an RLDSDataset, a list (or any iterable) of Episodes,
or a single Episode, and yields a Sample per `stride`-th frame. Fields a source could not supply
are None (action, depth, traces) or flagged (camera_known, ee_pose_known), so a training recipe
can skip what it needs but lacks instead of learning from placeholders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from magma_core.data import layout
from magma_core.data.episode import CameraParams, Episode
from magma_core.errors import InvalidInputError


@dataclass
class Sample:
    """What a model trains on at one frame (conventions of magma_core.data.episode)."""

    rgb: np.ndarray  # (H, W, 3) uint8
    instruction: str
    state: np.ndarray  # (8 + J,) float32: ee_pose (7), gripper (1), joints (J)
    camera: CameraParams
    source: str  # "lerobot_v3:<root>", "rlds:<name>/<split>" or "episodes"
    episode_index: int
    frame_index: int
    depth: np.ndarray | None = None  # (H, W) float32 metres, NaN unknown
    action: np.ndarray | None = None  # (7,) or None where the source's actions are not Magma's 7 numbers
    gt_trace: np.ndarray | None = None  # (M, n+1, 3)
    gt_trace_gripper: np.ndarray | None = None  # (n+1,)
    waypoint: np.ndarray | None = None  # (8,)
    task: str = ""
    camera_known: bool = True
    ee_pose_known: bool = True


def episode_samples(episode: Episode, episode_index: int, source: str = "episodes",
                    stride: int = 1) -> Iterator[Sample]:
    """Samples at frames 0, stride, 2*stride, ... of one episode."""
    if int(stride) < 1:
        raise InvalidInputError(f"stride must be >= 1, got {stride}")
    state = layout.state_vectors(episode)
    actions_known = layout.known(episode, "actions")
    camera_known = layout.known(episode, "camera")
    ee_pose_known = layout.known(episode, "ee_pose")
    for t in range(0, len(episode), int(stride)):
        yield Sample(
            rgb=episode.rgb[t],
            instruction=episode.instruction,
            state=state[t],
            camera=episode.camera,
            source=source,
            episode_index=int(episode_index),
            frame_index=t,
            depth=None if episode.depth is None else episode.depth[t],
            action=episode.actions[t] if actions_known else None,
            gt_trace=None if episode.gt_traces is None else episode.gt_traces[t],
            gt_trace_gripper=None if episode.gt_trace_gripper is None else episode.gt_trace_gripper[t],
            waypoint=None if episode.waypoints is None else episode.waypoints[t],
            task=episode.task,
            camera_known=camera_known,
            ee_pose_known=ee_pose_known,
        )


def iter_samples(dataset, stride: int = 1) -> Iterator[Sample]:
    """Samples from every episode of `dataset` (LeRobotV3Dataset, RLDSDataset, Episodes), in order."""
    if int(stride) < 1:
        raise InvalidInputError(f"stride must be >= 1, got {stride}")
    source, episodes = _episodes_of(dataset)
    for index, episode in enumerate(episodes):
        if not isinstance(episode, Episode):
            raise InvalidInputError(f"item {index} of the dataset is a {type(episode).__name__}, not an Episode")
        yield from episode_samples(episode, index, source, stride)


def _episodes_of(dataset) -> tuple[str, Iterable]:
    # Checked by class name so this module does not import pyarrow/av/tfrecord for plain Episodes.
    kind = type(dataset).__name__
    if isinstance(dataset, Episode):
        return "episodes", [dataset]
    if kind == "LeRobotV3Dataset":
        return f"lerobot_v3:{dataset.root}", dataset
    if kind == "RLDSDataset":
        return f"rlds:{dataset.name}/{dataset.split}", dataset
    if isinstance(dataset, (str, bytes)) or not hasattr(dataset, "__iter__"):
        raise InvalidInputError(
            f"iter_samples needs a LeRobotV3Dataset, an RLDSDataset or Episodes, got {type(dataset).__name__}")
    return "episodes", dataset

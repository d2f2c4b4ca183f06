"""The data loop end to end: a scripted teleop session in simulation over ROS is recorded to an MCAP bag, the
bag is converted to a LeRobot v3 dataset with Trace-of-Mark labels, and `magma train` takes a step on it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ros_helpers import REPO, ROS_AVAILABLE, launch_node, ros_env, wait_for  # noqa: F401

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.skipif(not ROS_AVAILABLE, reason="rclpy is not installed")]
pytest.importorskip("torch")
pytest.importorskip("pybullet")

CONFIG = REPO / "ros_ws" / "src" / "magma" / "config" / "magma.yaml"


def _complete_episodes(record_dir):
    found = []
    for meta in record_dir.glob("*/episode.json"):
        data = json.loads(meta.read_text())
        if data.get("complete"):
            found.append(data)
    return found


def test_scripted_teleop_session_is_recorded_converted_and_trained_on(launch_node, tmp_path):
    from magma_core.data.bag_io import find_episodes, read_episode
    from magma_core.data.from_bags import ConvertConfig, convert_bags
    from magma_core.data.lerobot_v3 import LeRobotV3Dataset
    from magma_core.training.config import TrainConfig
    from magma_core.training.trainer import Trainer
    from model_fixtures import SMALL

    record_dir = tmp_path / "episodes"
    extrinsics = tmp_path / "extrinsics.yaml"
    launch_node("sim_bridge", params_file=CONFIG, task="pick_place", seed=2, image_size=128, control_hz=10,
                publish_expert=True, extrinsics_path=str(extrinsics))
    launch_node("controller", params_file=CONFIG, source="teleop", control_hz=20.0)
    recorder = launch_node("recorder", params_file=CONFIG, record_dir=str(record_dir), extrinsics_path=str(extrinsics))
    teleop = launch_node("teleop", params_file=CONFIG, input="scripted", episodes=1, reset_first=True,
                         episode_timeout_s=40.0)
    teleop.proc.wait(timeout=90)
    assert teleop.proc.returncode == 0, teleop.output()[-2000:]
    wait_for(lambda: _complete_episodes(record_dir), 15.0, what="the recorder to close the episode")
    assert recorder.alive

    # The bag: one episode, the outcome the teleop marked, the camera stream and the calibration.
    (episode_dir,) = find_episodes([record_dir])
    bag = read_episode(episode_dir)
    assert bag.meta["outcome"] == "success" and bag.meta["instruction"] and not bag.recovered
    assert bag.meta["calibration"]["extrinsics_yaml"]
    counts = bag.message_counts
    image_topic = bag.resolve_topic("camera/image_raw")
    assert counts[image_topic] >= 20 and counts[bag.resolve_topic("magma/ee_pose")] >= 20

    # Converted: frames on the camera clock, actions from consecutive poses, the gripper's trace from proprioception.
    summary = convert_bags([record_dir], tmp_path / "dataset", ConvertConfig(image_size=128, only_success=True))
    assert summary.converted == 1 and not summary.failures
    dataset = LeRobotV3Dataset(tmp_path / "dataset")
    episode = dataset.episode(0)
    assert len(episode) >= 0.8 * counts[image_topic] * 0.5  # at most the sim's 10 Hz clock minus drops
    assert episode.instruction == bag.meta["instruction"]
    assert episode.gt_traces is not None and np.isfinite(episode.gt_traces).all()
    # The gripper goes down to the object and comes back up: its trace moves in the image.
    gripper_uv = episode.gt_traces[:, 0, 0, :2]
    assert np.ptp(gripper_uv[:, 1]) > 5.0

    # `magma train` takes a step on it (all three objectives available).
    config = TrainConfig(datasets=[str(tmp_path / "dataset")], out=str(tmp_path / "run"),
                         model_overrides={**SMALL, "image_size": 128}, marks="proposed", trace_steps=2, steps=2,
                         batch_size=2, warmup_steps=1, save_every=100)
    result = Trainer(config, progress=False).train()
    assert result.step == 2 and all(np.isfinite(result.losses))
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()

"""Training samples from in-memory Episodes (LeRobot and RLDS sources are covered in their own tests)."""
import numpy as np
import pytest

from magma_core.data.episode import CameraParams, Episode
from magma_core.data.samples import Sample, episode_samples, iter_samples
from magma_core.errors import InvalidInputError


def episode(length, seed, traces=True, depth=True, metadata=None):
    rng = np.random.default_rng(seed)
    camera = CameraParams(8, 6, np.array([[5.0, 0, 4], [0, 5.0, 3], [0, 0, 1]]), np.eye(4), name="wrist")
    return Episode(
        instruction=f"instruction {seed}", task=f"task {seed}",
        rgb=rng.integers(0, 256, size=(length, 6, 8, 3), dtype=np.uint8),
        ee_pose=rng.normal(size=(length, 7)), gripper=rng.uniform(size=(length, 1)),
        joints=rng.normal(size=(length, 3)),
        actions=rng.normal(size=(length, 7)), camera=camera,
        depth=rng.uniform(0.3, 2, size=(length, 6, 8)).astype(np.float32) if depth else None,
        waypoints=rng.normal(size=(length, 8)),
        gt_traces=rng.uniform(size=(length, 2, 4, 3)) if traces else None,
        gt_trace_gripper=rng.uniform(size=(length, 4)) if traces else None,
        metadata=metadata or {})


def test_every_frame_of_every_episode_in_order():
    episodes = [episode(5, 0), episode(3, 1)]
    samples = list(iter_samples(episodes))
    expected = [(0, t) for t in range(5)] + [(1, t) for t in range(3)]
    assert [(s.episode_index, s.frame_index) for s in samples] == expected
    s = samples[6]
    ep = episodes[1]
    assert isinstance(s, Sample) and s.source == "episodes"
    np.testing.assert_array_equal(s.rgb, ep.rgb[1])
    np.testing.assert_array_equal(s.depth, ep.depth[1])
    np.testing.assert_array_equal(s.action, ep.actions[1])
    np.testing.assert_array_equal(s.gt_trace, ep.gt_traces[1])
    np.testing.assert_array_equal(s.gt_trace_gripper, ep.gt_trace_gripper[1])
    np.testing.assert_array_equal(s.waypoint, ep.waypoints[1])
    expected_state = np.concatenate([ep.ee_pose[1], ep.gripper[1], ep.joints[1]]).astype(np.float32)
    np.testing.assert_array_equal(s.state, expected_state)
    assert s.state.dtype == np.float32 and s.state.shape == (11,)
    assert s.instruction == "instruction 1" and s.task == "task 1" and s.camera is ep.camera
    assert s.camera_known and s.ee_pose_known


@pytest.mark.parametrize("stride, frames", [(1, 7), (2, 4), (3, 3), (7, 1), (10, 1)])
def test_stride_takes_every_nth_frame(stride, frames):
    samples = list(iter_samples(episode(7, 2), stride=stride))
    assert [s.frame_index for s in samples] == list(range(0, 7, stride))[:frames]
    assert len(samples) == frames


def test_missing_parts_are_none_and_placeholders_are_flagged():
    flagged = episode(2, 3, traces=False, depth=False,
                      metadata={"actions_known": False, "camera_known": False, "ee_pose_known": False})
    sample = next(episode_samples(flagged, episode_index=4, source="rlds:x/train"))
    assert sample.action is None and sample.depth is None and sample.gt_trace is None
    assert sample.gt_trace_gripper is None
    assert not sample.camera_known and not sample.ee_pose_known
    assert (sample.episode_index, sample.source) == (4, "rlds:x/train")


def test_generators_of_episodes_are_accepted():
    samples = list(iter_samples(episode(n, n) for n in (1, 2)))
    assert [(s.episode_index, s.frame_index) for s in samples] == [(0, 0), (1, 0), (1, 1)]


@pytest.mark.parametrize("bad, message", [
    ("a/folder", "needs a LeRobotV3Dataset, an RLDSDataset or Episodes, got str"),
    (42, "got int"),
    ([{"rgb": 1}], "item 0 of the dataset is a dict, not an Episode"),
])
def test_bad_sources_are_refused(bad, message):
    with pytest.raises(InvalidInputError, match=message):
        list(iter_samples(bad))


def test_stride_must_be_positive():
    with pytest.raises(InvalidInputError, match="stride must be >= 1, got 0"):
        list(iter_samples([episode(2, 0)], stride=0))

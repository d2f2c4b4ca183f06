"""`magma dataset generate` / `dataset info` and the tracker-vs-ground-truth comparison."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("pybullet")
pytest.importorskip("pyarrow")
pytest.importorskip("av")

from magma_core.commands import dataset_info  # noqa: E402
from magma_core.data.lerobot_v3 import LeRobotV3Dataset  # noqa: E402
from magma_core.errors import InvalidInputError  # noqa: E402
from magma_core.imageio import load_image  # noqa: E402
from magma_sim import commands_dataset  # noqa: E402
from magma_sim.generate import GenerateConfig, generate_dataset  # noqa: E402
from magma_sim.trace_compare import compare_tracker, window_errors  # noqa: E402
from magma_sim.trace_follow import project  # noqa: E402

SMALL = GenerateConfig(image_size=64, n_future=8)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "expert"
    summary = generate_dataset(out, "push,stack", episodes=1, seed_start=0, config=SMALL, compare_tracker=1)
    return out, summary


def test_generate_writes_a_readable_dataset_with_gt_traces(generated):
    out, summary = generated
    assert (summary.attempted, summary.kept) == (2, 2) and summary.expert_successes == {"push": [1, 1], "stack": [1, 1]}
    ds = LeRobotV3Dataset(out)
    assert len(ds) == 2 and ds.fps == 10.0 and ds.num_frames == summary.frames
    episodes = [ds.episode(i) for i in range(2)]
    assert [(e.task, e.seed, e.success) for e in episodes] == [("push", 0, True), ("stack", 0, True)]
    ep = episodes[1]
    T = len(ep)
    assert ep.rgb.shape == (T, 64, 64, 3) and ep.depth.shape == (T, 64, 64) and ep.waypoints.shape == (T, 8)
    assert ep.gt_traces.shape == (T, 3, 9, 3) and ep.gt_trace_gripper.shape == (T, 9)
    assert ep.instruction != ep.task and ep.instruction in ds.tasks.values()  # the task's sentence, not its name
    # Mark 0 is the gripper: its trace starts where the recorded TCP projects, and step k is frame t+k's start.
    uvd = project(ep.ee_pose[:, :3], ep.camera.intrinsics, ep.camera.extrinsics)
    np.testing.assert_allclose(ep.gt_traces[:, 0, 0], uvd, atol=2e-3)
    np.testing.assert_allclose(ep.gt_traces[:-3, 0, 3], ep.gt_traces[3:, 0, 0], atol=1e-4)
    assert ep.gt_trace_gripper.max() == 1.0  # the expert closes the gripper to carry the block
    assert ep.metadata["mark_names"][0] == "gripper" and ep.metadata["n_future"] == 8


def test_tracker_comparison_is_in_the_summary_and_sane(generated):
    comparison = generated[1].tracker_comparison
    assert comparison["episodes"] == 1 and comparison["n_points"] > 20
    assert 0.0 <= comparison["median_px"] < 2.0 and 0.0 < comparison["delta_avg"] <= 1.0
    assert comparison["n_moving_points"] > 0 and comparison["median_moving_px"] >= comparison["median_px"]
    assert set(comparison["per_mark_median_px"]) == {"gripper", "object", "target"}
    assert comparison["per_mark_median_px"]["target"] < 0.5  # a static pad is easy to track


def test_tracker_errors_against_known_motion(generated):
    ep = LeRobotV3Dataset(generated[0]).episode(0)
    # A tracker that reports the GT itself has zero error; one that never moves has the GT's displacement.
    class Oracle:
        name = "oracle"

        def __init__(self, offset):
            self.offset = offset

        def track(self, frames, points):
            from magma_core.tom.trackers import TrackResult

            T = len(frames)
            gt = np.transpose(ep.gt_traces[start, :, :T, :2], (1, 0, 2))[:, :len(points)] + self.offset
            gt[0] = points
            return TrackResult(gt, np.ones(gt.shape[:2], bool), np.zeros(gt.shape[:2]))

    start = 0
    errors, valid, moved = window_errors(ep, start, Oracle(np.zeros(2)))
    assert valid.any() and np.nanmax(errors[valid]) < 1e-6
    gripper_path = ep.gt_traces[start, 0, 1:9, :2] - ep.gt_traces[start, 0, 0, :2]
    np.testing.assert_allclose(moved[:, 0], np.linalg.norm(gripper_path, axis=1), atol=1e-5)
    errors, valid, _ = window_errors(ep, start, Oracle(np.array([3.0, 4.0])))
    np.testing.assert_allclose(errors[valid], 5.0, atol=1e-6)
    with pytest.raises(InvalidInputError, match="no future frame"):
        window_errors(ep, len(ep) - 1, Oracle(np.zeros(2)))
    summary = compare_tracker(ep)
    assert summary["n_points"] > 0 and summary["per_mark_median_px"]["target"] < 0.5


def test_dataset_info_summary_and_contact_sheet(generated, tmp_path, capsys):
    out, summary = generated
    parser = argparse.ArgumentParser()
    dataset_info.register(parser.add_subparsers())
    sheet = tmp_path / "sheet.png"
    args = parser.parse_args(["info", str(out), "--contact-sheet", str(sheet), "--json"])
    assert args.func(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 2 and info["frames"] == summary.frames and info["fps"] == 10.0
    assert info["tasks"] == {"push": 1, "stack": 1} and info["success_rate"] == 1.0
    assert info["features"]["observation.gt_trace"]["shape"] == [3 * 9 * 3]
    assert info["camera"]["width"] == 64
    image = load_image(sheet)
    assert image.shape == (256 + 2 * 4, 2 * 256 + 3 * 4, 3)  # two tiles upscaled to 256 px, padded
    args = parser.parse_args(["info", str(out)])
    args.func(args)
    text = capsys.readouterr().out
    assert "episodes : 2" in text and "observation.gt_trace" in text


def test_failures_are_dropped_unless_kept(tmp_path):
    short = GenerateConfig(image_size=32, n_future=4, max_steps=5)  # too short for the expert to succeed
    with pytest.raises(InvalidInputError, match="succeeded in none"):
        generate_dataset(tmp_path / "none", "push", 1, config=short)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind
    kept = GenerateConfig(image_size=32, n_future=4, max_steps=5, keep_failures=True)
    summary = generate_dataset(tmp_path / "kept", "push", 1, config=kept)
    ep = LeRobotV3Dataset(tmp_path / "kept").episode(0)
    assert summary.kept == 1 and summary.expert_success_rate == 0.0 and ep.success is False and len(ep) == 5


def test_workers_do_not_change_the_dataset(tmp_path):
    cfg = GenerateConfig(image_size=32, n_future=4, max_steps=12, keep_failures=True)
    generate_dataset(tmp_path / "w1", "push,pick_place", 1, seed_start=3, config=cfg, workers=1)
    generate_dataset(tmp_path / "w2", "push,pick_place", 1, seed_start=3, config=cfg, workers=2)
    a, b = LeRobotV3Dataset(tmp_path / "w1"), LeRobotV3Dataset(tmp_path / "w2")
    for i in range(2):
        ea, eb = a.episode(i), b.episode(i)
        assert (ea.task, ea.seed) == (eb.task, eb.seed)
        np.testing.assert_array_equal(ea.actions, eb.actions)
        np.testing.assert_array_equal(ea.gt_traces, eb.gt_traces)


def test_bad_arguments(tmp_path, generated):
    with pytest.raises(InvalidInputError, match="not empty"):
        generate_dataset(generated[0], "push", 1, config=SMALL)  # before any rollout
    with pytest.raises(InvalidInputError, match="valid tasks"):
        generate_dataset(tmp_path / "x", "juggle", 1)
    with pytest.raises(InvalidInputError, match="episodes"):
        generate_dataset(tmp_path / "x", "push", 0)
    parser = argparse.ArgumentParser()
    commands_dataset.register(parser.add_subparsers())
    args = parser.parse_args(["generate", "--task", "push", "--episodes", "1", "--out", str(tmp_path / "y"),
                              "--seed-start", "-2"])
    with pytest.raises(InvalidInputError, match="seed start"):
        args.func(args)

"""The synthetic clip generator (its ground truth) and the tracking benchmark built on it."""
from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest

from magma_core.bench.tracking import TrackingBenchConfig, check_targets, run_tracking_benchmark, score_tracks, summarize
from magma_core.commands import bench_tracking
from magma_core.errors import InvalidInputError
from magma_core.synthetic import SyntheticClipConfig, make_clip
from magma_core.tom.extract import grid_points

# --------------------------------------------------------------------------- synthetic clips


def test_clips_are_deterministic_per_seed():
    a = make_clip("benchmark", seed=11, frames=5)
    b = make_clip("benchmark", seed=11, frames=5)
    c = make_clip("benchmark", seed=12, frames=5)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (5, 256, 256, 3) and a.frames.dtype == np.uint8


def test_pan_moves_every_background_point_by_the_pan():
    clip = make_clip(SyntheticClipConfig(n_objects=0, pan=(2.0, -1.5), frames=4))
    query = grid_points(256, 256, 4)
    truth = clip.ground_truth(query)
    expected = query[None] + np.array([2.0, -1.5])[None, None] * np.arange(4)[:, None, None]
    np.testing.assert_allclose(truth.points, expected, atol=1e-9)
    assert not truth.moving.any() and (truth.layer == 0).all()


def _sample(frame: np.ndarray, points: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    xy = points.astype(np.float32)
    return cv2.remap(gray, xy[:, :1], xy[:, 1:], cv2.INTER_LINEAR)[:, 0]


def test_ground_truth_positions_show_the_same_texture_as_frame_zero():
    """The renderer and the ground truth agree: a visible point looks the same wherever GT puts it."""
    clip = make_clip(SyntheticClipConfig(pan=(1.5, 0.5), camera_rotation=0.2, n_objects=3, seed=4, frames=9))
    maps = clip.layer_maps()
    query = np.stack(np.meshgrid(np.arange(20, 236, 6.0), np.arange(20, 236, 6.0)), -1).reshape(-1, 2)
    truth = clip.ground_truth(query)
    # Leave out points within 3 px of a layer boundary, where edge pixels blend two layers.
    clean = np.ones(len(query), bool)
    for t in (0, 8):
        for dx in (-3, 0, 3):
            for dy in (-3, 0, 3):
                p = np.clip(np.rint(truth.points[t] + [dx, dy]).astype(int), 0, 255)
                clean &= maps[t][p[:, 1], p[:, 0]] == truth.layer
    usable = clean & truth.visible[8]
    assert usable.sum() > 300 and truth.moving[usable].sum() > 20
    difference = np.abs(_sample(clip.frames[8], truth.points[8][usable]) - _sample(clip.frames[0], query[usable]))
    assert np.median(difference) < 2.0 and np.quantile(difference, 0.95) < 8.0


def test_layer_maps_agree_with_ground_truth_layers_and_occlusion():
    clip = make_clip("occlusion", seed=1, frames=9)
    maps = clip.layer_maps()
    query = grid_points(256, 256, 16) + 0.5  # on pixel centres, so the map lookup needs no rounding
    truth = clip.ground_truth(query)
    cells = query.astype(int)
    np.testing.assert_array_equal(maps[0][cells[:, 1], cells[:, 0]], truth.layer)
    occluder = len(clip.layers) - 1
    assert (maps[0] == occluder).sum() == 0 and (maps[8] == occluder).sum() > 1000  # the bar enters after frame 0
    # Where GT says hidden and inside the view, the map shows another layer on top.
    t = 6
    inside = (truth.points[t] >= 0).all(1) & (truth.points[t] <= 255).all(1)
    hidden = ~truth.visible[t] & inside
    assert hidden.sum() > 5
    p = np.rint(truth.points[t][hidden]).astype(int)
    assert (maps[t][p[:, 1], p[:, 0]] != truth.layer[hidden]).mean() > 0.9


def test_bad_synthetic_settings_are_refused():
    with pytest.raises(InvalidInputError, match="unknown synthetic clip kind 'rain'"):
        make_clip("rain")
    with pytest.raises(InvalidInputError, match="at least 2 frames"):
        make_clip("objects", frames=1)
    with pytest.raises(InvalidInputError, match="too small"):
        make_clip("objects", size=16)


# --------------------------------------------------------------------------- scoring


def _truth(count=3, n=4):
    points = np.zeros((count, n, 2)) + np.arange(n)[None, :, None] * 10.0
    visible = np.ones((count, n), bool)
    moving = np.array([True, False, False, False])
    return points, visible, moving


def test_perfect_tracks_score_perfectly():
    points, visible, moving = _truth()
    scores = summarize([score_tracks(points, visible, points, visible, moving, (256, 256))])
    assert scores["median_error_px"] == 0 and scores["median_error_moving_px"] == 0
    assert scores["delta_avg"] == 1.0 and scores["occlusion_accuracy"] == 1.0
    assert scores["n_visible_point_frames"] == 8  # frame 0 is not scored


def test_known_offset_gives_known_delta_and_occlusion_scores():
    points, visible, moving = _truth()
    gt_visible = visible.copy()
    gt_visible[2, 3] = False  # one occluded point-frame
    predicted = points + np.array([3.0, 0.0])  # 3 px off: within 4, 8, 16 px, not within 1 or 2
    scores = summarize([score_tracks(predicted, visible, points, gt_visible, moving, (256, 256))])
    assert scores["median_error_px"] == pytest.approx(3.0)
    assert scores["delta_within"] == {"1": 0.0, "2": 0.0, "4": 1.0, "8": 1.0, "16": 1.0}
    assert scores["delta_avg"] == pytest.approx(0.6)
    assert scores["occluded_flagged_invisible"] == 0.0  # the tracker said visible
    assert scores["occlusion_accuracy"] == pytest.approx(7 / 8)


def test_errors_are_rescaled_to_256_like_tap_vid():
    points, visible, moving = _truth()
    predicted = points + np.array([2.0, 0.0])
    scores = summarize([score_tracks(predicted, visible, points, visible, moving, (512, 128))])
    assert scores["median_error_px"] == pytest.approx(1.0)  # 2 px at width 512 is 1 px at 256


def test_targets_pass_and_fail_on_their_thresholds():
    targets = check_targets({"median_error_moving_px": 1.0, "delta_avg": 0.89, "fps": None})
    assert targets["median_error_moving_px"]["pass"] is True
    assert targets["delta_avg"]["pass"] is False and targets["fps"]["pass"] is False


# --------------------------------------------------------------------------- the benchmark


def test_benchmark_on_a_tiny_config_returns_sane_figures():
    threads = cv2.getNumThreads()
    results = run_tracking_benchmark(TrackingBenchConfig(size=128, grid=6, frames=5, clips=2, repeats=1))
    assert results["n_points"] == 36 and results["opencv_threads"] == 1
    assert 0.0 <= results["median_error_px"] < 1.0
    assert 0.8 <= results["delta_avg"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in results["delta_within"].values())
    assert results["fps"] > 0 and set(results["targets"]) == {"median_error_moving_px", "delta_avg", "fps"}
    assert cv2.getNumThreads() == threads  # the one-thread setting is only for the measurement


def test_benchmark_config_is_validated():
    with pytest.raises(InvalidInputError, match="--clips"):
        run_tracking_benchmark(TrackingBenchConfig(clips=0))


def test_bench_tracking_command_prints_parseable_json(capsys):
    parser = argparse.ArgumentParser()
    bench_tracking.register(parser.add_subparsers())
    args = parser.parse_args(["tracking", "--json", "--size", "96", "--grid", "5", "--frames", "4", "--clips", "1", "--repeats", "1"])
    assert args.func(args) == 0
    results = json.loads(capsys.readouterr().out)
    for key in ("median_error_px", "mean_error_px", "median_error_moving_px", "delta_avg", "delta_within", "occluded_flagged_invisible", "fps", "targets", "config"):
        assert key in results
    assert results["config"]["size"] == 96 and results["n_points"] == 25
    assert 0.0 <= results["delta_avg"] <= 1.0


def test_bench_tracking_human_report_lists_targets(capsys):
    parser = argparse.ArgumentParser()
    bench_tracking.register(parser.add_subparsers())
    args = parser.parse_args(["tracking", "--size", "96", "--grid", "4", "--frames", "3", "--clips", "1", "--repeats", "1"])
    args.func(args)
    out = capsys.readouterr().out
    assert "delta_avg >= 0.9" in out and "fps >= 300" in out and "cv2.setNumThreads(1)" in out
    assert out.count("PASS") + out.count("FAIL") == 3

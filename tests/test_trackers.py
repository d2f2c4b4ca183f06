"""Point trackers: Lucas-Kanade accuracy and visibility on synthetic clips, input errors, CoTracker availability."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from magma_core.errors import InvalidInputError, TrackerUnavailableError
from magma_core.synthetic import make_clip
from magma_core.tom import trackers
from magma_core.tom.extract import grid_points
from magma_core.tom.trackers import CoTrackerTracker, LucasKanadeTracker, PointTracker, TrackResult, make_tracker


@pytest.fixture(scope="module")
def objects_clip():
    return make_clip("objects", seed=5, frames=9)


def _errors(result: TrackResult, truth, moving_only: bool = False) -> np.ndarray:
    error = np.linalg.norm(result.points - truth.points, axis=-1)[1:]
    mask = truth.visible[1:]
    if moving_only:
        mask = mask & truth.moving[None, :]
    return error[mask]


def test_lk_is_a_point_tracker_with_consistent_result_shapes(objects_clip):
    query = grid_points(256, 256, 8)
    result = make_tracker("lk").track(objects_clip.frames, query)
    assert isinstance(make_tracker("lk"), PointTracker)
    assert result.points.shape == (9, 64, 2) and result.visible.shape == (9, 64) and result.fb_error.shape == (9, 64)
    np.testing.assert_allclose(result.points[0], query, atol=1e-4)
    assert result.visible[0].all() and (result.fb_error[0] == 0).all()
    assert np.isfinite(result.points).all()


def test_lk_tracks_a_synthetic_clip_to_sub_pixel_median_error(objects_clip):
    query = grid_points(256, 256, 16)
    truth = objects_clip.ground_truth(query)
    result = LucasKanadeTracker().track(objects_clip.frames, query)
    assert np.median(_errors(result, truth)) < 0.2
    moving = _errors(result, truth, moving_only=True)
    assert moving.size > 50 and np.median(moving) < 1.0
    # Points kept visible are right (the forward-backward check removes the bad ones).
    kept = np.linalg.norm(result.points - truth.points, axis=-1)[1:][result.visible[1:] & truth.visible[1:]]
    assert np.mean(kept < 2.0) > 0.97


def test_lk_on_a_still_clip_reports_no_motion():
    clip = make_clip("static", seed=1, frames=5)
    query = grid_points(256, 256, 8)
    result = LucasKanadeTracker().track(clip.frames, query)
    assert result.visible.all()
    np.testing.assert_allclose(result.points, np.broadcast_to(query, result.points.shape), atol=0.05)


def test_lk_follows_a_camera_pan():
    clip = make_clip("pan", seed=2, n_objects=0, frames=9)  # background moves (2, 1) px per frame
    query = grid_points(256, 256, 8)
    result = LucasKanadeTracker().track(clip.frames, query)
    truth = clip.ground_truth(query)
    visible = result.visible & truth.visible
    assert visible[-1].mean() > 0.8
    error = np.linalg.norm(result.points - truth.points, axis=-1)[visible]
    assert np.quantile(error, 0.99) < 0.5 and error.max() < 1.5  # the worst sit at the frame border
    np.testing.assert_allclose(np.median(result.points[-1] - result.points[0], axis=0)[None], [[16.0, 8.0]], atol=0.1)


def test_occluded_points_are_flagged_and_reacquired_after_the_occluder_passes():
    clip = make_clip("occlusion", seed=3, n_objects=0)  # only the sweeping bar hides anything
    query = grid_points(256, 256, 16)
    truth = clip.ground_truth(query)
    hidden = ~truth.visible
    # Visible again after being hidden: only re-acquisition can get these right.
    back = truth.visible & (np.maximum.accumulate(hidden, axis=0))
    assert back.sum() > 50
    with_reacquire = LucasKanadeTracker().track(clip.frames, query)
    without = LucasKanadeTracker(reacquire=False).track(clip.frames, query)
    assert (~with_reacquire.visible[hidden]).mean() > 0.9
    assert (~without.visible[hidden]).mean() > 0.9
    assert without.visible[back].mean() == 0.0  # a lost point stays lost without re-acquisition
    assert with_reacquire.visible[back].mean() > 0.6
    error = np.linalg.norm(with_reacquire.points - truth.points, axis=-1)
    assert np.median(error[back & with_reacquire.visible]) < 0.5


def test_lk_with_no_points_returns_empty_tracks(objects_clip):
    result = LucasKanadeTracker().track(objects_clip.frames, np.zeros((0, 2)))
    assert result.points.shape == (9, 0, 2) and result.visible.shape == (9, 0)


@pytest.mark.parametrize(
    "points, message",
    [
        (np.array([[10.0, 10.0], [300.0, 5.0]]), "1 query points lie outside the 256x256 frame"),
        (np.array([[np.nan, 3.0]]), "NaN"),
        (np.zeros((4, 3)), r"shaped \(N, 2\)"),
    ],
)
def test_bad_query_points_are_refused(objects_clip, points, message):
    with pytest.raises(InvalidInputError, match=message):
        LucasKanadeTracker().track(objects_clip.frames, points)


def test_bad_frames_are_refused_before_tracking():
    with pytest.raises(InvalidInputError, match="only 1 frame"):
        LucasKanadeTracker().track(np.zeros((1, 32, 32, 3), np.uint8), np.array([[5.0, 5.0]]))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"window": 8}, "odd number"), ({"levels": -1}, "levels"), ({"fb_threshold": 0}, "fb_threshold"), ({"min_similarity": 2.0}, "min_similarity")],
)
def test_bad_lk_settings_are_refused(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        LucasKanadeTracker(**kwargs)


def test_make_tracker_knows_its_names():
    assert make_tracker("lk", window=15).window == 15
    with pytest.raises(InvalidInputError, match="unknown tracker 'raft'; choose one of cotracker, lk"):
        make_tracker("raft")


# --------------------------------------------------------------------------- CoTracker availability


def _pretend_cotracker_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "cotracker" else real(name, *a))


def test_cotracker_without_package_or_checkpoint_names_both():
    if importlib.util.find_spec("cotracker") is not None:
        pytest.skip("cotracker is installed here")
    with pytest.raises(TrackerUnavailableError) as info:
        make_tracker("cotracker")
    assert "`cotracker` package is not importable" in str(info.value)
    assert "no checkpoint given" in str(info.value)


def test_cotracker_with_package_but_no_checkpoint_names_only_the_checkpoint(monkeypatch, tmp_path):
    _pretend_cotracker_installed(monkeypatch)
    with pytest.raises(TrackerUnavailableError) as info:
        CoTrackerTracker(checkpoint=None)
    assert "no checkpoint given" in str(info.value) and "package" not in str(info.value)
    missing = tmp_path / "scaled_offline.pth"
    with pytest.raises(TrackerUnavailableError, match="checkpoint file not found: .*scaled_offline.pth"):
        CoTrackerTracker(checkpoint=missing)


def test_cotracker_with_checkpoint_but_no_package_names_the_package(tmp_path):
    if importlib.util.find_spec("cotracker") is not None:
        pytest.skip("cotracker is installed here")
    checkpoint = tmp_path / "weights.safetensors"
    checkpoint.write_bytes(b"x")
    with pytest.raises(TrackerUnavailableError) as info:
        CoTrackerTracker(checkpoint=checkpoint)
    assert "package is not importable" in str(info.value) and "checkpoint" not in str(info.value)


def test_checkpoints_load_as_plain_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    weights = {"layer.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    safetensors_torch.save_file(weights, str(tmp_path / "w.safetensors"))
    loaded = trackers._load_state_dict(tmp_path / "w.safetensors")
    assert torch.equal(loaded["layer.weight"], weights["layer.weight"])

    torch.save({"model": weights}, tmp_path / "w.pth")  # the layout of CoTracker's own checkpoints
    assert torch.equal(trackers._load_state_dict(tmp_path / "w.pth")["layer.weight"], weights["layer.weight"])

    torch.save({"payload": _Unpicklable()}, tmp_path / "evil.pth")
    with pytest.raises(TrackerUnavailableError, match="weights_only=True"):
        trackers._load_state_dict(tmp_path / "evil.pth")


class _Unpicklable:
    """An arbitrary object: weights_only loading must refuse to rebuild it."""

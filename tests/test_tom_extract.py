"""Trace-of-Mark extraction: clip loading and validation, and extraction on synthetic clips with ground truth."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from magma_core.errors import InvalidInputError
from magma_core.synthetic import SyntheticClipConfig, make_clip
from magma_core.tom.clip import load_clip, validate_clip
from magma_core.tom.extract import (
    ToMConfig,
    apply_homographies,
    estimate_camera_motion,
    extract_traces,
    extract_with_tracks,
    grid_points,
    kmeans,
    mean_step_motion,
    representatives,
    traces_from_tracks,
)
from magma_core.tom.trackers import TrackResult


def _frames(count: int, height: int = 24, width: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- validate_clip


def test_validate_clip_accepts_uint8_rgb_stack_unchanged():
    frames = _frames(3)
    out = validate_clip(frames)
    assert out.shape == (3, 24, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, frames)


def test_validate_clip_stacks_a_list_of_frames():
    frames = list(_frames(2))
    np.testing.assert_array_equal(validate_clip(frames), np.stack(frames))


@pytest.mark.parametrize("empty", [[], np.zeros((0, 8, 8, 3), np.uint8)])
def test_empty_clip_is_refused(empty):
    with pytest.raises(InvalidInputError, match="empty: need the current frame and at least one future frame"):
        validate_clip(empty)


def test_one_frame_clip_is_refused():
    with pytest.raises(InvalidInputError, match="only 1 frame"):
        validate_clip(_frames(1))


def test_frames_of_different_sizes_name_the_first_offender_and_both_sizes():
    frames = [*_frames(2), _frames(1, height=30, width=40)[0]]
    with pytest.raises(InvalidInputError, match=r"frame 2 is 40x30 but frame 0 is 32x24"):
        validate_clip(frames)


def test_grayscale_frames_are_refused_unless_allowed():
    gray = _frames(2)[..., 0]  # (T, H, W)
    with pytest.raises(InvalidInputError, match="frame 0: grayscale frame"):
        validate_clip(gray)
    out = validate_clip(gray, allow_gray=True)
    assert out.shape == (2, 24, 32, 3)
    np.testing.assert_array_equal(out[..., 1], gray)


def test_float_frames_are_refused_unless_allowed():
    frames = np.full((2, 4, 4, 3), 0.5, dtype=np.float32)
    with pytest.raises(InvalidInputError, match="float frame"):
        validate_clip(frames)
    out = validate_clip(frames, allow_float=True)
    assert out.dtype == np.uint8 and int(out[0, 0, 0, 0]) == 128


def test_nan_is_refused_even_when_floats_are_allowed():
    frames = np.zeros((2, 4, 4, 3), dtype=np.float64)
    frames[1, 2, 3, 0] = np.nan
    with pytest.raises(InvalidInputError, match="frame 1: contains 1 NaN"):
        validate_clip(frames, allow_float=True)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_wrong_integer_dtype_is_named(dtype):
    with pytest.raises(InvalidInputError, match=f"wrong dtype {np.dtype(dtype).name}"):
        validate_clip(np.zeros((2, 4, 4, 3), dtype=dtype))


def test_a_single_image_is_not_a_clip():
    with pytest.raises(InvalidInputError, match="one image shaped"):
        validate_clip(np.zeros((8, 8, 3), np.uint8))


def test_rgba_frames_are_refused():
    with pytest.raises(InvalidInputError, match="expected 3 colour channels, got 4"):
        validate_clip(np.zeros((2, 4, 4, 4), np.uint8))


# --------------------------------------------------------------------------- load_clip


def _write_png_folder(folder, frames, names):
    folder.mkdir()
    for frame, name in zip(frames, names):
        cv2.imwrite(str(folder / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


def test_load_clip_from_folder_sorts_names_naturally_and_applies_start_stride(tmp_path):
    frames = _frames(12)
    names = [f"frame{i}.png" for i in range(12)]  # lexical order would put frame10 before frame2
    _write_png_folder(tmp_path / "frames", frames, names)
    clip = load_clip(tmp_path / "frames", max_frames=3, start=2, stride=4)
    assert clip.n_frames == 3 and clip.image_size == (32, 24)
    np.testing.assert_array_equal(clip.frames, frames[[2, 6, 10]])


def test_load_clip_from_mp4_keeps_order_start_and_count(tmp_path):
    # Frames of distinct flat brightness survive mp4 compression well enough to identify them.
    levels = np.arange(10) * 20 + 20
    frames = np.stack([np.full((32, 48, 3), v, np.uint8) for v in levels])
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (48, 32))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    clip = load_clip(path, max_frames=4, start=3)
    assert clip.n_frames == 4 and clip.fps == pytest.approx(10.0)
    np.testing.assert_allclose(clip.frames.reshape(4, -1).mean(axis=1), levels[3:7], atol=4)


def test_load_clip_errors_name_the_problem(tmp_path):
    with pytest.raises(InvalidInputError, match="clip not found"):
        load_clip(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no image frames"):
        load_clip(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInputError, match="not a video file or frame folder"):
        load_clip(tmp_path / "notes.txt")
    _write_png_folder(tmp_path / "one", _frames(1), ["a.png"])
    with pytest.raises(InvalidInputError, match="only 1 frame"):
        load_clip(tmp_path / "one")


# --------------------------------------------------------------------------- building blocks


def test_grid_points_sit_at_cell_centres_row_by_row():
    points = grid_points(64, 32, 4)
    assert points.shape == (16, 2)
    np.testing.assert_allclose(points[:4, 0], [7.5, 23.5, 39.5, 55.5])
    np.testing.assert_allclose(points[::4, 1], [3.5, 11.5, 19.5, 27.5])


def test_mean_step_motion_counts_only_steps_visible_at_both_ends():
    points = np.zeros((4, 2, 2))
    points[:, 0, 0] = [0, 1, 2, 3]  # 1 px per step
    points[:, 1, 0] = [0, 10, 10, 10]  # one jump into an invisible frame
    visible = np.array([[True, True], [True, False], [True, True], [True, True]])
    np.testing.assert_allclose(mean_step_motion(points, visible), [1.0, 0.0])


def test_estimate_camera_motion_recovers_a_translation_despite_outliers():
    rng = np.random.default_rng(1)
    start = rng.uniform(0, 200, (40, 2))
    shift = np.array([3.0, -2.0])
    points = np.stack([start + shift * t for t in range(5)])
    points[:, :5] += rng.uniform(-30, 30, (5, 5, 2))  # a few points on a moving object
    points[0, :5] = start[:5]
    homographies, inliers, failures = estimate_camera_motion(points, np.ones((5, 40), bool), ransac_threshold=1.0)
    assert failures == 0 and inliers > 0.8
    back = apply_homographies(homographies, points)
    np.testing.assert_allclose(back[:, 5:], np.broadcast_to(start[5:], back[:, 5:].shape), atol=1e-3)


def test_kmeans_is_deterministic_and_representatives_are_real_members_nearest_the_centre():
    rng = np.random.default_rng(2)
    blob_a = rng.normal(0, 0.1, (12, 2))
    blob_b = rng.normal(5, 0.1, (5, 2))
    features = np.concatenate([blob_a, blob_b])
    labels_1, centres_1 = kmeans(features, 2, seed=7)
    labels_2, centres_2 = kmeans(features, 2, seed=7)
    np.testing.assert_array_equal(labels_1, labels_2)
    np.testing.assert_allclose(centres_1, centres_2)
    chosen = representatives(features, 2, seed=7)
    assert chosen[0] < 12 <= chosen[1]  # the bigger cluster first
    assert chosen[0] == int(np.argmin(np.linalg.norm(blob_a - blob_a.mean(axis=0), axis=1)))


def test_points_visible_in_fewer_than_half_the_frames_are_dropped():
    count, n = 6, 4
    points = np.zeros((count, n, 2)) + np.arange(n)[None, :, None] * 40.0
    visible = np.ones((count, n), bool)
    visible[1:4, 0] = False  # visible 3 of 6: kept (exactly half)
    visible[1:5, 1] = False  # visible 2 of 6: dropped
    tracks = TrackResult(points, visible, np.zeros((count, n)))
    trace_set = traces_from_tracks(tracks, (200, 200), ToMConfig(grid_size=2))
    assert trace_set.stats["n_tracked"] == 3 and trace_set.stats["n_dropped"] == 1
    kept_starts = {tuple(t.points[0]) for t in trace_set.traces}
    assert (40.0, 40.0) not in kept_starts


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"grid_size": 0}, "grid_size"),
        ({"future_frames": 0}, "future_frames"),
        ({"min_visible_fraction": 1.5}, "min_visible_fraction"),
        ({"min_moving_marks": 3, "max_moving_marks": 2}, "min_moving_marks"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(InvalidInputError, match=message):
        extract_traces(_frames(3), ToMConfig(**overrides))


# --------------------------------------------------------------------------- scenarios on synthetic clips


def _truth_in_frame0(clip, trace_set):
    """Ground truth of each mark, mapped into frame-0 coordinates like the traces are."""
    starts = np.array([t.points[0] for t in trace_set.traces])
    truth = clip.ground_truth(starts)
    mapped = apply_homographies(clip.frame_to_frame0(), truth.points) if trace_set.camera_moving else truth.points
    return truth, mapped


def test_static_camera_with_moving_objects_marks_the_objects_and_follows_them():
    clip = make_clip("objects", seed=0)
    trace_set = extract_traces(clip.frames)
    assert trace_set.camera_moving is False and trace_set.homographies is None
    assert 2 <= len(trace_set.moving) <= 4 and len(trace_set.static) == 6
    assert [t.mark_id for t in trace_set.traces] == list(range(1, len(trace_set.traces) + 1))
    truth, mapped = _truth_in_frame0(clip, trace_set)
    for index, trace in enumerate(trace_set.traces):
        assert truth.moving[index] == trace.moving, f"mark {trace.mark_id} moving={trace.moving} but lies on layer {truth.layer[index]}"
        both = trace.visible & truth.visible[:, index]
        error = np.linalg.norm(trace.points - mapped[:, index], axis=1)[both]
        assert np.median(error) < 1.0
    # The moving marks cover both objects.
    assert set(truth.layer[[t.moving for t in trace_set.traces]].tolist()) == {1, 2}
    assert trace_set.traces[0].length == 17


def test_panning_camera_is_detected_and_removed():
    clip = make_clip("pan", seed=1)  # background moves (2, 1) px per frame
    trace_set = extract_traces(clip.frames)
    assert trace_set.camera_moving is True and trace_set.stats["raw_moving_fraction"] > 0.9
    # The estimated homographies match the true camera motion (compare where they send the image centre).
    centre = np.array([[[127.5, 127.5]]] * clip.n_frames)
    np.testing.assert_allclose(
        apply_homographies(trace_set.homographies, centre), apply_homographies(clip.frame_to_frame0(), centre), atol=0.3
    )
    static = trace_set.static
    assert len(static) == 6
    for trace in static:
        assert mean_step_motion(trace.points[:, None], trace.visible[:, None])[0] < 0.1
    truth, _ = _truth_in_frame0(clip, trace_set)
    assert all(truth.moving[i] for i, t in enumerate(trace_set.traces) if t.moving)
    assert len(trace_set.moving) >= 2


def test_nothing_moving_gives_no_moving_marks():
    clip = make_clip("static", seed=0)
    trace_set = extract_traces(clip.frames)
    assert trace_set.moving == [] and len(trace_set.static) == 6
    assert trace_set.camera_moving is False and trace_set.stats["n_dropped"] == 0


def test_only_the_camera_moving_gives_no_moving_marks():
    clip = make_clip(SyntheticClipConfig(n_objects=0, pan=(2.0, -1.0), seed=3))
    trace_set = extract_traces(clip.frames)
    assert trace_set.camera_moving is True and trace_set.moving == []


def test_occluded_points_are_flagged_invisible_or_dropped():
    clip = make_clip("occlusion", seed=2)
    trace_set, query, tracks = extract_with_tracks(clip.frames)
    truth = clip.ground_truth(query)
    occluded = ~truth.visible
    assert occluded.sum() > 100  # the occluder really hides a good part of the scene
    assert (~tracks.visible[occluded]).mean() > 0.9
    # Points hidden for most of the clip cannot become marks.
    mostly_hidden = truth.visible.mean(axis=0) < 0.4
    assert trace_set.stats["n_dropped"] >= int(mostly_hidden.sum()) * 0.8
    starts = {tuple(p) for p in query[mostly_hidden]}
    assert not any(tuple(t.points[0]) in starts for t in trace_set.traces)


def test_extraction_is_deterministic_and_honours_frame_and_grid_settings():
    clip = make_clip("objects", seed=4)
    config = ToMConfig(grid_size=8, future_frames=6)
    first = extract_traces(clip.frames, config)
    second = extract_traces(clip.frames, config)
    assert first.stats["n_grid"] == 64 and first.stats["n_frames"] == 7
    assert all(t.length == 7 for t in first.traces)
    for a, b in zip(first.traces, second.traces, strict=True):
        np.testing.assert_array_equal(a.points, b.points)
        assert a.moving == b.moving and a.mark_id == b.mark_id

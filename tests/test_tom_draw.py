"""Trace-of-Mark overlays: traces on images, overlay videos, contact sheets (magma_core.tom.draw)."""

import cv2
import numpy as np
import pytest

from magma_core.errors import InvalidInputError
from magma_core.som import MarkSet
from magma_core.som.draw import mark_color
from magma_core.tom.draw import contact_sheet, draw_traces, overlay_frames, write_overlay_video
from magma_core.tom.types import Trace, TraceSet

GRAY = 128


def gray_image(h=256, w=256):
    return np.full((h, w, 3), GRAY, np.uint8)


def straight_trace(mark_id=1, start=(40.0, 128.0), end=(200.0, 128.0), steps=9, visible=None, moving=True):
    points = np.linspace(start, end, steps)
    return Trace(mark_id, points, np.ones(steps, bool) if visible is None else visible, moving=moving)


def changed(before, after, tol=0):
    return np.abs(after.astype(int) - before.astype(int)).sum(axis=2) > tol


def distance_to_segment(xs, ys, a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    p = np.stack([xs, ys], axis=1).astype(float)
    t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    return np.linalg.norm(p - (a + t[:, None] * (b - a)), axis=1)


def test_trace_is_drawn_along_its_points_and_nowhere_far():
    image = gray_image()
    out = draw_traces(image, [straight_trace()])
    ys, xs = np.nonzero(changed(image, out))
    # Everything drawn is the line, its arrowhead or the start label: all close to the segment.
    assert distance_to_segment(xs, ys, (40, 128), (200, 128)).max() < 12
    for x in range(60, 190, 10):
        assert changed(image, out)[128, x], f"line missing at x={x}"


def test_colour_runs_from_old_to_new():
    image = gray_image()
    out = draw_traces(image, [straight_trace()]).astype(int)
    early, late = out[128, 65], out[128, 175]
    assert early[2] > early[0]  # bluish near the start
    assert late[0] > late[2]  # reddish near the end


def test_start_is_labelled_with_the_marks_colour_and_arrow_at_end():
    image = gray_image()
    out = draw_traces(image, [straight_trace(mark_id=3)])
    colour = np.array(mark_color(3))
    own = np.abs(out.astype(int) - colour).max(axis=2) < 10
    ys, xs = np.nonzero(own)
    assert own.sum() > 20 and abs(xs.mean() - 40) < 3 and abs(ys.mean() - 128) < 3
    # The arrowhead widens the drawing near the end beyond the line's own width.
    column_near_end = changed(image, out)[:, 192]
    column_mid = changed(image, out)[:, 120]
    assert column_near_end.sum() > column_mid.sum() + 2


def test_invisible_steps_are_dashed():
    visible = np.ones(9, bool)
    visible[4:] = False  # second half lost by the tracker
    image = gray_image()
    out = draw_traces(image, [straight_trace(visible=visible)])
    row = changed(image, out)[128]
    assert row[60:110].all()  # solid where visible
    gap_pixels = ~row[130:185]
    assert gap_pixels.sum() >= 5 and row[130:185].sum() >= 5  # both dashes and gaps


def test_static_traces_are_thin_and_grey_and_optional():
    image = gray_image()
    image[:] = 0
    static = straight_trace(start=(40, 100), end=(200, 100), moving=False)
    out = draw_traces(image, [static])
    ys, xs = np.nonzero(changed(image, out))
    assert ys.size and ys.max() - ys.min() <= 5  # thin: a 1 px line and a small start dot
    drawn = out[ys, xs].astype(int)
    assert (drawn.max(axis=1) - drawn.min(axis=1)).max() <= 2  # grey
    assert np.array_equal(draw_traces(image, [static], show_static=False), image)


def test_steps_draws_only_the_first_part():
    image = gray_image()
    out = draw_traces(image, [straight_trace()], steps=3)  # points at x = 40, 60, 80
    ys, xs = np.nonzero(changed(image, out))
    assert xs.max() < 90 and xs.min() < 45


def test_marks_given_replace_the_trace_start_label():
    image = gray_image()
    marks = MarkSet.from_boxes([[25, 110, 55, 146]])
    out = draw_traces(image, [straight_trace(mark_id=1)], marks)
    colour = np.array(mark_color(1))
    own = np.abs(out.astype(int) - colour).max(axis=2) < 10
    # The box outline is drawn; the start point itself is not covered by a numbered disc.
    assert own[128, 24:28].any() and own[128, 53:58].any()
    assert not own[126:131, 38:43].any()


def test_draw_traces_leaves_input_unchanged_and_validates():
    image = gray_image()
    before = image.copy()
    draw_traces(image, TraceSet([straight_trace()], (256, 256)))
    assert np.array_equal(image, before)
    with pytest.raises(InvalidInputError, match="1-based"):
        draw_traces(image, [straight_trace(mark_id=0)])
    with pytest.raises(InvalidInputError, match="expected Trace objects"):
        draw_traces(image, [np.zeros((3, 2))])
    with pytest.raises(InvalidInputError, match="steps must be a positive integer"):
        draw_traces(image, [straight_trace()], steps=0)
    with pytest.raises(InvalidInputError, match="RGBA"):
        draw_traces(np.zeros((8, 8, 4), np.uint8), [])


def test_nan_and_far_points_are_skipped_not_fatal():
    points = np.array([[10, 10], [np.nan, 20], [1e12, 30], [40, 40]], float)
    out = draw_traces(gray_image(64, 64), [Trace(1, points, np.ones(4, bool))])
    assert out.shape == (64, 64, 3)


def test_overlay_frames_follow_camera_motion_through_homographies():
    frames = [gray_image(64, 96) for _ in range(4)]
    trace = Trace(1, np.tile([[30.0, 32.0]], (4, 1)), np.ones(4, bool), moving=True)
    # Frame t is the scene shifted right by 10 t px: frame t -> frame 0 subtracts 10 t.
    homographies = np.stack([np.array([[1, 0, -10 * t], [0, 1, 0], [0, 0, 1]], float) for t in range(4)])
    overlays = list(overlay_frames(frames, TraceSet([trace], (96, 64), camera_moving=True, homographies=homographies)))
    for t, overlay in enumerate(overlays):
        ys, xs = np.nonzero(changed(frames[t], overlay))
        assert abs(xs.mean() - (30 + 10 * t)) < 2


def read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def test_overlay_video_has_every_frame_and_draws_progressively(tmp_path):
    frames = [gray_image(120, 160) for _ in range(12)]
    trace = straight_trace(start=(20, 60), end=(140, 60), steps=12)
    path = write_overlay_video(frames, TraceSet([trace], (160, 120)), tmp_path / "videos" / "clip.mp4", fps=6)
    assert path == tmp_path / "videos" / "clip.mp4" and path.stat().st_size > 0
    decoded = read_video(path)
    assert len(decoded) == 12 and decoded[0].shape == (120, 160, 3)
    drawn = [int(changed(frames[0], f[..., ::-1], tol=60).sum()) for f in decoded]
    assert drawn[-1] > drawn[0] + 200  # the trace grows over the clip
    first_x = np.nonzero(changed(frames[0], decoded[0][..., ::-1], tol=60))[1]
    assert first_x.max() < 40  # frame 0 shows the start only


def test_overlay_video_with_traces_per_frame(tmp_path):
    frames = [gray_image(64, 64) for _ in range(3)]
    per_frame = [[straight_trace(start=(10, 10 + 15 * t), end=(50, 10 + 15 * t), steps=4)] for t in range(3)]
    path = write_overlay_video(frames, per_frame, tmp_path / "p.mp4", fps=5)
    assert len(read_video(path)) == 3
    with pytest.raises(InvalidInputError, match="2 trace lists for 3 frames"):
        write_overlay_video(frames, per_frame[:2], tmp_path / "q.mp4")
    assert not (tmp_path / "q.mp4").exists()  # validated before the writer opened


def test_overlay_video_falls_back_to_png_frames(tmp_path, monkeypatch):
    class ClosedWriter:
        def __init__(self, *args):
            pass

        def isOpened(self):
            return False

    monkeypatch.setattr(cv2, "VideoWriter", ClosedWriter)
    frames = [gray_image(32, 48) for _ in range(5)]
    with pytest.warns(RuntimeWarning, match="could not open an mp4"):
        out = write_overlay_video(frames, [straight_trace(start=(5, 5), end=(40, 20), steps=5)], tmp_path / "clip.mp4")
    assert out == tmp_path / "clip" and sorted(p.name for p in out.iterdir()) == [f"frame_{i:05d}.png" for i in range(5)]


def test_overlay_video_validates_inputs(tmp_path):
    frames = [gray_image(32, 32), gray_image(32, 40)]
    with pytest.raises(InvalidInputError, match=r"frames\[1\] has shape"):
        write_overlay_video(frames, [], tmp_path / "a.mp4")
    with pytest.raises(InvalidInputError, match="no frames"):
        write_overlay_video([], [], tmp_path / "a.mp4")
    with pytest.raises(InvalidInputError, match="fps must be a positive number"):
        write_overlay_video([gray_image(8, 8)], [], tmp_path / "a.mp4", fps=0)
    with pytest.raises(InvalidInputError, match=r"frames\[0\]: grayscale"):
        write_overlay_video([np.zeros((8, 8), np.uint8)], [], tmp_path / "a.mp4")


def test_contact_sheet_tiles_row_by_row():
    images = [np.full((10, 20, 3), 40 * (i + 1), np.uint8) for i in range(5)]
    sheet = contact_sheet(images, cols=2, pad=2, background=(0, 0, 0))
    assert sheet.shape == (3 * 10 + 4 * 2, 2 * 20 + 3 * 2, 3)
    assert (sheet[2:12, 2:22] == 40).all()  # image 0: row 0, col 0
    assert (sheet[2:12, 24:44] == 80).all()  # image 1: row 0, col 1
    assert (sheet[26:36, 2:22] == 200).all()  # image 4: row 2, col 0
    assert (sheet[26:36, 24:44] == 0).all()  # empty cell keeps the background


def test_contact_sheet_centres_small_images_and_writes_titles():
    big, small = np.full((20, 20, 3), 100, np.uint8), np.full((10, 10, 3), 200, np.uint8)
    sheet = contact_sheet([big, small], cols=2, pad=0, background=(0, 0, 0))
    assert (sheet[5:15, 25:35] == 200).all() and (sheet[0:5, 20:40] == 0).all()
    titled = contact_sheet([np.full((100, 100, 3), 128, np.uint8)], cols=1, pad=0, titles=["ok"])
    assert (titled[:30, :40] != 128).any() and (titled[60:, 60:] == 128).all()


def test_contact_sheet_validates():
    with pytest.raises(InvalidInputError, match="cols must be a positive integer"):
        contact_sheet([gray_image(4, 4)], cols=0)
    with pytest.raises(InvalidInputError, match="no images"):
        contact_sheet([], cols=2)
    with pytest.raises(InvalidInputError, match="1 titles for 2 images"):
        contact_sheet([gray_image(4, 4)] * 2, cols=2, titles=["a"])
    with pytest.raises(InvalidInputError, match=r"images\[1\]: dtype float64"):
        contact_sheet([gray_image(4, 4), np.zeros((4, 4, 3))], cols=2)

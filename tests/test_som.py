"""Set-of-Mark: mark validation, prompt text on the 256 grid, and drawing (magma_core.som)."""
import json

import numpy as np
import pytest

from magma_core.errors import InvalidInputError
from magma_core.som import Mark, MarkSet, draw_marks, plan_marks
from magma_core.som.draw import PALETTE, label_style, mark_color, relative_luminance, text_color_for

# ---------------------------------------------------------------- marks


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"id": 0, "point": (1, 2)}, "1-based"),
        ({"id": True, "point": (1, 2)}, "integer >= 1"),
        ({"id": 1.0, "point": (1, 2)}, "integer >= 1"),
        ({"id": 1}, "exactly one of point or box"),
        ({"id": 1, "point": (1, 2), "box": (0, 0, 3, 3)}, "exactly one of point or box"),
        ({"id": 2, "point": (1, float("nan"))}, "mark 2 point: coordinates must be finite"),
        ({"id": 2, "box": (0, 0, float("inf"), 3)}, "must be finite"),
        ({"id": 1, "point": (1, 2, 3)}, "expected 2 numbers"),
        ({"id": 1, "point": ("1", "2")}, "expected numbers"),
        ({"id": 1, "point": "12"}, "expected 2 numbers"),
        ({"id": 3, "box": (5, 0, 5, 3)}, r"mark 3 box .*x1 > x0"),
        ({"id": 3, "box": (0, 4, 5, 3)}, "y1 > y0"),
        ({"id": 1, "point": (1, 2), "kind": "blob"}, "kind 'blob' is not one of"),
        ({"id": 1, "point": (1, 2), "label": 5}, "label must be a string"),
    ],
)
def test_mark_validation(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        Mark(**kwargs)


def test_mark_normalises_coordinates_and_has_a_center():
    mark = Mark(id=np.int64(4), box=np.array([10, 20, 30, 60]))
    assert mark.id == 4 and type(mark.id) is int
    assert mark.box == (10.0, 20.0, 30.0, 60.0)
    assert mark.center == (20.0, 40.0)
    assert Mark(id=1, point=[3, 4]).center == (3.0, 4.0)
    with pytest.raises(AttributeError):
        mark.id = 5  # frozen


def test_markset_from_boxes_and_points_number_from_start_id():
    boxes = MarkSet.from_boxes([[0, 0, 10, 10], [20, 20, 40, 30]], labels=["cup", "plate"], start_id=3)
    assert boxes.ids == [3, 4]
    assert boxes[4].label == "plate" and boxes[4].box == (20.0, 20.0, 40.0, 30.0)
    points = MarkSet.from_points(np.array([[1.5, 2.5]]), kind="gripper")
    assert len(points) == 1 and points[1].kind == "gripper" and points[1].point == (1.5, 2.5)
    assert len(MarkSet.from_points([])) == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: MarkSet.from_boxes([[0, 0, 1]]), r"boxes: expected shape \(N, 4\)"),
        (lambda: MarkSet.from_points([[1, 2], [3]]), r"points: expected shape \(N, 2\)"),
        (lambda: MarkSet.from_points([[1, 2]], labels=["a", "b"]), "2 labels for 1 marks"),
        (lambda: MarkSet.from_boxes([[0, 0, 1, 1]], start_id=0), "1-based"),
        (lambda: MarkSet([Mark(1, point=(0, 0)), Mark(1, point=(2, 2))]), "duplicate mark id 1"),
        (lambda: MarkSet([(1, 2)]), "MarkSet holds Mark objects"),
        (lambda: MarkSet().by_kind("thing"), "kind 'thing'"),
        (lambda: MarkSet().to_prompt_text(0, 10), "width must be a positive integer"),
    ],
)
def test_markset_validation(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call()


def test_markset_add_indexing_and_by_kind():
    marks = MarkSet.from_points([[5, 5], [6, 6]])
    added = marks.add(box=(0, 0, 4, 4), kind="region", label="bin")
    assert added.id == 3 and marks[3] is added
    marks.add(Mark(id=10, point=(1, 1), kind="gripper"))
    assert marks.add(point=(2, 2)).id == 11  # next after the largest id
    assert [m.id for m in marks] == [1, 2, 3, 10, 11]
    assert 10 in marks and 4 not in marks
    assert marks.by_kind("gripper").ids == [10]
    with pytest.raises(KeyError, match="no mark with id 4"):
        marks[4]
    with pytest.raises(InvalidInputError, match="duplicate mark id 2"):
        marks.add(point=(0, 0), id=2)
    with pytest.raises(InvalidInputError, match="either a Mark or point/box"):
        marks.add(Mark(id=20, point=(0, 0)), point=(1, 1))


def test_prompt_text_uses_the_256_grid():
    marks = MarkSet.from_points([[320, 240], [0, 0], [639.9, 479.9]])
    marks.add(box=(0, 0, 64, 48))  # centre (32, 24) -> cells (12.8, 12.8) -> 12
    text = marks.to_prompt_text(640, 480)
    assert text.splitlines() == [
        "Mark 1 at [128,128]",
        "Mark 2 at [0,0]",
        "Mark 3 at [255,255]",
        "Mark 4 at [12,12]",
    ]
    assert marks.grid_centers(640, 480).tolist() == [[128, 128], [0, 0], [255, 255], [12, 12]]
    assert MarkSet().to_prompt_text(10, 10) == ""


def test_dict_round_trip_through_json():
    marks = MarkSet.from_boxes([[1, 2, 30, 40]], labels=["red cube"])
    marks.add(point=(7.25, 8.5), kind="gripper")
    restored = MarkSet.from_dict(json.loads(json.dumps(marks.to_dict())))
    assert restored == marks
    assert restored[2].point == (7.25, 8.5) and restored[1].label == "red cube"


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "expected a dict with a 'marks' list"),
        ({"marks": "x"}, "expected a dict with a 'marks' list"),
        ({"marks": [{"id": 1, "point": [1, 2], "colour": "red"}]}, r"unknown keys \['colour'\]"),
        ({"marks": [{"point": [1, 2]}]}, "missing 'id'"),
        ({"marks": [{"id": 1, "point": [1, None]}]}, "expected numbers"),
        ({"marks": [{"id": 1, "point": [1, 2]}, {"id": 1, "point": [3, 4]}]}, "duplicate mark id 1"),
    ],
)
def test_from_dict_validates(data, message):
    with pytest.raises(InvalidInputError, match=message):
        MarkSet.from_dict(data)


# ---------------------------------------------------------------- drawing helpers


def changed_mask(before, after):
    return np.abs(after.astype(int) - before.astype(int)).sum(axis=2) > 0


def luminance_map(image):
    return image.astype(float) @ np.array([0.2126, 0.7152, 0.0722])


def test_palette_is_distinct_and_stable_per_id():
    colours = [mark_color(i) for i in range(1, len(PALETTE) + 1)]
    assert len(set(colours)) == len(PALETTE)
    assert mark_color(1) == mark_color(1 + len(PALETTE))  # wraps around, deterministically
    arr = np.array(colours, float)
    distances = np.linalg.norm(arr[:, None] - arr[None], axis=2)[np.triu_indices(len(arr), 1)]
    assert distances.min() > 50


def test_text_colour_follows_fill_luminance():
    assert text_color_for((255, 255, 0)) == (0, 0, 0)
    assert text_color_for((0, 0, 160)) == (255, 255, 255)
    assert text_color_for((20, 20, 20)) == (255, 255, 255)
    assert relative_luminance((255, 255, 255)) == pytest.approx(1.0)


# ---------------------------------------------------------------- drawing


def test_point_mark_draws_its_colour_at_the_point_and_nowhere_else():
    image = np.full((240, 320, 3), 128, np.uint8)
    marks = MarkSet.from_points([[100.0, 80.0]])
    out = draw_marks(image, marks)
    changed = changed_mask(image, out)
    ys, xs = np.nonzero(changed)
    assert abs(xs.mean() - 100) < 2 and abs(ys.mean() - 80) < 2
    (layout,) = plan_marks(marks, 320, 240)
    radius = (layout.label_rect[2] - layout.label_rect[0]) / 2 + label_style(320, 240).ring + 1
    assert np.hypot(xs - 100, ys - 80).max() <= radius + 1
    colour = np.array(mark_color(1))
    own = np.abs(out.astype(int) - colour).max(axis=2) < 10
    oy, ox = np.nonzero(own)
    assert own.sum() > 20 and abs(ox.mean() - 100) < 3 and abs(oy.mean() - 80) < 3


def test_box_mark_outline_follows_the_box():
    image = np.full((200, 200, 3), 128, np.uint8)
    out = draw_marks(image, MarkSet.from_boxes([[50, 60, 150, 140]]))
    colour = np.array(mark_color(1))
    own = np.abs(out.astype(int) - colour).max(axis=2) < 10
    # The outline: pixels on each edge carry the colour, the box interior stays untouched.
    assert own[100, 49:52].any() and own[100, 149:152].any() and own[59:62, 100].any() and own[139:142, 100].any()
    assert not changed_mask(image, out)[80:120, 70:130].any()


def test_draw_marks_leaves_the_input_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    before = image.copy()
    image.flags.writeable = False
    marks = MarkSet.from_points([[10, 10], [70, 50]])
    marks.add(box=(20, 20, 60, 40))
    out = draw_marks(image, marks)
    assert np.array_equal(image, before)
    assert out is not image and out.shape == image.shape and out.dtype == np.uint8
    assert changed_mask(before, out).any()


def test_draw_marks_rejects_bad_images():
    with pytest.raises(InvalidInputError, match="grayscale"):
        draw_marks(np.zeros((10, 10), np.uint8), MarkSet())


def rects_overlap(a, b):
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_label_placement_avoids_the_neighbouring_box():
    # Box 1 sits directly under box 2: its usual tab (above, left) would cover box 2.
    marks = MarkSet.from_boxes([[40, 100, 140, 180], [40, 40, 140, 98]])
    layouts = {layout.mark.id: layout for layout in plan_marks(marks, 256, 256)}
    label1, label2 = layouts[1].label_rect, layouts[2].label_rect
    assert not rects_overlap(label1, marks[2].box)
    assert not rects_overlap(label2, marks[1].box)
    assert not rects_overlap(label1, label2)
    # A lone box keeps the preferred tab position: above the box, left-aligned.
    (alone,) = plan_marks(MarkSet.from_boxes([[40, 100, 140, 180]]), 256, 256)
    assert alone.label_rect[3] <= 100 and abs(alone.label_rect[0] - 40) <= 3


def test_label_placement_stays_inside_the_image_and_off_other_labels():
    # Boxes touching the top edge: labels cannot go above them.
    marks = MarkSet.from_boxes([[0, 0, 60, 50], [62, 0, 120, 50], [200, 200, 256, 256]])
    marks.add(point=(30, 70))
    layouts = plan_marks(marks, 256, 256)
    for layout in layouts:
        x0, y0, x1, y1 = layout.label_rect
        if layout.mark.box is not None:
            assert 0 <= x0 and 0 <= y0 and x1 <= 256 and y1 <= 256
    rects = [layout.label_rect for layout in layouts]
    for i in range(len(rects)):
        for j in range(i + 1, len(rects)):
            assert not rects_overlap(rects[i], rects[j]), (layouts[i].mark.id, layouts[j].mark.id)


@pytest.mark.parametrize("width, height", [(200, 150), (640, 480), (1280, 720)])
def test_label_text_is_at_least_three_percent_of_the_width(width, height):
    image = np.full((height, width, 3), 128, np.uint8)
    marks = MarkSet.from_boxes([[width * 0.3, height * 0.4, width * 0.6, height * 0.8]])
    marks.add(point=(width * 0.8, height * 0.2))
    out = draw_marks(image, marks)
    style = label_style(width, height)
    layouts = plan_marks(marks, width, height)
    for layout in layouts:
        text_rgb = np.array(text_color_for(layout.color))
        x0, y0, x1, y1 = layout.label_rect
        inset = style.ring + 1
        inner = out[y0 + inset : y1 - inset, x0 + inset : x1 - inset].astype(int)
        if layout.mark.point is not None:
            # Inside the disc only: the ring around it can share the text colour.
            yy, xx = np.mgrid[y0 + inset : y1 - inset, x0 + inset : x1 - inset]
            r = (x1 - x0 - 1) / 2
            disc = np.hypot(xx - (x0 + r), yy - (y0 + r)) < r - 1
        else:
            disc = np.ones(inner.shape[:2], bool)
        text_pixels = (np.abs(inner - text_rgb).max(axis=2) < 80) & disc
        rows = np.nonzero(text_pixels.any(axis=1))[0]
        assert rows.size, f"no text pixels in mark {layout.mark.id}'s label"
        assert rows.max() - rows.min() + 1 >= 0.03 * width
        assert (y1 - y0) >= 0.03 * width


@pytest.mark.parametrize("background", [0, 255])
def test_labels_contrast_on_black_and_white_backgrounds(background):
    image = np.full((256, 256, 3), background, np.uint8)
    marks = MarkSet.from_points([[20 + 28 * i, 40] for i in range(8)])  # ids 1..8: many palette colours
    for i in range(8):
        marks.add(box=(10 + 30 * i, 150, 35 + 30 * i, 200))
    out = draw_marks(image, marks)
    lum = luminance_map(out)
    for layout in plan_marks(marks, 256, 256):
        x0, y0, x1, y1 = layout.label_rect
        region = lum[y0:y1, x0:x1]
        assert region.min() < 50 and region.max() > 205, f"mark {layout.mark.id} on {background}"
        # And the label differs from the plain background it sits on.
        assert np.abs(region - background).max() > 150


def test_drawing_far_out_of_image_marks_does_not_fail():
    image = np.zeros((32, 32, 3), np.uint8)
    marks = MarkSet.from_points([[-1e12, 5.0]])
    marks.add(box=(1e9, 1e9, 2e9, 2e9))
    out = draw_marks(image, marks)
    assert out.shape == image.shape

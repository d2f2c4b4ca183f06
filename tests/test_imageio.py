"""Image validation, explicit conversion, loading and saving (magma_core.imageio)."""
import os

import numpy as np
import pytest

from magma_core.errors import InvalidInputError
from magma_core.imageio import load_image, save_image, to_rgb_uint8, validate_rgb


def rgb(h=4, w=5):
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


def test_validate_rgb_returns_the_same_array():
    image = rgb()
    assert validate_rgb(image) is image


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[1, 2, 3]], "expected a numpy array, got list"),
        (np.zeros((0, 5, 3), np.uint8), "empty image"),
        (np.zeros((4, 5), np.uint8), "grayscale image"),
        (np.zeros((4, 5, 1), np.uint8), "grayscale image"),
        (np.zeros((4, 5, 4), np.uint8), "RGBA"),
        (np.zeros((4, 5, 2), np.uint8), "expected 3 colour channels, got 2"),
        (np.zeros((2, 4, 5, 3), np.uint8), "got 4 dimensions"),
        (np.zeros(7, np.uint8), "got 1 dimensions"),
        (np.zeros((4, 5, 3), np.float32), "dtype float32, expected uint8 (convert with to_rgb_uint8"),
        (np.zeros((4, 5, 3), np.int64), "dtype int64, expected uint8"),
        (np.zeros((4, 5, 3), object), "non-numeric dtype object"),
        (np.zeros((4, 5, 3), bool), "non-numeric dtype bool"),
    ],
)
def test_validate_rgb_rejects_with_a_clear_message(bad, message):
    with pytest.raises(InvalidInputError, match="camera frame") as info:
        validate_rgb(bad, name="camera frame")
    assert message in str(info.value)


def test_grayscale_message_says_convert_to_rgb():
    with pytest.raises(InvalidInputError, match="grayscale image .*convert to RGB"):
        validate_rgb(np.zeros((4, 5), np.uint8))


def test_to_rgb_uint8_expands_gray_and_drops_alpha():
    gray = np.array([[0, 100], [200, 255]], np.uint8)
    out = to_rgb_uint8(gray)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert (out[..., 0] == gray).all() and (out[..., 2] == gray).all()
    assert to_rgb_uint8(gray[:, :, None]).shape == (2, 2, 3)

    rgba = np.dstack([rgb(), np.full((4, 5), 7, np.uint8)])
    assert np.array_equal(to_rgb_uint8(rgba), rgb())


def test_to_rgb_uint8_scales_unit_floats():
    floats = np.array([[[0.0, 0.5, 1.0]]], np.float32)
    assert to_rgb_uint8(floats).tolist() == [[[0, 128, 255]]]


def test_to_rgb_uint8_returns_valid_input_unchanged_and_casts_small_ints():
    image = rgb()
    assert to_rgb_uint8(image) is image
    ints = np.array([[[0, 17, 255]]], np.int64)
    out = to_rgb_uint8(ints)
    assert out.dtype == np.uint8 and out.tolist() == [[[0, 17, 255]]]


@pytest.mark.parametrize(
    "bad, kwargs, message",
    [
        (np.array([[[0.1, np.nan, 0.2]]]), {}, "1 NaN or infinite values"),
        (np.array([[[0.1, np.inf, 0.2]]]), {}, "NaN or infinite"),
        (np.array([[[0.0, 12.0, 254.0]]]), {}, "looks like a 0..255 float image"),
        (np.array([[[-0.5, 0.0, 1.0]]]), {}, r"outside \[0, 1\]"),
        (np.array([[[0, 1000, 4000]]], np.uint16), {}, "outside 0..255"),
        (np.zeros((3, 3), np.uint8), {"allow_gray": False}, "allow_gray=False"),
        (np.zeros((3, 3, 3), np.float32), {"allow_float": False}, "allow_float=False"),
        (np.zeros((3, 3, 2), np.uint8), {}, "expected 3 colour channels"),
        (np.zeros((0, 3, 3), np.float32), {}, "empty image"),
        (np.zeros((3, 3, 3), "U1"), {}, "non-numeric dtype"),
    ],
)
def test_to_rgb_uint8_refuses_ambiguous_input(bad, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        to_rgb_uint8(bad, **kwargs)


def test_save_then_load_round_trips_exactly_and_keeps_rgb_order(tmp_path):
    image = np.zeros((6, 7, 3), np.uint8)
    image[..., 0] = 200  # pure red: a BGR/RGB mix-up would turn it blue
    image[2, 3] = (1, 2, 3)
    path = save_image(tmp_path / "a" / "b" / "red.png", image)
    assert path.exists()
    loaded = load_image(path)
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, image)


def test_load_image_handles_non_ascii_paths(tmp_path):
    image = rgb()
    path = save_image(tmp_path / "bild_äöü.png", image)
    assert np.array_equal(load_image(str(path)), image)


def test_load_image_converts_gray_and_rgba_files_to_rgb(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "gray.png"), np.full((3, 4), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.full((3, 4, 4), 60, np.uint8))
    assert load_image(tmp_path / "gray.png").shape == (3, 4, 3)
    assert load_image(tmp_path / "rgba.png").shape == (3, 4, 3)


def test_load_image_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(InvalidInputError, match="image file not found: .*nope.png"):
        load_image(missing)

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really a png")
    with pytest.raises(InvalidInputError, match="cannot decode image file .*corrupt.png"):
        load_image(corrupt)

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="cannot decode image file .*empty.jpg"):
        load_image(empty)

    with pytest.raises(InvalidInputError, match="is a directory"):
        load_image(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_load_image_unreadable_file(tmp_path):
    path = save_image(tmp_path / "locked.png", rgb())
    path.chmod(0)
    try:
        with pytest.raises(InvalidInputError, match="cannot read image file .*locked.png"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_save_image_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="unsupported suffix .gif"):
        save_image(tmp_path / "x.gif", rgb())
    with pytest.raises(InvalidInputError, match="unsupported suffix \\(none\\)"):
        save_image(tmp_path / "noext", rgb())
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(InvalidInputError, match="cannot write image file .*a_file"):
        save_image(blocker / "x.png", rgb())
    with pytest.raises(InvalidInputError, match="image to save: grayscale"):
        save_image(tmp_path / "g.png", np.zeros((3, 3), np.uint8))

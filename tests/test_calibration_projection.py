"""magma_calibration.projection: pixel/depth <-> base frame, distortion, depth lookup, ray-plane."""
import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magma_calibration.projection import (base_to_pixel, distort_pixels, pixel_ray_to_plane, pixel_to_base,
                                          robust_depth, undistort_pixels)
from magma_calibration.transforms import make_transform, rotvec_to_matrix
from magma_core.errors import InvalidInputError

K = np.array([[600.0, 0.0, 320.0], [0.0, 590.0, 240.0], [0.0, 0.0, 1.0]])
DIST = np.array([-0.28, 0.09, 0.001, -0.0015, -0.01])  # a typical wide-ish lens, plumb_bob


def camera_looking_down(height=1.0, x=0.5, y=0.0):
    """A camera `height` m above (x, y, 0), optical axis straight down, image x along base x."""
    return make_transform(np.diag([1.0, -1.0, -1.0]), [x, y, height])


finite = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    f=st.floats(200, 1500, **finite), aspect=st.floats(0.8, 1.25, **finite),
    c=st.tuples(st.floats(100, 500, **finite), st.floats(100, 400, **finite)),
    rotvec=st.tuples(*[st.floats(-3, 3, **finite)] * 3), t=st.tuples(*[st.floats(-2, 2, **finite)] * 3),
    uv=st.lists(st.tuples(st.floats(0, 639, **finite), st.floats(0, 479, **finite)), min_size=1, max_size=20),
    depth=st.floats(0.05, 5.0, **finite),
)
def test_pixel_to_base_and_back_is_identity(f, aspect, c, rotvec, t, uv, depth):
    K_ = np.array([[f, 0.0, c[0]], [0.0, f * aspect, c[1]], [0.0, 0.0, 1.0]])
    T = make_transform(rotvec_to_matrix(rotvec), t)
    uv = np.array(uv)
    depths = np.full(len(uv), depth)
    points = pixel_to_base(uv, depths, K_, T)
    uv_back, depth_back = base_to_pixel(points, K_, T)
    np.testing.assert_allclose(uv_back, uv, atol=1e-6)
    np.testing.assert_allclose(depth_back, depths, rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(uv=st.lists(st.tuples(st.floats(0, 639, **finite), st.floats(0, 479, **finite)), min_size=1, max_size=20),
       depth=st.floats(0.1, 3.0, **finite))
def test_round_trip_with_distortion(uv, depth):
    T = make_transform(rotvec_to_matrix([0.3, -0.2, 0.1]), [0.2, 0.1, 0.8])
    uv = np.array(uv)
    points = pixel_to_base(uv, np.full(len(uv), depth), K, T, DIST)
    uv_back, depth_back = base_to_pixel(points, K, T, DIST)
    np.testing.assert_allclose(uv_back, uv, atol=1e-6)
    np.testing.assert_allclose(depth_back, depth, rtol=1e-9)


def test_known_geometry_of_a_camera_looking_down():
    T = camera_looking_down(height=1.0, x=0.5, y=0.0)
    # The principal point sees straight down; 60 px right of it is 0.1 m along +x at 1 m depth.
    pts = pixel_to_base([[320.0, 240.0], [380.0, 240.0], [320.0, 299.0]], [1.0, 1.0, 1.0], K, T)
    np.testing.assert_allclose(pts, [[0.5, 0.0, 0.0], [0.6, 0.0, 0.0], [0.5, -0.1, 0.0]], atol=1e-12)


def test_distortion_matches_opencv():
    rng = np.random.default_rng(0)
    uv = rng.uniform([0, 0], [640, 480], size=(200, 2))
    ours = undistort_pixels(uv, K, DIST)
    theirs = cv2.undistortPoints(uv.reshape(-1, 1, 2), K, DIST, P=K,
                                 criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14)).reshape(-1, 2)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    cam_pts = np.concatenate([rng.uniform(-0.4, 0.4, (50, 2)), np.ones((50, 1))], axis=1) * rng.uniform(0.5, 2, (50, 1))
    uv_ours, _ = base_to_pixel(cam_pts, K, np.eye(4), DIST)
    uv_cv, _ = cv2.projectPoints(cam_pts, np.zeros(3), np.zeros(3), K, DIST)
    np.testing.assert_allclose(uv_ours, uv_cv.reshape(-1, 2), atol=1e-9)
    np.testing.assert_allclose(distort_pixels(ours, K, DIST), uv, atol=1e-6)


def test_points_behind_camera_get_nan_pixels_and_keep_depth():
    uv, depth = base_to_pixel([[0.0, 0.0, 2.0], [0.0, 0.0, -1.0]], K, np.eye(4))
    assert np.all(np.isfinite(uv[0])) and np.all(np.isnan(uv[1]))
    np.testing.assert_allclose(depth, [2.0, -1.0])


def test_invalid_depth_and_calibration_are_refused_by_name():
    with pytest.raises(InvalidInputError, match="depth must be finite and positive.*index 1"):
        pixel_to_base([[1.0, 2.0], [3.0, 4.0]], [1.0, np.nan], K, np.eye(4))
    with pytest.raises(InvalidInputError, match="3x3"):
        pixel_to_base([1.0, 2.0], 1.0, np.eye(4), np.eye(4))
    with pytest.raises(InvalidInputError, match="rigid"):
        pixel_to_base([1.0, 2.0], 1.0, K, np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(InvalidInputError, match="NaN"):
        base_to_pixel([[0.0, np.nan, 1.0]], K, np.eye(4))
    with pytest.raises(InvalidInputError, match="coefficients"):
        pixel_to_base([1.0, 2.0], 1.0, K, np.eye(4), dist=[0.1, 0.2, 0.3])


def test_single_pixel_shapes():
    p = pixel_to_base([320.0, 240.0], 2.0, K, np.eye(4))
    assert p.shape == (3,)
    uv, d = base_to_pixel(p, K, np.eye(4))
    assert uv.shape == (2,) and d.shape == ()


# ----------------------------------------------------------------------------- robust_depth


def test_robust_depth_ignores_nan_zero_and_negative():
    img = np.full((20, 20), 0.8, dtype=np.float32)
    img[8:13, 8:13] = np.nan
    img[10, 10] = 0.0
    img[9, 9] = -1.0
    img[12, 12], img[8, 8], img[8, 12] = 0.81, 0.79, 0.80  # the only valid pixels: one surface
    reading = robust_depth(img, 10, 10, window=5)
    assert reading.ok and reading.value == pytest.approx(0.8, abs=1e-6)
    assert reading.n_valid == 3 and reading.n_window == 25


def test_robust_depth_rejects_outliers_and_picks_the_majority_surface():
    img = np.full((9, 9), 1.0)
    img[4, 4] = 0.2  # speckle at the centre pixel itself
    img[3, 5] = 7.0
    assert robust_depth(img, 4, 4).value == pytest.approx(1.0)
    edge = np.full((9, 9), 1.50)
    edge[:, :5] = 0.60  # an object edge: 15 of the 25 window pixels on the object
    assert robust_depth(edge, 4, 4).value == pytest.approx(0.60)
    assert robust_depth(edge, 5, 4).value == pytest.approx(1.50)


def test_robust_depth_tie_goes_to_the_centre_surface_then_the_nearer_one():
    nan = np.nan
    tie = np.array([[0.5, 2.0, nan],
                    [0.5, 2.0, nan],
                    [0.5, 2.0, nan]])  # three pixels on each surface, the centre on the far one
    assert robust_depth(tie, 1, 1, window=3).value == pytest.approx(2.0)
    tie[1, 1], tie[2, 2] = nan, 2.0  # still three each, centre unknown: the nearer surface wins
    assert robust_depth(tie, 1, 1, window=3).value == pytest.approx(0.5)


def test_robust_depth_reports_why_nothing_is_valid():
    img = np.zeros((10, 10))
    img[:2] = np.nan
    reading = robust_depth(img, 3, 1, window=5)
    assert not reading.ok and np.isnan(reading.value) and np.isnan(float(reading))
    assert "no valid depth" in reading.reason and "NaN" in reading.reason and "zero" in reading.reason
    sparse = np.full((10, 10), np.nan)
    sparse[5, 5] = 1.0
    short = robust_depth(sparse, 5, 5, window=5, min_valid=3)
    assert not short.ok and "only 1" in short.reason


def test_robust_depth_window_clipped_at_the_border_and_bad_arguments():
    img = np.arange(1, 26, dtype=np.float64).reshape(5, 5) * 0.001 + 1.0
    reading = robust_depth(img, 0, 0, window=5)
    assert reading.n_window == 9 and reading.ok
    with pytest.raises(InvalidInputError, match="outside"):
        robust_depth(img, 5, 0)
    with pytest.raises(InvalidInputError, match="odd"):
        robust_depth(img, 2, 2, window=4)
    with pytest.raises(InvalidInputError, match="HxW"):
        robust_depth(np.zeros((4, 4, 3)), 1, 1)


# ----------------------------------------------------------------------------- ray / plane


def test_ray_meets_the_table_where_depth_lifting_says():
    T = make_transform(rotvec_to_matrix([2.4, 0.3, -0.2]), [1.0, 0.2, 0.7])
    rng = np.random.default_rng(1)
    uv = rng.uniform([100, 100], [540, 380], size=(30, 2))
    on_plane = pixel_ray_to_plane(uv, K, T, plane_normal=(0, 0, 1), plane_offset=0.05)
    np.testing.assert_allclose(on_plane[:, 2], 0.05, atol=1e-12)
    back, depth = base_to_pixel(on_plane, K, T)
    np.testing.assert_allclose(back, uv, atol=1e-8)
    np.testing.assert_allclose(pixel_to_base(uv, depth, K, T), on_plane, atol=1e-12)


def test_ray_plane_with_non_unit_normal_and_distortion():
    T = camera_looking_down(height=0.9)
    a = pixel_ray_to_plane([[320.0, 240.0]], K, T, plane_normal=(0, 0, 2), plane_offset=0.2)
    np.testing.assert_allclose(a, [[0.5, 0.0, 0.1]], atol=1e-12)
    uv = np.array([[50.0, 60.0]])
    p = pixel_ray_to_plane(uv, K, T, dist=DIST)
    back, _ = base_to_pixel(p, K, T, DIST)
    np.testing.assert_allclose(back, uv, atol=1e-6)


def test_ray_parallel_to_or_behind_the_plane_is_refused():
    horizontal = make_transform(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), [0.0, 0.0, 0.5])
    with pytest.raises(InvalidInputError, match="parallel.*index 0"):
        pixel_ray_to_plane([[320.0, 240.0]], K, horizontal)
    looking_up = make_transform(np.diag([1.0, -1.0, -1.0]) @ np.diag([1.0, -1.0, -1.0]), [0.0, 0.0, 0.5])
    with pytest.raises(InvalidInputError, match="behind the camera"):
        pixel_ray_to_plane([[320.0, 240.0], [10.0, 10.0]], K, looking_up)
    with pytest.raises(InvalidInputError, match="plane_normal"):
        pixel_ray_to_plane([[320.0, 240.0]], K, camera_looking_down(), plane_normal=(0, 0, 0))

"""Message <-> numpy converters: round trips and clear errors on malformed messages (no DDS)."""
from __future__ import annotations

import numpy as np
import pytest

from ros_helpers import ROS_AVAILABLE

pytestmark = pytest.mark.skipif(not ROS_AVAILABLE, reason="rclpy is not installed")

if ROS_AVAILABLE:
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image, JointState, PointCloud2, PointField
    from std_msgs.msg import Float32MultiArray, MultiArrayDimension

    from magma_core.errors import InvalidInputError
    from magma_core.som.marks import Mark, MarkSet
    from magma_core.tom.types import Trace
    from magma_ros import converters as cv
    from magma_ros.converters import MessageConversionError

RNG = np.random.default_rng(7)


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("encoding,dtype,shape", [
    ("rgb8", np.uint8, (5, 7, 3)), ("bgr8", np.uint8, (5, 7, 3)), ("mono8", np.uint8, (5, 7)),
    ("32FC1", np.float32, (5, 7)), ("16UC1", np.uint16, (5, 7)),
])
def test_image_round_trip_is_exact(encoding, dtype, shape):
    if np.dtype(dtype).kind == "f":
        array = RNG.normal(size=shape).astype(dtype)
    else:
        array = RNG.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    msg = cv.numpy_to_image(array, encoding, stamp=1_500_000_123, frame_id="cam")
    assert (msg.height, msg.width, msg.encoding) == (5, 7, encoding)
    assert msg.step == 7 * (3 if len(shape) == 3 else 1) * np.dtype(dtype).itemsize
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (1, 500_000_123, "cam")
    back = cv.image_to_numpy(msg)
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_bgr8_and_mono8_become_rgb():
    rgb = RNG.integers(0, 255, size=(4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(cv.image_to_rgb(cv.numpy_to_image(rgb[:, :, ::-1].copy(), "bgr8")), rgb)
    gray = RNG.integers(0, 255, size=(4, 6), dtype=np.uint8)
    out = cv.image_to_rgb(cv.numpy_to_image(gray, "mono8"))
    assert out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out[:, :, 1], gray)


def test_padded_rows_are_read_without_the_padding():
    rgb = RNG.integers(0, 255, size=(3, 4, 3), dtype=np.uint8)
    padded = np.zeros((3, 16), np.uint8)  # 12 bytes of pixels + 4 bytes of padding per row
    padded[:, :12] = rgb.reshape(3, 12)
    msg = Image(height=3, width=4, encoding="rgb8", step=16, data=padded.tobytes())
    np.testing.assert_array_equal(cv.image_to_rgb(msg), rgb)


def test_big_endian_depth_is_decoded_correctly():
    depth = np.array([[0.5, 1.25], [2.0, 3.5]], dtype=np.float32)
    msg = Image(height=2, width=2, encoding="32FC1", is_bigendian=1, step=8, data=depth.astype(">f4").tobytes())
    np.testing.assert_array_equal(cv.image_to_depth(msg), depth)
    mm = np.array([[500, 1000]], dtype=np.uint16)
    msg16 = Image(height=1, width=2, encoding="16UC1", is_bigendian=1, step=4, data=mm.astype(">u2").tobytes())
    np.testing.assert_allclose(cv.image_to_depth(msg16), [[0.5, 1.0]])


def test_depth_units_and_unknown_values():
    mm = np.array([[0, 1500], [65535, 250]], dtype=np.uint16)
    np.testing.assert_allclose(cv.image_to_depth(cv.numpy_to_image(mm, "16UC1")), [[np.nan, 1.5], [65.535, 0.25]])
    metres = np.array([[np.inf, -1.0, 0.0, 0.7]], dtype=np.float32)
    out = cv.image_to_depth(cv.depth_to_image(metres))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(out), [[True, True, True, False]])
    assert out[0, 3] == np.float32(0.7)


@pytest.mark.parametrize("mutate,message", [
    (lambda m: setattr(m, "encoding", "yuv422"), "not supported"),
    (lambda m: setattr(m, "data", m.data[:-1]), "truncated"),
    (lambda m: setattr(m, "data", bytes(m.data) + b"\0"), "do not match"),
    (lambda m: setattr(m, "step", 5), "smaller than a row"),
    (lambda m: setattr(m, "width", 0), "no pixels"),
])
def test_malformed_images_raise_naming_the_problem(mutate, message):
    msg = cv.numpy_to_image(np.zeros((4, 6, 3), np.uint8), "rgb8")
    mutate(msg)
    with pytest.raises(MessageConversionError, match=message):
        cv.image_to_numpy(msg)


def test_wrong_kind_of_image_is_refused():
    depth_msg = cv.depth_to_image(np.ones((2, 2), np.float32))
    with pytest.raises(MessageConversionError, match="expected a colour image.*32FC1"):
        cv.image_to_rgb(depth_msg)
    with pytest.raises(MessageConversionError, match="expected a depth image.*rgb8"):
        cv.image_to_depth(cv.rgb_to_image(np.zeros((2, 2, 3), np.uint8)))
    assert issubclass(MessageConversionError, InvalidInputError)


@pytest.mark.parametrize("array,encoding,message", [
    (np.zeros((2, 2, 3), np.float32), "rgb8", "dtype uint8"),
    (np.zeros((2, 2), np.uint8), "rgb8", "HxWx3"),
    (np.zeros((2, 2), np.float64), "32FC1", "dtype float32"),
    (np.zeros((0, 2, 3), np.uint8), "rgb8", "no pixels"),
])
def test_writer_refuses_arrays_that_do_not_match_the_encoding(array, encoding, message):
    with pytest.raises(MessageConversionError, match=message):
        cv.numpy_to_image(array, encoding)


# --------------------------------------------------------------------------- camera info


def test_camera_info_round_trip_and_projection_matrix():
    K = np.array([[500.0, 0, 319.5], [0, 505.0, 239.5], [0, 0, 1]])
    D = np.array([0.1, -0.05, 0.001, 0.002, 0.01])
    msg = cv.numpy_to_camera_info(K, D, (640, 480), stamp=5, frame_id="camera_optical")
    assert msg.distortion_model == "plumb_bob"
    np.testing.assert_array_equal(np.reshape(msg.p, (3, 4))[:, :3], K)
    K2, D2, size = cv.camera_info_to_numpy(msg)
    np.testing.assert_array_equal(K2, K)
    np.testing.assert_array_equal(D2, D)
    assert size == (640, 480)
    assert cv.numpy_to_camera_info(K, np.zeros(8), (640, 480)).distortion_model == "rational_polynomial"


def test_camera_info_binning_and_roi_map_k_to_the_published_image():
    K = np.array([[800.0, 0, 640.0], [0, 800.0, 480.0], [0, 0, 1]])
    msg = cv.numpy_to_camera_info(K, [], (1280, 960))
    msg.binning_x = msg.binning_y = 2
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 60, 800, 600
    K2, _, size = cv.camera_info_to_numpy(msg)
    np.testing.assert_allclose(K2, [[400.0, 0, 270.0], [0, 400.0, 210.0], [0, 0, 1]])
    assert size == (400, 300)


@pytest.mark.parametrize("mutate,message", [
    (lambda m: setattr(m, "k", [0.0] * 9), "uncalibrated"),
    (lambda m: setattr(m, "k", [500.0, 0, 10, 0, float("nan"), 10, 0, 0, 1]), "NaN"),
    (lambda m: setattr(m, "distortion_model", "equidistant"), "not supported"),
    (lambda m: setattr(m, "d", [0.1, 0.2, 0.0]), "needs 5"),
    (lambda m: setattr(m, "width", 0), "positive"),
])
def test_bad_camera_info_raises(mutate, message):
    msg = cv.numpy_to_camera_info(np.array([[500.0, 0, 10], [0, 500.0, 10], [0, 0, 1]]), np.zeros(5), (20, 20))
    mutate(msg)
    with pytest.raises(MessageConversionError, match=message):
        cv.camera_info_to_numpy(msg)


# --------------------------------------------------------------------------- poses, paths, joints


def test_pose_round_trip_normalises_the_quaternion():
    msg = cv.numpy_to_pose([0.1, -0.2, 0.3, 0.0, 0.0, 0.0, 2.0], stamp=7, frame_id="base")
    assert msg.header.frame_id == "base" and msg.pose.orientation.w == 1.0
    np.testing.assert_allclose(cv.pose_to_numpy(msg), [0.1, -0.2, 0.3, 0, 0, 0, 1])


@pytest.mark.parametrize("values,message", [
    ([0, 0, float("nan"), 0, 0, 0, 1], "NaN"),
    ([0, 0, 0, 0, 0, 0, 0], "zero quaternion"),
])
def test_bad_poses_raise(values, message):
    msg = PoseStamped()
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in values[:3])
    q = msg.pose.orientation
    q.x, q.y, q.z, q.w = (float(v) for v in values[3:])
    with pytest.raises(MessageConversionError, match=message):
        cv.pose_to_numpy(msg)


def test_path_round_trip():
    poses = np.column_stack([RNG.normal(size=(4, 3)), np.tile([0.0, 1.0, 0.0, 0.0], (4, 1))])
    msg = cv.poses_to_path(poses, stamp=3, frame_id="base")
    assert len(msg.poses) == 4 and all(p.header.frame_id == "base" for p in msg.poses)
    np.testing.assert_allclose(cv.path_to_numpy(msg), poses)
    assert cv.path_to_numpy(cv.poses_to_path(np.zeros((0, 7)))).shape == (0, 7)


def test_joint_positions_in_requested_order():
    msg = JointState(name=["a", "b", "c"], position=[1.0, 2.0, 3.0])
    np.testing.assert_array_equal(cv.joint_positions(msg, ["c", "a"]), [3.0, 1.0])
    with pytest.raises(MessageConversionError, match=r"lacks joints \['z'\]"):
        cv.joint_positions(msg, ["z"])


# --------------------------------------------------------------------------- trace and marks clouds


def _trace(mark_id: int, n: int, depth: bool = True, gripper: bool = True) -> "Trace":
    points = RNG.uniform(0, 100, size=(n, 2))
    return Trace(mark_id=mark_id, points=points, visible=np.ones(n, bool), depth=RNG.uniform(0.3, 1.5, n) if depth else None,
                 gripper=np.linspace(0, 1, n) if gripper else None)


def test_trace_cloud_layout_matches_the_interface_doc():
    msg = cv.traces_to_cloud([_trace(1, 3)], stamp=9, frame_id="camera_optical")
    assert [f.name for f in msg.fields] == ["mark_id", "step", "u", "v", "depth", "gripper"]
    assert all(f.datatype == PointField.FLOAT32 and f.count == 1 for f in msg.fields)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 3, 24, 72)
    assert msg.header.frame_id == "camera_optical"


def test_trace_cloud_round_trip_keeps_order_depth_and_gripper():
    traces = [_trace(3, 5), _trace(1, 4, depth=False), _trace(2, 1, gripper=False)]
    back = cv.cloud_to_traces(cv.traces_to_cloud(traces))
    assert [t.mark_id for t in back] == [3, 1, 2]
    for original, got in zip(traces, back):
        np.testing.assert_allclose(got.points, original.points, rtol=1e-6)
        assert got.visible.all()
        for name in ("depth", "gripper"):
            a, b = getattr(original, name), getattr(got, name)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(b, a, rtol=1e-6)


def test_trace_cloud_points_may_come_in_any_order_and_field_layout():
    # Another producer: float64 fields in a different order, big-endian, points shuffled.
    names = ["u", "v", "depth", "gripper", "mark_id", "step"]
    rows = np.array([[12.0, 20.0, 0.5, 0.0, 4, 1], [10.0, 20.0, 0.5, 0.0, 4, 0], [14.0, 21.0, 0.6, 1.0, 4, 2]])
    msg = PointCloud2(height=1, width=3, is_bigendian=True, point_step=48, row_step=144, data=rows.astype(">f8").tobytes(),
                      fields=[PointField(name=n, offset=8 * i, datatype=PointField.FLOAT64, count=1) for i, n in enumerate(names)])
    (trace,) = cv.cloud_to_traces(msg)
    np.testing.assert_array_equal(trace.points, [[10, 20], [12, 20], [14, 21]])
    np.testing.assert_array_equal(trace.gripper, [0, 0, 1])


def test_nan_pixels_mark_steps_invisible():
    trace = Trace(mark_id=1, points=[[1.0, 2.0], [np.nan, np.nan]], visible=[True, True])
    (back,) = cv.cloud_to_traces(cv.traces_to_cloud([trace]))
    np.testing.assert_array_equal(back.visible, [True, False])


def _raw_trace_cloud(rows: list[list[float]]) -> "PointCloud2":
    msg = cv.traces_to_cloud([_trace(1, 1)])
    msg.width = len(rows)
    msg.row_step = msg.point_step * len(rows)
    msg.data = np.array(rows, dtype="<f4").tobytes()
    return msg


@pytest.mark.parametrize("rows,message", [
    ([[1, 0, 1, 1, 1, 0], [1, 2, 1, 1, 1, 0]], r"steps \[0, 2\]"),
    ([[1, 0, 1, 1, 1, 0], [1, 0, 1, 1, 1, 0]], r"steps \[0, 0\]"),
    ([[1.5, 0, 1, 1, 1, 0]], "mark_id must be integers"),
    ([[np.nan, 0, 1, 1, 1, 0]], "mark_id must be integers"),
    ([[1, -1, 1, 1, 1, 0]], "step must be integers >= 0"),
])
def test_unparsable_trace_clouds_raise(rows, message):
    with pytest.raises(MessageConversionError, match=message):
        cv.cloud_to_traces(_raw_trace_cloud(rows))


def test_trace_cloud_missing_field_or_truncated_data_raise():
    msg = cv.traces_to_cloud([_trace(1, 2)])
    msg.fields = [f for f in msg.fields if f.name != "gripper"]
    with pytest.raises(MessageConversionError, match=r"lacks fields \['gripper'\]"):
        cv.cloud_to_traces(msg)
    msg = cv.traces_to_cloud([_trace(1, 2)])
    msg.data = msg.data[:-4]
    with pytest.raises(MessageConversionError, match="truncated"):
        cv.cloud_to_traces(msg)


def test_empty_trace_cloud_is_no_traces():
    assert cv.cloud_to_traces(cv.traces_to_cloud([])) == []


def test_marks_round_trip_points_boxes_and_kinds():
    marks = MarkSet([Mark(id=1, point=(10.5, 20.25), kind="gripper"), Mark(id=2, box=(4.0, 6.0, 24.0, 16.0), kind="object"),
                     Mark(id=5, point=(1.0, 2.0), kind="ui")])
    msg = cv.marks_to_cloud(marks, stamp=11, frame_id="cam")
    assert [f.name for f in msg.fields] == ["mark_id", "u", "v", "kind", "box_w", "box_h"]
    back = cv.cloud_to_marks(msg)
    assert back.ids == [1, 2, 5]
    assert [m.kind for m in back] == ["gripper", "object", "ui"]
    assert back[1].point == (10.5, 20.25) and back[2].box == (4.0, 6.0, 24.0, 16.0)


def test_marks_cloud_with_unknown_kind_raises():
    msg = cv.marks_to_cloud(MarkSet([Mark(id=1, point=(1.0, 1.0))]))
    msg.data = np.array([[1, 1, 1, 9, np.nan, np.nan]], dtype="<f4").tobytes()
    with pytest.raises(MessageConversionError, match="unknown kind codes"):
        cv.cloud_to_marks(msg)


# --------------------------------------------------------------------------- actions and diagnostics


def test_actions_round_trip_with_layout():
    actions = RNG.normal(size=(3, 7)).astype(np.float32)
    msg = cv.actions_to_msg(actions)
    assert [(d.label, d.size, d.stride) for d in msg.layout.dim] == [("step", 3, 21), ("value", 7, 7)]
    np.testing.assert_array_equal(cv.msg_to_actions(msg), actions)


def test_seven_values_without_layout_are_one_step():
    msg = Float32MultiArray(data=[0.01, 0, 0, 0, 0, 0, 1.0])
    np.testing.assert_allclose(cv.msg_to_actions(msg), [[0.01, 0, 0, 0, 0, 0, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("build,message", [
    (lambda: Float32MultiArray(data=[0.0] * 6), "exactly 7"),
    (lambda: Float32MultiArray(data=[0.0] * 14, layout=_layout(2, 6)), "layout must be"),
    (lambda: Float32MultiArray(data=[0.0] * 7, layout=_layout(2, 7)), "data has 7 values"),
    (lambda: Float32MultiArray(data=[float("nan")] + [0.0] * 6), "NaN"),
])
def test_bad_actions_raise(build, message):
    with pytest.raises(MessageConversionError, match=message):
        cv.msg_to_actions(build())


def _layout(n: int, width: int):
    msg = Float32MultiArray()
    msg.layout.dim = [MultiArrayDimension(label="step", size=n, stride=n * width),
                      MultiArrayDimension(label="value", size=width, stride=width)]
    return msg.layout


def test_latency_round_trip_keeps_the_exact_frame_stamp():
    report = cv.LatencyReport(frame_stamp_ns=1_700_000_000_000_000_007, infer_ms=12.5, frame_to_publish_ms=20.25, mode="trace")
    msg = cv.latency_to_msg(report, stamp=42)
    values = cv.status_values(msg.status[0])
    assert values["frame_stamp"] == "1700000000.000000007" and values["mode"] == "trace"
    assert cv.msg_to_latency(msg) == report


def test_latency_without_the_policy_status_raises():
    with pytest.raises(MessageConversionError, match="no status named"):
        cv.msg_to_latency(DiagnosticArray())
    msg = cv.latency_to_msg(cv.LatencyReport(1, 1.0, 1.0, "trace"))
    msg.status[0].values = msg.status[0].values[1:]
    with pytest.raises(MessageConversionError, match="lacks key 'frame_stamp'"):
        cv.msg_to_latency(msg)


def test_status_levels_and_values():
    status = cv.make_status("magma/controller", "WARN", "stale", {"age_s": 1.234567891, "estop": False, "sources": {"plane": 2}})
    assert cv.status_level(status) == "WARN"
    assert cv.status_values(status) == {"age_s": "1.23457", "estop": "False", "sources": '{"plane": 2}'}
    with pytest.raises(MessageConversionError):
        cv.make_status("x", "FINE", "")


def test_stamp_text_is_exact_both_ways():
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_712_345_678_901_234_567):
        assert cv.parse_stamp(cv.format_stamp(ns)) == ns
        assert cv.stamp_to_ns(cv.ns_to_stamp(ns)) == ns
    with pytest.raises(MessageConversionError):
        cv.parse_stamp("12.x")


# --------------------------------------------------------------------------- camera node helpers and frame sources


def test_scaled_intrinsics_map_the_same_rays():
    from magma_ros.nodes.camera import scale_intrinsics

    K = np.array([[600.0, 0, 319.5], [0, 600.0, 239.5], [0, 0, 1]])
    half = scale_intrinsics(K, (640, 480), (320, 240))
    ray = np.array([0.1, -0.05, 1.0])
    full_px, half_px = (K @ ray)[:2], (half @ ray)[:2]
    np.testing.assert_allclose(half_px, (full_px + 0.5) / 2 - 0.5)  # pixel centres at integers in both images
    with pytest.raises(InvalidInputError, match="aspect ratio"):
        scale_intrinsics(K, (640, 480), (320, 320))


def test_nominal_intrinsics_have_the_requested_field_of_view():
    from magma_ros.nodes.camera import nominal_intrinsics

    K = nominal_intrinsics(64, 48, 90.0)
    np.testing.assert_allclose(K, [[32.0, 0, 31.5], [0, 32.0, 23.5], [0, 0, 1]])


def test_folder_source_reads_frames_depth_and_loops(tmp_path):
    import cv2

    from magma_ros.frame_sources import FolderSource, open_source

    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red, to catch a BGR/RGB swap
    cv2.imwrite(str(tmp_path / "a.png"), rgb[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "b.png"), rgb[:, :, ::-1])
    (tmp_path / "depth").mkdir()
    cv2.imwrite(str(tmp_path / "depth" / "a.png"), np.array([[0, 1500, 0, 0, 0, 0]] * 4, np.uint16))
    source = open_source(str(tmp_path), loop=True)
    assert isinstance(source, FolderSource) and source.has_depth
    first = source.read()
    np.testing.assert_array_equal(first.rgb, rgb)
    assert np.isnan(first.depth[0, 0]) and first.depth[0, 1] == pytest.approx(1.5)
    assert source.read().depth is None  # b has no depth file
    assert source.read().name == "a.png"  # looped
    once = FolderSource(tmp_path, loop=False)
    assert [once.read().name, once.read().name, once.read()] == ["a.png", "b.png", None]


def test_frame_source_errors_name_the_problem(tmp_path):
    from magma_ros.frame_sources import FolderSource, open_source

    with pytest.raises(InvalidInputError, match="neither a device index"):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(InvalidInputError, match="no image files"):
        open_source(str(tmp_path))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match="cannot decode"):
        FolderSource(tmp_path).read()


def test_video_file_source_loops(tmp_path):
    import cv2

    from magma_ros.frame_sources import CaptureSource, open_source

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    for level in (40, 120, 200):
        writer.write(np.full((24, 32, 3), level, np.uint8))
    writer.release()
    source = open_source(str(path), loop=True)
    assert isinstance(source, CaptureSource) and not source.has_depth
    means = [float(source.read().rgb.mean()) for _ in range(4)]
    np.testing.assert_allclose(means, [40, 120, 200, 40], atol=3)  # lossy codec; the 4th frame is the first again
    source.close()
    once = open_source(str(path), loop=False)
    assert [once.read() is None for _ in range(4)] == [False, False, False, True]

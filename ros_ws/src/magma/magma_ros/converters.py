"""Message <-> numpy converters for the magma topics (layouts in docs/ros_interfaces.md).

Pure functions over message objects: no node, no DDS. Every reader validates what it is given and
raises MessageConversionError (an InvalidInputError) naming the field and the problem, so a node can
log it and hold still. Writers refuse arrays that do not match the layout instead of casting them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose, PoseStamped
from nav_msgs.msg import Path
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2, PointField
from std_msgs.msg import Float32MultiArray, Header, MultiArrayDimension

from magma_core.errors import InvalidInputError
from magma_core.som.marks import Mark, MarkSet
from magma_core.tom.types import Trace


class MessageConversionError(InvalidInputError):
    """A message that does not hold what its layout promises (encoding, sizes, NaN, missing fields)."""


# --------------------------------------------------------------------------- time and headers

NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    if ns < 0:
        raise MessageConversionError(f"stamp must be non-negative, got {ns} ns")
    return Time(sec=int(ns // NS_PER_S), nanosec=int(ns % NS_PER_S))


def make_header(stamp: Time | int | None = None, frame_id: str = "") -> Header:
    """A header from a Time message or integer nanoseconds (None: zero stamp)."""
    if stamp is None:
        stamp = Time()
    elif not isinstance(stamp, Time):
        stamp = ns_to_stamp(int(stamp))
    return Header(stamp=stamp, frame_id=str(frame_id))


# --------------------------------------------------------------------------- images

# encoding -> (dtype, channels). Multi-byte encodings honour is_bigendian.
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "16UC1": (np.dtype(np.uint16), 1),
}
COLOR_ENCODINGS = ("rgb8", "bgr8", "mono8")
DEPTH_ENCODINGS = ("32FC1", "16UC1")


def image_to_numpy(msg: Image) -> np.ndarray:
    """The pixels of an Image as a native-endian array: HxWx3 for rgb8/bgr8, HxW otherwise (a copy)."""
    encoding = msg.encoding
    if encoding not in IMAGE_ENCODINGS:
        raise MessageConversionError(f"image encoding {encoding!r} is not supported; supported: {', '.join(IMAGE_ENCODINGS)}")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise MessageConversionError(f"{encoding} image has no pixels ({width}x{height})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise MessageConversionError(f"{encoding} image {width}x{height}: step {step} is smaller than a row ({row_bytes} bytes)")
    size, expected = len(msg.data), step * height
    if size < expected:
        raise MessageConversionError(f"{encoding} image {width}x{height} is truncated: {size} bytes, step x height = {expected}")
    if size > expected:
        raise MessageConversionError(f"{encoding} image {width}x{height}: {size} bytes do not match step x height = {expected}")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
    order = ">" if msg.is_bigendian and dtype.itemsize > 1 else "<"
    pixels = np.ascontiguousarray(rows).view(dtype.newbyteorder(order)).astype(dtype, copy=False)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.array(pixels.reshape(shape), copy=True)


def numpy_to_image(array: np.ndarray, encoding: str, *, stamp: Time | int | None = None, frame_id: str = "") -> Image:
    """An Image holding `array` in `encoding`; the dtype and channel count must match exactly."""
    if encoding not in IMAGE_ENCODINGS:
        raise MessageConversionError(f"image encoding {encoding!r} is not supported; supported: {', '.join(IMAGE_ENCODINGS)}")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    array = np.asarray(array)
    if channels == 1 and array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    expected_ndim = 3 if channels > 1 else 2
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        want = f"HxWx{channels}" if channels > 1 else "HxW"
        raise MessageConversionError(f"{encoding} needs an {want} array, got shape {array.shape}")
    if array.dtype != dtype:
        raise MessageConversionError(f"{encoding} needs dtype {dtype}, got {array.dtype} (convert explicitly)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise MessageConversionError(f"{encoding} image has no pixels (shape {array.shape})")
    height, width = array.shape[:2]
    data = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
    return Image(header=make_header(stamp, frame_id), height=height, width=width, encoding=encoding, is_bigendian=0,
                 step=width * channels * dtype.itemsize, data=data.tobytes())


def image_to_rgb(msg: Image) -> np.ndarray:
    """HxWx3 uint8 RGB from an rgb8, bgr8 or mono8 Image."""
    if msg.encoding not in COLOR_ENCODINGS:
        raise MessageConversionError(f"expected a colour image ({', '.join(COLOR_ENCODINGS)}), got encoding {msg.encoding!r}")
    pixels = image_to_numpy(msg)
    if msg.encoding == "bgr8":
        return np.ascontiguousarray(pixels[:, :, ::-1])
    if msg.encoding == "mono8":
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def image_to_depth(msg: Image) -> np.ndarray:
    """HxW float32 metres along the camera z axis, NaN where unknown, from 32FC1 (metres) or 16UC1 (mm).

    Zero, negative and infinite values are unknown in both conventions and become NaN.
    """
    if msg.encoding not in DEPTH_ENCODINGS:
        raise MessageConversionError(f"expected a depth image ({', '.join(DEPTH_ENCODINGS)}), got encoding {msg.encoding!r}")
    pixels = image_to_numpy(msg)
    depth = pixels.astype(np.float32) / 1000.0 if msg.encoding == "16UC1" else pixels
    return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan)).astype(np.float32)


def rgb_to_image(rgb: np.ndarray, *, stamp: Time | int | None = None, frame_id: str = "") -> Image:
    return numpy_to_image(rgb, "rgb8", stamp=stamp, frame_id=frame_id)


def depth_to_image(depth: np.ndarray, *, stamp: Time | int | None = None, frame_id: str = "") -> Image:
    """32FC1 Image of depth in metres (NaN unknown)."""
    return numpy_to_image(depth, "32FC1", stamp=stamp, frame_id=frame_id)


# --------------------------------------------------------------------------- camera info

# distortion model -> coefficient count magma_calibration.projection applies.
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8}


def camera_info_to_numpy(msg: CameraInfo) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(K 3x3, D (n,), (width, height)) of the images this CameraInfo describes.

    Binning and a region of interest are applied to K, so K always maps to pixels of the published
    image. An all-zero K (ROS's "uncalibrated") and distortion models other than plumb_bob and
    rational_polynomial raise MessageConversionError.
    """
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise MessageConversionError(f"camera_info: image size must be positive, got {width}x{height}")
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.any(K):
        raise MessageConversionError("camera_info: K is all zero, i.e. the camera is uncalibrated")
    if not np.all(np.isfinite(K)):
        raise MessageConversionError("camera_info: K contains NaN or inf")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise MessageConversionError(f"camera_info: K is not a pinhole matrix (fx={K[0, 0]}, fy={K[1, 1]}, last row {K[2].tolist()})")
    D = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    model = msg.distortion_model
    if D.size and model not in DISTORTION_MODELS:
        raise MessageConversionError(f"camera_info: distortion model {model!r} is not supported; use {' or '.join(DISTORTION_MODELS)}")
    if D.size and D.size != DISTORTION_MODELS[model]:
        raise MessageConversionError(f"camera_info: {model} needs {DISTORTION_MODELS[model]} coefficients, D has {D.size}")
    if not np.all(np.isfinite(D)):
        raise MessageConversionError("camera_info: D contains NaN or inf")
    roi = msg.roi
    bin_x, bin_y = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    if roi.width or roi.height or bin_x > 1 or bin_y > 1:
        # K is for the full sensor; the published image is the ROI, then binned (REP 104).
        K = K.copy()
        K[0, 2] -= roi.x_offset
        K[1, 2] -= roi.y_offset
        K[0] /= bin_x
        K[1] /= bin_y
        if roi.width and roi.height:
            width, height = int(roi.width) // bin_x, int(roi.height) // bin_y
        else:
            width, height = width // bin_x, height // bin_y
    return K, D, (width, height)


def numpy_to_camera_info(K: np.ndarray, D: Sequence[float] | np.ndarray, size: tuple[int, int], *,
                         stamp: Time | int | None = None, frame_id: str = "", distortion_model: str | None = None) -> CameraInfo:
    """A monocular CameraInfo: R = identity, P = [K | 0]; the model follows len(D) unless given."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise MessageConversionError(f"K must be a finite 3x3 matrix, got shape {K.shape}")
    D = np.asarray(D, dtype=np.float64).reshape(-1)
    if distortion_model is None:
        distortion_model = "rational_polynomial" if D.size == 8 else "plumb_bob"
        if D.size == 0:
            D = np.zeros(5)
    if distortion_model not in DISTORTION_MODELS or D.size != DISTORTION_MODELS[distortion_model]:
        raise MessageConversionError(f"distortion: {distortion_model!r} with {D.size} coefficients; use plumb_bob (5) or rational_polynomial (8)")
    width, height = (int(s) for s in size)
    if width <= 0 or height <= 0:
        raise MessageConversionError(f"image size must be positive, got {width}x{height}")
    P = np.hstack([K, np.zeros((3, 1))])
    return CameraInfo(header=make_header(stamp, frame_id), width=width, height=height, distortion_model=distortion_model,
                      d=D.tolist(), k=K.reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(), p=P.reshape(-1).tolist())


# --------------------------------------------------------------------------- poses, paths, joints


def pose_to_numpy(msg: PoseStamped | Pose) -> np.ndarray:
    """(7,) xyz + unit quaternion xyzw; NaN or a zero quaternion raise."""
    pose = msg.pose if isinstance(msg, PoseStamped) else msg
    p, q = pose.position, pose.orientation
    out = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise MessageConversionError(f"pose contains NaN or inf: {out.tolist()}")
    norm = np.linalg.norm(out[3:])
    if norm < 1e-6:
        raise MessageConversionError("pose orientation is a zero quaternion")
    out[3:] /= norm
    return out


def _fill_pose(pose: Pose, values: np.ndarray) -> Pose:
    p, q = pose.position, pose.orientation
    p.x, p.y, p.z = (float(v) for v in values[:3])
    q.x, q.y, q.z, q.w = (float(v) for v in values[3:7])
    return pose


def _as_poses(poses: object, what: str) -> np.ndarray:
    arr = np.asarray(poses, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 7:
        raise MessageConversionError(f"{what}: expected (N, 7) xyz + quaternion xyzw, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise MessageConversionError(f"{what} contain NaN or inf")
    norms = np.linalg.norm(arr[:, 3:], axis=1)
    if np.any(norms < 1e-6):
        raise MessageConversionError(f"{what}: zero quaternion at rows {np.flatnonzero(norms < 1e-6).tolist()}")
    arr[:, 3:] /= norms[:, None]
    return arr


def numpy_to_pose(pose: Sequence[float] | np.ndarray, *, stamp: Time | int | None = None, frame_id: str = "") -> PoseStamped:
    """PoseStamped of a (7,) xyz + quaternion xyzw (normalised)."""
    values = _as_poses(np.reshape(np.asarray(pose, dtype=np.float64), (1, -1)), "pose")[0]
    msg = PoseStamped(header=make_header(stamp, frame_id))
    _fill_pose(msg.pose, values)
    return msg


def poses_to_path(poses: np.ndarray, *, stamp: Time | int | None = None, frame_id: str = "") -> Path:
    """nav_msgs/Path of (N, 7) poses, every pose stamped like the path."""
    arr = _as_poses(poses, "path poses") if np.size(poses) else np.zeros((0, 7))
    header = make_header(stamp, frame_id)
    msg = Path(header=header)
    for row in arr:
        item = PoseStamped(header=make_header(header.stamp, frame_id))
        _fill_pose(item.pose, row)
        msg.poses.append(item)
    return msg


def path_to_numpy(msg: Path) -> np.ndarray:
    """(N, 7) poses of a Path."""
    return np.array([pose_to_numpy(p) for p in msg.poses], dtype=np.float64).reshape(-1, 7)


def joint_positions(msg: JointState, names: Sequence[str] | None = None) -> np.ndarray:
    """Positions in the order of `names` (all joints in message order when None)."""
    if len(msg.position) != len(msg.name):
        raise MessageConversionError(f"joint_states: {len(msg.name)} names but {len(msg.position)} positions")
    values = dict(zip(msg.name, msg.position))
    wanted = list(msg.name) if names is None else list(names)
    missing = [n for n in wanted if n not in values]
    if missing:
        raise MessageConversionError(f"joint_states lacks joints {missing}; it has {list(msg.name)}")
    out = np.array([values[n] for n in wanted], dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise MessageConversionError("joint_states positions contain NaN or inf")
    return out


# --------------------------------------------------------------------------- point clouds (trace, marks)

TRACE_FIELDS = ("mark_id", "step", "u", "v", "depth", "gripper")
MARK_FIELDS = ("mark_id", "u", "v", "kind", "box_w", "box_h")
MARK_KIND_CODES = {"gripper": 0, "object": 1, "trace": 2, "region": 3, "ui": 4}
_KIND_BY_CODE = {code: kind for kind, code in MARK_KIND_CODES.items()}
_POINTFIELD_DTYPES = {
    PointField.INT8: np.int8, PointField.UINT8: np.uint8, PointField.INT16: np.int16, PointField.UINT16: np.uint16,
    PointField.INT32: np.int32, PointField.UINT32: np.uint32, PointField.FLOAT32: np.float32, PointField.FLOAT64: np.float64,
}


def _make_cloud(names: Sequence[str], columns: np.ndarray, stamp: Time | int | None, frame_id: str) -> PointCloud2:
    """A height-1 cloud of float32 fields, one column each, packed without padding."""
    columns = np.ascontiguousarray(columns, dtype="<f4").reshape(-1, len(names))
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate(names)]
    point_step = 4 * len(names)
    return PointCloud2(header=make_header(stamp, frame_id), height=1, width=columns.shape[0], fields=fields,
                       is_bigendian=False, point_step=point_step, row_step=point_step * columns.shape[0],
                       data=columns.tobytes(), is_dense=bool(np.all(np.isfinite(columns))))


def read_cloud_fields(msg: PointCloud2, names: Iterable[str], what: str) -> dict[str, np.ndarray]:
    """The named scalar fields of every point of a PointCloud2 as float64 arrays (any layout, any numeric type)."""
    names = list(names)
    by_name = {f.name: f for f in msg.fields}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise MessageConversionError(f"{what} cloud lacks fields {missing}; it has {list(by_name)}")
    point_step, width, height, row_step = int(msg.point_step), int(msg.width), int(msg.height), int(msg.row_step)
    order = ">" if msg.is_bigendian else "<"
    formats, offsets = [], []
    for name in names:
        field = by_name[name]
        if field.datatype not in _POINTFIELD_DTYPES:
            raise MessageConversionError(f"{what} cloud field {name!r} has unknown datatype {field.datatype}")
        if field.count != 1:
            raise MessageConversionError(f"{what} cloud field {name!r} must be a scalar (count 1), has count {field.count}")
        dtype = np.dtype(_POINTFIELD_DTYPES[field.datatype]).newbyteorder(order)
        if field.offset + dtype.itemsize > point_step:
            raise MessageConversionError(f"{what} cloud field {name!r} at offset {field.offset} runs past point_step {point_step}")
        formats.append(dtype)
        offsets.append(int(field.offset))
    n_points = width * height
    if n_points == 0:
        return {n: np.zeros(0) for n in names}
    if row_step < width * point_step:
        raise MessageConversionError(f"{what} cloud: row_step {row_step} is smaller than width x point_step = {width * point_step}")
    if len(msg.data) != row_step * height:
        raise MessageConversionError(f"{what} cloud: {len(msg.data)} bytes, row_step x height = {row_step * height} (truncated or padded)")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, row_step)[:, :width * point_step]
    records = np.ascontiguousarray(rows).view(np.dtype({"names": names, "formats": formats, "offsets": offsets,
                                                         "itemsize": point_step})).reshape(-1)
    return {n: records[n].astype(np.float64) for n in names}


def _integers(values: np.ndarray, name: str, what: str, minimum: int) -> np.ndarray:
    bad = ~np.isfinite(values) | (values != np.round(values)) | (values < minimum)
    if np.any(bad):
        raise MessageConversionError(f"{what} cloud: {name} must be integers >= {minimum}, got {values[bad][:5].tolist()}")
    return values.astype(np.int64)


def traces_to_cloud(traces: Sequence[Trace], *, stamp: Time | int | None = None, frame_id: str = "") -> PointCloud2:
    """The `magma/trace` cloud: one point per (mark, step) with mark_id, step, u, v, depth, gripper.

    Traces keep their order (the gripper's trace first). Depth and gripper are NaN where a trace has
    none. Visibility and the moving flag are not carried (a predicted trace is all visible).
    """
    rows = []
    for trace in traces:
        if not isinstance(trace, Trace):
            raise MessageConversionError(f"expected Trace objects, got {type(trace).__name__}")
        n = trace.length
        if n == 0:
            raise MessageConversionError(f"trace of mark {trace.mark_id} has no steps")
        nan = np.full(n, np.nan)
        rows.append(np.column_stack([np.full(n, trace.mark_id, dtype=np.float64), np.arange(n, dtype=np.float64),
                                     trace.points[:, 0], trace.points[:, 1],
                                     nan if trace.depth is None else trace.depth,
                                     nan if trace.gripper is None else trace.gripper]))
    columns = np.concatenate(rows) if rows else np.zeros((0, len(TRACE_FIELDS)))
    if np.any(np.abs(columns[:, 0]) >= 2 ** 24):
        raise MessageConversionError("mark ids must stay below 2**24 to be exact in float32")
    return _make_cloud(TRACE_FIELDS, columns, stamp, frame_id)


def cloud_to_traces(msg: PointCloud2) -> list[Trace]:
    """Traces of a `magma/trace` cloud, in the order their marks first appear.

    Each mark's steps must be 0..n-1 exactly once (any order). A step is visible when u and v are
    finite; depth/gripper become None when NaN for every step of that trace.
    """
    cols = read_cloud_fields(msg, TRACE_FIELDS, "trace")
    if cols["mark_id"].size == 0:
        return []
    mark_ids = _integers(cols["mark_id"], "mark_id", "trace", 0)
    steps = _integers(cols["step"], "step", "trace", 0)
    _, first = np.unique(mark_ids, return_index=True)
    traces = []
    for mark_id in mark_ids[np.sort(first)]:
        idx = np.flatnonzero(mark_ids == mark_id)
        order = idx[np.argsort(steps[idx], kind="stable")]
        got = steps[order]
        if not np.array_equal(got, np.arange(got.size)):
            raise MessageConversionError(f"trace cloud: mark {mark_id} has steps {got.tolist()}, expected 0..{got.size - 1} once each")
        points = np.column_stack([cols["u"][order], cols["v"][order]])
        depth, gripper = cols["depth"][order], cols["gripper"][order]
        traces.append(Trace(mark_id=int(mark_id), points=points, visible=np.all(np.isfinite(points), axis=1),
                            depth=None if np.all(np.isnan(depth)) else depth,
                            gripper=None if np.all(np.isnan(gripper)) else gripper))
    return traces


def marks_to_cloud(marks: MarkSet | Iterable[Mark], *, stamp: Time | int | None = None, frame_id: str = "") -> PointCloud2:
    """The `magma/marks` cloud: mark_id, u, v (the centre), kind code, box_w, box_h (NaN for point marks).

    Labels are not carried.
    """
    rows = []
    for mark in marks:
        u, v = mark.center
        if mark.box is not None:
            w, h = mark.box[2] - mark.box[0], mark.box[3] - mark.box[1]
        else:
            w = h = math.nan
        rows.append([mark.id, u, v, MARK_KIND_CODES[mark.kind], w, h])
    columns = np.array(rows, dtype=np.float64).reshape(-1, len(MARK_FIELDS))
    return _make_cloud(MARK_FIELDS, columns, stamp, frame_id)


def cloud_to_marks(msg: PointCloud2) -> MarkSet:
    """MarkSet of a `magma/marks` cloud. box_w/box_h are optional (point marks when absent)."""
    has_box = all(any(f.name == n for f in msg.fields) for n in ("box_w", "box_h"))
    cols = read_cloud_fields(msg, MARK_FIELDS if has_box else MARK_FIELDS[:4], "marks")
    ids = _integers(cols["mark_id"], "mark_id", "marks", 1)
    kinds = _integers(cols["kind"], "kind", "marks", 0)
    unknown = sorted({int(k) for k in kinds} - set(_KIND_BY_CODE))
    if unknown:
        raise MessageConversionError(f"marks cloud: unknown kind codes {unknown}; known {MARK_KIND_CODES}")
    out = MarkSet()
    for i, mark_id in enumerate(ids):
        u, v = cols["u"][i], cols["v"][i]
        w, h = (cols["box_w"][i], cols["box_h"][i]) if has_box else (math.nan, math.nan)
        kind = _KIND_BY_CODE[int(kinds[i])]
        try:
            if np.isfinite(w) and np.isfinite(h):
                out.add(Mark(id=int(mark_id), box=(u - w / 2, v - h / 2, u + w / 2, v + h / 2), kind=kind))
            else:
                out.add(Mark(id=int(mark_id), point=(u, v), kind=kind))
        except InvalidInputError as exc:
            raise MessageConversionError(f"marks cloud: {exc}") from exc
    return out


# --------------------------------------------------------------------------- actions

ACTION_SIZE = 7


def actions_to_msg(actions: np.ndarray) -> Float32MultiArray:
    """Float32MultiArray with layout [("step", N), ("value", 7)] of (N, 7) or (7,) actions."""
    arr = np.asarray(actions, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != ACTION_SIZE or arr.shape[0] == 0:
        raise MessageConversionError(f"actions must have shape (N, {ACTION_SIZE}) with N >= 1, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise MessageConversionError("actions contain NaN or inf")
    n = arr.shape[0]
    msg = Float32MultiArray()
    msg.layout.dim = [MultiArrayDimension(label="step", size=n, stride=n * ACTION_SIZE),
                      MultiArrayDimension(label="value", size=ACTION_SIZE, stride=ACTION_SIZE)]
    msg.layout.data_offset = 0
    msg.data = arr.astype(np.float32).reshape(-1).tolist()
    return msg


def msg_to_actions(msg: Float32MultiArray) -> np.ndarray:
    """(N, 7) float64 actions. A message without layout and exactly 7 values is one step."""
    data = np.asarray(msg.data, dtype=np.float64)
    dims = list(msg.layout.dim)
    offset = int(msg.layout.data_offset)
    if not dims:
        if data.size != ACTION_SIZE or offset:
            raise MessageConversionError(f"actions without a layout must hold exactly {ACTION_SIZE} values, got {data.size}")
        arr = data.reshape(1, ACTION_SIZE)
    else:
        if len(dims) != 2 or dims[1].size != ACTION_SIZE:
            layout = [(d.label, d.size) for d in dims]
            raise MessageConversionError(f"actions layout must be [(step, N), (value, {ACTION_SIZE})], got {layout}")
        n = int(dims[0].size)
        if n == 0 or data.size < offset + n * ACTION_SIZE:
            raise MessageConversionError(f"actions layout says {n} x {ACTION_SIZE} from offset {offset}, data has {data.size} values")
        arr = data[offset:offset + n * ACTION_SIZE].reshape(n, ACTION_SIZE)
    if not np.all(np.isfinite(arr)):
        raise MessageConversionError("actions contain NaN or inf")
    return arr


# --------------------------------------------------------------------------- diagnostics

LEVELS = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN, "ERROR": DiagnosticStatus.ERROR, "STALE": DiagnosticStatus.STALE}


def make_status(name: str, level: str, message: str, values: Mapping[str, object] | None = None,
                hardware_id: str = "") -> DiagnosticStatus:
    """DiagnosticStatus with level "OK", "WARN", "ERROR" or "STALE" and string key/values."""
    if level not in LEVELS:
        raise MessageConversionError(f"diagnostic level must be one of {list(LEVELS)}, got {level!r}")
    return DiagnosticStatus(level=LEVELS[level], name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=str(k), value=_value_text(v)) for k, v in (values or {}).items()])


def status_level(status: DiagnosticStatus) -> str:
    """"OK", "WARN", "ERROR" or "STALE" of a DiagnosticStatus."""
    for name, code in LEVELS.items():
        if status.level == code:
            return name
    raise MessageConversionError(f"unknown diagnostic level {status.level!r}")


def status_values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def _value_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def format_stamp(ns: int) -> str:
    """Integer nanoseconds as "sec.nanosec" (nine digits), exact both ways."""
    return f"{ns // NS_PER_S}.{ns % NS_PER_S:09d}"


def parse_stamp(text: str) -> int:
    sec, _, frac = text.strip().partition(".")
    if not sec.isdigit() or (frac and (not frac.isdigit() or len(frac) > 9)):
        raise MessageConversionError(f"stamp {text!r} is not 'seconds.nanoseconds'")
    return int(sec) * NS_PER_S + int(frac.ljust(9, "0") if frac else 0)


@dataclass(frozen=True)
class LatencyReport:
    """One inference of the policy node: which frame it used and how long it took."""

    frame_stamp_ns: int
    infer_ms: float
    frame_to_publish_ms: float
    mode: str

    STATUS_NAME = "magma/policy"


def latency_to_msg(report: LatencyReport, *, stamp: Time | int | None = None) -> DiagnosticArray:
    """The `magma/latency` DiagnosticArray: one status with frame_stamp, infer_ms, frame_to_publish_ms, mode."""
    status = make_status(LatencyReport.STATUS_NAME, "OK", "inference", {
        "frame_stamp": format_stamp(report.frame_stamp_ns),
        "infer_ms": f"{report.infer_ms:.3f}",
        "frame_to_publish_ms": f"{report.frame_to_publish_ms:.3f}",
        "mode": report.mode,
    })
    return DiagnosticArray(header=make_header(stamp), status=[status])


def msg_to_latency(msg: DiagnosticArray) -> LatencyReport:
    for status in msg.status:
        if status.name != LatencyReport.STATUS_NAME:
            continue
        values = status_values(status)
        try:
            return LatencyReport(frame_stamp_ns=parse_stamp(values["frame_stamp"]), infer_ms=float(values["infer_ms"]),
                                 frame_to_publish_ms=float(values["frame_to_publish_ms"]), mode=values["mode"])
        except KeyError as exc:
            raise MessageConversionError(f"latency status lacks key {exc.args[0]!r}; it has {sorted(values)}") from exc
        except ValueError as exc:
            raise MessageConversionError(f"latency status has a non-numeric value: {exc}") from exc
    raise MessageConversionError(f"latency array has no status named {LatencyReport.STATUS_NAME!r}")

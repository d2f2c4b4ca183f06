"""Recorded episodes (the recorder's MCAP bags + episode.json) -> a LeRobot v3 dataset, as `magma dataset generate` writes.

Frame clock: the camera image stream. Its frames are resampled to the dataset's `fps` (default: the
first episode's camera rate, rounded): starting from the first image, each next dataset frame is the
image nearest to one period after the previous one, within half a period (a camera faster than `fps`
is decimated; a missing image leaves a gap, counted).

Alignment: every other stream is matched to a frame by the nearest stamp within a tolerance: depth
and camera_info within `depth_tolerance_ms`, the end-effector pose and joint states within
`state_tolerance_ms`. Stamps are header stamps when both streams carry them (else receive times, so a
stream without headers never compares clocks with one that has them). A frame missing a match is
dropped and counted under the first missing stream. The gripper command (std_msgs/Float32, no header)
is sample-and-hold: the latest command received at or before the frame.

Actions: Magma's 7 numbers, as the simulation datasets hold them: the end-effector's motion over one
period (position delta, base frame; rotation delta as a base-frame rotation vector) from the pose
matched at the frame to the pose matched one period later, and the gripper command in effect one
period later. The last frame holds still (zero motion). A frame before the end without a pose one
period later is dropped ("next_pose").

Trace-of-Mark labels (``observation.gt_trace``, as the simulation datasets store them; see
magma_core.data.episode): for each frame, the marks' pixel positions and depths over the next
`n_future` frames. Trace modes:
- "gripper" (default; needs intrinsics and the extrinsics of episode.json): mark 0 is the gripper,
  projected from the recorded end-effector pose (exact, from proprioception); mark 1 the object: the
  Lucas-Kanade track of the point the gripper grasps next (the pose at the next close command,
  projected into the current frame) or holds, else the tracker's first moving mark away from the
  gripper; then further tracked marks (Trace-of-Mark extraction: moving marks, then static ones).
- "tracked": every mark from the tracker (no calibration needed); mark 0 is then a tracked point,
  not the gripper, which the trainer takes it for: use it for data without calibration only.
- "none": no trace columns.
Trace depths come from the depth image (3x3 median); unknown ones are filled from the same trace's
nearest known step, the frame's median depth, else 1 m, and counted.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from magma_core.data.episode import CameraParams, Episode
from magma_core.errors import InvalidInputError, MagmaError

NS_PER_S = 1_000_000_000
TRACE_MODES = ("gripper", "tracked", "none")
# Streams matched to each frame, in the order a dropped frame is attributed to.
DROP_REASONS = ("depth", "camera_info", "ee_pose", "joint_states", "next_pose")
RGB_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("32FC1", "16UC1")
_PIXEL_FORMATS = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
                  "mono8": (np.uint8, 1), "32FC1": (np.float32, 1), "16UC1": (np.uint16, 1)}
GRIPPER_CLOSED = 0.5  # a gripper command at or above this is "closed"
MIN_DEPTH_M = 0.01  # trace depths are clipped here (the depth binning refuses depth <= 0)
UNKNOWN_TRACE_DEPTH_M = 1.0  # last resort for a trace depth nothing in the episode tells
_EXCLUSION_SPACINGS = 2.0  # moving marks this many grid spacings from the gripper are taken for the gripper


@dataclass(frozen=True)
class StreamTopics:
    """The recorded topic of each stream (with or without the leading slash); None leaves a stream out."""

    image: str = "camera/image_raw"
    depth: str | None = "camera/depth/image_raw"
    camera_info: str | None = "camera/camera_info"
    ee_pose: str = "magma/ee_pose"
    joint_states: str | None = "joint_states"
    gripper: str | None = "magma/gripper_command"


_EXPECTED_TYPES = {
    "image": ("sensor_msgs/msg/Image",),
    "depth": ("sensor_msgs/msg/Image",),
    "camera_info": ("sensor_msgs/msg/CameraInfo",),
    "ee_pose": ("geometry_msgs/msg/PoseStamped",),
    "joint_states": ("sensor_msgs/msg/JointState",),
    "gripper": ("std_msgs/msg/Float32", "std_msgs/msg/Float64"),
}
_REQUIRED_STREAMS = ("image", "ee_pose")


@dataclass(frozen=True)
class ConvertConfig:
    """How episodes become dataset frames (see the module docstring)."""

    fps: float | None = None  # None: the first episode's camera rate, rounded to an integer
    depth_tolerance_ms: float = 20.0  # depth and camera_info vs the image stamp
    state_tolerance_ms: float = 50.0  # end-effector pose and joint states vs the image stamp
    only_success: bool = False
    image_size: int | None = None  # longer image side in pixels (aspect kept); None: as recorded
    traces: str = "gripper"
    n_future: int = 16
    tracked_marks: int = 2  # marks from the tracker per frame, after the gripper's ("tracked" mode: all marks)
    grid_size: int = 16  # query grid of the Trace-of-Mark extraction
    min_frames: int = 2
    camera_name: str = "front"
    topics: StreamTopics = field(default_factory=StreamTopics)

    def validate(self) -> "ConvertConfig":
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise InvalidInputError(f"fps must be positive, got {self.fps}")
        for name in ("depth_tolerance_ms", "state_tolerance_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"{name} must be >= 0, got {value}")
        if self.image_size is not None and not 16 <= self.image_size <= 4096:
            raise InvalidInputError(f"image size must lie in 16..4096 pixels, got {self.image_size}")
        if self.traces not in TRACE_MODES:
            raise InvalidInputError(f"traces must be one of {', '.join(TRACE_MODES)}, got {self.traces!r}")
        checks = (("n_future", 1), ("tracked_marks", 1), ("grid_size", 2), ("min_frames", 2))
        for name, low in checks:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
        return self


@dataclass
class EpisodeReport:
    """What happened to one episode: converted, skipped (outcome filter) or failed (with the reason)."""

    path: str
    status: str
    episode_id: str | None = None
    reason: str = ""
    frames: int = 0
    camera_frames: int = 0
    decimated: int = 0  # camera frames between dataset frames (camera faster than fps)
    gaps: int = 0  # dataset periods without a camera frame
    dropped: dict[str, int] = field(default_factory=dict)
    rates_hz: dict[str, float] = field(default_factory=dict)
    recovered: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass
class ConvertSummary:
    """What a conversion run produced."""

    out: str | None
    fps: float | None
    episodes: list[EpisodeReport]
    seconds: float = 0.0
    bytes_on_disk: int = 0

    def _with(self, status: str) -> list[EpisodeReport]:
        return [e for e in self.episodes if e.status == status]

    @property
    def converted(self) -> int:
        return len(self._with("converted"))

    @property
    def failures(self) -> list[EpisodeReport]:
        return self._with("failed")

    @property
    def frames(self) -> int:
        return sum(e.frames for e in self.episodes)

    def dropped(self) -> dict[str, int]:
        return {r: sum(e.dropped.get(r, 0) for e in self._with("converted")) for r in DROP_REASONS}

    def stream_rates(self) -> dict[str, float]:
        """Mean measured rate (Hz) of each stream over the converted episodes."""
        rates: dict[str, list[float]] = {}
        for e in self._with("converted"):
            for name, hz in e.rates_hz.items():
                rates.setdefault(name, []).append(hz)
        return {name: float(np.mean(v)) for name, v in rates.items()}

    def to_dict(self) -> dict:
        converted = self._with("converted")
        return {
            "out": self.out, "fps": self.fps, "episodes_found": len(self.episodes), "converted": len(converted),
            "skipped": len(self._with("skipped")), "failed": len(self.failures), "frames": self.frames,
            "camera_frames": sum(e.camera_frames for e in converted),
            "decimated": sum(e.decimated for e in converted), "gaps": sum(e.gaps for e in converted),
            "dropped": self.dropped(), "stream_rates_hz": self.stream_rates(),
            "recovered": sum(e.recovered for e in converted), "seconds": round(self.seconds, 3),
            "bytes_on_disk": self.bytes_on_disk, "episodes": [asdict(e) for e in self.episodes],
        }


# ------------------------------------------------------------------------------------------ alignment
def estimate_fps(stamps_ns: np.ndarray) -> float:
    """The camera's rate from the median interval of its stamps, rounded to an integer (at least 1)."""
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    steps = np.diff(stamps)
    steps = steps[steps > 0]
    if steps.size == 0:
        raise InvalidInputError("cannot estimate the camera rate from fewer than two distinct image stamps")
    return float(max(1, round(NS_PER_S / float(np.median(steps)))))


def select_frames(stamps_ns: np.ndarray, period_ns: int) -> tuple[np.ndarray, int]:
    """Indices of the images that make the frame clock, and the number of gaps.

    `stamps_ns` sorted. From the first image, each next frame is the later image nearest to one
    period after the previous frame, within half a period; a period with none is a gap (the clock
    moves on by one period from there). Re-anchoring on the chosen image absorbs clock drift.
    """
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    if stamps.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    period = int(period_ns)
    half = period // 2
    kept, gaps = [0], 0
    anchor = int(stamps[0])
    while True:
        target = anchor + period
        if target - half > stamps[-1]:
            break
        j = int(np.searchsorted(stamps, target))
        candidates = [i for i in (j - 1, j) if kept[-1] < i < stamps.size]
        best = min(candidates, key=lambda i: abs(int(stamps[i]) - target), default=None)
        if best is not None and abs(int(stamps[best]) - target) <= half:
            kept.append(best)
            anchor = int(stamps[best])
        else:
            gaps += 1
            anchor = target
    return np.asarray(kept, dtype=np.int64), gaps


def match_nearest(targets_ns: np.ndarray, stamps_ns: np.ndarray, tolerance_ns: int) -> np.ndarray:
    """For each target, the index of the nearest of the sorted `stamps_ns` within the tolerance, else -1."""
    targets = np.asarray(targets_ns, dtype=np.int64)
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    if stamps.size == 0:
        return np.full(targets.shape, -1, dtype=np.int64)
    right = np.clip(np.searchsorted(stamps, targets), 0, stamps.size - 1)
    left = np.clip(right - 1, 0, stamps.size - 1)
    pick = np.where(np.abs(stamps[left] - targets) <= np.abs(stamps[right] - targets), left, right)
    return np.where(np.abs(stamps[pick] - targets) <= int(tolerance_ns), pick, -1).astype(np.int64)


def latest_at_or_before(targets_ns: np.ndarray, stamps_ns: np.ndarray) -> np.ndarray:
    """For each target, the index of the last of the sorted `stamps_ns` at or before it, else -1."""
    return np.searchsorted(np.asarray(stamps_ns, dtype=np.int64), np.asarray(targets_ns, dtype=np.int64),
                           side="right").astype(np.int64) - 1


@dataclass
class Stream:
    """One stream's messages sorted by stamp: header stamps when every message has one, else receive times."""

    topic: str
    stamps: np.ndarray
    log_times: np.ndarray
    items: list
    header_stamped: bool
    invalid: int = 0  # messages left out (e.g. a pose with a zero quaternion)

    def rate_hz(self) -> float:
        if self.stamps.size < 2 or self.stamps[-1] <= self.stamps[0]:
            return 0.0
        return float((self.stamps.size - 1) * NS_PER_S / (self.stamps[-1] - self.stamps[0]))

    def match(self, frames: "Stream", index: np.ndarray, tolerance_ns: int, shift_ns: int = 0) -> np.ndarray:
        """Per frame frames[index] (+ shift), the index of this stream's nearest message within the tolerance, else -1.

        Header stamps are compared when both streams have them, else receive times (one clock)."""
        if self.header_stamped and frames.header_stamped:
            return match_nearest(frames.stamps[index] + shift_ns, self.stamps, tolerance_ns)
        order = np.argsort(self.log_times, kind="stable")
        found = match_nearest(frames.log_times[index] + shift_ns, self.log_times[order], tolerance_ns)
        return np.where(found >= 0, order[np.maximum(found, 0)], -1)

    def latest(self, frames: "Stream", index: np.ndarray, shift_ns: int = 0) -> np.ndarray:
        """Per frame, the index of this stream's last message received at or before it (+ shift), else -1."""
        order = np.argsort(self.log_times, kind="stable")
        found = latest_at_or_before(frames.log_times[index] + shift_ns, self.log_times[order])
        return np.where(found >= 0, order[np.maximum(found, 0)], -1)


@dataclass
class Alignment:
    """Which image makes each dataset frame and which message of each stream goes with it."""

    frames: np.ndarray  # indices into the image stream, one per kept frame
    matches: dict[str, np.ndarray]  # stream -> index per kept frame (ee_pose_next: -1 = hold still)
    camera_frames: int
    decimated: int
    gaps: int
    dropped: dict[str, int]


def align(streams: dict[str, Stream], period_ns: int, depth_tolerance_ns: int, state_tolerance_ns: int) -> Alignment:
    """Frame clock from the images, nearest matches of the other streams, drops counted (module docstring)."""
    camera = streams["image"]
    selected, gaps = select_frames(camera.stamps, period_ns)
    keep = np.ones(selected.size, dtype=bool)
    matches: dict[str, np.ndarray] = {}
    dropped = dict.fromkeys(DROP_REASONS, 0)
    tolerances = {"depth": depth_tolerance_ns, "camera_info": depth_tolerance_ns,
                  "ee_pose": state_tolerance_ns, "joint_states": state_tolerance_ns}
    for name, tolerance in tolerances.items():
        stream = streams.get(name)
        if stream is None:
            continue
        index = stream.match(camera, selected, tolerance)
        dropped[name] = int((keep & (index < 0)).sum())
        keep &= index >= 0
        matches[name] = index
    after = streams["ee_pose"].match(camera, selected, state_tolerance_ns, int(period_ns))
    missing = keep & (after < 0)
    if keep.any():
        missing[np.flatnonzero(keep)[-1]] = False  # the last frame holds still
    dropped["next_pose"] = int(missing.sum())
    keep &= ~missing
    matches["ee_pose_next"] = after
    gripper = streams.get("gripper")
    if gripper is not None:
        # Header-less commands: the latest received at or before the frame (and one period later).
        matches["gripper"] = gripper.latest(camera, selected)
        matches["gripper_next"] = gripper.latest(camera, selected, int(period_ns))
    return Alignment(frames=selected[keep], matches={k: v[keep] for k, v in matches.items()},
                     camera_frames=int(camera.stamps.size), decimated=int(camera.stamps.size - selected.size),
                     gaps=gaps, dropped=dropped)


# ------------------------------------------------------------------------------------------ messages
def _pixels(msg, where: str, allowed: tuple[str, ...], kind: str) -> np.ndarray:
    encoding = str(msg.encoding)
    if encoding not in allowed:
        raise InvalidInputError(f"{where}: {kind} image encoding {encoding!r} is not supported "
                                f"(supported: {', '.join(allowed)})")
    dtype, channels = _PIXEL_FORMATS[encoding]
    dtype = np.dtype(dtype)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if height <= 0 or width <= 0:
        raise InvalidInputError(f"{where}: {encoding} image has no pixels ({width}x{height})")
    if step < row_bytes or data.size < step * height:
        raise InvalidInputError(f"{where}: {encoding} image {width}x{height} is truncated "
                                f"({data.size} bytes, step {step}; a row needs {row_bytes})")
    rows = np.ascontiguousarray(data[:step * height].reshape(height, step)[:, :row_bytes])
    order = ">" if msg.is_bigendian and dtype.itemsize > 1 else "<"
    array = rows.view(dtype.newbyteorder(order)).astype(dtype)
    return array.reshape(height, width, channels)


def decode_rgb(msg, where: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB from an rgb8, bgr8, rgba8, bgra8 or mono8 sensor_msgs/Image; else InvalidInputError."""
    pixels = _pixels(msg, where, RGB_ENCODINGS, "colour")
    encoding = str(msg.encoding)
    if encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if encoding.startswith("bgr"):
        pixels = pixels[:, :, 2::-1]
    return np.ascontiguousarray(pixels[:, :, :3])


def decode_depth(msg, where: str = "depth") -> np.ndarray:
    """(H, W) float32 metres, NaN where unknown, from 32FC1 (metres) or 16UC1 (millimetres, 0 unknown)."""
    pixels = _pixels(msg, where, DEPTH_ENCODINGS, "depth")[:, :, 0]
    depth = pixels.astype(np.float32) / 1000.0 if str(msg.encoding) == "16UC1" else pixels.astype(np.float32)
    return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan)).astype(np.float32)


def _pose_of(msg) -> np.ndarray | None:
    p, q = msg.pose.position, msg.pose.orientation
    pose = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=np.float64)
    norm = float(np.linalg.norm(pose[3:]))
    if not np.all(np.isfinite(pose)) or norm < 1e-6:
        return None
    pose[3:] /= norm
    return pose


def _camera_info_of(msg) -> tuple[np.ndarray, int, int] | None:
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or msg.width <= 0 or msg.height <= 0:
        return None  # all zero is ROS's "uncalibrated"
    return K, int(msg.width), int(msg.height)


def _read_streams(bag, topics: dict[str, str]) -> dict[str, Stream]:
    """One pass over the bag; small messages are converted at once, images kept for the frames chosen."""
    by_topic = {topic: name for name, topic in topics.items()}
    raw: dict[str, list] = {name: [] for name in topics}
    for message in bag.messages(list(topics.values())):
        raw[by_topic[message.topic]].append((message.header_stamp_ns, message.log_time_ns, message.msg))
    streams = {}
    for name, entries in raw.items():
        convert = {"ee_pose": _pose_of, "camera_info": _camera_info_of,
                   "gripper": lambda m: float(m.data) if math.isfinite(float(m.data)) else None}.get(name)
        items, kept, invalid = [], [], 0
        for entry in entries:
            value = entry[2] if convert is None else convert(entry[2])
            if value is None:
                invalid += 1
                continue
            items.append(value)
            kept.append(entry)
        # A zero stamp means the publisher left the header unset: fall back to receive times.
        stamped = bool(kept) and all(h is not None and h > 0 for h, _, _ in kept)
        stamps = np.array([h if stamped else t for h, t, _ in kept], dtype=np.int64)
        logs = np.array([t for _, t, _ in kept], dtype=np.int64)
        order = np.argsort(stamps, kind="stable")
        streams[name] = Stream(topics[name], stamps[order], logs[order], [items[i] for i in order], stamped, invalid)
    return streams


def _joint_arrays(stream: Stream, index: np.ndarray, where: str):
    """Arm joint positions (T, J), gripper opening (T, 1: the sum of the finger joints), arm and finger joint names."""
    names = list(stream.items[int(index[0])].name)
    fingers = [n for n in names if "finger" in n]
    arm = [n for n in names if "finger" not in n]
    joints, widths = [], []
    for i in index:
        msg = stream.items[int(i)]
        position = dict(zip(list(msg.name), np.asarray(msg.position, dtype=np.float64).tolist()))
        missing = [n for n in names if n not in position]
        if missing:
            raise InvalidInputError(f"{where}: joint_states message lacks joints {missing} the first one had")
        joints.append([position[n] for n in arm])
        widths.append([sum(position[n] for n in fingers)])
    return np.asarray(joints, dtype=np.float64).reshape(len(index), len(arm)), np.asarray(widths), arm, fingers


# ------------------------------------------------------------------------------------------ calibration
def parse_extrinsics(text: str, where: str = "extrinsics") -> tuple[np.ndarray, str, str]:
    """(4x4 camera pose in its parent frame, mode, parent frame) from the calibration room's extrinsics YAML."""
    import yaml  # noqa: PLC0415

    from magma_core.geometry import as_extrinsics, pose_matrix  # noqa: PLC0415

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{where}: extrinsics are not valid YAML: {exc}") from exc
    node = data.get("transform") if isinstance(data, dict) else None
    if not isinstance(node, dict):
        raise InvalidInputError(f"{where}: extrinsics need a 'transform' mapping (matrix or translation + rotation_xyzw)")
    try:
        if "matrix" in node:
            T = as_extrinsics(node["matrix"])
        else:
            T = pose_matrix(list(node["translation"]) + list(node["rotation_xyzw"]))
    except (KeyError, TypeError) as exc:
        raise InvalidInputError(f"{where}: extrinsics transform incomplete: {exc}") from exc
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from exc
    return T, str(data.get("mode", "fixed")), str(data.get("parent_frame", ""))


def _intrinsics_from_meta(info) -> tuple[np.ndarray, int, int] | None:
    """K, width, height from episode.json's calibration.camera_info (ROS YAML layout or message fields)."""
    if not isinstance(info, dict):
        return None
    try:
        if "camera_matrix" in info:
            K = np.asarray(info["camera_matrix"]["data"], dtype=np.float64)
            width, height = int(info["image_width"]), int(info["image_height"])
        else:
            K = np.asarray(info.get("k", info.get("K")), dtype=np.float64)
            width, height = int(info.get("width", info.get("image_width"))), int(info.get("height", info.get("image_height")))
        K = K.reshape(3, 3)
    except (KeyError, TypeError, ValueError):
        return None
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or width <= 0 or height <= 0:
        return None
    return K, width, height


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K for an image resized by (sx, sy); pixel centres sit at integers, so u' = (u + 0.5) * sx - 0.5."""
    K = np.array(K, dtype=np.float64)
    K[0, 0] *= sx
    K[0, 1] *= sx
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 1] *= sy
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


# ------------------------------------------------------------------------------------------ actions
def _rotation_vector(q_from: np.ndarray, q_to: np.ndarray) -> np.ndarray:
    """Base-frame rotation vectors r with q_to = exp(r) * q_from, row by row (N, 4) -> (N, 3)."""
    from magma_core.geometry import quat_multiply  # noqa: PLC0415

    out = np.zeros((q_from.shape[0], 3))
    for i, (a, b) in enumerate(zip(q_from, q_to)):
        d = quat_multiply(b, np.array([-a[0], -a[1], -a[2], a[3]]))
        if d[3] < 0:  # the same rotation, the short way round
            d = -d
        s = float(np.linalg.norm(d[:3]))
        if s > 1e-12:
            out[i] = d[:3] / s * 2.0 * math.atan2(s, d[3])
    return out


def ee_actions(pose: np.ndarray, pose_next: np.ndarray, gripper_next: np.ndarray) -> np.ndarray:
    """(T, 7): position delta, base-frame rotation vector, gripper command, from poses (T, 7) one period apart."""
    return np.concatenate([pose_next[:, :3] - pose[:, :3], _rotation_vector(pose[:, 3:], pose_next[:, 3:]),
                           np.asarray(gripper_next, dtype=np.float64).reshape(-1, 1)], axis=1)


# ------------------------------------------------------------------------------------------ traces
def future_indices(length: int, n_future: int) -> np.ndarray:
    """(length, n_future + 1) frame indices t..t+n, clamped to the last frame."""
    return np.minimum(np.arange(length)[:, None] + np.arange(n_future + 1)[None, :], length - 1)


def _depth_at(depth: np.ndarray, frames: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Median of the known depths in the 3x3 pixels around each (u, v) of depth[frames]; NaN if none."""
    h, w = depth.shape[1:3]
    u = np.clip(np.rint(uv[:, 0]).astype(np.int64), 0, w - 1)
    v = np.clip(np.rint(uv[:, 1]).astype(np.int64), 0, h - 1)
    samples = np.stack([depth[frames, np.clip(v + dy, 0, h - 1), np.clip(u + dx, 0, w - 1)]
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods stay NaN
        return np.nanmedian(samples, axis=0)


def _fill_nearest(values: np.ndarray) -> np.ndarray:
    """NaNs replaced by the nearest known entry (by index); all-NaN stays all-NaN."""
    known = np.flatnonzero(np.isfinite(values))
    if known.size in (0, values.size):
        return values
    nearest = known[np.abs(np.arange(values.size)[:, None] - known[None, :]).argmin(axis=1)]
    return values[nearest]


@dataclass
class TraceLabels:
    """Traces (T, M, n+1, 3) of pixel u, v and depth; counts of what had to be filled in."""

    traces: np.ndarray
    mark_names: list[str]
    depth_filled: int = 0
    marks_filled: int = 0
    object_from_grasp: int = 0


def trace_labels(rgb: np.ndarray, depth: np.ndarray | None, n_future: int, tracked_marks: int, grid_size: int = 16,
                 gripper_uvd: np.ndarray | None = None, grasp_uv: np.ndarray | None = None,
                 tracker=None) -> TraceLabels:
    """Trace-of-Mark labels of every frame (see the module docstring).

    Args:
        rgb: (T, H, W, 3) frames. depth: (T, H, W) metres, NaN unknown, or None.
        tracked_marks: marks from the tracker per frame (after the gripper's, when given).
        gripper_uvd: (T, n+1, 3) the gripper's projected trace per frame ("gripper" mode), else None.
        grasp_uv: (T, 2) pixel of the point the gripper grasps next or holds, NaN where none.
        tracker: a PointTracker (default: Lucas-Kanade with the forward-backward check).
    """
    from magma_core.tom.extract import ToMConfig  # noqa: PLC0415
    from magma_core.tom.trackers import make_tracker  # noqa: PLC0415

    T, H, W = rgb.shape[:3]
    tracker = tracker or make_tracker("lk")
    config = ToMConfig(grid_size=grid_size, future_frames=n_future)
    future = future_indices(T, n_future)
    has_gripper = gripper_uvd is not None
    first = int(has_gripper)
    count = first + tracked_marks
    named = ["gripper", "object"] if has_gripper else []
    names = (named + [f"tracked_{m}" for m in range(len(named), count)])[:count]
    labels = TraceLabels(np.zeros((T, count, n_future + 1, 3), dtype=np.float32), names)
    frame_median = np.full(T, np.nan)
    if depth is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # frames without any known depth
            frame_median = np.nanmedian(depth.reshape(T, -1), axis=1)
    episode_median = float(np.nanmedian(frame_median)) if np.isfinite(frame_median).any() else np.nan
    for t in range(T):
        last = min(t + n_future, T - 1)
        clip = rgb[t:last + 1] if last > t else rgb[[t, t]]  # a tracker needs two frames
        grasp = None if grasp_uv is None else grasp_uv[t]
        if grasp is not None and not (np.all(np.isfinite(grasp)) and 0 <= grasp[0] <= W - 1 and 0 <= grasp[1] <= H - 1):
            grasp = None
        paths, filled = _tracked_paths(tracker, clip, config, tracked_marks, grasp,
                                       gripper_uvd[t, 0, :2] if has_gripper else None)
        labels.marks_filled += filled
        labels.object_from_grasp += int(grasp is not None)
        if has_gripper:
            labels.traces[t, 0, :, :2] = gripper_uvd[t, :, :2]
            labels.traces[t, 0, :, 2] = np.maximum(gripper_uvd[t, :, 2], MIN_DEPTH_M)
        fallbacks = (frame_median[t], episode_median, gripper_uvd[t, 0, 2] if has_gripper else np.nan)
        fallback = next((float(x) for x in fallbacks if np.isfinite(x) and x > 0), UNKNOWN_TRACE_DEPTH_M)
        step_index = np.minimum(np.arange(n_future + 1), last - t)  # past the end: the last position
        for k, path in enumerate(paths):
            uv = path[step_index]
            d = np.full(n_future + 1, np.nan) if depth is None else _depth_at(depth, future[t], uv)
            unknown = int(np.count_nonzero(~np.isfinite(d)))
            if unknown:
                d = _fill_nearest(d)
                d = np.where(np.isfinite(d), d, fallback)
                labels.depth_filled += unknown
            labels.traces[t, first + k, :, :2] = uv
            labels.traces[t, first + k, :, 2] = np.maximum(d, MIN_DEPTH_M)
    return labels


def _tracked_paths(tracker, clip: np.ndarray, config, count: int, grasp: np.ndarray | None,
                   gripper: np.ndarray | None) -> tuple[list[np.ndarray], int]:
    """`count` paths (L, 2) over the clip, in clip-frame-0 pixels, and how many were padding.

    Order: the grasp point's track; moving marks of the Trace-of-Mark extraction, those starting near
    the gripper (probably the gripper itself) last; static marks; then, on textureless frames, the
    grid tracks visible longest.
    """
    from magma_core.tom.extract import apply_homographies, grid_points, traces_from_tracks  # noqa: PLC0415
    from magma_core.tom.trackers import TrackResult  # noqa: PLC0415

    height, width = clip.shape[1:3]
    grid = grid_points(width, height, config.grid_size)
    extra = 0 if grasp is None else 1
    tracks = tracker.track(clip, grid if grasp is None else np.vstack([grasp[None], grid]))
    grid_tracks = TrackResult(tracks.points[:, extra:], tracks.visible[:, extra:], tracks.fb_error[:, extra:])
    found = traces_from_tracks(grid_tracks, (width, height), config)

    def compensated(points: np.ndarray) -> np.ndarray:  # (L, N, 2): camera motion removed, as the marks are
        return points if found.homographies is None else apply_homographies(found.homographies, points)

    paths = [] if grasp is None else [compensated(tracks.points[:, :1])[:, 0]]
    radius = _EXCLUSION_SPACINGS * max(width, height) / float(config.grid_size)
    near = [gripper is not None and float(np.linalg.norm(tr.start - gripper)) <= radius for tr in found.moving]
    paths += [tr.points for tr, n in zip(found.moving, near) if not n] + [tr.points for tr, n in zip(found.moving, near) if n]
    paths += [tr.points for tr in found.static]
    missing = max(0, count - len(paths))
    if missing:
        longest = np.argsort(-grid_tracks.visible.mean(axis=0), kind="stable")[:missing]
        points = compensated(grid_tracks.points)
        paths += [points[:, i] for i in longest]
    return paths[:count], missing


def grasp_points(ee_xyz: np.ndarray, gripper_state: np.ndarray) -> np.ndarray:
    """(T, 3) base-frame point the gripper holds (closed now) or grasps next (position at the next close), NaN if neither."""
    T = ee_xyz.shape[0]
    closed = np.asarray(gripper_state, dtype=np.float64).reshape(-1) >= GRIPPER_CLOSED
    out = np.full((T, 3), np.nan)
    upcoming = None
    for t in range(T - 1, -1, -1):
        if closed[t] and (t == 0 or not closed[t - 1]):
            upcoming = ee_xyz[t]
        out[t] = ee_xyz[t] if closed[t] else (upcoming if upcoming is not None else np.nan)
    return out


# ------------------------------------------------------------------------------------------ one episode
def _resolve_topics(bag, topics: StreamTopics, where: str) -> dict[str, str]:
    if not bag.topics:
        note = f" (read as an unclosed bag: {bag.recovery_note})" if bag.recovered else ""
        raise InvalidInputError(f"{where}: the bag holds no readable topic{note}")
    resolved = {}
    for name, wanted in asdict(topics).items():
        if wanted is None:
            continue
        recorded = next((c for c in (wanted, "/" + wanted.lstrip("/")) if c in bag.topics), None)
        if recorded is None:
            if name in _REQUIRED_STREAMS:
                raise InvalidInputError(f"{where}: no {name} topic {wanted!r} in the bag (recorded: {sorted(bag.topics)})")
            continue
        if bag.topics[recorded] not in _EXPECTED_TYPES[name]:
            raise InvalidInputError(f"{where}: topic {recorded} is a {bag.topics[recorded]}, the {name} stream needs "
                                    f"{' or '.join(_EXPECTED_TYPES[name])}")
        resolved[name] = recorded
    return resolved


def _output_size(width: int, height: int, image_size: int | None) -> tuple[int, int]:
    if image_size is None:
        return width, height
    scale = image_size / float(max(width, height))
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def _decode_frames(stream: Stream, index: np.ndarray, size: tuple[int, int], where: str, depth: bool) -> np.ndarray:
    import cv2  # noqa: PLC0415

    frames, first_shape = [], None
    for i in index:
        msg = stream.items[int(i)]
        at = f"{where}: {stream.topic} message stamped {int(stream.stamps[int(i)])} ns"
        image = decode_depth(msg, at) if depth else decode_rgb(msg, at)
        if first_shape is None:
            first_shape = image.shape
        elif image.shape != first_shape:
            raise InvalidInputError(f"{at}: image size changed from {first_shape[1]}x{first_shape[0]} "
                                    f"to {image.shape[1]}x{image.shape[0]} within the episode")
        if (image.shape[1], image.shape[0]) != size:
            # Depth resizes by nearest neighbour so unknown (NaN) pixels never blend into known ones.
            image = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if depth else cv2.INTER_AREA)
        frames.append(image)
    return np.stack(frames)


def load_episode(path, config: ConvertConfig = ConvertConfig(), fps: float | None = None,
                 tracker=None) -> tuple[Episode | None, EpisodeReport]:
    """Convert one recorded episode folder into an Episode (None when skipped by the outcome filter).

    `fps` overrides config.fps (a dataset's episodes share one rate). Raises InvalidInputError (or
    the reader's BagError) naming the file and the problem.
    """
    from magma_core.data.bag_io import read_episode  # noqa: PLC0415 - rosbags only when converting

    config.validate()
    bag = read_episode(path)
    where = str(bag.path)
    meta = bag.meta
    outcome = meta.get("outcome")
    report = EpisodeReport(path=where, status="converted", episode_id=meta.get("episode_id"), recovered=bool(bag.recovered))
    if bag.recovered:
        report.warnings.append(f"bag not closed cleanly; recovered what was flushed ({bag.recovery_note})")
    if config.only_success and outcome != "success":
        report.status, report.reason = "skipped", f"outcome {outcome!r} (only successful episodes kept)"
        return None, report
    topics = _resolve_topics(bag, config.topics, where)
    calibration = meta.get("calibration") or {}
    if config.traces == "gripper" and not calibration.get("extrinsics_yaml"):
        raise InvalidInputError(_NO_CALIBRATION.format(where=where))  # before the slow part
    streams = _read_streams(bag, topics)
    report.rates_hz = {name: round(s.rate_hz(), 3) for name, s in streams.items()}
    for name in _REQUIRED_STREAMS:
        if streams[name].stamps.size == 0:
            raise InvalidInputError(f"{where}: the {name} topic {topics[name]} has no usable message")
    for name, stream in list(streams.items()):
        if stream.invalid:
            report.warnings.append(f"{stream.invalid} unusable {name} message(s) left out "
                                   "(NaN, zero quaternion or all-zero camera matrix)")
        if stream.stamps.size == 0 and name not in _REQUIRED_STREAMS:
            report.warnings.append(f"{name} topic {stream.topic} has no usable message: stream not used")
            del streams[name]
    # Duplicate image stamps (a republished frame) would make two dataset frames of one instant.
    camera = streams["image"]
    unique = np.concatenate([[True], np.diff(camera.stamps) > 0])
    if not unique.all():
        report.warnings.append(f"{int((~unique).sum())} image(s) with a repeated stamp left out")
        streams["image"] = Stream(camera.topic, camera.stamps[unique], camera.log_times[unique],
                                   [m for m, u in zip(camera.items, unique) if u], camera.header_stamped)
    rate = float(fps or config.fps or estimate_fps(streams["image"].stamps))
    period = int(round(NS_PER_S / rate))
    alignment = align(streams, period, int(config.depth_tolerance_ms * 1e6), int(config.state_tolerance_ms * 1e6))
    report.camera_frames, report.decimated, report.gaps = alignment.camera_frames, alignment.decimated, alignment.gaps
    report.dropped = alignment.dropped
    T = int(alignment.frames.size)
    if T < config.min_frames:
        raise InvalidInputError(f"{where}: only {T} frame(s) left after alignment (need {config.min_frames}); "
                                f"dropped {_describe_drops(alignment.dropped)}")
    episode = _assemble(bag, streams, alignment, config, rate, tracker, report)
    report.frames = len(episode)
    return episode, report


def _describe_drops(dropped: dict[str, int]) -> str:
    parts = [f"{n} for {reason}" for reason, n in dropped.items() if n]
    return ", ".join(parts) if parts else "none"


_NO_CALIBRATION = ("{where}: the gripper's trace needs the camera intrinsics (camera_info topic or episode.json) and "
                   "episode.json's calibration.extrinsics_yaml; convert with traces='tracked' (--traces tracked) or 'none'")


def _camera_model(size: tuple[int, int], intrinsics, extrinsics, ee: np.ndarray, name: str, metadata: dict,
                  report: EpisodeReport) -> tuple[CameraParams, np.ndarray]:
    """The stored camera (intrinsics scaled to the output size) and the camera's pose (T, 4, 4) at each frame.

    A wrist camera (mode eye_in_hand) moves with the end effector: its stored extrinsics are the first
    frame's. Missing intrinsics or extrinsics are replaced by placeholders and flagged camera_known=False.
    """
    from magma_core.data.layout import nominal_camera  # noqa: PLC0415
    from magma_core.geometry import pose_matrix  # noqa: PLC0415

    if intrinsics is not None:
        K, info_width, info_height = intrinsics
        K = scale_intrinsics(K, size[0] / info_width, size[1] / info_height)
    else:
        K = nominal_camera(*size).intrinsics
        metadata["camera_known"] = False
        report.warnings.append("no camera intrinsics (camera_info topic or calibration): nominal camera stored")
    if extrinsics is None:
        metadata["camera_known"] = False
        poses = np.repeat(np.eye(4)[None], len(ee), axis=0)
    else:
        T_cam, mode, parent = extrinsics
        metadata.update(camera_mode=mode, extrinsics_parent_frame=parent)
        if mode == "eye_in_hand":
            poses = np.stack([pose_matrix(p) @ T_cam for p in ee])
        else:
            poses = np.repeat(T_cam[None], len(ee), axis=0)
    camera = CameraParams(width=size[0], height=size[1], intrinsics=K, extrinsics=poses[0], name=name)
    return camera, poses


def _assemble(bag, streams: dict[str, Stream], alignment: Alignment, config: ConvertConfig, rate: float,
              tracker, report: EpisodeReport) -> Episode:
    """The Episode of the aligned frames: images, proprioception, actions, camera and trace labels."""
    from magma_core.geometry import project_unchecked  # noqa: PLC0415

    where, meta, m = str(bag.path), bag.meta, alignment.matches
    camera = streams["image"]
    first = camera.items[int(alignment.frames[0])]
    size = _output_size(int(first.width), int(first.height), config.image_size)
    rgb = _decode_frames(camera, alignment.frames, size, where, depth=False)
    depth = None
    if "depth" in streams:
        depth = _decode_frames(streams["depth"], m["depth"], size, where, depth=True)
    poses = streams["ee_pose"]
    ee = np.stack([poses.items[int(i)] for i in m["ee_pose"]])
    ee_next = np.stack([poses.items[int(i)] if i >= 0 else ee[k] for k, i in enumerate(m["ee_pose_next"])])
    gripper_known = "gripper" in streams
    if gripper_known:
        commands = streams["gripper"].items
        state = np.array([commands[int(i)] if i >= 0 else 0.0 for i in m["gripper"]])
        command_next = np.array([commands[int(i)] if i >= 0 else 0.0 for i in m["gripper_next"]])
    else:
        state = command_next = np.zeros(len(ee))
        report.warnings.append("no gripper command topic: the actions' gripper value is 0")
    hold = m["ee_pose_next"] < 0
    command_next = np.where(hold, state, command_next)
    actions = ee_actions(ee, ee_next, command_next)
    if "joint_states" in streams:
        joints, width, joint_names, fingers = _joint_arrays(streams["joint_states"], m["joint_states"], where)
    else:
        joints, width, joint_names, fingers = np.zeros((len(ee), 0)), np.zeros((len(ee), 1)), [], []
    if not fingers:
        report.warnings.append("no finger joints in joint_states: the gripper opening is stored as 0")

    # Intrinsics: the camera_info matched to the first frame, else episode.json's calibration.
    intrinsics = None
    if "camera_info" in streams:
        intrinsics = streams["camera_info"].items[int(m["camera_info"][0])]
    if intrinsics is None:
        intrinsics = _intrinsics_from_meta((meta.get("calibration") or {}).get("camera_info"))
    extrinsics_text = (meta.get("calibration") or {}).get("extrinsics_yaml")
    extrinsics = parse_extrinsics(extrinsics_text, f"{where}: episode.json calibration") if extrinsics_text else None
    metadata = {"source": "rosbag", "episode_id": meta.get("episode_id"), "bag": where, "outcome": meta.get("outcome"),
                "robot": meta.get("robot"), "recovered": bool(bag.recovered), "start_ns": meta.get("start_ns"),
                "stop_ns": meta.get("stop_ns"), "frame_stamps_ns": camera.stamps[alignment.frames].tolist(),
                "joint_names": joint_names, "gripper_command_known": gripper_known,
                "alignment": {"camera_frames": alignment.camera_frames, "decimated": alignment.decimated,
                              "gaps": alignment.gaps, "dropped": alignment.dropped},
                "gripper_state": "command in effect at each frame (latest received at or before it; 0 before any)"}
    cam, camera_poses = _camera_model(size, intrinsics, extrinsics, ee, config.camera_name, metadata, report)
    traces = trace_gripper = None
    if config.traces != "none":
        if config.traces == "gripper" and (intrinsics is None or extrinsics is None):
            raise InvalidInputError(_NO_CALIBRATION.format(where=where))
        future = future_indices(len(ee), config.n_future)
        gripper_uvd = grasp_uv = None
        if config.traces == "gripper":
            gripper_uvd = np.stack([project_unchecked(ee[future[t], :3], cam.intrinsics, camera_poses[t])
                                    for t in range(len(ee))])
            behind = int(np.count_nonzero(gripper_uvd[:, 0, 2] < MIN_DEPTH_M))
            if behind:
                report.warnings.append(f"gripper behind the camera in {behind} frame(s): its depth clipped to {MIN_DEPTH_M} m")
            grasp = grasp_points(ee[:, :3], state) if gripper_known else np.full((len(ee), 3), np.nan)
            grasp_uv = np.full((len(ee), 2), np.nan)
            for t in np.flatnonzero(np.isfinite(grasp[:, 0])):
                u, v, z = project_unchecked(grasp[t], cam.intrinsics, camera_poses[t])
                if z > MIN_DEPTH_M:
                    grasp_uv[t] = (u, v)
        labels = trace_labels(rgb, depth, config.n_future, config.tracked_marks, config.grid_size, gripper_uvd,
                              grasp_uv, tracker)
        traces, trace_gripper = labels.traces, state[future].astype(np.float32)
        metadata.update(n_future=config.n_future, trace_mode=config.traces, mark_names=labels.mark_names,
                        trace_depth_filled=labels.depth_filled, trace_marks_filled=labels.marks_filled,
                        object_from_grasp_frames=labels.object_from_grasp)
    instruction = str(meta.get("instruction") or "")
    outcome = meta.get("outcome")
    return Episode(instruction=instruction, task=str(meta.get("task") or instruction), rgb=rgb, ee_pose=ee,
                   gripper=width, joints=joints, actions=actions, camera=cam, fps=rate, depth=depth,
                   gt_traces=traces, gt_trace_gripper=trace_gripper,
                   success=None if outcome is None else outcome == "success", metadata=metadata).validate()


# ------------------------------------------------------------------------------------------ the run
def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")


def _robot_name(robot) -> str:
    if isinstance(robot, dict):
        robot = robot.get("name") or robot.get("type")
    return str(robot) if robot else "unknown"


def convert_bags(paths, out, config: ConvertConfig = ConvertConfig(), overwrite: bool = False,
                 progress: bool = False, vcodec: str = "libx264", tracker=None) -> ConvertSummary:
    """Convert recorded episodes (episode folders, or folders holding them) into a LeRobot v3 dataset at `out`.

    An episode that cannot be converted (corrupt bag, missing stream, ...) is reported in the summary
    with the reason and the rest are still written. Raises InvalidInputError when nothing could be
    converted or the destination is unusable.
    """
    from magma_core.data.bag_io import BagError, find_episodes  # noqa: PLC0415
    from magma_core.data.lerobot_writer import LeRobotV3Writer  # noqa: PLC0415

    config.validate()
    started = time.perf_counter()
    out = Path(out).expanduser().absolute()
    _check_destination(out, overwrite)
    reports: list[EpisodeReport] = []
    folders: list[Path] = []
    for path in [paths] if isinstance(paths, (str, Path)) else list(paths):
        try:
            folders += find_episodes([path])
        except BagError as exc:
            reports.append(EpisodeReport(path=str(path), status="failed", reason=str(exc)))
    if not folders and not reports:
        raise InvalidInputError("no episode folders given")
    writer, fps = None, config.fps
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(folders), desc="dataset from-bags", unit="episode", file=sys.stderr)
    try:
        for folder in folders:
            try:
                episode, report = load_episode(folder, config, fps=fps, tracker=tracker)
            except MagmaError as exc:
                episode, report = None, EpisodeReport(path=str(folder), status="failed", reason=str(exc))
            if episode is not None:
                if writer is None:  # the first episode sets the rate (and a bad destination stops the run)
                    fps = episode.fps
                    writer = LeRobotV3Writer(out, fps=fps, robot_type=_robot_name(episode.metadata.get("robot")),
                                             camera_name=config.camera_name, vcodec=vcodec, overwrite=overwrite)
                try:
                    writer.add_episode(episode)
                except InvalidInputError as exc:  # checked before anything is written: the dataset stays whole
                    report.status, report.reason, report.frames = "failed", f"{folder}: {exc}", 0
            reports.append(report)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(frames=sum(r.frames for r in reports), failed=sum(r.status == "failed" for r in reports))
        summary = ConvertSummary(out=None, fps=fps, episodes=reports)
        if writer is None:
            reasons = "; ".join(f"{r.path}: {r.reason}" for r in reports) or "no episodes"
            raise InvalidInputError(f"no episode was converted, nothing written to {out} ({reasons})")
        root = writer.finalize()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    summary.out = str(root)
    summary.seconds = time.perf_counter() - started
    summary.bytes_on_disk = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())
    return summary


__all__ = ["ConvertConfig", "ConvertSummary", "EpisodeReport", "StreamTopics", "Stream", "TraceLabels", "align",
           "convert_bags", "decode_depth", "decode_rgb", "ee_actions", "estimate_fps", "grasp_points",
           "latest_at_or_before", "load_episode", "match_nearest", "parse_extrinsics", "select_frames",
           "trace_labels"]

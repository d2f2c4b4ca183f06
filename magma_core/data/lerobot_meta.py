"""The LeRobot v3.0 layout: paths, info.json features, and the schema this project writes into it.

    meta/info.json                       codebase_version "v3.0", fps, features, path templates
    meta/stats.json                      per-feature min/max/mean/std/count/q01..q99
    meta/tasks.parquet                   task (the instruction text) <-> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: where its frames live
    data/chunk-XXX/file-YYY.parquet      frames of several episodes, rotated by size
    videos/<video_key>/chunk-XXX/file-YYY.mp4  frames of several episodes, rotated by size

This project's additions, which a plain LeRobot reader ignores: ``observation.gt_trace`` (flattened
(M, n+1, 3), its unflattened shape under the feature's "magma.shape"), ``observation.gt_trace_gripper``,
``observation.waypoint``, a lossless depth video ``observation.depth.<camera>`` (FFV1 gray16le
millimetres, 0 = unknown; see magma_core.data.video), per-episode camera parameters, success, seed
and metadata columns in the episodes table, and a "magma" section in info.json.
"""
from __future__ import annotations

from dataclasses import dataclass

from magma_core.data import layout
from magma_core.data.episode import Episode
from magma_core.data.video import DEPTH_CODEC, DEPTH_PIX_FMT, RGB_PIX_FMT, codec_name_for_info
from magma_core.errors import InvalidInputError

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
DEFAULT_CHUNKS_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_MB = 100
DEFAULT_VIDEO_FILE_SIZE_MB = 200
MAGMA_FORMAT_VERSION = 1

STATE = "observation.state"
ACTION = "action"
WAYPOINT = "observation.waypoint"
GT_TRACE = "observation.gt_trace"
GT_TRACE_GRIPPER = "observation.gt_trace_gripper"
IMAGE_PREFIX = "observation.images."
DEPTH_PREFIX = "observation.depth."
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
# Episode columns a v3.0 reader needs to find an episode's frames.
REQUIRED_EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index",
                            "dataset_from_index", "dataset_to_index")


def next_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one: files fill a chunk folder up to `chunks_size`."""
    file_index += 1
    if file_index >= chunks_size:
        return chunk_index + 1, 0
    return chunk_index, file_index


@dataclass(frozen=True)
class Schema:
    """What every episode of one dataset must share; taken from the first episode written."""

    camera_name: str
    height: int
    width: int
    num_joints: int
    has_depth: bool
    has_waypoints: bool
    trace_shape: tuple[int, int, int] | None  # (M, n+1, 3)

    @property
    def rgb_key(self) -> str:
        return IMAGE_PREFIX + self.camera_name

    @property
    def depth_key(self) -> str:
        return DEPTH_PREFIX + self.camera_name

    @property
    def video_keys(self) -> list[str]:
        return [self.rgb_key] + ([self.depth_key] if self.has_depth else [])

    @classmethod
    def of(cls, episode: Episode, camera_name: str | None = None) -> "Schema":
        trace = None if episode.gt_traces is None else tuple(int(s) for s in episode.gt_traces.shape[1:])
        name = camera_name or episode.camera.name
        if not name or "/" in name:
            raise InvalidInputError(f"camera name {name!r} cannot be used in a video key")
        return cls(camera_name=name, height=int(episode.rgb.shape[1]), width=int(episode.rgb.shape[2]),
                   num_joints=int(episode.joints.shape[1]), has_depth=episode.depth is not None,
                   has_waypoints=episode.waypoints is not None, trace_shape=trace)

    def check(self, episode: Episode, index: int) -> None:
        """Raise InvalidInputError naming the first way `episode` differs from this schema."""
        other = Schema.of(episode, self.camera_name)
        for field in ("height", "width", "num_joints", "has_depth", "has_waypoints", "trace_shape"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                raise InvalidInputError(
                    f"episode {index} does not match the dataset: {field} is {theirs}, earlier episodes have {mine}")

    def features(self, fps: float, vcodec: str) -> dict:
        """The info.json "features" entry, LeRobot style."""
        feats = {
            self.rgb_key: _video_feature(self.height, self.width, 3, fps, codec_name_for_info(vcodec), RGB_PIX_FMT,
                                         False),
        }
        if self.has_depth:
            depth = _video_feature(self.height, self.width, 1, fps, DEPTH_CODEC, DEPTH_PIX_FMT, True)
            depth["info"].update({"depth.unit": "mm", "depth.unknown_value": 0, "depth.lossless": True})
            feats[self.depth_key] = depth
        feats[STATE] = {"dtype": "float32", "shape": [8 + self.num_joints],
                        "names": layout.state_names(self.num_joints)}
        feats[ACTION] = {"dtype": "float32", "shape": [7], "names": list(layout.ACTION_NAMES)}
        if self.has_waypoints:
            feats[WAYPOINT] = {"dtype": "float32", "shape": [8], "names": list(layout.WAYPOINT_NAMES)}
        if self.trace_shape is not None:
            m, steps, dims = self.trace_shape
            feats[GT_TRACE] = {"dtype": "float32", "shape": [m * steps * dims], "names": None,
                               "magma.shape": [m, steps, dims], "magma.layout": "mark, step, (u px, v px, depth m)"}
            feats[GT_TRACE_GRIPPER] = {"dtype": "float32", "shape": [steps], "names": None}
        feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for name in INDEX_COLUMNS[1:]:
            feats[name] = {"dtype": "int64", "shape": [1], "names": None}
        return feats

    def to_dict(self) -> dict:
        return {"camera_name": self.camera_name, "num_joints": self.num_joints, "has_depth": self.has_depth,
                "has_waypoints": self.has_waypoints,
                "trace_shape": None if self.trace_shape is None else list(self.trace_shape)}


def _video_feature(height: int, width: int, channels: int, fps: float, codec: str, pix_fmt: str, depth: bool) -> dict:
    return {
        "dtype": "video",
        "shape": [height, width, channels],
        "names": ["height", "width", "channels"],
        "info": {
            "video.height": height,
            "video.width": width,
            "video.codec": codec,
            "video.pix_fmt": pix_fmt,
            "video.is_depth_map": depth,
            "video.fps": fps,
            "video.channels": channels,
            "has_audio": False,
        },
    }


def arrow_modules():
    """(pyarrow, pyarrow.parquet), imported on first use: only dataset work needs them."""
    try:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InvalidInputError("LeRobot datasets need 'pyarrow' (pip install 'magma-robot-stack[data]')") from exc
    return pa, pq


def json_number(value: float) -> int | float:
    """fps as LeRobot writes it: an int when it is one."""
    return int(value) if float(value).is_integer() else float(value)

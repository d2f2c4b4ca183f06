"""Write Episodes as a LeRobot v3.0 dataset (parquet + mp4), atomically.

Everything is written under a hidden sibling folder ``.<name>.partial-<id>`` and renamed to the
destination only by finalize(), after meta/info.json is complete; an interrupted run leaves no
folder that looks like a dataset. Use it as a context manager to finalize on success and clean up
on error.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from magma_core.data import layout, stats as stats_lib
from magma_core.data.episode import Episode
from magma_core.data.lerobot_meta import (
    ACTION, CODEBASE_VERSION, DATA_PATH, DEFAULT_CHUNKS_SIZE, DEFAULT_DATA_FILE_SIZE_MB,
    DEFAULT_VIDEO_FILE_SIZE_MB, EPISODES_PATH, GT_TRACE, GT_TRACE_GRIPPER, INFO_PATH,
    MAGMA_FORMAT_VERSION, STATE, STATS_PATH, TASKS_PATH, VIDEO_PATH, WAYPOINT, Schema, arrow_modules,
    json_number, next_file,
)
from magma_core.data.video import (
    DEPTH_CODEC, DEPTH_PIX_FMT, DEPTH_UNKNOWN_MM, VideoConcatenator, depth_to_mm, encode_depth, encode_rgb,
)
from magma_core.errors import InvalidInputError

_MB = 1024 * 1024
_PER_EPISODE_STATS = ("min", "max", "mean", "std", "count")


def to_jsonable(value):
    """Episode metadata -> JSON: arrays become lists, numpy scalars plain numbers, the rest str()."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class _RotatingFile:
    """Tracks the (chunk, file) a stream of episodes is currently writing to."""

    def __init__(self, limit_mb: float, chunks_size: int):
        self.limit_bytes = float(limit_mb) * _MB
        self.chunks_size = chunks_size
        self.chunk = 0
        self.file = 0

    def advance(self) -> None:
        self.chunk, self.file = next_file(self.chunk, self.file, self.chunks_size)


class LeRobotV3Writer:
    """Writes Episodes into a LeRobot v3.0 dataset folder.

    ``LeRobotV3Writer(root, fps)``, then ``add_episode(ep)`` per episode and ``finalize()``. All
    episodes share the first one's layout (camera, image size, joints, depth/waypoints/traces
    present). Episodes share data and video files until a file passes its size limit
    (``data_files_size_in_mb`` / ``video_files_size_in_mb``, LeRobot's defaults 100 / 200).
    """

    def __init__(self, root: str | os.PathLike, fps: float, *, robot_type: str = "panda",
                 camera_name: str | None = None, vcodec: str = "libx264", overwrite: bool = False,
                 data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_MB,
                 video_files_size_in_mb: float = DEFAULT_VIDEO_FILE_SIZE_MB,
                 chunks_size: int = DEFAULT_CHUNKS_SIZE, progress: bool = False):
        self.root = Path(root).expanduser().absolute()
        if not (np.isfinite(fps) and fps > 0):
            raise InvalidInputError(f"fps must be positive, got {fps}")
        if vcodec not in ("libx264", "libsvtav1"):
            raise InvalidInputError(f"vcodec must be 'libx264' or 'libsvtav1', got {vcodec!r}")
        if chunks_size < 1:
            raise InvalidInputError(f"chunks_size must be >= 1, got {chunks_size}")
        self.fps = float(fps)
        self.robot_type = robot_type
        self.camera_name = camera_name
        self.vcodec = vcodec
        self.overwrite = overwrite
        self.chunks_size = int(chunks_size)
        self.data_files_size_in_mb = data_files_size_in_mb
        self.video_files_size_in_mb = video_files_size_in_mb
        self._check_destination()
        self._tmp = self.root.parent / f".{self.root.name}.partial-{uuid.uuid4().hex[:8]}"
        try:
            (self._tmp / ".staging").mkdir(parents=True)
        except OSError as exc:
            raise InvalidInputError(f"cannot write a dataset next to {self.root}: {exc}") from exc
        self._pa, self._pq = arrow_modules()
        self._schema: Schema | None = None
        self._tasks: dict[str, int] = {}
        self._episode_rows: list[dict] = []
        self._total_frames = 0
        self._data = _RotatingFile(data_files_size_in_mb, self.chunks_size)
        self._data_writer = None
        self._videos: dict[str, tuple[_RotatingFile, VideoConcatenator, float]] = {}
        self._columns: dict[str, list[np.ndarray]] = {}
        self._image_stats: dict[str, stats_lib.HistogramStats] = {}
        self._closed = False
        self._progress = None
        if progress:
            from tqdm import tqdm  # noqa: PLC0415 - only when asked for

            self._progress = tqdm(desc=f"writing {self.root.name}", unit="episode")

    # ------------------------------------------------------------------ public API
    @property
    def num_episodes(self) -> int:
        return len(self._episode_rows)

    def add_episode(self, episode: Episode) -> int:
        """Append one episode; return its episode_index."""
        if self._closed:
            raise InvalidInputError("this writer was already finalized or aborted")
        index = len(self._episode_rows)
        episode.validate()
        if abs(float(episode.fps) - self.fps) > 1e-6:
            raise InvalidInputError(f"episode {index} runs at {episode.fps} fps, the dataset at {self.fps} fps")
        if self._schema is None:
            self._schema = Schema.of(episode, self.camera_name)
        else:
            self._schema.check(episode, index)
        length = len(episode)
        task_text = episode.instruction or episode.task
        task_index = self._tasks.setdefault(task_text, len(self._tasks))
        frames = self._frame_columns(episode, index, task_index)
        row = {
            "episode_index": index,
            "tasks": [task_text],
            "length": length,
            "dataset_from_index": self._total_frames,
            "dataset_to_index": self._total_frames + length,
        }
        row.update(self._write_data(frames))
        row.update(self._write_videos(episode, index))
        row.update(self._episode_stats(frames))
        row.update({
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
            "task_name": episode.task,
            "success": episode.success,
            "seed": episode.seed,
            "camera": json.dumps(episode.camera.to_dict()),
            "episode_metadata": json.dumps(to_jsonable(episode.metadata)),
        })
        self._episode_rows.append(row)
        self._total_frames += length
        for name, values in frames.items():
            self._columns.setdefault(name, []).append(values)
        if self._progress is not None:
            self._progress.update(1)
        return index

    def finalize(self) -> Path:
        """Close files, write meta/ and move the dataset into place; return its root."""
        if self._closed:
            raise InvalidInputError("this writer was already finalized or aborted")
        if not self._episode_rows:
            self.abort()
            raise InvalidInputError(f"no episodes were added; nothing written to {self.root}")
        try:
            self._close_streams()
            shutil.rmtree(self._tmp / ".staging", ignore_errors=True)
            self._write_tasks()
            self._write_episodes()
            self._write_json(STATS_PATH, stats_lib.to_json(self._dataset_stats()))
            self._write_json(INFO_PATH, self._info())  # last: its presence marks the folder complete
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        if self._progress is not None:
            self._progress.close()
        return self.root

    close = finalize

    def abort(self) -> None:
        """Drop everything written so far; the destination is left untouched."""
        try:
            self._close_streams()
        except Exception:  # noqa: BLE001 - cleaning up after a failure must not mask it
            pass
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True
        if self._progress is not None:
            self._progress.close()

    def __enter__(self) -> "LeRobotV3Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    # ------------------------------------------------------------------ destination
    def _check_destination(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise InvalidInputError(f"output path {root} exists and is not a folder")
        if root.is_dir() and any(root.iterdir()) and not self.overwrite:
            raise InvalidInputError(f"output folder {root} exists and is not empty (pass overwrite=True to replace it)")
        parent = root.parent
        if not parent.is_dir():
            try:
                parent.mkdir(parents=True)
            except OSError as exc:
                raise InvalidInputError(f"cannot create the folder {parent}: {exc}") from exc
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InvalidInputError(f"output folder {parent} is not writable")

    def _move_into_place(self) -> None:
        old = None
        if self.root.exists():
            if any(self.root.iterdir()) and not self.overwrite:
                raise InvalidInputError(f"output folder {self.root} appeared while writing and is not empty")
            old = self.root.parent / f".{self.root.name}.old-{uuid.uuid4().hex[:8]}"
            self.root.rename(old)
        try:
            self._tmp.rename(self.root)
        except OSError:
            if old is not None:
                old.rename(self.root)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ frames
    def _frame_columns(self, episode: Episode, episode_index: int, task_index: int) -> dict[str, np.ndarray]:
        length = len(episode)
        cols = {STATE: layout.state_vectors(episode), ACTION: episode.actions.astype(np.float32)}
        if episode.waypoints is not None:
            cols[WAYPOINT] = episode.waypoints.astype(np.float32)
        if episode.gt_traces is not None:
            cols[GT_TRACE] = episode.gt_traces.reshape(length, -1).astype(np.float32)
            cols[GT_TRACE_GRIPPER] = episode.gt_trace_gripper.astype(np.float32)
        frame_index = np.arange(length, dtype=np.int64)
        cols["timestamp"] = (frame_index / self.fps).astype(np.float32)
        cols["frame_index"] = frame_index
        cols["episode_index"] = np.full(length, episode_index, dtype=np.int64)
        cols["index"] = frame_index + self._total_frames
        cols["task_index"] = np.full(length, task_index, dtype=np.int64)
        return cols

    def _table(self, cols: dict[str, np.ndarray]):
        pa = self._pa
        arrays, names = [], []
        for name, values in cols.items():
            if values.ndim == 2:
                flat = pa.array(np.ascontiguousarray(values).reshape(-1))
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, values.shape[1]))
            else:
                arrays.append(pa.array(values))
            names.append(name)
        return pa.Table.from_arrays(arrays, names=names)

    def _write_data(self, cols: dict[str, np.ndarray]) -> dict:
        table = self._table(cols)
        path = self._tmp / DATA_PATH.format(chunk_index=self._data.chunk, file_index=self._data.file)
        if self._data_writer is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = self._pq.ParquetWriter(str(path), table.schema)
        self._data_writer.write_table(table)
        location = {"data/chunk_index": self._data.chunk, "data/file_index": self._data.file}
        # Row groups reach the disk as they are written, so the size on disk is current.
        if path.stat().st_size >= self._data.limit_bytes:
            self._data_writer.close()
            self._data_writer = None
            self._data.advance()
        return location

    # ------------------------------------------------------------------ videos
    def _write_videos(self, episode: Episode, index: int) -> dict:
        schema = self._schema
        staging = self._tmp / ".staging"
        streams = [(schema.rgb_key, episode.rgb, "rgb")]
        if schema.has_depth:
            streams.append((schema.depth_key, depth_to_mm(episode.depth), "depth"))
        row = {}
        for key, frames, kind in streams:
            tmp = staging / f"{index}-{kind}.mp4"
            if kind == "rgb":
                encode_rgb(frames, tmp, self.fps, self.vcodec)
            else:
                encode_depth(frames, tmp, self.fps)
            start = self._append_video(key, tmp, len(episode))
            rotating = self._videos[key][0]
            row.update({
                f"videos/{key}/chunk_index": rotating.chunk,
                f"videos/{key}/file_index": rotating.file,
                f"videos/{key}/from_timestamp": start,
                f"videos/{key}/to_timestamp": start + len(episode) / self.fps,
            })
            tmp.unlink()
            if key not in self._image_stats:
                self._image_stats[key] = (stats_lib.HistogramStats(3) if kind == "rgb" else stats_lib.HistogramStats(
                    1, levels=65536, scale=1 / 1000.0, ignore=DEPTH_UNKNOWN_MM))
            self._image_stats[key].add(frames)
        return row

    def _append_video(self, key: str, episode_file: Path, num_frames: int) -> float:
        size = episode_file.stat().st_size
        if key not in self._videos:
            rotating = _RotatingFile(self.video_files_size_in_mb, self.chunks_size)
            self._videos[key] = (rotating, self._open_video(key, rotating), 0.0)
        rotating, concat, written = self._videos[key]
        # Rotate before an episode that would take the file past its limit (never leave it empty).
        if concat.num_frames and written + size > rotating.limit_bytes:
            concat.close()
            rotating.advance()
            concat, written = self._open_video(key, rotating), 0.0
        start = concat.append(episode_file, num_frames)
        self._videos[key] = (rotating, concat, written + size)
        return start

    def _open_video(self, key: str, rotating: _RotatingFile) -> VideoConcatenator:
        path = self._tmp / VIDEO_PATH.format(video_key=key, chunk_index=rotating.chunk, file_index=rotating.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        return VideoConcatenator(path, self.fps)

    def _close_streams(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        for _, concat, _ in self._videos.values():
            concat.close()

    # ------------------------------------------------------------------ meta
    def _episode_stats(self, cols: dict[str, np.ndarray]) -> dict:
        out = {}
        for name, values in cols.items():
            entry = stats_lib.vector_stats(values)
            for stat in _PER_EPISODE_STATS:
                out[f"stats/{name}/{stat}"] = entry[stat].tolist()
        return out

    def _dataset_stats(self) -> dict:
        out = {name: stats_lib.vector_stats(np.concatenate(parts)) for name, parts in self._columns.items()}
        for key, accumulator in self._image_stats.items():
            result = accumulator.result()
            if result is not None:  # a depth stream with no known pixel has no statistics
                out[key] = result
        return out

    def _write_tasks(self) -> None:
        pa, pq = self._pa, self._pq
        texts = list(self._tasks)
        table = pa.table({"task_index": pa.array([self._tasks[t] for t in texts], pa.int64()),
                          "task": pa.array(texts, pa.string())})
        # pandas metadata makes "task" the DataFrame index, as LeRobot's own tasks.parquet has it.
        pandas_meta = {
            "index_columns": ["task"], "column_indexes": [],
            "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                         "numpy_type": "int64", "metadata": None},
                        {"name": "task", "field_name": "task", "pandas_type": "unicode",
                         "numpy_type": "object", "metadata": None}],
            "creator": {"library": "magma_core"}, "pandas_version": "2.2.0",
        }
        table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        (self._tmp / TASKS_PATH).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, str(self._tmp / TASKS_PATH))

    def _write_episodes(self) -> None:
        pa, pq = self._pa, self._pq
        columns = list(self._episode_rows[0])
        data = {name: [row[name] for row in self._episode_rows] for name in columns}
        types = {"tasks": pa.list_(pa.string()), "success": pa.bool_(), "seed": pa.int64()}
        table = pa.table({name: pa.array(values, type=types.get(name)) for name, values in data.items()})
        path = self._tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, str(path))

    def _info(self) -> dict:
        schema = self._schema
        first_camera = json.loads(self._episode_rows[0]["camera"])
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episode_rows),
            "total_frames": self._total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_files_size_in_mb,
            "video_files_size_in_mb": self.video_files_size_in_mb,
            "fps": json_number(self.fps),
            "splits": {"train": f"0:{len(self._episode_rows)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": schema.features(json_number(self.fps), self.vcodec),
            "magma": {
                "format_version": MAGMA_FORMAT_VERSION,
                **schema.to_dict(),
                "rgb_key": schema.rgb_key,
                "depth_key": schema.depth_key if schema.has_depth else None,
                "camera": first_camera,
                "depth_encoding": {"codec": DEPTH_CODEC, "pix_fmt": DEPTH_PIX_FMT, "unit": "mm",
                                   "unknown_value": DEPTH_UNKNOWN_MM} if schema.has_depth else None,
                "episode_columns": {"camera": "per-episode CameraParams as JSON", "success": "bool or null",
                                    "seed": "int or null", "task_name": "Episode.task",
                                    "episode_metadata": "Episode.metadata as JSON"},
            },
        }

    def _write_json(self, relative: str, payload: dict) -> None:
        path = self._tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))

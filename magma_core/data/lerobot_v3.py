"""LeRobot v3.0 datasets: read them back as Episodes (and write them, see LeRobotV3Writer).

Datasets this project wrote come back complete (state split into pose/gripper/joints, traces,
depth, camera, success). Other LeRobot v3.0 datasets are read best effort: the first RGB video is
the camera, the raw state and action go to Episode.metadata and the placeholders are flagged
(see magma_core.data.layout).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np

from magma_core.data import layout, stats as stats_lib
from magma_core.data.episode import CameraParams, Episode
from magma_core.data.lerobot_meta import (
    ACTION, CODEBASE_VERSION, GT_TRACE, GT_TRACE_GRIPPER, IMAGE_PREFIX, INFO_PATH,
    REQUIRED_EPISODE_COLUMNS, STATE, STATS_PATH, TASKS_PATH, WAYPOINT, arrow_modules,
)
from magma_core.data.lerobot_writer import LeRobotV3Writer
from magma_core.data.video import decode_frames, mm_to_depth
from magma_core.errors import InvalidInputError

__all__ = ["LeRobotV3Dataset", "LeRobotV3Writer"]

_DATA_CACHE_FILES = 2  # consecutive episodes usually share a data file


class LeRobotV3Dataset:
    """A LeRobot v3.0 dataset folder, read as Episodes.

    ``len(ds)`` episodes, ``ds.episode(i)`` / ``ds[i]`` / iteration in episode_index order;
    ``ds.num_frames``, ``ds.fps``, ``ds.stats`` (stats.json as numpy arrays), ``ds.tasks``.
    Missing or malformed meta files, and truncated or corrupt parquet/mp4 files, raise
    InvalidInputError naming the file.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self._pa, self._pq = arrow_modules()
        if not self.root.is_dir():
            raise InvalidInputError(f"LeRobot dataset folder not found: {self.root}")
        self.info = self._load_info()
        self.fps = float(self.info["fps"])
        self.features: dict = self.info["features"]
        self._magma: dict = self.info.get("magma") or {}
        self.tasks = self._load_tasks()
        self._episodes = self._load_episodes()
        self.stats = self._load_stats()
        self._check_files()
        self._data_cache: OrderedDict[Path, object] = OrderedDict()

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return len(self._episodes["episode_index"])

    @property
    def num_frames(self) -> int:
        return int(sum(self._episodes["length"]))

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    @property
    def rgb_key(self) -> str | None:
        """The RGB camera read into Episode.rgb."""
        if self._magma.get("rgb_key"):
            return self._magma["rgb_key"]
        for key, feat in self.features.items():
            if feat.get("dtype") in ("video", "image") and key.startswith(IMAGE_PREFIX) \
                    and not feat.get("info", {}).get("video.is_depth_map", False):
                return key
        return None

    @property
    def depth_key(self) -> str | None:
        return self._magma.get("depth_key")

    def episode_info(self, i: int) -> dict:
        """The episodes-table row of the i-th episode (by episode_index order)."""
        i = self._position(i)
        return {name: values[i] for name, values in self._episodes.items()}

    def episode(self, i: int) -> Episode:
        """Decode the i-th episode (data rows, video frames, meta) into an Episode."""
        row = self.episode_info(i)
        table = self._episode_rows(row)
        length = int(row["length"])
        if table.num_rows != length:
            raise InvalidInputError(
                f"{self._data_path(row)} holds {table.num_rows} frames of episode {row['episode_index']}, "
                f"the episodes table says {length}")
        return self._to_episode(row, table, length)

    __getitem__ = episode

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.episode(i)

    # ------------------------------------------------------------------ meta loading
    def _load_info(self) -> dict:
        path = self.root / INFO_PATH
        if not path.is_file():
            raise InvalidInputError(f"not a LeRobot dataset: {path} is missing")
        try:
            info = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"cannot parse {path}: {exc}") from exc
        if not isinstance(info, dict):
            raise InvalidInputError(f"{path} must hold a JSON object")
        version = str(info.get("codebase_version", ""))
        if not version.startswith("v3."):
            raise InvalidInputError(
                f"{path}: codebase_version {version or '(none)'} is not supported; this reader needs "
                f"{CODEBASE_VERSION} (convert older datasets with LeRobot's v2.1 -> v3.0 converter)")
        for key in ("fps", "features", "data_path"):
            if key not in info:
                raise InvalidInputError(f"{path} has no {key!r}")
        if not isinstance(info["features"], dict) or not info["features"]:
            raise InvalidInputError(f"{path}: 'features' must be a non-empty object")
        try:
            fps = float(info["fps"])
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{path}: fps {info['fps']!r} is not a number") from exc
        if not fps > 0:
            raise InvalidInputError(f"{path}: fps must be positive, got {fps}")
        for name, feat in info["features"].items():
            if not isinstance(feat, dict) or "dtype" not in feat or "shape" not in feat:
                raise InvalidInputError(f"{path}: feature {name!r} needs 'dtype' and 'shape'")
        if any(f["dtype"] == "video" for f in info["features"].values()) and "video_path" not in info:
            raise InvalidInputError(f"{path} has video features but no 'video_path'")
        return info

    def _read_table(self, path: Path, columns: list[str] | None = None):
        if not path.is_file():
            raise InvalidInputError(f"dataset file missing: {path}")
        try:
            return self._pq.read_table(str(path), columns=columns)
        except (self._pa.ArrowException, OSError, ValueError) as exc:
            raise InvalidInputError(f"truncated or corrupt parquet file {path}: {exc}") from exc

    def _load_tasks(self) -> dict[int, str]:
        path = self.root / TASKS_PATH
        table = self._read_table(path)
        names = table.column_names
        # LeRobot stores the task text as the pandas index; older writers may call it differently.
        text_col = "task" if "task" in names else "__index_level_0__" if "__index_level_0__" in names else None
        if "task_index" not in names or text_col is None:
            raise InvalidInputError(f"{path} needs 'task_index' and 'task' columns, has {names}")
        return dict(zip(table.column("task_index").to_pylist(), table.column(text_col).to_pylist()))

    def _load_episodes(self) -> dict[str, list]:
        folder = self.root / "meta" / "episodes"
        files = sorted(folder.glob("chunk-*/file-*.parquet"))
        if not files:
            raise InvalidInputError(f"not a LeRobot v3.0 dataset: no episode tables under {folder}")
        tables = [self._read_table(p) for p in files]
        for path, table in zip(files, tables):
            missing = [c for c in REQUIRED_EPISODE_COLUMNS if c not in table.column_names]
            for key in self.video_keys:
                missing += [c for c in (f"videos/{key}/chunk_index", f"videos/{key}/file_index",
                                        f"videos/{key}/from_timestamp") if c not in table.column_names]
            if missing:
                raise InvalidInputError(f"{path} lacks episode columns {missing}")
        table = self._pa.concat_tables(tables, promote_options="default")
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        order = np.argsort(columns["episode_index"], kind="stable")
        columns = {name: [values[i] for i in order] for name, values in columns.items()}
        if len(set(columns["episode_index"])) != len(order):
            raise InvalidInputError(f"episode tables under {folder} list an episode_index twice")
        return columns

    def _load_stats(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / STATS_PATH
        if not path.is_file():
            return {}
        try:
            return stats_lib.from_json(json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise InvalidInputError(f"cannot parse {path}: {exc}") from exc

    def _check_files(self) -> None:
        """Fail at open, not mid-training, when a file the episodes table points to is absent."""
        cols = self._episodes
        wanted = {(int(c), int(f)): None for c, f in zip(cols["data/chunk_index"], cols["data/file_index"])}
        paths = [self._data_path({"data/chunk_index": c, "data/file_index": f}) for c, f in wanted]
        for key in self.video_keys:
            pairs = dict.fromkeys(zip(cols[f"videos/{key}/chunk_index"], cols[f"videos/{key}/file_index"]))
            paths += [self._video_path({f"videos/{key}/chunk_index": c, f"videos/{key}/file_index": f}, key)
                      for c, f in pairs]
        for path in paths:
            if not path.is_file():
                raise InvalidInputError(f"dataset file missing: {path}")

    # ------------------------------------------------------------------ episode assembly
    def _position(self, i: int) -> int:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"episode {i} out of range for a dataset of {n} episodes")
        return int(i) % n

    def _data_path(self, row: dict) -> Path:
        return self.root / self.info["data_path"].format(chunk_index=int(row["data/chunk_index"]),
                                                          file_index=int(row["data/file_index"]))

    def _video_path(self, row: dict, key: str) -> Path:
        return self.root / self.info["video_path"].format(
            video_key=key, chunk_index=int(row[f"videos/{key}/chunk_index"]),
            file_index=int(row[f"videos/{key}/file_index"]))

    def _episode_rows(self, row: dict):
        path = self._data_path(row)
        table = self._data_cache.get(path)
        if table is None:
            table = self._read_table(path)
            if "episode_index" not in table.column_names:
                raise InvalidInputError(f"{path} has no episode_index column")
            self._data_cache[path] = table
            while len(self._data_cache) > _DATA_CACHE_FILES:
                self._data_cache.popitem(last=False)
        self._data_cache.move_to_end(path)
        import pyarrow.compute as pc  # noqa: PLC0415 - loaded with pyarrow already

        rows = table.filter(pc.equal(table.column("episode_index"), int(row["episode_index"])))
        if "frame_index" in rows.column_names:
            rows = rows.sort_by("frame_index")
        return rows

    def _column(self, table, name: str) -> np.ndarray | None:
        if name not in table.column_names:
            return None
        column = table.column(name).combine_chunks()
        kinds = self._pa.types
        if kinds.is_list(column.type) or kinds.is_fixed_size_list(column.type) or kinds.is_large_list(column.type):
            values = column.flatten().to_numpy(zero_copy_only=False)
            return values.reshape(table.num_rows, -1)
        return column.to_numpy(zero_copy_only=False)

    def _to_episode(self, row: dict, table, length: int) -> Episode:
        metadata = self._row_json(row, "episode_metadata", {})
        # "source" keeps where the episode first came from (e.g. "rlds" for a converted dataset).
        metadata.setdefault("source", "lerobot_v3")
        metadata.update({"dataset_root": str(self.root), "episode_index": int(row["episode_index"])})
        rgb = self._rgb(row, table, length)
        camera = self._camera(row, rgb.shape[2], rgb.shape[1], metadata)
        state = self._column(table, STATE)
        actions = self._column(table, ACTION)
        # Foreign datasets may store 1-D state/action as scalar columns.
        state = None if state is None else state.reshape(length, -1)
        actions = None if actions is None else actions.reshape(length, -1)
        ee_pose, gripper, joints = self._split_state(state, length, metadata)
        if actions is None or not self._magma:
            if actions is not None:
                metadata["raw_actions"] = actions
            metadata["actions_known"] = False
            actions = np.zeros((length, 7))
        depth = None
        if self.depth_key:
            depth = mm_to_depth(self._decode(row, self.depth_key, length, "depth"))
        traces = trace_gripper = None
        trace_shape = self._magma.get("trace_shape")
        flat = self._column(table, GT_TRACE)
        if flat is not None and trace_shape:
            traces = flat.reshape(length, *trace_shape).astype(np.float64)
            trace_gripper = self._column(table, GT_TRACE_GRIPPER).astype(np.float64)
        waypoints = self._column(table, WAYPOINT)
        tasks = row.get("tasks") or []
        instruction = tasks[0] if tasks else ""
        if not instruction and "task_index" in table.column_names and table.num_rows:
            instruction = self.tasks.get(int(table.column("task_index")[0].as_py()), "")
        success = row.get("success")
        seed = row.get("seed")
        episode = Episode(
            instruction=instruction, task=row.get("task_name") or instruction, rgb=rgb,
            ee_pose=ee_pose, gripper=gripper, joints=joints, actions=np.asarray(actions, dtype=np.float64),
            camera=camera, fps=self.fps, depth=depth,
            waypoints=None if waypoints is None else waypoints.astype(np.float64),
            gt_traces=traces, gt_trace_gripper=trace_gripper,
            success=None if success is None else bool(success), seed=None if seed is None else int(seed),
            metadata=metadata)
        return episode.validate()

    def _split_state(self, state: np.ndarray | None, length: int, metadata: dict):
        num_joints = self._magma.get("num_joints")
        if state is not None and num_joints is not None:
            return layout.split_state(state, int(num_joints))
        if state is not None:
            metadata["raw_state"] = state
        metadata["ee_pose_known"] = False
        joints = np.zeros((length, 0)) if state is None else state.astype(np.float64)
        return np.tile(layout.IDENTITY_POSE, (length, 1)), np.zeros((length, 1)), joints

    def _rgb(self, row: dict, table, length: int) -> np.ndarray:
        key = self.rgb_key
        if key is None:
            raise InvalidInputError(f"{self.root / INFO_PATH} declares no RGB camera (observation.images.*)")
        if self.features[key]["dtype"] == "image":
            return self._decode_image_column(table, key)
        return self._decode(row, key, length, "rgb")

    def _decode(self, row: dict, key: str, length: int, kind: str) -> np.ndarray:
        shape = self.features[key]["shape"]
        names = self.features[key].get("names") or []
        # LeRobot writes video shapes as (H, W, C) or (C, H, W); the names say which.
        if list(names[:1]) in (["channels"], ["channel"], ["c"]):
            size = (int(shape[1]), int(shape[2]))
        else:
            size = (int(shape[0]), int(shape[1]))
        return decode_frames(self._video_path(row, key), float(row[f"videos/{key}/from_timestamp"]), length,
                             self.fps, kind=kind, size=size)

    def _decode_image_column(self, table, key: str) -> np.ndarray:
        import cv2  # noqa: PLC0415 - only for datasets that store images in parquet

        frames = []
        for cell in table.column(key).to_pylist():
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            image = None if not data else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise InvalidInputError(f"undecodable image in column {key} of {self.root}")
            frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return np.stack(frames)

    def _camera(self, row: dict, width: int, height: int, metadata: dict) -> CameraParams:
        raw = self._row_json(row, "camera", None) or self._magma.get("camera")
        if raw:
            return CameraParams.from_dict(raw)
        metadata["camera_known"] = False
        name = (self.rgb_key or "front").removeprefix(IMAGE_PREFIX)
        return layout.nominal_camera(width, height, name=name)

    @staticmethod
    def _row_json(row: dict, column: str, default):
        raw = row.get(column)
        if not raw:
            return default
        try:
            return json.loads(raw)
        except (TypeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"episodes table column {column!r} is not valid JSON: {exc}") from exc


def is_lerobot_v3(root: str | os.PathLike) -> bool:
    """Whether `root` looks like a LeRobot v3.x dataset (meta/info.json with a v3 version)."""
    path = Path(root) / INFO_PATH
    try:
        return str(json.loads(path.read_text()).get("codebase_version", "")).startswith("v3.")
    except (OSError, ValueError, AttributeError):
        return False


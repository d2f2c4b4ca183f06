"""Read RLDS datasets built by TFDS (Open X-Embodiment, Bridge) without TensorFlow.

A TFDS builder folder (e.g. ``.../bridge_dataset/1.0.0``) holds ``features.json`` (the nested
feature description), ``dataset_info.json`` (name, splits, shard lengths) and shards named
``<name>-<split>.tfrecord-00000-of-00004``. Each record is one episode serialised as a
tf.train.Example whose keys are the flattened feature paths: per-step features live under
``steps/...`` with all steps concatenated (``steps/action`` is T*7 floats, ``steps/observation/image``
is T encoded images), episode features under their own path (``episode_metadata/file_path``).
Records are framed and checksummed as TFRecord; the `tfrecord` package supplies the protobuf
classes and the checksum, this module the random access and the decoding by features.json.

Mapping to Episode (conventions in magma_core.data.episode and magma_core.data.layout):
- 7-D actions are read as (dx, dy, dz, droll, dpitch, dyaw, gripper) like Bridge's; the rotation is
  converted to axis-angle and the gripper to 1 = closed (Bridge's 1 = open is flipped unless
  ``gripper_open_is_one=False``). RT-1 style dict actions (world_vector, rotation_delta,
  gripper_closedness_action / open_gripper) are mapped the same way. Anything else leaves zeros
  with ``actions_known=False`` and the raw arrays in ``metadata["raw_actions"]``.
- OXE has no calibration: the camera is a nominal pinhole (camera_known=False).
- The state becomes the end-effector pose only with ``state_layout="xyz_rpy_gripper"`` (the default
  for Bridge); otherwise the raw state is kept as ``joints`` and in ``metadata["raw_state"]``.
"""
from __future__ import annotations

import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from magma_core.data import layout
from magma_core.data.episode import Episode
from magma_core.errors import InvalidInputError

_STEPS = "steps"
_IMAGE_KEY_PREFERENCE = ("image", "image_0", "rgb", "front_rgb", "agentview_rgb", "image_1")
_INSTRUCTION_KEYS = ("language_instruction", "observation/natural_language_instruction",
                     "observation/instruction", "language_instruction_2")
_KNOWN_FPS = {"bridge": 5.0}
_NUMPY_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64, "int8": np.int8,
                 "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
                 "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_}


@dataclass(frozen=True)
class FeatureSpec:
    """One leaf of features.json, addressed by its flattened key (e.g. "steps/observation/image")."""

    key: str
    kind: str  # "tensor", "image" or "text"
    shape: tuple[int, ...]  # per step (for step features); -1 marks an unknown size
    dtype: str
    encoding: str = "none"  # tensors: none | bytes | zlib; images: jpeg | png

    @property
    def per_step(self) -> bool:
        return self.key.startswith(_STEPS + "/")

    @property
    def name(self) -> str:
        """The key below steps/ (or the full key for episode features)."""
        return self.key[len(_STEPS) + 1:] if self.per_step else self.key


def parse_features(features_json: dict) -> dict[str, FeatureSpec]:
    """Flatten a TFDS features.json into {flattened key: FeatureSpec}; unsupported leaves are skipped."""
    specs: dict[str, FeatureSpec] = {}

    def dims(node: dict) -> tuple[int, ...]:
        raw = (node.get("shape") or {}).get("dimensions", [])
        return tuple(int(d) for d in raw)

    def walk(node: dict, prefix: str) -> None:
        if "featuresDict" in node:
            for name, child in node["featuresDict"].get("features", {}).items():
                walk(child, f"{prefix}/{name}" if prefix else name)
        elif "sequence" in node:  # tfds Dataset (RLDS steps) or Sequence: children are per step
            walk(node["sequence"]["feature"], prefix)
        elif "image" in node:
            image = node["image"]
            specs[prefix] = FeatureSpec(prefix, "image", dims(image), image.get("dtype", "uint8"),
                                        image.get("encodingFormat", "png"))
        elif "tensor" in node:
            tensor = node["tensor"]
            specs[prefix] = FeatureSpec(prefix, "tensor", dims(tensor), tensor.get("dtype", "float32"),
                                        tensor.get("encoding", "none"))
        elif "text" in node:
            specs[prefix] = FeatureSpec(prefix, "text", (), "string")

    if not isinstance(features_json, dict):
        raise InvalidInputError("features.json must hold a JSON object")
    walk(features_json, "")
    return specs


class _ShardIndex:
    """Byte offsets of the records in one TFRecord shard, read from its framing."""

    def __init__(self, path: Path):
        self.path = path
        self.offsets: list[tuple[int, int]] = []
        size = path.stat().st_size
        with path.open("rb") as f:
            pos = 0
            while pos < size:
                header = f.read(12)
                if len(header) < 12:
                    raise InvalidInputError(f"truncated TFRecord shard {path}: partial record header at byte {pos}")
                (length,) = struct.unpack("<Q", header[:8])
                if pos + 12 + length + 4 > size:
                    raise InvalidInputError(f"truncated TFRecord shard {path}: record at byte {pos} runs past the end")
                self.offsets.append((pos + 12, length))
                pos += 12 + length + 4
                f.seek(pos)

    def read(self, i: int) -> bytes:
        from tfrecord.writer import TFRecordWriter  # noqa: PLC0415 - owns TFRecord's masked CRC

        start, length = self.offsets[i]
        with self.path.open("rb") as f:
            f.seek(start - 12)
            header = f.read(12)
            data = f.read(length)
            crc = f.read(4)
        if TFRecordWriter.masked_crc(header[:8]) != header[8:12] or TFRecordWriter.masked_crc(data) != crc:
            raise InvalidInputError(f"corrupt TFRecord shard {self.path}: checksum mismatch in record {i}")
        return data


class RLDSDataset:
    """Episodes of one split of a TFDS-built RLDS dataset, read as Episodes.

    ``len(ds)``, ``ds.episode(i)`` / ``ds[i]``, iteration; ``ds.features`` (FeatureSpec per key),
    ``ds.name``, ``ds.image_key``. Keyword arguments override what is guessed from the features:
    ``image_key``/``state_key`` are names under steps/observation, ``fps`` defaults to 5 for Bridge
    and 10 otherwise (RLDS does not record it).
    """

    def __init__(self, builder_dir: str | os.PathLike, split: str = "train", *, image_key: str | None = None,
                 state_key: str | None = None, state_layout: str = "auto", gripper_open_is_one: bool = True,
                 fps: float | None = None):
        self.root = Path(builder_dir).expanduser()
        if not self.root.is_dir():
            raise InvalidInputError(f"RLDS builder folder not found: {self.root}")
        self.info = self._load_json("dataset_info.json")
        self.features = parse_features(self._load_json("features.json"))
        self.name = str(self.info.get("name") or self.root.parent.name)
        self.split = split
        if not any(spec.per_step for spec in self.features.values()):
            raise InvalidInputError(f"{self.root / 'features.json'} describes no RLDS 'steps' features")
        self.image_key = image_key or self._guess_image_key()
        self.state_key = state_key if state_key is not None else self._guess_state_key()
        for key in filter(None, (self.image_key, self.state_key)):
            if f"steps/observation/{key}" not in self.features:
                raise InvalidInputError(f"{self.root / 'features.json'} has no steps/observation/{key}")
        if state_layout == "auto":
            state_layout = "xyz_rpy_gripper" if "bridge" in self.name.lower() else "raw"
        if state_layout not in ("xyz_rpy_gripper", "raw"):
            raise InvalidInputError(f"state_layout must be 'auto', 'xyz_rpy_gripper' or 'raw', got {state_layout!r}")
        self.state_layout = state_layout
        self.gripper_open_is_one = gripper_open_is_one
        known = [v for k, v in _KNOWN_FPS.items() if k in self.name.lower()]
        self.fps = float(fps if fps is not None else (known[0] if known else 10.0))
        self.shards = self._find_shards()
        self._indexes: dict[int, _ShardIndex] = {}
        self._lengths = self._shard_lengths()

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return int(sum(self._lengths))

    def episode(self, i: int) -> Episode:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"episode {i} out of range for {n} episodes")
        i = int(i) % n
        shard = 0
        while i >= self._lengths[shard]:
            i -= self._lengths[shard]
            shard += 1
        raw = self._index(shard).read(i)
        values = self._decode_record(raw, self.shards[shard])
        return self._to_episode(values, episode_index=sum(self._lengths[:shard]) + i, shard=self.shards[shard])

    __getitem__ = episode

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.episode(i)

    # ------------------------------------------------------------------ layout on disk
    def _load_json(self, name: str) -> dict:
        path = self.root / name
        if not path.is_file():
            raise InvalidInputError(f"not a TFDS builder folder: {path} is missing")
        try:
            return json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"cannot parse {path}: {exc}") from exc

    def _split_info(self) -> dict | None:
        for split in self.info.get("splits", []) or []:
            if split.get("name") == self.split:
                return split
        return None

    def _find_shards(self) -> list[Path]:
        pattern = re.compile(rf"^{re.escape(self.name)}-{re.escape(self.split)}\.tfrecord-(\d+)-of-(\d+)$")
        found = sorted((int(m.group(1)), int(m.group(2)), p) for p in self.root.iterdir()
                       if (m := pattern.match(p.name)))
        if not found:
            raise InvalidInputError(
                f"no shards {self.name}-{self.split}.tfrecord-NNNNN-of-NNNNN in {self.root}")
        total = found[0][1]
        present = {index for index, _, _ in found}
        missing = [f"{self.name}-{self.split}.tfrecord-{k:05d}-of-{total:05d}"
                   for k in range(total) if k not in present]
        if missing:
            raise InvalidInputError(f"RLDS shards missing in {self.root}: {', '.join(missing[:5])}")
        return [p for _, _, p in found]

    def _shard_lengths(self) -> list[int]:
        split = self._split_info()
        lengths = (split or {}).get("shardLengths")
        if lengths and len(lengths) == len(self.shards):
            return [int(n) for n in lengths]
        # dataset_info.json without shard lengths: count records from the framing.
        for k, path in enumerate(self.shards):
            self._indexes[k] = _ShardIndex(path)
        return [len(self._indexes[k].offsets) for k in range(len(self.shards))]

    def _index(self, shard: int) -> _ShardIndex:
        if shard not in self._indexes:
            self._indexes[shard] = _ShardIndex(self.shards[shard])
            found = len(self._indexes[shard].offsets)
            if found != self._lengths[shard]:
                raise InvalidInputError(
                    f"{self.shards[shard]} holds {found} records, dataset_info.json says {self._lengths[shard]}")
        return self._indexes[shard]

    def _guess_image_key(self) -> str:
        images = [s.name.split("/", 1)[1] for s in self.features.values()
                  if s.kind == "image" and s.per_step and s.name.startswith("observation/")]
        for key in _IMAGE_KEY_PREFERENCE:
            if key in images:
                return key
        rgb = sorted(k for k in images if self.features[f"steps/observation/{k}"].shape[-1:] == (3,))
        if not rgb:
            raise InvalidInputError(f"{self.root / 'features.json'} has no RGB image under steps/observation")
        return rgb[0]

    def _guess_state_key(self) -> str | None:
        for key in ("state", "proprio", "robot_state"):
            if f"steps/observation/{key}" in self.features:
                return key
        return None

    # ------------------------------------------------------------------ decoding
    def _decode_record(self, raw: bytes, shard: Path) -> dict[str, object]:
        from tfrecord import example_pb2  # noqa: PLC0415 - protobuf classes of tf.train.Example

        example = example_pb2.Example()
        try:
            example.ParseFromString(raw)
        except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError
            raise InvalidInputError(f"corrupt tf.train.Example in {shard}: {exc}") from exc
        feature_map = example.features.feature
        length = self._num_steps(feature_map, shard)
        out: dict[str, object] = {}
        wanted_image = f"steps/observation/{self.image_key}"
        for key, spec in self.features.items():
            # Other cameras stay encoded: decoding them would dominate the reading time.
            if key not in feature_map or (spec.kind == "image" and key != wanted_image):
                continue
            if spec.kind == "tensor" and -1 in spec.shape:
                # Ragged tensors need TFDS's row-length side features; none that Episodes use is ragged.
                out.setdefault("undecoded_features", []).append(key)
                continue
            try:
                out[key] = self._decode_feature(spec, feature_map[key], length if spec.per_step else None)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{shard}: {exc}") from exc
        return out

    @staticmethod
    def _num_steps(feature_map, shard: Path) -> int:
        for key in ("steps/is_first", "steps/is_last", "steps/reward"):
            if key in feature_map:
                feat = feature_map[key]
                return len(feat.int64_list.value) or len(feat.float_list.value)
        raise InvalidInputError(f"{shard}: episode record has no steps/is_first to count its steps")

    def _decode_feature(self, spec: FeatureSpec, feature, steps: int | None):
        if spec.kind == "image":
            items = list(feature.bytes_list.value)
            images = [self._decode_image(data, spec) for data in items]
            return images if steps is not None else images[0]
        if spec.kind == "text" or spec.dtype == "string":
            texts = [b.decode("utf-8", errors="replace") for b in feature.bytes_list.value]
            return texts if steps is not None else (texts[0] if texts else "")
        dtype = _NUMPY_DTYPES.get(spec.dtype)
        if dtype is None:
            raise InvalidInputError(f"feature {spec.key}: unsupported dtype {spec.dtype}")
        if spec.encoding in ("bytes", "zlib"):
            blobs = [zlib.decompress(b) if spec.encoding == "zlib" else b for b in feature.bytes_list.value]
            flat = np.concatenate([np.frombuffer(b, dtype=dtype) for b in blobs]) if blobs else np.zeros(0, dtype)
        elif feature.HasField("float_list"):
            flat = np.asarray(feature.float_list.value, dtype=np.float32)
        else:
            flat = np.asarray(feature.int64_list.value, dtype=np.int64)
        flat = flat.astype(dtype)
        lead = () if steps is None else (steps,)
        shape = lead + tuple(spec.shape)
        if int(np.prod(shape)) != flat.size:
            raise InvalidInputError(f"feature {spec.key}: {flat.size} values do not fit the shape {shape}")
        return flat.reshape(shape)

    @staticmethod
    def _decode_image(data: bytes, spec: FeatureSpec) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise InvalidInputError(f"feature {spec.key}: undecodable {spec.encoding} image")
        if image.ndim == 3 and image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        return image

    # ------------------------------------------------------------------ Episode mapping
    def _to_episode(self, values: dict, episode_index: int, shard: Path) -> Episode:
        steps = {k[len(_STEPS) + 1:]: v for k, v in values.items() if k.startswith(_STEPS + "/")}
        episode_values = {k: v for k, v in values.items() if not k.startswith(_STEPS + "/")}
        image_name = f"observation/{self.image_key}"
        if image_name not in steps:
            raise InvalidInputError(f"{shard}: episode {episode_index} has no steps/{image_name}")
        rgb = np.stack(steps[image_name])
        if rgb.ndim == 3:
            rgb = np.repeat(rgb[..., None], 3, axis=-1)
        if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
            raise InvalidInputError(f"{shard}: steps/{image_name} is not an 8-bit RGB image ({rgb.shape} {rgb.dtype})")
        length = rgb.shape[0]
        metadata: dict = {"source": "rlds", "dataset": self.name, "split": self.split, "builder_dir": str(self.root),
                          "episode_index": episode_index, "camera_known": False}
        actions = self._actions(steps, length, metadata)
        ee_pose, gripper, joints = self._state(steps, length, metadata)
        for key in ("reward", "discount", "is_terminal", "is_first", "is_last"):
            if key in steps:
                metadata[key] = np.asarray(steps[key])
        for key, value in episode_values.items():
            metadata[key] = value
        instruction = self._instruction(steps, episode_values)
        success = next((episode_values[k] for k in ("success", "episode_metadata/success") if k in episode_values),
                       None)
        return Episode(
            instruction=instruction, task=instruction, rgb=rgb, ee_pose=ee_pose, gripper=gripper, joints=joints,
            actions=actions, camera=layout.nominal_camera(rgb.shape[2], rgb.shape[1], name=self.image_key),
            fps=self.fps, success=None if success is None else bool(np.asarray(success).reshape(-1)[0]),
            metadata=metadata).validate()

    @staticmethod
    def _instruction(steps: dict, episode_values: dict) -> str:
        for key in _INSTRUCTION_KEYS:
            texts = steps.get(key)
            if isinstance(texts, list):
                for text in texts:
                    if text.strip():
                        return text.strip()
        text = episode_values.get("episode_metadata/language_instruction")
        return text.strip() if isinstance(text, str) else ""

    def _actions(self, steps: dict, length: int, metadata: dict) -> np.ndarray:
        action = steps.get("action")
        if isinstance(action, np.ndarray) and action.shape == (length, 7):
            gripper = action[:, 6].astype(np.float64)
            closed = 1.0 - gripper if self.gripper_open_is_one else gripper
            metadata["raw_actions"] = action
            metadata["action_convention"] = "xyz, rpy -> axis-angle, gripper " + (
                "1=open flipped" if self.gripper_open_is_one else "1=closed")
            return _compose_action(action[:, :3], action[:, 3:6], closed)
        parts = {k.split("/", 1)[1]: v for k, v in steps.items() if k.startswith("action/")}
        if "world_vector" in parts and "rotation_delta" in parts:
            closed = _closed_from_rt1(parts, length)
            if closed is not None:
                metadata["raw_actions"] = parts
                metadata["action_convention"] = "rt1 world_vector, rotation_delta (rpy) -> axis-angle"
                return _compose_action(parts["world_vector"], parts["rotation_delta"], closed)
        metadata["raw_actions"] = action if action is not None else parts
        metadata["actions_known"] = False
        return np.zeros((length, 7))

    def _state(self, steps: dict, length: int, metadata: dict):
        state = steps.get(f"observation/{self.state_key}") if self.state_key else None
        if state is not None:
            state = np.asarray(state, dtype=np.float64).reshape(length, -1)
            metadata["raw_state"] = state
            if self.state_layout == "xyz_rpy_gripper" and state.shape[1] >= 7:
                quat = np.stack([_rotvec_to_quat(_rpy_to_rotvec(rpy)) for rpy in state[:, 3:6]])
                ee_pose = np.concatenate([state[:, :3], quat], axis=1)
                metadata["gripper_units"] = "dataset-specific (Bridge: normalised opening)"
                return ee_pose, state[:, -1:], np.zeros((length, 0))
        metadata["ee_pose_known"] = False
        joints = state if state is not None else np.zeros((length, 0))
        return np.tile(layout.IDENTITY_POSE, (length, 1)), np.zeros((length, 1)), joints


def _closed_from_rt1(parts: dict, length: int) -> np.ndarray | None:
    """RT-1 style gripper fields -> 1 = closed per step, or None when there is none."""
    if "open_gripper" in parts:
        return 1.0 - np.asarray(parts["open_gripper"], dtype=np.float64).reshape(length)
    if "gripper_closedness_action" in parts:
        # +1 close, -1 open, 0 keep: a relative command, so integrate it into a state.
        command = np.asarray(parts["gripper_closedness_action"], dtype=np.float64).reshape(length)
        closed, state = np.zeros(length), 0.0
        for t, c in enumerate(command):
            state = 1.0 if c > 0.5 else 0.0 if c < -0.5 else state
            closed[t] = state
        return closed
    return None


def _compose_action(xyz: np.ndarray, rpy: np.ndarray, closed: np.ndarray) -> np.ndarray:
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    rotvec = np.stack([_rpy_to_rotvec(r) for r in np.asarray(rpy, dtype=np.float64).reshape(-1, 3)])
    return np.concatenate([xyz, rotvec, np.clip(closed, 0, 1).reshape(-1, 1)], axis=1)


def _rpy_to_rotvec(rpy: np.ndarray) -> np.ndarray:
    """Roll, pitch, yaw about fixed x, y, z (R = Rz Ry Rx) -> axis-angle vector."""
    roll, pitch, yaw = (float(a) for a in rpy)
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rot = np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])
    rotvec, _ = cv2.Rodrigues(rot)
    return rotvec.reshape(3)


def _rotvec_to_quat(rotvec: np.ndarray) -> np.ndarray:
    """Axis-angle -> quaternion xyzw."""
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = rotvec / angle
    return np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])

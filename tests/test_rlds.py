"""RLDS (TFDS-built) datasets read without TensorFlow.

The fixtures write builder folders exactly as TFDS lays them out: features.json describing a
FeaturesDict with a `steps` Dataset, dataset_info.json with split shard lengths, and shards
`<name>-<split>.tfrecord-0000k-of-0000n` holding one tf.train.Example per episode whose keys are the
flattened feature paths (`steps/observation/image_0`, `steps/action`, `episode_metadata/file_path`).
"""
import json
import zlib

import cv2
import numpy as np
import pytest

Rotation = pytest.importorskip("scipy.spatial.transform", reason="needs the [dev] extra").Rotation
TFRecordWriter = pytest.importorskip("tfrecord.writer", reason="RLDS needs the [data] extra").TFRecordWriter

from magma_core.data.rlds import RLDSDataset, parse_features
from magma_core.data.samples import iter_samples
from magma_core.errors import InvalidInputError

SIZE = 64
TFDS = "tensorflow_datasets.core.features."


def tensor(shape, dtype="float32", encoding="none"):
    cls = "scalar.Scalar" if not shape else "tensor_feature.Tensor"
    dims = {"dimensions": [str(d) for d in shape]} if shape else {}
    return {"pythonClassName": TFDS + cls, "tensor": {"shape": dims, "dtype": dtype, "encoding": encoding}}


def image(fmt):
    return {"pythonClassName": TFDS + "image_feature.Image",
            "image": {"shape": {"dimensions": [str(SIZE), str(SIZE), "3"]}, "dtype": "uint8", "encodingFormat": fmt}}


def text():
    return {"pythonClassName": TFDS + "text_feature.Text", "text": {}}


def features_dict(children):
    return {"pythonClassName": TFDS + "features_dict.FeaturesDict", "featuresDict": {"features": children}}


def features_json(observation, action, episode_metadata):
    steps = features_dict({
        "observation": features_dict(observation), "action": action, "language_instruction": text(),
        "is_first": tensor((), "bool"), "is_last": tensor((), "bool"), "is_terminal": tensor((), "bool"),
        "reward": tensor(()), "discount": tensor(()),
    })
    return features_dict({
        "steps": {"pythonClassName": TFDS + "dataset_feature.Dataset", "sequence": {"feature": steps, "length": "-1"}},
        "episode_metadata": features_dict(episode_metadata),
    })


def frames(length, seed):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = []
    for t in range(length):
        img = np.stack([xx * 3 + t * 4, yy * 3, np.full_like(xx, 90 + 10 * seed)], -1)
        cv2.circle(img, (20 + 3 * t, 30), 8, (200, 60, 40), -1)
        out.append(cv2.GaussianBlur(np.clip(img, 0, 255), (5, 5), 1.0).astype(np.uint8))
    return np.stack(out)


def encode(img, fmt):
    ok, data = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpeg" else [])
    assert ok
    return data.tobytes()


def write_builder(folder, name, episodes, features, shard_sizes, with_shard_lengths=True):
    """Write a TFDS builder folder; `episodes` are dicts of flattened key -> (value, tfrecord dtype)."""
    folder.mkdir(parents=True)
    (folder / "features.json").write_text(json.dumps(features, indent=2))
    split = {"name": "train", "numBytes": "0", "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}
    if with_shard_lengths:
        split["shardLengths"] = [str(n) for n in shard_sizes]
    (folder / "dataset_info.json").write_text(json.dumps(
        {"name": name, "version": "1.0.0", "fileFormat": "tfrecord", "moduleName": f"{name}.{name}",
         "splits": [split]}, indent=2))
    it = iter(episodes)
    for k, count in enumerate(shard_sizes):
        writer = TFRecordWriter(str(folder / f"{name}-train.tfrecord-{k:05d}-of-{len(shard_sizes):05d}"))
        for _ in range(count):
            writer.write(next(it))
        writer.close()


def step_flags(length):
    first = np.zeros(length, np.int64)
    first[0] = 1
    last = first[::-1].copy()
    return {"steps/is_first": (first, "int"), "steps/is_last": (last, "int"), "steps/is_terminal": (last, "int"),
            "steps/reward": (last.astype(np.float32), "float"),
            "steps/discount": (np.ones(length, np.float32), "float")}


def bridge_episode(length, seed):
    rng = np.random.default_rng(seed)
    rgb = frames(length, seed)
    state = rng.uniform(-0.5, 0.5, size=(length, 7)).astype(np.float32)
    action = np.concatenate([rng.normal(scale=0.01, size=(length, 3)), rng.normal(scale=0.1, size=(length, 3)),
                             rng.integers(0, 2, size=(length, 1))], axis=1).astype(np.float32)
    instruction = f"put the spoon in pot {seed}"
    record = {
        "steps/observation/image_0": ([encode(f, "jpeg") for f in rgb], "byte"),
        "steps/observation/state": (state.reshape(-1), "float"),
        "steps/action": (action.reshape(-1), "float"),
        "steps/language_instruction": ([instruction.encode()] * length, "byte"),
        "episode_metadata/file_path": (f"/data/bridge/traj{seed}.pkl".encode(), "byte"),
        **step_flags(length),
    }
    return record, {"rgb": rgb, "state": state, "action": action, "instruction": instruction}


BRIDGE_LENGTHS = (6, 4, 7)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfds") / "bridge_dataset" / "1.0.0"
    made = [bridge_episode(n, seed=i) for i, n in enumerate(BRIDGE_LENGTHS)]
    features = features_json({"image_0": image("jpeg"), "state": tensor((7,))}, tensor((7,)),
                             {"file_path": text()})
    write_builder(folder, "bridge_dataset", [r for r, _ in made], features, shard_sizes=(2, 1))
    return folder, [truth for _, truth in made]


def test_features_json_is_flattened_to_tfds_keys(bridge):
    folder, _ = bridge
    specs = parse_features(json.loads((folder / "features.json").read_text()))
    assert specs["steps/observation/image_0"].kind == "image"
    assert specs["steps/observation/image_0"].shape == (SIZE, SIZE, 3)
    assert specs["steps/observation/image_0"].encoding == "jpeg"
    assert specs["steps/action"].shape == (7,) and specs["steps/is_first"].dtype == "bool"
    assert specs["steps/language_instruction"].kind == "text"
    assert specs["episode_metadata/file_path"].per_step is False


def test_bridge_episodes_map_to_magma_conventions(bridge):
    folder, truth = bridge
    ds = RLDSDataset(folder)
    assert len(ds) == 3 and ds.name == "bridge_dataset" and ds.image_key == "image_0" and ds.fps == 5.0
    for i, expected in enumerate(truth):
        ep = ds.episode(i)
        length = BRIDGE_LENGTHS[i]
        assert len(ep) == length and ep.instruction == expected["instruction"] and ep.fps == 5.0
        assert np.abs(ep.rgb.astype(int) - expected["rgb"]).mean() < 3.0
        action = expected["action"].astype(np.float64)
        np.testing.assert_array_equal(ep.actions[:, :3], action[:, :3])
        np.testing.assert_allclose(ep.actions[:, 3:6], Rotation.from_euler("xyz", action[:, 3:6]).as_rotvec(),
                                   atol=1e-9)
        np.testing.assert_array_equal(ep.actions[:, 6], 1.0 - action[:, 6])  # Bridge: 1 = open
        state = expected["state"].astype(np.float64)
        np.testing.assert_array_equal(ep.ee_pose[:, :3], state[:, :3])
        quat = Rotation.from_euler("xyz", state[:, 3:6]).as_quat()
        np.testing.assert_allclose(np.abs(np.sum(ep.ee_pose[:, 3:] * quat, axis=1)), 1.0, atol=1e-9)
        np.testing.assert_array_equal(ep.gripper[:, 0], state[:, 6])
        np.testing.assert_array_equal(ep.metadata["raw_actions"], expected["action"])
        assert ep.metadata["is_last"].tolist() == [False] * (length - 1) + [True]
        assert ep.metadata["episode_metadata/file_path"] == f"/data/bridge/traj{i}.pkl"
        assert ep.metadata["camera_known"] is False and ep.metadata["episode_index"] == i
        assert (ep.camera.width, ep.camera.height) == (SIZE, SIZE)
        np.testing.assert_array_equal(ep.camera.extrinsics, np.eye(4))
        assert ep.camera.intrinsics[0, 2] == SIZE / 2
    assert [len(e) for e in ds] == list(BRIDGE_LENGTHS)
    assert len(ds[-1]) == BRIDGE_LENGTHS[-1]
    with pytest.raises(IndexError):
        ds.episode(3)


def test_samples_from_rlds(bridge):
    folder, truth = bridge
    samples = list(iter_samples(RLDSDataset(folder), stride=2))
    assert len(samples) == sum((n + 1) // 2 for n in BRIDGE_LENGTHS)
    assert samples[0].source == "rlds:bridge_dataset/train" and samples[0].camera_known is False
    second = [s for s in samples if s.episode_index == 1]
    assert [s.frame_index for s in second] == [0, 2]
    assert second[1].instruction == truth[1]["instruction"] and second[1].action.shape == (7,)
    assert second[1].depth is None and second[1].gt_trace is None


def rt1_episode(length, seed):
    rng = np.random.default_rng(seed)
    rgb = frames(length, seed)
    state = rng.normal(size=(length, 5)).astype(np.float32)
    closedness = np.array([0, 1, 0, 0, -1, 0][:length], np.float32)
    world, rot = rng.normal(size=(length, 3)).astype(np.float32), rng.normal(size=(length, 3)).astype(np.float32)
    record = {
        "steps/observation/rgb": ([encode(f, "png") for f in rgb], "byte"),
        # zlib-encoded tensors: one compressed buffer per step.
        "steps/observation/joint_state": ([zlib.compress(s.tobytes()) for s in state], "byte"),
        "steps/observation/natural_language_instruction": ([b"pick coke can"] * length, "byte"),
        "steps/action/world_vector": (world.reshape(-1), "float"),
        "steps/action/rotation_delta": (rot.reshape(-1), "float"),
        "steps/action/gripper_closedness_action": (closedness, "float"),
        "steps/language_instruction": ([b""] * length, "byte"),
        "episode_metadata/success": (1, "int"),
        **step_flags(length),
    }
    return record, {"rgb": rgb, "state": state, "world": world, "rot": rot}


def test_rt1_style_dict_actions_png_and_zlib_tensors(tmp_path):
    folder = tmp_path / "fractal_like" / "0.1.0"
    made = [rt1_episode(6, 0), rt1_episode(5, 1)]
    action = features_dict({"world_vector": tensor((3,)), "rotation_delta": tensor((3,)),
                            "gripper_closedness_action": tensor((1,))})
    features = features_json({"rgb": image("png"), "joint_state": tensor((5,), encoding="zlib"),
                              "natural_language_instruction": text()}, action, {"success": tensor((), "bool")})
    write_builder(folder, "fractal_like", [r for r, _ in made], features, shard_sizes=(2,), with_shard_lengths=False)
    ds = RLDSDataset(folder, state_key="joint_state")
    assert len(ds) == 2 and ds.image_key == "rgb" and ds.fps == 10.0
    ep, truth = ds.episode(0), made[0][1]
    np.testing.assert_array_equal(ep.rgb, truth["rgb"])  # PNG is lossless
    assert ep.instruction == "pick coke can" and ep.success is True
    np.testing.assert_array_equal(ep.actions[:, :3], truth["world"].astype(np.float64))
    np.testing.assert_allclose(ep.actions[:, 3:6], Rotation.from_euler("xyz", truth["rot"]).as_rotvec(), atol=1e-9)
    assert ep.actions[:, 6].tolist() == [0, 1, 1, 1, 0, 0]  # +1 close, -1 open, 0 keep
    np.testing.assert_array_equal(ep.joints, truth["state"].astype(np.float64))
    assert ep.metadata["ee_pose_known"] is False
    np.testing.assert_array_equal(ep.ee_pose, np.tile([0, 0, 0, 0, 0, 0, 1.0], (6, 1)))


def test_unmappable_actions_are_kept_raw_and_flagged(tmp_path):
    folder = tmp_path / "odd_actions" / "1.0.0"
    length = 3
    raw = np.arange(length * 6, dtype=np.float32).reshape(length, 6)
    record = {"steps/observation/image": ([encode(f, "png") for f in frames(length, 0)], "byte"),
              "steps/action": (raw.reshape(-1), "float"),
              "steps/language_instruction": ([b"wipe"] * length, "byte"), **step_flags(length),
              "steps/observation/points": (np.ones(7, np.float32), "float")}  # ragged: 7 values, 3 steps
    features = features_json({"image": image("png"), "points": tensor((-1, 3))}, tensor((6,)), {})
    write_builder(folder, "odd_actions", [record], features, shard_sizes=(1,))
    ep = RLDSDataset(folder).episode(0)
    assert ep.metadata["actions_known"] is False
    assert ep.metadata["undecoded_features"] == ["steps/observation/points"]
    np.testing.assert_array_equal(ep.metadata["raw_actions"], raw)
    assert not ep.actions.any()
    assert all(s.action is None for s in iter_samples([ep]))


def test_truncated_shard_is_reported_with_its_name(bridge, tmp_path):
    folder, _ = bridge
    copy = tmp_path / "b"
    copy.mkdir()
    for path in folder.iterdir():
        copy.joinpath(path.name).write_bytes(path.read_bytes())
    shard = copy / "bridge_dataset-train.tfrecord-00000-of-00002"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    ds = RLDSDataset(copy)
    assert len(ds.episode(2)) == BRIDGE_LENGTHS[2]  # the intact shard still reads
    with pytest.raises(InvalidInputError, match="truncated TFRecord shard .*tfrecord-00000-of-00002"):
        ds.episode(0)


def test_corrupt_record_fails_its_checksum(bridge, tmp_path):
    folder, _ = bridge
    copy = tmp_path / "b"
    copy.mkdir()
    for path in folder.iterdir():
        copy.joinpath(path.name).write_bytes(path.read_bytes())
    shard = copy / "bridge_dataset-train.tfrecord-00001-of-00002"
    data = bytearray(shard.read_bytes())
    data[500] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="checksum mismatch"):
        RLDSDataset(copy).episode(2)


def test_missing_pieces_are_reported(bridge, tmp_path):
    folder, _ = bridge
    copy = tmp_path / "b"
    copy.mkdir()
    for path in folder.iterdir():
        if not path.name.endswith("00001-of-00002"):
            copy.joinpath(path.name).write_bytes(path.read_bytes())
    with pytest.raises(InvalidInputError, match="shards missing .*tfrecord-00001-of-00002"):
        RLDSDataset(copy)
    with pytest.raises(InvalidInputError, match="no shards bridge_dataset-test"):
        RLDSDataset(folder, split="test")
    with pytest.raises(InvalidInputError, match="no steps/observation/wrist"):
        RLDSDataset(folder, image_key="wrist")
    (copy / "features.json").unlink()
    with pytest.raises(InvalidInputError, match="features.json is missing"):
        RLDSDataset(copy)
    with pytest.raises(InvalidInputError, match="not found"):
        RLDSDataset(tmp_path / "nowhere")

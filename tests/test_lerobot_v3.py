"""LeRobot v3.0 datasets: write Episodes, read them back, layout, stats, rotation and bad files."""
import json
import math
import shutil

import cv2
import numpy as np
import pytest

pq = pytest.importorskip("pyarrow.parquet", reason="LeRobot datasets need the [data] extra")
pytest.importorskip("av", reason="LeRobot datasets need the [data] extra")

from magma_core.data.episode import CameraParams, Episode
from magma_core.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer
from magma_core.data.samples import iter_samples
from magma_core.errors import InvalidInputError

FPS = 10
LENGTHS = (12, 9, 15)
M, STEPS, JOINTS = 3, 5, 7


def smooth_frames(length: int, seed: int, height: int = 64, width: int = 64) -> np.ndarray:
    """Gradients plus blurred moving blobs: structured like a camera image, kind to video codecs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width * 180 + 30, yy / height * 150 + 50, (xx + yy) / (width + height) * 100 + 80], -1)
    colour = rng.uniform(40, 220, size=3)
    frames = []
    for t in range(length):
        image = base.copy()
        cx, cy = 15 + 2 * t % (width - 25), 20 + t % (height - 30)
        blob = np.zeros((height, width), np.float32)
        cv2.rectangle(blob, (int(cx), int(cy)), (int(cx) + 14, int(cy) + 10), 1.0, -1)
        cv2.circle(blob, (width - 18, height - 18 - t % 10), 8, 1.0, -1)
        blob = cv2.GaussianBlur(blob, (7, 7), 1.5)[..., None]
        frames.append(image * (1 - blob) + colour * blob)
    return np.clip(np.rint(np.stack(frames)), 0, 255).astype(np.uint8)


def make_episode(length: int, seed: int, height: int = 64, width: int = 64, depth: bool = True,
                 instruction: str = "put the red cube on the green pad") -> Episode:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    depth_maps = None
    if depth:
        plane = (0.6 + 0.004 * yy + 0.0013 * xx).astype(np.float32)
        depth_maps = np.stack([plane - 0.001 * t for t in range(length)]).astype(np.float32)
        depth_maps[:, 5:9, 40:50] = np.nan  # unknown (e.g. no return)
    camera = CameraParams(width, height, np.array([[70.0, 0, width / 2], [0, 70.0, height / 2], [0, 0, 1]]),
                          np.array([[1, 0, 0, 0.4], [0, -1, 0, 0.1], [0, 0, -1, 1.2], [0, 0, 0, 1.0]]), name="front")
    quat = rng.normal(size=(length, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    return Episode(
        instruction=instruction, task=f"task_{seed % 2}", rgb=smooth_frames(length, seed, height, width),
        ee_pose=np.concatenate([rng.normal(size=(length, 3)), quat], axis=1),
        gripper=rng.uniform(0, 0.08, size=(length, 1)), joints=rng.normal(size=(length, JOINTS)),
        actions=rng.normal(scale=0.02, size=(length, 7)), camera=camera, fps=FPS, depth=depth_maps,
        waypoints=rng.normal(size=(length, 8)), gt_traces=rng.uniform(0, 64, size=(length, M, STEPS, 3)),
        gt_trace_gripper=rng.integers(0, 2, size=(length, STEPS)).astype(np.float64),
        success=bool(seed % 2), seed=seed, metadata={"scene": f"scene-{seed}", "objects": [1, 2]})


@pytest.fixture(scope="module")
def episodes():
    return [make_episode(n, seed=i + 1, instruction=["pick the cube", "open the drawer"][i % 2])
            for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory, episodes):
    root = tmp_path_factory.mktemp("lerobot") / "demo"
    with LeRobotV3Writer(root, fps=FPS) as writer:
        for ep in episodes:
            writer.add_episode(ep)
    return root


def f32(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def test_round_trip_restores_every_episode(dataset_root, episodes):
    ds = LeRobotV3Dataset(dataset_root)
    assert len(ds) == 3 and ds.num_frames == sum(LENGTHS) and ds.fps == FPS
    for i, original in enumerate(episodes):
        back = ds.episode(i)
        assert back.rgb.shape == original.rgb.shape and back.rgb.dtype == np.uint8
        assert np.abs(back.rgb.astype(int) - original.rgb).mean() < 3.0
        # Depth: lossless millimetres, NaN stays NaN.
        assert np.array_equal(np.isnan(back.depth), np.isnan(original.depth))
        known = ~np.isnan(original.depth)
        assert np.abs(back.depth[known] - original.depth[known]).max() <= 0.0005 + 1e-6
        # Tabular columns are float32 in the dataset, exact at that precision.
        for name in ("ee_pose", "gripper", "joints", "actions", "waypoints", "gt_traces", "gt_trace_gripper"):
            np.testing.assert_array_equal(getattr(back, name), f32(getattr(original, name)), err_msg=name)
        assert back.instruction == original.instruction and back.task == original.task
        assert back.success is original.success and back.seed == original.seed and back.fps == FPS
        np.testing.assert_array_equal(back.camera.intrinsics, original.camera.intrinsics)
        np.testing.assert_array_equal(back.camera.extrinsics, original.camera.extrinsics)
        assert back.metadata["scene"] == original.metadata["scene"] and back.metadata["objects"] == [1, 2]
        assert back.metadata["episode_index"] == i and "actions_known" not in back.metadata
    assert [e.seed for e in ds] == [1, 2, 3]


def test_layout_and_info_json_follow_lerobot_v3(dataset_root):
    info = json.loads((dataset_root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (info["fps"], info["total_episodes"], info["total_frames"], info["total_tasks"]) == (FPS, 3, 36, 2)
    assert info["robot_type"] == "panda" and info["splits"] == {"train": "0:3"} and info["chunks_size"] == 1000
    feats = info["features"]
    assert feats["observation.state"]["shape"] == [8 + JOINTS] and feats["action"]["shape"] == [7]
    assert feats["observation.state"]["names"][:8] == ["ee_x", "ee_y", "ee_z", "ee_qx", "ee_qy", "ee_qz", "ee_qw",
                                                       "gripper_width"]
    assert feats["observation.waypoint"]["shape"] == [8]
    assert feats["observation.gt_trace"]["shape"] == [M * STEPS * 3]
    assert feats["observation.gt_trace"]["magma.shape"] == [M, STEPS, 3]
    assert feats["observation.gt_trace_gripper"]["shape"] == [STEPS]
    video = feats["observation.images.front"]
    assert video["dtype"] == "video" and video["shape"] == [64, 64, 3]
    assert video["info"]["video.codec"] == "h264" and video["info"]["video.pix_fmt"] == "yuv420p"
    depth = feats["observation.depth.front"]["info"]
    assert depth["video.codec"] == "ffv1" and depth["video.is_depth_map"] is True and depth["depth.unit"] == "mm"
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert name in feats
    assert info["magma"]["camera"]["intrinsics"][0][0] == 70.0

    # Several episodes share one data file and one video file per camera.
    assert sorted(p.name for p in (dataset_root / "data/chunk-000").iterdir()) == ["file-000.parquet"]
    data = pq.read_table(dataset_root / "data/chunk-000/file-000.parquet")
    assert data.num_rows == 36 and data.column("index").to_pylist() == list(range(36))
    assert data.column("episode_index").to_pylist() == [0] * 12 + [1] * 9 + [2] * 15
    np.testing.assert_allclose(data.column("timestamp").to_numpy()[:12], np.arange(12) / FPS, rtol=1e-6)

    episodes = pq.read_table(dataset_root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == list(LENGTHS)
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [(0, 12), (12, 21), (21, 36)]
    key = "videos/observation.images.front"
    assert [e[f"{key}/file_index"] for e in episodes] == [0, 0, 0]
    assert [e[f"{key}/from_timestamp"] for e in episodes] == pytest.approx([0.0, 1.2, 2.1])
    assert [e[f"{key}/to_timestamp"] for e in episodes] == pytest.approx([1.2, 2.1, 3.6])
    assert [e["success"] for e in episodes] == [True, False, True]
    assert episodes[1]["tasks"] == ["open the drawer"]
    assert episodes[0]["stats/action/count"] == [12]
    tasks = pq.read_table(dataset_root / "meta/tasks.parquet").to_pydict()
    assert dict(zip(tasks["task"], tasks["task_index"])) == {"pick the cube": 0, "open the drawer": 1}


def test_stats_match_numpy(dataset_root, episodes):
    ds = LeRobotV3Dataset(dataset_root)
    actions = np.concatenate([e.actions for e in episodes]).astype(np.float32).astype(np.float64)
    for stat, expected in {"min": actions.min(0), "max": actions.max(0), "mean": actions.mean(0),
                           "std": actions.std(0), "q01": np.quantile(actions, 0.01, axis=0),
                           "q99": np.quantile(actions, 0.99, axis=0)}.items():
        np.testing.assert_allclose(ds.stats["action"][stat], expected, rtol=1e-6, atol=1e-9, err_msg=stat)
    assert ds.stats["action"]["count"].tolist() == [36]
    traces = np.concatenate([e.gt_traces.reshape(len(e), -1) for e in episodes]).astype(np.float32)
    np.testing.assert_allclose(ds.stats["observation.gt_trace"]["q99"],
                               np.quantile(traces.astype(np.float64), 0.99, axis=0), rtol=1e-6)
    image = ds.stats["observation.images.front"]
    assert image["mean"].shape == (3, 1, 1)
    pixels = np.concatenate([e.rgb for e in episodes]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(image["mean"].ravel(), pixels.mean(0), atol=1e-9)
    np.testing.assert_allclose(image["max"].ravel(), pixels.max(0))
    depth = np.concatenate([e.depth for e in episodes])
    depth = np.rint(depth[~np.isnan(depth)] * 1000) / 1000
    assert ds.stats["observation.depth.front"]["min"].item() == pytest.approx(depth.min())


def test_files_rotate_by_size_and_still_read_back(tmp_path, episodes, dataset_root):
    root = tmp_path / "rotated"
    with LeRobotV3Writer(root, fps=FPS, data_files_size_in_mb=1e-6, video_files_size_in_mb=1e-6) as writer:
        for ep in episodes:
            writer.add_episode(ep)
    assert sorted(p.name for p in (root / "data/chunk-000").iterdir()) == [f"file-00{i}.parquet" for i in range(3)]
    assert len(list((root / "videos/observation.images.front/chunk-000").iterdir())) == 3
    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["data/file_index"] for r in rows] == [0, 1, 2]
    assert [r["videos/observation.depth.front/from_timestamp"] for r in rows] == [0.0, 0.0, 0.0]
    rotated, shared = LeRobotV3Dataset(root), LeRobotV3Dataset(dataset_root)
    for i in range(3):
        a, b = rotated.episode(i), shared.episode(i)
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth, equal_nan=True)
        assert np.array_equal(a.actions, b.actions)


def test_chunks_fill_up_to_chunks_size(tmp_path, episodes):
    root = tmp_path / "chunks"
    with LeRobotV3Writer(root, fps=FPS, data_files_size_in_mb=1e-6, chunks_size=2) as writer:
        for ep in episodes:
            writer.add_episode(ep)
    assert (root / "data/chunk-001/file-000.parquet").is_file()
    assert LeRobotV3Dataset(root).episode(2).seed == 3


def test_odd_image_sides_without_depth_round_trip(tmp_path):
    episode = make_episode(6, seed=7, height=45, width=63, depth=False)
    episode.waypoints = episode.gt_traces = episode.gt_trace_gripper = None
    root = tmp_path / "odd"
    with LeRobotV3Writer(root, fps=FPS, vcodec="libsvtav1") as writer:
        writer.add_episode(episode)
    back = LeRobotV3Dataset(root).episode(0)
    assert back.rgb.shape == (6, 45, 63, 3) and back.depth is None and back.gt_traces is None
    assert np.abs(back.rgb.astype(int) - episode.rgb).mean() < 4.0
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["observation.images.front"]["info"]["video.codec"] == "av1"
    assert "observation.gt_trace" not in info["features"]


def test_one_and_two_frame_episodes_between_long_ones_round_trip(tmp_path):
    # Recovery data (expert takeover) can end one frame after the takeover. With H.264 B-frames a
    # long episode appended after a one-frame one stepped the file's decode timestamps backwards and
    # the whole generation died with "Invalid argument".
    lengths = (20, 1, 20, 2, 12)
    originals = [make_episode(n, seed=10 + i, depth=False) for i, n in enumerate(lengths)]
    root = tmp_path / "short"
    with LeRobotV3Writer(root, fps=FPS) as writer:
        for episode in originals:
            writer.add_episode(episode)
    ds = LeRobotV3Dataset(root)
    assert ds.num_frames == sum(lengths)
    for i, original in enumerate(originals):
        back = ds.episode(i)
        assert back.rgb.shape == original.rgb.shape
        assert np.abs(back.rgb.astype(int) - original.rgb).mean() < 3.0, i


def test_appending_a_file_whose_timestamps_step_back_names_it(tmp_path):
    from magma_core.data.video import VideoConcatenator, _encode

    frames = smooth_frames(8, seed=3)
    single = tmp_path / "single.mp4"
    _encode(frames[:1], single, FPS, "libx264", "yuv420p", "rgb24", {"crf": "18"})
    reordered = tmp_path / "reordered.mp4"  # x264's default B-frames: decoding starts before frame 0
    _encode(frames, reordered, FPS, "libx264", "yuv420p", "rgb24", {"crf": "18"})
    concat = VideoConcatenator(tmp_path / "out.mp4", FPS)
    concat.append(single, 1)
    with pytest.raises(InvalidInputError, match="reordered.mp4.*decode timestamps start before"):
        concat.append(reordered, 8)
    concat.close()


def test_existing_non_empty_folder_is_refused_unless_overwrite(tmp_path, episodes):
    root = tmp_path / "busy"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="not empty.*overwrite=True"):
        LeRobotV3Writer(root, fps=FPS)
    assert (root / "notes.txt").read_text() == "keep me"
    with LeRobotV3Writer(root, fps=FPS, overwrite=True) as writer:
        writer.add_episode(episodes[1])
    assert not (root / "notes.txt").exists() and len(LeRobotV3Dataset(root)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with LeRobotV3Writer(empty, fps=FPS) as writer:
        writer.add_episode(episodes[1])
    assert len(LeRobotV3Dataset(empty)) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unwritable_destination_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(InvalidInputError, match="a_file"):
        LeRobotV3Writer(blocker / "ds", fps=FPS)
    with pytest.raises(InvalidInputError, match="not a folder"):
        LeRobotV3Writer(blocker, fps=FPS)


def test_interrupted_write_leaves_no_dataset(tmp_path, episodes):
    root = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="power cut"):
        with LeRobotV3Writer(root, fps=FPS) as writer:
            writer.add_episode(episodes[0])
            raise RuntimeError("power cut")
    assert list(tmp_path.iterdir()) == []
    # A process killed before finalize(): only a hidden partial folder, never the dataset.
    writer = LeRobotV3Writer(root, fps=FPS)
    writer.add_episode(episodes[0])
    assert not root.exists()
    assert [p.name.startswith(".crashed.partial-") for p in tmp_path.iterdir()] == [True]
    with pytest.raises(InvalidInputError, match="not found"):
        LeRobotV3Dataset(root)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_episodes_that_do_not_fit_the_dataset_are_refused(tmp_path, episodes):
    writer = LeRobotV3Writer(tmp_path / "mixed", fps=FPS)
    writer.add_episode(episodes[0])
    other = make_episode(4, seed=9)
    other.joints = other.joints[:, :6]
    with pytest.raises(InvalidInputError, match="num_joints is 6, earlier episodes have 7"):
        writer.add_episode(other)
    slow = make_episode(4, seed=9)
    slow.fps = 5
    with pytest.raises(InvalidInputError, match="5 fps"):
        writer.add_episode(slow)
    writer.abort()
    with pytest.raises(InvalidInputError, match="no episodes"):
        LeRobotV3Writer(tmp_path / "none", fps=FPS).finalize()


@pytest.fixture
def copy_of(tmp_path, dataset_root):
    dst = tmp_path / "copy"
    shutil.copytree(dataset_root, dst)
    return dst


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_parquet_is_reported_with_its_name(copy_of):
    data_file = copy_of / "data/chunk-000/file-000.parquet"
    truncate(data_file)
    ds = LeRobotV3Dataset(copy_of)  # meta is intact: opening works, reading frames does not
    with pytest.raises(InvalidInputError, match="truncated or corrupt parquet file .*file-000.parquet"):
        ds.episode(0)
    truncate(copy_of / "meta/episodes/chunk-000/file-000.parquet")
    with pytest.raises(InvalidInputError, match="meta/episodes/chunk-000/file-000.parquet"):
        LeRobotV3Dataset(copy_of)


def test_truncated_mp4_is_reported_with_its_name(copy_of):
    video = copy_of / "videos/observation.images.front/chunk-000/file-000.mp4"
    truncate(video, keep=0.6)
    ds = LeRobotV3Dataset(copy_of)
    with pytest.raises(InvalidInputError, match="observation.images.front/chunk-000/file-000.mp4"):
        ds.episode(2)


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "meta/info.json").unlink(), "meta/info.json is missing"),
    (lambda r: (r / "meta/info.json").write_text("{not json"), "cannot parse"),
    (lambda r: (r / "meta/tasks.parquet").unlink(), "dataset file missing: .*tasks.parquet"),
    (lambda r: (r / "videos/observation.depth.front/chunk-000/file-000.mp4").unlink(),
     "dataset file missing: .*observation.depth.front"),
    (lambda r: shutil.rmtree(r / "meta/episodes"), "no episode tables"),
])
def test_damaged_meta_is_reported_at_open(copy_of, damage, message):
    damage(copy_of)
    with pytest.raises(InvalidInputError, match=message):
        LeRobotV3Dataset(copy_of)


@pytest.mark.parametrize("edit, message", [
    ({"codebase_version": "v2.1"}, "v2.1 is not supported"),
    ({"fps": 0}, "fps must be positive"),
    ({"features": {}}, "non-empty"),
])
def test_unsupported_info_json_is_refused(copy_of, edit, message):
    path = copy_of / "meta/info.json"
    info = json.loads(path.read_text())
    info.update(edit)
    path.write_text(json.dumps(info))
    with pytest.raises(InvalidInputError, match=message):
        LeRobotV3Dataset(copy_of)


def test_samples_from_a_lerobot_dataset(dataset_root):
    ds = LeRobotV3Dataset(dataset_root)
    samples = list(iter_samples(ds, stride=4))
    assert len(samples) == sum(math.ceil(n / 4) for n in LENGTHS)
    last = samples[-1]
    episode = ds.episode(2)
    assert (last.episode_index, last.frame_index) == (2, 12)
    assert last.source == f"lerobot_v3:{dataset_root}"
    np.testing.assert_array_equal(last.rgb, episode.rgb[12])
    np.testing.assert_array_equal(last.action, episode.actions[12])
    np.testing.assert_array_equal(last.gt_trace, episode.gt_traces[12])
    assert last.state.shape == (8 + JOINTS,) and last.depth.shape == (64, 64)


def test_datasets_from_other_writers_are_read_best_effort(copy_of, episodes):
    """Without this project's "magma" section the state/action layout is unknown: kept raw, flagged."""
    path = copy_of / "meta/info.json"
    info = json.loads(path.read_text())
    del info["magma"]
    path.write_text(json.dumps(info))
    ds = LeRobotV3Dataset(copy_of)
    assert ds.rgb_key == "observation.images.front" and ds.depth_key is None
    ep = ds.episode(1)
    original = episodes[1]
    assert ep.metadata["actions_known"] is False and ep.metadata["ee_pose_known"] is False
    np.testing.assert_array_equal(ep.metadata["raw_actions"], f32(original.actions))
    np.testing.assert_array_equal(ep.joints[:, :7], f32(original.ee_pose))
    assert not ep.actions.any() and ep.depth is None and ep.gt_traces is None
    assert next(iter_samples([ep])).action is None

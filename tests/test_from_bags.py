"""`magma dataset from-bags`: recorded episode bags -> LeRobot v3 datasets (alignment, actions, traces, errors)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")
pytest.importorskip("pyarrow")
pytest.importorskip("av")

from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from magma_core.codecs.trace_text import DepthBinning  # noqa: E402
from magma_core.commands import dataset_from_bags, dataset_info  # noqa: E402
from magma_core.data.bag_io import write_episode_meta  # noqa: E402
from magma_core.data.from_bags import (  # noqa: E402
    ConvertConfig, StreamTopics, convert_bags, estimate_fps, load_episode, match_nearest, select_frames,
)
from magma_core.data.lerobot_v3 import LeRobotV3Dataset  # noqa: E402
from magma_core.data.samples import iter_samples  # noqa: E402
from magma_core.errors import InvalidInputError  # noqa: E402
from magma_core.training.samples_builder import build_trace, gt_grid_traces  # noqa: E402

TS = get_typestore(Stores.ROS2_KILTED)
MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000  # wall-clock-like stamps, as a real recording has
SIZE = 64
FX = 60.0
SQUARE = 20
SQUARE_TOP = 36
SPEED_PX_S = 20.0  # the square moves 2 px per 10 Hz frame to the right
# Camera 1 m above the table looking straight down: base (0.5 + a, b, 0) -> pixel (31.5 - 60 b, 31.5 - 60 a).
T_BASE_CAM = np.array([[0, -1, 0, 0.5], [-1, 0, 0, 0.0], [0, 0, -1, 1.0], [0, 0, 0, 1.0]])
EXTRINSICS_YAML = ("parent_frame: base\nchild_frame: camera_optical\nmode: eye_to_hand\ntransform:\n  matrix:\n"
                   + "".join(f"    - {row}\n" for row in T_BASE_CAM.tolist()))


def smooth_texture(seed: int, side: int, low: int, high: int) -> np.ndarray:
    """Blurred noise: texture Lucas-Kanade tracks well (raw pixel noise aliases)."""
    noise = cv2.GaussianBlur(np.random.default_rng(seed).uniform(0, 1, (side, side, 3)).astype(np.float32), (0, 0), 1.5)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return (low + (high - low) * noise).astype(np.uint8)


BACKGROUND = smooth_texture(7, SIZE, 30, 220)
PATTERN = smooth_texture(8, SQUARE, 0, 120)
RED = np.concatenate([130 + PATTERN[..., :1], PATTERN[..., 1:2] // 2, PATTERN[..., 2:] // 2], axis=2)


def square_x(t_s: float) -> int:
    return int(round(8.0 + SPEED_PX_S * t_s))


def square_centre(t_s: float) -> tuple[float, float]:
    return square_x(t_s) + (SQUARE - 1) / 2.0, SQUARE_TOP + (SQUARE - 1) / 2.0


def render(t_s: float) -> np.ndarray:
    """The static textured table with a textured red square at column square_x(t)."""
    image = BACKGROUND.copy()
    x = square_x(t_s)
    width = max(0, min(SQUARE, SIZE - x))
    image[SQUARE_TOP:SQUARE_TOP + SQUARE, x:x + width] = RED[:, :width]
    return image


def stamp(ns: int):
    return TS.types["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def header(ns: int, frame: str):
    return TS.types["std_msgs/msg/Header"](stamp=stamp(ns), frame_id=frame)


def image_msg(ns: int, array: np.ndarray, encoding: str):
    data = np.ascontiguousarray(array)
    height, width = data.shape[:2]
    return TS.types["sensor_msgs/msg/Image"](
        header=header(ns, "camera_optical"), height=height, width=width, encoding=encoding, is_bigendian=0,
        step=data.nbytes // height, data=np.frombuffer(data.tobytes(), dtype=np.uint8))


def camera_info_msg(ns: int):
    roi = TS.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    K = np.array([FX, 0, 31.5, 0, FX, 31.5, 0, 0, 1], dtype=np.float64)
    return TS.types["sensor_msgs/msg/CameraInfo"](
        header=header(ns, "camera_optical"), height=SIZE, width=SIZE, distortion_model="plumb_bob",
        d=np.zeros(5), k=K, r=np.eye(3).ravel(), p=np.hstack([K.reshape(3, 3), np.zeros((3, 1))]).ravel(),
        binning_x=0, binning_y=0, roi=roi)


def pose_msg(ns: int, xyz):
    geo = "geometry_msgs/msg/"
    pose = TS.types[geo + "Pose"](position=TS.types[geo + "Point"](x=xyz[0], y=xyz[1], z=xyz[2]),
                                  orientation=TS.types[geo + "Quaternion"](x=1.0, y=0.0, z=0.0, w=0.0))
    return TS.types[geo + "PoseStamped"](header=header(ns, "base"), pose=pose)


def joints_msg(ns: int, q: float):
    return TS.types["sensor_msgs/msg/JointState"](
        header=header(ns, ""), name=["j1", "j2", "finger_1", "finger_2"], position=np.array([q, -q, 0.02, 0.02]),
        velocity=np.zeros(0), effort=np.zeros(0))


def ee_moving(t_s: float):
    """The gripper crosses the far corner of the view (pixel ~(10, 31..)) at 0.1 m/s along base x."""
    return (0.3 + 0.1 * t_s, 0.35, 0.0)


def write_episode(folder, *, duration=2.5, camera_hz=10.0, depth_hz=10.0, pose_hz=50.0, pose_jitter_ms=0.0,
                  rgb_encoding="rgb8", depth_encoding="32FC1", depth_nan_rows=None, outcome="success",
                  gripper=lambda t: 0.0, ee=ee_moving, calibration=True, instruction="push the red square right",
                  meta_camera_info=None):
    """An episode folder as the recorder writes it: bag/ (rosbag2 MCAP) + episode.json."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    streams = []  # (topic, msgtype, stamp_ns, message)
    for k in range(int(duration * camera_hz) + 1):
        ns = T0 + int(round(k * 1e9 / camera_hz))
        rgb = render((ns - T0) / 1e9)
        pixels = {"bgr8": rgb[:, :, ::-1], "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])}.get(
            rgb_encoding, rgb)
        streams.append(("/camera/image_raw", "sensor_msgs/msg/Image", ns, image_msg(ns, pixels, rgb_encoding)))
        streams.append(("/camera/camera_info", "sensor_msgs/msg/CameraInfo", ns, camera_info_msg(ns)))
        streams.append(("/magma/gripper_command", "std_msgs/msg/Float32", ns,
                        TS.types["std_msgs/msg/Float32"](data=float(gripper((ns - T0) / 1e9)))))
    for k in range(int(duration * depth_hz) + 1):
        ns = T0 + int(round(k * 1e9 / depth_hz))
        depth_m = np.full((SIZE, SIZE), 0.8 + 0.01 * k, dtype=np.float32)  # the value names the message
        if depth_nan_rows is not None:
            depth_m[depth_nan_rows] = np.nan
        pixels = np.round(depth_m * 1000).astype(np.uint16) if depth_encoding == "16UC1" else depth_m
        if depth_encoding == "16UC1":
            pixels[:4] = 0  # the sensor's "no reading"
        streams.append(("/camera/depth/image_raw", "sensor_msgs/msg/Image", ns, image_msg(ns, pixels, depth_encoding)))
    for k in range(int(duration * pose_hz) + 1):
        jitter = rng.uniform(-pose_jitter_ms, pose_jitter_ms) * MS if k else 0.0
        ns = T0 + int(round(k * 1e9 / pose_hz + jitter))
        t_s = (ns - T0) / 1e9
        streams.append(("/magma/ee_pose", "geometry_msgs/msg/PoseStamped", ns, pose_msg(ns, ee(t_s))))
        streams.append(("/joint_states", "sensor_msgs/msg/JointState", ns, joints_msg(ns, t_s)))
    streams.sort(key=lambda s: s[2])
    with Writer(folder / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {}
        for topic, msgtype, ns, msg in streams:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=TS)
            writer.write(connections[topic], ns + 2 * MS, TS.serialize_cdr(msg, msgtype))  # received 2 ms later
    write_episode_meta(folder, {
        "episode_id": folder.name, "instruction": instruction, "outcome": outcome, "robot": "panda",
        "start_ns": T0, "stop_ns": T0 + int(duration * 1e9), "complete": True,
        "topics": {s[0]: s[1] for s in streams},
        "calibration": {"camera_info": meta_camera_info, "extrinsics_yaml": EXTRINSICS_YAML if calibration else None}})
    return folder


def nearest(stamps, target):
    stamps = np.asarray(stamps)
    return int(np.argmin(np.abs(stamps - target)))


# ------------------------------------------------------------------------------------------ alignment
def test_frame_clock_decimates_a_fast_camera_and_counts_gaps():
    period = 100 * MS
    camera_30hz = np.arange(0, 31) * (100 * MS // 3)
    kept, gaps = select_frames(camera_30hz, period)
    assert kept.tolist() == list(range(0, 31, 3)) and gaps == 0
    missing = np.delete(np.arange(10) * period, [4, 5])  # two images lost
    kept, gaps = select_frames(missing + np.array([0, 3, -4, 2, 1, 0, -2, 4]) * MS, period)
    assert kept.tolist() == list(range(8)) and gaps == 2
    assert estimate_fps(np.arange(20) * (100 * MS + 300_000)) == 10.0
    assert match_nearest(np.array([0, 50, 100]) * MS, np.array([10, 55, 131]) * MS, 20 * MS).tolist() == [0, 1, -1]


def test_mismatched_rates_are_aligned_by_nearest_stamp(tmp_path):
    """Camera 10 Hz, depth 7 Hz, pose 50 Hz with jitter: which depth/pose goes with which frame, and drops."""
    folder = write_episode(tmp_path / "ep", duration=3.0, depth_hz=7.0, pose_jitter_ms=4.0,
                           gripper=lambda t: 1.0 if t >= 1.45 else 0.0)
    episode, report = load_episode(folder, ConvertConfig(traces="none"))
    camera = T0 + np.arange(31) * 100 * MS
    depth = T0 + np.round(np.arange(22) * 1e9 / 7).astype(np.int64)
    with_depth = [c for c in camera if np.min(np.abs(depth - c)) <= 20 * MS]
    assert episode.metadata["frame_stamps_ns"] == with_depth
    assert report.dropped["depth"] == 31 - len(with_depth) > 5 and report.frames == len(with_depth) == len(episode)
    assert report.camera_frames == 31 and report.decimated == 0 and report.gaps == 0 and episode.fps == 10.0
    # Each frame's depth is the 7 Hz message nearest its stamp (its value names it).
    for t, c in enumerate(with_depth):
        assert episode.depth[t, 10, 10] == pytest.approx(0.8 + 0.01 * nearest(depth, c), abs=1e-6)
    # The pose is the (jittered) 50 Hz sample nearest the frame: x = 0.3 + 0.1 * its time.
    rng = np.random.default_rng(0)
    jitter = np.concatenate([[0.0], rng.uniform(-4, 4, size=150)]) * MS
    poses = T0 + np.round(np.arange(151) * 2e7 + jitter).astype(np.int64)
    for t, c in enumerate(with_depth):
        assert episode.ee_pose[t, 0] == pytest.approx(0.3 + 0.1 * (poses[nearest(poses, c)] - T0) / 1e9, abs=1e-9)
        if t + 1 < len(episode):  # actions: the pose one period later minus this one
            after = poses[nearest(poses, c + 100 * MS)]
            assert episode.actions[t, 0] == pytest.approx(0.1 * (after - poses[nearest(poses, c)]) / 1e9, abs=1e-9)
    np.testing.assert_allclose(episode.actions[:-1, 1:6], 0.0, atol=1e-12)
    np.testing.assert_allclose(episode.actions[-1, :6], 0.0)  # the last frame holds still
    # Gripper: the command in effect now (state) and one period later (action).
    seconds = (np.array(with_depth) - T0) / 1e9
    np.testing.assert_array_equal(episode.actions[:, 6], (seconds + 0.1 >= 1.45 - 1e-9).astype(float))
    np.testing.assert_allclose(episode.gripper[:, 0], 0.04)  # two finger joints of 2 cm
    assert episode.joints.shape == (len(episode), 2) and episode.metadata["joint_names"] == ["j1", "j2"]
    assert episode.camera.intrinsics[0, 0] == FX and np.allclose(episode.camera.extrinsics, T_BASE_CAM)
    assert report.rates_hz["image"] == pytest.approx(10.0) and report.rates_hz["depth"] == pytest.approx(7.0, abs=0.05)
    assert report.rates_hz["ee_pose"] == pytest.approx(50.0, abs=0.5)


def test_frames_without_a_pose_are_dropped_and_named_when_too_few_remain(tmp_path):
    folder = write_episode(tmp_path / "ep", duration=1.0, pose_hz=4.0)  # a pose every 250 ms
    # Only the frames at 0, 500 and 1000 ms have a pose within 30 ms, and none has one 100 ms later: the
    # last frame may hold still, the other two are dropped, leaving one frame.
    with pytest.raises(InvalidInputError, match=r"only 1 frame.*8 for ee_pose, 2 for next_pose") as err:
        load_episode(folder, ConvertConfig(traces="none", state_tolerance_ms=30))
    assert str(folder) in str(err.value)


# ------------------------------------------------------------------------------------------ traces + training
def ee_far(t_s: float):
    """The gripper parked in the top-left corner (pixel (10.5, 16.5)), far from the square."""
    return (0.75, 0.35, 0.0)


def ee_on_square(t_s: float):
    """The gripper holding the square: its TCP projects onto the square's centre."""
    u, v = square_centre(t_s)
    return (0.5 + (31.5 - v) / FX, (31.5 - u) / FX, 0.0)


N_FUTURE = 4


@pytest.fixture(scope="module")
def square_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    nan_rows = slice(40, 46)  # unknown depth across the square: trace depths must still come out finite
    write_episode(root / "rec" / "ep_far", duration=1.5, depth_nan_rows=nan_rows, ee=ee_far)
    write_episode(root / "rec" / "ep_held", duration=1.5, depth_nan_rows=nan_rows, ee=ee_on_square,
                  gripper=lambda t: 1.0, instruction="carry the red square right")
    out = root / "dataset"
    summary = convert_bags([root / "rec"], out, ConvertConfig(n_future=N_FUTURE, grid_size=16))
    return out, summary


def test_square_dataset_summary_and_layout(square_dataset):
    out, summary = square_dataset
    info = summary.to_dict()
    assert (info["episodes_found"], info["converted"], info["failed"], info["frames"]) == (2, 2, 0, 32)
    assert info["dropped"] == dict.fromkeys(info["dropped"], 0) and info["fps"] == 10.0
    assert info["stream_rates_hz"]["image"] == pytest.approx(10.0)
    ds = LeRobotV3Dataset(out)
    assert len(ds) == 2 and ds.num_frames == 32 and ds.fps == 10.0
    assert ds.features["observation.gt_trace"]["magma.shape"] == [3, N_FUTURE + 1, 3]
    assert sorted(ds.tasks.values()) == ["carry the red square right", "push the red square right"]


def test_traces_follow_the_moving_square(square_dataset):
    ds = LeRobotV3Dataset(square_dataset[0])
    far, held = ds.episode(0), ds.episode(1)
    assert far.metadata["mark_names"] == ["gripper", "object", "tracked_2"] and far.success is True
    for episode in (far, held):
        T = len(episode)
        seconds = (np.array(episode.metadata["frame_stamps_ns"]) - T0) / 1e9
        assert np.isfinite(episode.gt_traces).all() and (episode.gt_traces[..., 2] > 0.7).all()
        assert np.isnan(episode.depth[:, 40:46]).all() and not np.isnan(episode.depth[:, :40]).any()
        for t in range(T - 1):  # the last frame has no future to track
            steps = np.minimum(np.arange(N_FUTURE + 1), T - 1 - t)
            obj = episode.gt_traces[t, 1]
            x0 = square_x(seconds[t])
            assert x0 - 0.5 <= obj[0, 0] <= x0 + SQUARE - 0.5 and SQUARE_TOP - 0.5 <= obj[0, 1] <= SQUARE_TOP + SQUARE - 0.5
            np.testing.assert_allclose(obj[:, 0] - obj[0, 0], 2.0 * steps, atol=1.0)  # 2 px per frame
            np.testing.assert_allclose(obj[:, 1], obj[0, 1], atol=1.0)
    # The gripper's trace is its projected TCP: parked in the corner, or riding on the square.
    np.testing.assert_allclose(far.gt_traces[:, 0, :, :2], np.broadcast_to([10.5, 16.5], (16, N_FUTURE + 1, 2)), atol=1e-3)
    np.testing.assert_allclose(far.gt_traces[:, 0, :, 2], 1.0, atol=1e-6)
    centres = np.array([square_centre((s - T0) / 1e9) for s in held.metadata["frame_stamps_ns"]])
    np.testing.assert_allclose(held.gt_traces[:, 0, 0, :2], centres, atol=1e-3)
    assert held.metadata["object_from_grasp_frames"] == 16 and far.metadata["object_from_grasp_frames"] == 0
    np.testing.assert_array_equal(held.gt_trace_gripper, 1.0)
    np.testing.assert_array_equal(far.gt_trace_gripper, 0.0)


def test_training_builder_makes_trace_items_that_follow_the_square(square_dataset):
    samples = [s for s in iter_samples(LeRobotV3Dataset(square_dataset[0])) if s.episode_index == 0]
    sample = samples[3]
    assert sample.action is not None and sample.gt_trace.shape == (3, N_FUTURE + 1, 3)
    ids = [1, 2, 3]
    gripper, obj = gt_grid_traces(sample, ids, N_FUTURE, 1, DepthBinning())
    assert obj.mark_id == 2 and gripper.mark_id == 1
    # 8 px to the right over 4 steps of a 64 px image is ~32 cells of the 256 grid; no vertical motion.
    assert 26 <= obj.cells[-1, 0] - obj.cells[0, 0] <= 38 and abs(int(obj.cells[-1, 1]) - int(obj.cells[0, 1])) <= 4
    assert (gripper.cells == gripper.cells[0]).all() and (gripper.gripper == 0).all()
    item = build_trace(sample, ids, N_FUTURE, 1, DepthBinning())
    assert item.objective == "trace" and item.image.shape == (SIZE, SIZE, 3) and "Mark 2" in item.answer


def test_dataset_info_summarises_the_converted_dataset(square_dataset, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    args = argparse.Namespace(root=str(square_dataset[0]), contact_sheet=str(sheet), sheet_episodes=4, json=True)
    assert dataset_info.run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 2 and summary["frames"] == 32 and summary["success_rate"] == 1.0
    assert summary["robot_type"] == "panda" and sheet.stat().st_size > 1000


# ------------------------------------------------------------------------------------------ bad input
def test_corrupt_and_truncated_bags_fail_by_name_and_the_rest_is_written(tmp_path):
    rec = tmp_path / "rec"
    for name in ("a_good", "b_garbage", "c_truncated", "d_good", "e_failed"):
        write_episode(rec / name, duration=0.5, outcome="failure" if name == "e_failed" else "success")
    garbage = next((rec / "b_garbage" / "bag").glob("*.mcap"))
    garbage.write_bytes(b"this is not an mcap file at all" * 10)
    truncated = next((rec / "c_truncated" / "bag").glob("*.mcap"))
    truncated.write_bytes(truncated.read_bytes()[:12])
    out = tmp_path / "ds"
    summary = convert_bags([rec], out, ConvertConfig(traces="none", only_success=True))
    status = {Path(e.path).name: e.status for e in summary.episodes}
    assert status == {"a_good": "converted", "b_garbage": "failed", "c_truncated": "failed", "d_good": "converted",
                      "e_failed": "skipped"}
    reasons = {Path(e.path).name: e.reason for e in summary.failures}
    assert str(garbage) in reasons["b_garbage"] and "not an MCAP file" in reasons["b_garbage"]
    assert str(truncated) in reasons["c_truncated"] and "truncated" in reasons["c_truncated"]
    assert len(LeRobotV3Dataset(out)) == 2


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="magma dataset")
    dataset_from_bags.register(parser.add_subparsers())
    args = parser.parse_args(["from-bags", *argv])
    return args.func(args)


def test_cli_exits_non_zero_naming_the_bad_bag_and_keeps_the_others(tmp_path, capsys):
    rec = tmp_path / "rec"
    write_episode(rec / "good", duration=0.5)
    write_episode(rec / "bad", duration=0.5)
    bad = next((rec / "bad" / "bag").glob("*.mcap"))
    bad.write_bytes(bad.read_bytes()[:40] + b"\x00\xff" * 50)
    out = tmp_path / "ds"
    code = run_cli([str(rec), "--out", str(out), "--traces", "none", "--image-size", "32", "--json"])
    captured = capsys.readouterr()
    assert code == 1 and f"error: {rec / 'bad'}: the bag holds no readable topic" in captured.err
    report = json.loads(captured.out)
    assert report["converted"] == 1 and report["failed"] == 1
    episode = LeRobotV3Dataset(out).episode(0)
    assert episode.rgb.shape == (6, 32, 32, 3) and episode.depth.shape == (6, 32, 32)
    assert episode.camera.intrinsics[0, 0] == pytest.approx(FX / 2) and episode.camera.intrinsics[0, 2] == pytest.approx(15.5)
    # Nothing convertible: an error, and no dataset folder.
    with pytest.raises(InvalidInputError, match="no episode was converted"):
        run_cli([str(rec / "bad"), "--out", str(tmp_path / "none"), "--traces", "none"])
    assert not (tmp_path / "none").exists()


def test_bgr8_and_millimetre_depth_are_converted(tmp_path):
    folder = write_episode(tmp_path / "ep", duration=0.5, rgb_encoding="bgr8", depth_encoding="16UC1")
    episode, _ = load_episode(folder, ConvertConfig(traces="none"))
    np.testing.assert_array_equal(episode.rgb[2], render(0.2))
    assert np.isnan(episode.depth[:, :4]).all()  # 0 mm is "no reading"
    np.testing.assert_allclose(episode.depth[2, 4:], 0.82, atol=1e-6)
    rgba = write_episode(tmp_path / "rgba", duration=0.3, rgb_encoding="rgba8")
    np.testing.assert_array_equal(load_episode(rgba, ConvertConfig(traces="none"))[0].rgb[1], render(0.1))


@pytest.mark.parametrize("topic, encoding", [("/camera/image_raw", "yuv422"), ("/camera/depth/image_raw", "mono16")])
def test_unknown_encodings_are_refused_by_name(tmp_path, topic, encoding):
    folder = write_episode(tmp_path / "ep", duration=0.3)
    _retag_encoding(folder, topic, encoding)
    with pytest.raises(InvalidInputError, match=f"encoding '{encoding}' is not supported") as err:
        load_episode(folder, ConvertConfig(traces="none"))
    assert str(folder) in str(err.value) and topic in str(err.value)


def test_an_unclosed_bag_is_read_as_far_as_it_goes(tmp_path):
    folder = write_episode(tmp_path / "ep", duration=0.5)
    (folder / "bag" / "metadata.yaml").unlink()  # what a recorder killed with -9 leaves
    episode, report = load_episode(folder, ConvertConfig(traces="none"))
    assert report.recovered and episode.metadata["recovered"] is True and len(episode) == 6
    assert any("not closed cleanly" in w for w in report.warnings)


def _retag_encoding(folder, topic, encoding):
    """Rewrite the bag with `topic`'s images relabelled as `encoding`."""
    from rosbags.rosbag2 import Reader

    messages = []
    with Reader(folder / "bag") as reader:
        conns = [(c.topic, c.msgtype) for c in reader.connections]
        for conn, ts, data in reader.messages():
            msg = TS.deserialize_cdr(data, conn.msgtype)
            if conn.topic == topic:
                msg.encoding = encoding
            messages.append((conn.topic, conn.msgtype, ts, TS.serialize_cdr(msg, conn.msgtype)))
    import shutil

    shutil.rmtree(folder / "bag")
    with Writer(folder / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        handles = {t: writer.add_connection(t, m, typestore=TS) for t, m in conns}
        for t, _, ts, data in messages:
            writer.write(handles[t], ts, data)


def test_gripper_traces_need_calibration_unless_tracked(tmp_path):
    folder = write_episode(tmp_path / "ep", duration=1.0, calibration=False)
    with pytest.raises(InvalidInputError, match="extrinsics.*--traces tracked"):
        load_episode(folder, ConvertConfig(n_future=2, grid_size=8))
    episode, _ = load_episode(folder, ConvertConfig(traces="tracked", n_future=2, grid_size=8))
    assert episode.gt_traces.shape == (11, 2, 3, 3) and episode.metadata["camera_known"] is False
    assert episode.metadata["mark_names"] == ["tracked_0", "tracked_1"]


def test_intrinsics_come_from_the_metadata_without_a_camera_info_topic(tmp_path):
    # As the recorder stores it: CameraInfo fields, here of a 128 px calibration (the images are 64 px).
    info = {"width": 128, "height": 128, "k": [120.0, 0, 63.5, 0, 120.0, 63.5, 0, 0, 1], "d": [0.0] * 5}
    folder = write_episode(tmp_path / "ep", duration=0.5, meta_camera_info=info)
    config = ConvertConfig(traces="none", topics=StreamTopics(camera_info=None))
    episode, report = load_episode(folder, config)
    np.testing.assert_allclose(episode.camera.intrinsics, [[FX, 0, 31.5], [0, FX, 31.5], [0, 0, 1]])
    assert "camera_info" not in report.rates_hz and report.dropped["camera_info"] == 0

"""The recorder: episode events, the chunked bag writer and the disk guard, then the node over DDS.

Over DDS, a publisher process (a script driven line by line on its stdin) plays camera, pose and
instruction streams and the episode events; the recorder node runs as its own process. Waits are
bounded polls on the episode folder, never timings.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ros_helpers import REPO, ROS_AVAILABLE, launch_node, probe, ros_env, wait_for  # noqa: F401

pytestmark = [pytest.mark.ros, pytest.mark.skipif(not ROS_AVAILABLE, reason="rclpy is not installed")]
pytest.importorskip("rosbags")

from magma_core.data.bag_io import BAG_DIR, BagError, read_episode, read_episode_meta  # noqa: E402
from magma_core.errors import InvalidInputError  # noqa: E402

INSTRUCTION = "put the red cube on the green pad"
EXTRINSICS_TEXT = "parent_frame: base\nchild_frame: camera_optical\nmatrix: [1, 0, 0, 0]\n"


# --------------------------------------------------------------------------- without DDS

def test_episode_events_parse_and_reject_bad_payloads():
    from magma_ros.recording import EpisodeEvent, parse_episode_event

    event = parse_episode_event('{"event": "stop", "episode_id": "ep-3", "instruction": "x", "outcome": "failure", '
                                '"stamp_ns": 12}')
    assert event == EpisodeEvent("stop", "ep-3", "x", "failure", 12)
    assert parse_episode_event(event.to_json()) == event
    for bad, why in [("nope", "not JSON"), ("[1]", "JSON object"), ('{"event": "pause", "episode_id": "a"}', "'event'"),
                     ('{"event": "start", "episode_id": "../etc"}', "episode_id"),
                     ('{"event": "start", "episode_id": "a", "outcome": "meh"}', "outcome"),
                     ('{"event": "start", "episode_id": "a", "stamp_ns": -1}', "stamp_ns")]:
        with pytest.raises(InvalidInputError, match=why):
            parse_episode_event(bad)


def _cdr_string(text: str) -> bytes:
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    return bytes(store.serialize_cdr(store.types["std_msgs/msg/String"](data=text), "std_msgs/msg/String"))


def test_episode_writer_writes_raw_cdr_in_checksummed_chunks(tmp_path):
    from magma_ros.recording import EpisodeWriter

    writer = EpisodeWriter(tmp_path, {"episode_id": "ep-1", "instruction": INSTRUCTION, "robot": "panda"},
                           chunk_bytes=4096)
    assert read_episode_meta(tmp_path / "ep-1")["complete"] is False  # written at start already
    writer.add_topic("/note", "std_msgs/msg/String")
    payloads = [_cdr_string(f"message {i} " + "x" * 200) for i in range(100)]
    assert writer.write_batch(("/note", 1000 + i, p) for i, p in enumerate(payloads)) == 100
    meta = writer.close("success", stop_ns=5000)
    assert meta["complete"] and meta["message_counts"] == {"/note": 100}

    bag = read_episode(tmp_path / "ep-1")
    assert not bag.recovered and bag.meta["outcome"] == "success" and bag.meta["stop_ns"] == 5000
    assert bag.meta["topics"] == {"/note": "std_msgs/msg/String"}
    assert [m.msg.data.split()[1] for m in bag.messages()] == [str(i) for i in range(100)]
    mcap = next((tmp_path / "ep-1" / BAG_DIR).glob("*.mcap")).read_bytes()
    assert mcap.count(payloads[5]) == 1  # stored byte for byte

    # Small chunks, each with its CRC: damage inside one chunk is detected, not decoded as garbage.
    (tmp_path / "ep-1" / BAG_DIR / "metadata.yaml").unlink()
    at = mcap.index(b"message 50 ")
    damaged = mcap[:at] + b"MESSAGE" + mcap[at + 7:]
    next((tmp_path / "ep-1" / BAG_DIR).glob("*.mcap")).write_bytes(damaged)
    with pytest.raises(BagError, match="CRC mismatch"):
        read_episode(tmp_path / "ep-1")
    with pytest.raises(InvalidInputError, match="exists already"):
        EpisodeWriter(tmp_path, {"episode_id": "ep-1"})
    with pytest.raises(InvalidInputError, match="not in the ROS 2 Kilted typestore"):
        EpisodeWriter(tmp_path, {"episode_id": "ep-2"}).add_topic("/x", "no_pkg/msg/Nothing")


def test_disk_guard_stops_the_episode_cleanly(tmp_path, monkeypatch):
    from magma_ros.recording import DiskSpaceError, EpisodeWriter, episode_writer

    writer = EpisodeWriter(tmp_path, {"episode_id": "ep-d"}, min_free_mb=100.0)
    writer.add_topic("/note", "std_msgs/msg/String")
    writer.write_batch([("/note", 1, _cdr_string("kept"))])
    monkeypatch.setattr(episode_writer, "free_mb", lambda path: 42.0)
    with pytest.raises(DiskSpaceError, match="only 42 MiB free"):
        writer.write_batch([("/note", 2, _cdr_string("dropped"))])
    writer.close("aborted", "disk guard: only 42 MiB free")
    bag = read_episode(tmp_path / "ep-d")
    assert not bag.recovered and bag.meta["outcome"] == "aborted" and "42 MiB" in bag.meta["reason"]
    assert [m.msg.data for m in bag.messages()] == ["kept"]
    with pytest.raises(DiskSpaceError):  # no new episode while the disk is that full
        EpisodeWriter(tmp_path, {"episode_id": "ep-e"}, min_free_mb=100.0)
    assert not (tmp_path / "ep-e").exists()


def test_config_lists_every_recorder_parameter_and_the_node_never_imports_torch():
    import yaml

    from magma_ros.nodes.recorder import PARAMETERS

    config = yaml.safe_load((REPO / "ros_ws" / "src" / "magma" / "config" / "magma.yaml").read_text())
    assert config["/**/recorder"]["ros__parameters"] == {p.name: p.default for p in PARAMETERS}
    code = "import sys, magma_ros.nodes.recorder; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60).returncode == 0


# --------------------------------------------------------------------------- over DDS

PUBLISHER = r'''
import json, sys, time
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from magma_ros import qos
from magma_ros.nodes.recorder import EPISODE_EVENT_QOS

rclpy.init()
node = rclpy.create_node("recorder_test_publisher")
image = node.create_publisher(Image, "camera/image_raw", qos.SENSOR)
info = node.create_publisher(CameraInfo, "camera/camera_info", qos.SENSOR)
pose = node.create_publisher(PoseStamped, "magma/ee_pose", QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
instruction = node.create_publisher(String, "magma/instruction", qos.LATCHED)
events = node.create_publisher(String, "magma/episode_event", EPISODE_EVENT_QOS)
instruction.publish(String(data=sys.argv[1]))
seq = 0

def answer(text):
    print(text, flush=True)

for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "wait":  # until the recorder subscribed to everything
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and min(p.get_subscription_count() for p in (image, info, pose, instruction, events)) < 1:
            time.sleep(0.05)
        answer("ok")
    elif cmd[0] in ("start", "stop"):
        events.publish(String(data=json.dumps({"event": cmd[0], "episode_id": cmd[1], "instruction": sys.argv[1],
                                               "outcome": cmd[2] if len(cmd) > 2 else None,
                                               "stamp_ns": node.get_clock().now().nanoseconds})))
        answer("ok")
    elif cmd[0] == "burst":  # N frames (image + camera_info + pose) at HZ
        n, hz = int(cmd[1]), float(cmd[2])
        for _ in range(n):
            stamp = node.get_clock().now().to_msg()
            img = Image(height=128, width=128, encoding="rgb8", step=384, data=bytes([seq % 256]) * (128 * 128 * 3))
            img.header.stamp, img.header.frame_id = stamp, "camera_optical"
            cam = CameraInfo(width=128, height=128, distortion_model="plumb_bob", d=[0.0] * 5,
                             k=[100.0, 0.0, 64.0, 0.0, 100.0, 64.0, 0.0, 0.0, 1.0])
            cam.header.stamp, cam.header.frame_id = stamp, "camera_optical"
            p = PoseStamped()
            p.header.stamp, p.header.frame_id = stamp, "base"
            p.pose.position.x = float(seq)
            image.publish(img); info.publish(cam); pose.publish(p)
            seq += 1
            time.sleep(1.0 / hz)
        answer("ok")
    elif cmd[0] == "quit":
        break
node.destroy_node()
rclpy.try_shutdown()
'''


class Publisher:
    """The publisher process; `cmd` sends one line and waits for its "ok"."""

    def __init__(self, env: dict, log_dir: Path) -> None:
        self._log = open(log_dir / "publisher.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, INSTRUCTION], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=str(REPO), text=True,
                                     bufsize=1, start_new_session=True)

    def cmd(self, line: str, timeout: float = 30.0) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"publisher did not answer {line!r} within {timeout} s"
        assert self.proc.stdout.readline().strip() == "ok", line

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture
def publisher(ros_env, tmp_path):
    pub = Publisher(ros_env, tmp_path)
    yield pub
    pub.close()


@pytest.fixture
def recorder(launch_node, tmp_path):
    """Start a recorder writing into tmp_path/episodes with small, quickly closed chunks."""
    extrinsics = tmp_path / "extrinsics.yaml"
    extrinsics.write_text(EXTRINSICS_TEXT)

    def start(**params):
        defaults = dict(record_dir=str(tmp_path / "episodes"), min_free_mb=0.0, chunk_size_kb=64, chunk_max_s=0.3,
                        flush_period_s=0.1, extrinsics_path=str(extrinsics),
                        topics=["camera/image_raw", "camera/camera_info", "magma/ee_pose", "magma/instruction",
                                "magma/target_pose"])
        return launch_node("recorder", **{**defaults, **params})

    return start


def _live_count(folder: Path, topic: str = "/magma/ee_pose") -> int:
    """Messages of `topic` already on disk in a bag being written (-1 before the bag exists)."""
    try:
        return read_episode(folder).message_counts.get(topic, 0)
    except BagError:
        return -1


def _poses(bag) -> list[int]:
    return [int(m.msg.pose.position.x) for m in bag.messages(["magma/ee_pose"])]


def _record(publisher, folder: Path, episode_id: str, frames: int, outcome: str) -> None:
    publisher.cmd(f"start {episode_id}")
    wait_for(lambda: _live_count(folder / episode_id) >= 0, 15, what=f"the bag of {episode_id}")
    publisher.cmd(f"burst {frames} 40")
    wait_for(lambda: _live_count(folder / episode_id) == frames, 15, what=f"{frames} poses flushed")
    publisher.cmd(f"stop {episode_id} {outcome}")
    wait_for(lambda: read_episode_meta(folder / episode_id)["complete"], 15, what=f"{episode_id} closed")


def test_recorder_writes_one_bag_per_episode(recorder, publisher, tmp_path):
    node = recorder()
    episodes = tmp_path / "episodes"
    publisher.cmd("wait")
    publisher.cmd("burst 5 40")  # between episodes: not recorded
    _record(publisher, episodes, "ep-0", 12, "success")
    publisher.cmd("burst 5 40")
    _record(publisher, episodes, "ep-1", 8, "failure")
    assert sorted(p.name for p in episodes.iterdir()) == ["ep-0", "ep-1"]

    first_pose = {"ep-0": 5, "ep-1": 22}
    for episode_id, frames, outcome in (("ep-0", 12, "success"), ("ep-1", 8, "failure")):
        bag = read_episode(episodes / episode_id)
        meta = bag.meta
        assert not bag.recovered and meta["complete"] and meta["outcome"] == outcome and meta["reason"] is None
        assert meta["episode_id"] == episode_id and meta["instruction"] == INSTRUCTION and meta["robot"] == "panda"
        assert meta["start_ns"] < meta["stop_ns"]
        assert meta["topics"] == {"/camera/image_raw": "sensor_msgs/msg/Image", "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
                                  "/magma/ee_pose": "geometry_msgs/msg/PoseStamped", "/magma/instruction": "std_msgs/msg/String"}
        assert meta["calibration"]["extrinsics_yaml"] == EXTRINSICS_TEXT
        assert meta["calibration"]["camera_info"]["k"][0] == 100.0 and meta["calibration"]["camera_info"]["width"] == 128
        # Reliable poses: exactly the episode's frames, in order; the latched instruction once, at the start.
        assert _poses(bag) == list(range(first_pose[episode_id], first_pose[episode_id] + frames))
        instructions = [m for m in bag.messages(["magma/instruction"])]
        assert [m.msg.data for m in instructions] == [INSTRUCTION]
        assert bag.message_counts == meta["message_counts"]
        # Best-effort camera frames: those that arrived, each intact, all inside the episode.
        images = list(bag.messages(["camera/image_raw"]))
        assert 1 <= len(images) <= frames
        assert all(m.msg.data[0] == m.msg.data[-1] and first_pose[episode_id] <= m.msg.data[0] < first_pose[episode_id] + frames
                   for m in images)
        assert all(meta["start_ns"] <= m.header_stamp_ns <= meta["stop_ns"] for m in images)

    # Shut down (Ctrl-C) mid-episode: the bag is closed cleanly and the episode marked aborted.
    publisher.cmd("start ep-2")
    wait_for(lambda: _live_count(episodes / "ep-2") >= 0, 15, what="the bag of ep-2")
    publisher.cmd("burst 3 40")
    wait_for(lambda: _live_count(episodes / "ep-2") == 3, 15, what="3 poses flushed")
    assert node.alive and node.stop() == 0
    bag = read_episode(episodes / "ep-2")
    assert not bag.recovered and bag.meta["outcome"] == "aborted" and "shut down" in bag.meta["reason"]
    assert _poses(bag) == list(range(30, 33))


def test_kill_9_mid_episode_leaves_a_recoverable_bag(recorder, publisher, tmp_path):
    node = recorder()
    folder = tmp_path / "episodes" / "ep-k"
    publisher.cmd("wait")
    publisher.cmd("start ep-k")
    wait_for(lambda: _live_count(folder) >= 0, 15, what="the bag")
    publisher.cmd("burst 15 40")
    # Everything received is flushed once the open chunk is chunk_max_s old: all 15 poses on disk.
    wait_for(lambda: _live_count(folder) == 15, 15, what="15 poses flushed")
    publisher.cmd("burst 10 200")
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(timeout=10)

    assert not (folder / BAG_DIR / "metadata.yaml").exists()
    bag = read_episode(folder)
    assert bag.recovered and bag.meta["complete"] is False and bag.meta["outcome"] is None
    poses = _poses(bag)
    # All that was flushed before the kill, then possibly part of the second burst: a gap-free prefix.
    assert 15 <= len(poses) <= 25 and poses == list(range(len(poses)))
    images = list(bag.messages(["camera/image_raw"]))
    assert all(m.msg.data[0] == m.msg.data[-1] for m in images)
    assert [m.log_time_ns for m in bag.messages()] == sorted(m.log_time_ns for m in bag.messages())


def test_disk_guard_aborts_the_episode_and_the_node_keeps_running(recorder, publisher, probe, tmp_path):
    from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    node = recorder()
    episodes = tmp_path / "episodes"
    publisher.cmd("wait")
    publisher.cmd("start ep-d")
    wait_for(lambda: _live_count(episodes / "ep-d") >= 0, 15, what="the bag")
    publisher.cmd("burst 6 40")
    wait_for(lambda: _live_count(episodes / "ep-d") == 6, 15, what="6 poses flushed")

    client = probe.node.create_client(SetParameters, "/recorder/set_parameters")
    assert client.wait_for_service(timeout_sec=10)

    def set_min_free(mb: float) -> bool:
        value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=mb)
        future = client.call_async(SetParameters.Request(parameters=[ParameterMsg(name="min_free_mb", value=value)]))
        wait_for(future.done, 10, what="set_parameters")
        return future.result().results[0].successful

    assert set_min_free(1e12)  # a petabyte: no disk has that much free
    publisher.cmd("burst 4 40")
    meta = wait_for(lambda: (m := read_episode_meta(episodes / "ep-d"))["complete"] and m, 15, what="the abort")
    assert meta["outcome"] == "aborted" and "disk guard" in meta["reason"] and "min_free_mb" in meta["reason"]
    bag = read_episode(episodes / "ep-d")
    assert not bag.recovered and _poses(bag) == list(range(6))
    wait_for(lambda: "disk guard" in node.output(), 10, what="the error in the log")
    assert "[ERROR]" in node.output()

    publisher.cmd("stop ep-d success")  # too late: stays aborted
    publisher.cmd("start ep-e")  # refused while the disk is "full"
    wait_for(lambda: "not recording episode ep-e" in node.output(), 10, what="the refusal")
    assert node.alive and not (episodes / "ep-e").exists()
    assert set_min_free(0.0)
    _record(publisher, episodes, "ep-f", 3, "success")
    assert read_episode(episodes / "ep-f").meta["outcome"] == "success"
    assert read_episode_meta(episodes / "ep-d")["outcome"] == "aborted"
    assert node.alive

"""magma_core.data.bag_io: episode folders written with rosbags, read back whole, truncated, corrupted."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402

from magma_core.data.bag_io import (BAG_DIR, EPISODE_FORMAT, META_FILE, BagError, find_episodes,  # noqa: E402
                                    read_episode, read_episode_meta, write_episode_meta)
from magma_core.errors import InvalidInputError  # noqa: E402

TS = get_typestore(Stores.ROS2_KILTED)
N = 40  # images; each is 128x128 rgb8 (49 KB), so rosbags' 1 MiB chunks hold about 21 of them
CUSTOM_DEF = "int32 count\nstring label\n"


def _image(i: int):
    t = TS.types
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=100 + i // 10, nanosec=(i % 10) * 100_000_000),
                                      frame_id="camera_optical")
    return t["sensor_msgs/msg/Image"](header=header, height=128, width=128, encoding="rgb8", is_bigendian=0, step=384,
                                      data=np.full(128 * 128 * 3, i, np.uint8))


def make_episode(root: Path, episode_id: str = "ep-0", compression: bool = False, custom: bool = False) -> Path:
    """An episode folder as the recorder writes it: N images, N strings, optionally a custom type."""
    folder = root / episode_id
    folder.mkdir(parents=True)
    store = get_typestore(Stores.ROS2_KILTED)
    if custom:
        store.register(get_types_from_msg(CUSTOM_DEF, "my_pkg/msg/Counter"))
    write_episode_meta(folder, {"episode_id": episode_id, "instruction": "stack the cubes", "outcome": "success",
                                "robot": "panda", "start_ns": 1000, "stop_ns": 2000,
                                "topics": {"/camera/image_raw": "sensor_msgs/msg/Image", "/note": "std_msgs/msg/String"},
                                "calibration": {"camera_info": None, "extrinsics_yaml": None}, "complete": True})
    writer = Writer(folder / BAG_DIR, version=9, storage_plugin=StoragePlugin.MCAP)
    if compression:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        img = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store)
        note = writer.add_connection("/note", "std_msgs/msg/String", typestore=store)
        counter = writer.add_connection("/counter", "my_pkg/msg/Counter", typestore=store) if custom else None
        for i in range(N):
            writer.write(img, 10_000 + 10 * i, store.serialize_cdr(_image(i), "sensor_msgs/msg/Image"))
            writer.write(note, 10_000 + 10 * i + 5,
                         store.serialize_cdr(store.types["std_msgs/msg/String"](data=f"note {i}"), "std_msgs/msg/String"))
            if counter is not None:
                msg = store.types["my_pkg/msg/Counter"](count=i, label=f"c{i}")
                writer.write(counter, 10_000 + 10 * i + 7, store.serialize_cdr(msg, "my_pkg/msg/Counter"))
    return folder


def _mcap(folder: Path) -> Path:
    return next((folder / BAG_DIR).glob("*.mcap"))


def _as_killed(folder: Path) -> bytes:
    """Make the bag look like a killed recorder's: no metadata.yaml. Returns the full MCAP bytes."""
    (folder / BAG_DIR / "metadata.yaml").unlink()
    return _mcap(folder).read_bytes()


def _keys(bag) -> list[tuple[str, int]]:
    return [(m.topic, m.log_time_ns) for m in bag.messages()]


# --------------------------------------------------------------------------- complete bags

def test_complete_episode_reads_metadata_topics_and_messages(tmp_path):
    folder = make_episode(tmp_path)
    bag = read_episode(folder)
    assert not bag.recovered
    assert bag.meta["format"] == EPISODE_FORMAT and bag.meta["instruction"] == "stack the cubes"
    assert bag.topics == {"/camera/image_raw": "sensor_msgs/msg/Image", "/note": "std_msgs/msg/String"}
    assert bag.message_counts == {"/camera/image_raw": N, "/note": N}
    msgs = list(bag.messages())
    assert len(msgs) == 2 * N
    assert [m.log_time_ns for m in msgs] == sorted(m.log_time_ns for m in msgs)
    images = [m for m in msgs if m.topic == "/camera/image_raw"]
    assert [int(m.msg.data[0]) for m in images] == list(range(N))
    assert images[13].header_stamp_ns == 101 * 10**9 + 300_000_000
    assert images[0].msgtype == "sensor_msgs/msg/Image" and images[0].msg.width == 128
    notes = [m for m in msgs if m.topic == "/note"]
    assert notes[7].msg.data == "note 7" and notes[7].header_stamp_ns is None
    # The episode.json path works as well as the folder.
    assert read_episode(folder / META_FILE).message_counts == bag.message_counts


def test_topic_selection_accepts_relative_names_and_rejects_unknown_ones(tmp_path):
    bag = read_episode(make_episode(tmp_path))
    assert {m.topic for m in bag.messages(["camera/image_raw"])} == {"/camera/image_raw"}
    assert sum(1 for _ in bag.messages(["/note"])) == N
    with pytest.raises(BagError, match="no topic 'camera/depth'"):
        list(bag.messages(["camera/depth"]))


def test_zstd_chunks_and_types_known_only_from_the_bag(tmp_path):
    folder = make_episode(tmp_path, compression=True, custom=True)
    bag = read_episode(folder)
    counters = [m.msg for m in bag.messages(["/counter"])]
    assert [(c.count, c.label) for c in counters] == [(i, f"c{i}") for i in range(N)]
    _as_killed(folder)
    recovered = read_episode(folder)
    assert recovered.recovered
    assert [m.msg.count for m in recovered.messages(["/counter"])] == list(range(N))
    assert recovered.message_counts == {"/camera/image_raw": N, "/note": N, "/counter": N}


# --------------------------------------------------------------------------- killed / truncated bags

def test_bag_without_metadata_yaml_is_recovered_whole(tmp_path):
    folder = make_episode(tmp_path)
    complete = _keys(read_episode(folder))
    _as_killed(folder)
    bag = read_episode(folder)
    assert bag.recovered and bag.recovery_note
    assert _keys(bag) == complete


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.45, 0.6, 0.97, 0.999])
def test_truncated_bag_gives_a_prefix_of_the_messages(tmp_path, fraction):
    folder = make_episode(tmp_path)
    complete = _keys(read_episode(folder))
    data = _as_killed(folder)
    _mcap(folder).write_bytes(data[:int(len(data) * fraction)])
    bag = read_episode(folder)
    got = _keys(bag)
    assert bag.recovered
    assert got == complete[:len(got)]
    # rosbags closes a chunk every ~21 images: a cut past the first chunk keeps it.
    if fraction > 0.45:
        assert len(got) >= 2 * 21


def test_truncation_at_every_record_boundary_and_inside_the_header(tmp_path):
    folder = make_episode(tmp_path)
    complete = _keys(read_episode(folder))
    data = _as_killed(folder)
    cuts = [0, 4, 8, 12]
    pos = 8
    while pos < len(data) - 8:  # each record boundary (up to the closing magic), and one byte after it
        cuts += [pos, pos + 1]
        pos += 9 + struct.unpack_from("<Q", data, pos + 1)[0]
    for cut in cuts:
        _mcap(folder).write_bytes(data[:cut])
        try:
            got = _keys(read_episode(folder))
        except BagError as exc:
            assert cut < 30 and "bag.mcap" in str(exc) and "truncated" in str(exc)
            continue
        assert got == complete[:len(got)], cut


def test_zero_filled_tail_counts_as_truncation(tmp_path):
    folder = make_episode(tmp_path)
    complete = _keys(read_episode(folder))
    data = _as_killed(folder)
    first_chunk_end = 8 + 9 + struct.unpack_from("<Q", data, 9)[0]  # header record
    first_chunk_end += 9 + struct.unpack_from("<Q", data, first_chunk_end + 1)[0]
    _mcap(folder).write_bytes(data[:first_chunk_end] + bytes(5000))
    bag = read_episode(folder)
    assert "zero-filled" in bag.recovery_note
    got = _keys(bag)
    assert 0 < len(got) < 2 * N and got == complete[:len(got)]  # exactly the first chunk


def test_lz4_chunks_are_read_when_recovering(tmp_path):
    lz4 = pytest.importorskip("lz4.frame")
    folder = make_episode(tmp_path)
    complete = _keys(read_episode(folder))
    data = _as_killed(folder)
    out, pos = bytearray(data[:8]), 8
    while pos < len(data) - 8:  # re-encode each chunk record with lz4
        op, length = struct.unpack_from("<BQ", data, pos)
        body = data[pos + 9:pos + 9 + length]
        if op == 0x06:
            head = body[:28]
            clen, = struct.unpack_from("<I", body, 28)
            size_at = 32 + clen
            raw_len, = struct.unpack_from("<Q", body, size_at)
            packed = lz4.compress(body[size_at + 8:size_at + 8 + raw_len])
            body = head + struct.pack("<I", 3) + b"lz4" + struct.pack("<Q", len(packed)) + packed
        out += struct.pack("<BQ", op, len(body)) + body
        pos += 9 + length
    _mcap(folder).write_bytes(bytes(out) + data[-8:])
    assert _keys(read_episode(folder)) == complete


# --------------------------------------------------------------------------- corrupt input

def test_garbage_and_corrupt_bags_raise_bag_error_naming_the_file(tmp_path):
    folder = make_episode(tmp_path, compression=True)
    data = _as_killed(folder)
    _mcap(folder).write_bytes(b"PK\x03\x04 this is a zip file, not a bag" * 50)
    with pytest.raises(BagError, match=r"bag\.mcap: not an MCAP file"):
        read_episode(folder)
    # Flip bytes inside the first chunk's zstd data: the chunk no longer decompresses.
    broken = bytearray(data)
    broken[200:260] = bytes(60)
    _mcap(folder).write_bytes(bytes(broken))
    with pytest.raises(BagError, match=r"bag\.mcap: corrupt"):
        read_episode(folder)
    assert issubclass(BagError, InvalidInputError)


def test_corrupt_message_bytes_raise_bag_error_when_decoded(tmp_path):
    folder = make_episode(tmp_path)
    data = bytearray(_as_killed(folder))
    # The first String message's CDR length field: find "note 0" and break its length prefix.
    at = data.index(b"note 0\x00") - 4
    data[at:at + 4] = struct.pack("<I", 10**6)
    _mcap(folder).write_bytes(bytes(data))
    bag = read_episode(folder)
    with pytest.raises(BagError, match="cannot decode a std_msgs/msg/String message on /note"):
        list(bag.messages(["/note"]))


def test_missing_or_malformed_episode_folders(tmp_path):
    with pytest.raises(BagError, match="no such episode folder"):
        read_episode(tmp_path / "nope")
    folder = make_episode(tmp_path)
    (folder / META_FILE).unlink()
    with pytest.raises(BagError, match=f"no {META_FILE}"):
        read_episode(folder)
    (folder / META_FILE).write_text("{not json")
    with pytest.raises(BagError, match="unreadable episode metadata"):
        read_episode(folder)
    (folder / META_FILE).write_text(json.dumps({"format": "something/2"}))
    with pytest.raises(BagError, match="is not 'magma-episode/1'"):
        read_episode_meta(folder)
    other = tmp_path / "only-meta"
    other.mkdir()
    write_episode_meta(other, {"episode_id": "only-meta"})
    with pytest.raises(BagError, match="no bag/ folder"):
        read_episode(other)


def test_write_episode_meta_replaces_the_file_atomically(tmp_path):
    write_episode_meta(tmp_path, {"episode_id": "a", "complete": False})
    write_episode_meta(tmp_path, {"episode_id": "a", "complete": True, "outcome": "failure"})
    assert [p.name for p in tmp_path.iterdir()] == [META_FILE]  # no temporary file left behind
    meta = read_episode_meta(tmp_path)
    assert meta == {"format": EPISODE_FORMAT, "episode_id": "a", "complete": True, "outcome": "failure"}


def test_find_episodes_expands_folders(tmp_path):
    a = make_episode(tmp_path / "day1", "ep-a")
    b = make_episode(tmp_path / "day1", "ep-b")
    c = make_episode(tmp_path / "day2" / "robot", "ep-c")
    assert find_episodes([tmp_path]) == [a.resolve(), b.resolve(), c.resolve()]
    assert find_episodes([b, tmp_path / "day1", c / META_FILE]) == [b.resolve(), a.resolve(), c.resolve()]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="holds no episode folder"):
        find_episodes([tmp_path / "empty"])
    with pytest.raises(BagError, match="no such file or folder"):
        find_episodes([tmp_path / "missing"])

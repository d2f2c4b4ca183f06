"""Read the episodes the recorder writes: `<episode>/episode.json` plus a rosbag2 MCAP folder `<episode>/bag/`.

A cleanly closed bag (metadata.yaml present, MCAP footer intact) is read through rosbags' own reader.
A bag whose recorder was killed has no metadata.yaml and an MCAP file that stops mid-record, without
summary or footer: it is scanned record by record here and every complete chunk (and every complete
top-level message) before the cut is recovered; the torn tail is dropped. Anything else that does not
parse (not MCAP, a chunk that fails to decompress or to match its checksum, undecodable CDR) raises
BagError naming the file and the problem.

Messages are deserialised with rosbags' ROS 2 Kilted typestore; types the store lacks are registered
from the definitions stored in the bag. Pure Python: no rclpy, so dataset tools run without ROS.
The on-disk layout is described in docs/recording.md.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from binascii import crc32
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from magma_core.errors import InvalidInputError

EPISODE_FORMAT = "magma-episode/1"
META_FILE = "episode.json"
BAG_DIR = "bag"
MCAP_MAGIC = b"\x89MCAP0\r\n"

# MCAP record opcodes this reader acts on (all others are skipped by their length prefix).
_OP_HEADER, _OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_DATA_END = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F
_RECORD_PREFIX = 9  # opcode (1) + uint64 length (8)
_FOOTER_SIZE = _RECORD_PREFIX + 20 + len(MCAP_MAGIC)


class BagError(InvalidInputError):
    """An episode folder or bag that cannot be read: missing, not MCAP, corrupt, or without episode.json."""


@dataclass(frozen=True)
class BagMessage:
    """One recorded message: `log_time_ns` is when the recorder received it, `header_stamp_ns` its header stamp."""

    topic: str
    msgtype: str
    log_time_ns: int
    header_stamp_ns: int | None
    msg: Any


@dataclass(frozen=True)
class _Channel:
    id: int
    topic: str
    msgtype: str
    msgdef: str  # ros2msg text stored in the bag ("" if the schema was lost)


class EpisodeBag:
    """One episode: its metadata (`meta`, episode.json), topics (name -> msgtype) and messages.

    `recovered` is True when the bag was not closed cleanly and was read by scanning a truncated file;
    `recovery_note` then says what was found. `message_counts` gives the readable messages per topic.
    """

    def __init__(self, path: Path, meta: dict, mcap_paths: list[Path], channels: dict[int, _Channel],
                 message_counts: dict[str, int], recovered: bool, recovery_note: str = "") -> None:
        self.path = path
        self.meta = meta
        self.mcap_paths = mcap_paths
        self.recovered = recovered
        self.recovery_note = recovery_note
        self.message_counts = message_counts
        self._channels = channels
        self.topics: dict[str, str] = {c.topic: c.msgtype for c in channels.values()}
        self._typestore = None

    def __repr__(self) -> str:
        return (f"EpisodeBag({str(self.path)!r}, episode_id={self.meta.get('episode_id')!r}, "
                f"messages={sum(self.message_counts.values())}, recovered={self.recovered})")

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Yield the messages of `topics` (all when None; names as in `resolve_topic`) in log-time order."""
        wanted = set(self.topics) if topics is None else {self.resolve_topic(t) for t in topics}
        if not wanted:
            return
        typestore = self._types()
        raw = self._raw_recovered(wanted) if self.recovered else self._raw_complete(wanted)
        for channel, log_time, data in raw:
            try:
                msg = typestore.deserialize_cdr(data, channel.msgtype)
            except Exception as exc:  # rosbags raises SerdeError, struct.error, ... on bad bytes
                raise BagError(f"{self.mcap_paths[0]}: cannot decode a {channel.msgtype} message on "
                               f"{channel.topic} at log time {log_time}: {exc}") from exc
            yield BagMessage(channel.topic, channel.msgtype, log_time, _header_stamp_ns(msg), msg)

    def resolve_topic(self, name: str) -> str:
        """The recorded name of `name`: bags hold fully qualified names, so "camera/image_raw" finds
        "/camera/image_raw". An unknown topic raises BagError (a typo would otherwise give no data)."""
        for candidate in (name, "/" + name.lstrip("/")):
            if candidate in self.topics:
                return candidate
        raise BagError(f"{self.path}: no topic {name!r} in this episode (recorded: {sorted(self.topics)})")

    def _raw_complete(self, wanted: set[str]) -> Iterator[tuple[_Channel, int, bytes]]:
        from rosbags.rosbag2 import Reader

        by_topic = {c.topic: c for c in self._channels.values()}
        try:
            with Reader(self.path / BAG_DIR) as reader:
                conns = [c for c in reader.connections if c.topic in wanted]
                for conn, log_time, data in reader.messages(connections=conns):
                    yield by_topic[conn.topic], log_time, data
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"{self.path / BAG_DIR}: cannot read bag: {exc}") from exc

    def _raw_recovered(self, wanted: set[str]) -> Iterator[tuple[_Channel, int, memoryview]]:
        for mcap in self.mcap_paths:
            scan = _McapScan(mcap)
            for batch in scan.message_batches():
                # The recorder writes in receive order; sorting each chunk keeps the log-time order
                # even when two callbacks interleaved.
                batch.sort(key=lambda item: item[1])
                for channel_id, log_time, data in batch:
                    channel = scan.channels.get(channel_id)
                    if channel is not None and channel.topic in wanted:
                        yield channel, log_time, data

    def _types(self):
        if self._typestore is None:
            self._typestore = _typestore_for(self._channels.values(), self.path)
        return self._typestore


def read_episode(path: str | os.PathLike) -> EpisodeBag:
    """Open one episode folder (or its episode.json): metadata, topics, and a message iterator.

    Raises BagError when the folder, episode.json or the bag is missing or unreadable.
    """
    folder = Path(path)
    if folder.name == META_FILE and folder.is_file():
        folder = folder.parent
    if not folder.exists():
        raise BagError(f"{folder}: no such episode folder")
    if not folder.is_dir():
        raise BagError(f"{folder}: not an episode folder (expected a folder with {META_FILE} and {BAG_DIR}/)")
    meta = read_episode_meta(folder)
    bag_dir = folder / BAG_DIR
    if not bag_dir.is_dir():
        raise BagError(f"{folder}: no {BAG_DIR}/ folder (the recorder writes the bag there)")
    mcaps = sorted(bag_dir.glob("*.mcap"))
    if not mcaps:
        raise BagError(f"{bag_dir}: no .mcap file in the bag folder")

    if (bag_dir / "metadata.yaml").is_file() and all(_has_footer(m) for m in mcaps):
        return _open_complete(folder, meta, mcaps)
    return _open_recovered(folder, meta, mcaps)


def find_episodes(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand paths into episode folders: an episode folder (or its episode.json) stays itself, any other
    folder gives every episode folder below it, sorted. Raises BagError for a missing path or one
    that holds no episode."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise BagError(f"{path}: no such file or folder")
        if path.is_file():
            if path.name != META_FILE:
                raise BagError(f"{path}: not an episode folder or {META_FILE}")
            found.append(path.parent)
        elif (path / META_FILE).is_file():
            found.append(path)
        else:
            below = sorted(p.parent for p in path.rglob(META_FILE) if p.is_file())
            # An episode folder never holds another episode; keep only the outermost ones.
            below = [p for p in below if not any(q != p and q in p.parents for q in below)]
            if not below:
                raise BagError(f"{path}: holds no episode folder (none with {META_FILE})")
            found.extend(below)
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve(), None)
    return list(unique)


def read_episode_meta(folder: str | os.PathLike) -> dict:
    """episode.json of an episode folder, checked for the format tag. Raises BagError if missing or malformed."""
    meta_path = Path(folder) / META_FILE
    if not meta_path.is_file():
        raise BagError(f"{folder}: no {META_FILE} (not an episode folder written by the recorder)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BagError(f"{meta_path}: unreadable episode metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise BagError(f"{meta_path}: episode metadata must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != EPISODE_FORMAT:
        raise BagError(f"{meta_path}: format {meta.get('format')!r} is not {EPISODE_FORMAT!r}")
    return meta


def write_episode_meta(folder: str | os.PathLike, meta: dict) -> Path:
    """Write episode.json atomically (temporary file + rename): a reader never sees half a file."""
    folder = Path(folder)
    target = folder / META_FILE
    fd, tmp = tempfile.mkstemp(prefix=".episode.", suffix=".json.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"format": EPISODE_FORMAT, **meta}, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# --- opening ---------------------------------------------------------------------------------------------

def _open_complete(folder: Path, meta: dict, mcaps: list[Path]) -> EpisodeBag:
    from rosbags.rosbag2 import Reader

    try:
        with Reader(folder / BAG_DIR) as reader:
            channels = {c.id: _Channel(c.id, c.topic, c.msgtype, c.msgdef.data) for c in reader.connections}
            counts: dict[str, int] = {}
            for c in reader.connections:
                counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
    except Exception as exc:  # rosbags' ReaderError and friends, with the file named
        raise BagError(f"{folder / BAG_DIR}: cannot read bag: {exc}") from exc
    return EpisodeBag(folder, meta, mcaps, channels, counts, recovered=False)


def _open_recovered(folder: Path, meta: dict, mcaps: list[Path]) -> EpisodeBag:
    channels: dict[int, _Channel] = {}
    counts: dict[str, int] = {}
    notes = []
    for mcap in mcaps:
        scan = _McapScan(mcap)
        per_channel: dict[int, int] = {}
        for batch in scan.message_batches():
            for channel_id, _, _ in batch:
                per_channel[channel_id] = per_channel.get(channel_id, 0) + 1
        for cid, channel in scan.channels.items():
            channels[cid] = channel
            counts[channel.topic] = counts.get(channel.topic, 0) + per_channel.get(cid, 0)
        notes.append(f"{mcap.name}: {scan.note}")
    return EpisodeBag(folder, meta, mcaps, channels, counts, recovered=True, recovery_note="; ".join(notes))


def _has_footer(mcap: Path) -> bool:
    try:
        size = mcap.stat().st_size
        if size < len(MCAP_MAGIC) * 2 + _FOOTER_SIZE:
            return False
        with mcap.open("rb") as f:
            f.seek(size - _FOOTER_SIZE)
            tail = f.read(_FOOTER_SIZE)
    except OSError:
        return False
    return tail[0] == _OP_FOOTER and tail.endswith(MCAP_MAGIC)


# --- scanning an MCAP file without its summary -------------------------------------------------------------

class _McapScan:
    """Walks one MCAP file record by record up to DataEnd, the footer or a torn tail.

    Schemas and channels are collected wherever they appear (rosbags writes them inside chunks).
    `note` says where and why the scan stopped.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.schemas: dict[int, tuple[str, str]] = {}  # id -> (name, data)
        self.channels: dict[int, _Channel] = {}
        self.note = ""

    def message_batches(self) -> Iterator[list[tuple[int, int, bytes]]]:
        """Lists of (channel id, log time, CDR bytes as a memoryview): one per chunk, one per top-level message."""
        for opcode, offset, body in self._top_records():
            if opcode == _OP_CHUNK:
                inner = _decompress_chunk(body, self.path, offset)
                batch: list[tuple[int, int, bytes]] = []
                for op, inner_off, rec in _records_in(inner, self.path, offset):
                    self._take(op, rec, batch, offset)
                yield batch
            else:
                batch = []
                self._take(opcode, body, batch, offset)
                if batch:
                    yield batch

    def _take(self, opcode: int, body: memoryview, batch: list, offset: int) -> None:
        try:
            if opcode == _OP_SCHEMA:
                sid, = struct.unpack_from("<H", body, 0)
                name, pos = _string(body, 2)
                _encoding, pos = _string(body, pos)
                data, _ = _string(body, pos)
                self.schemas[sid] = (name, data)
            elif opcode == _OP_CHANNEL:
                cid, sid = struct.unpack_from("<HH", body, 0)
                topic, pos = _string(body, 4)
                name, data = self.schemas.get(sid, ("", ""))
                self.channels[cid] = _Channel(cid, topic, name, data)
            elif opcode == _OP_MESSAGE:
                cid, _seq, log_time, _publish = struct.unpack_from("<HIQQ", body, 0)
                batch.append((cid, log_time, body[22:]))  # a view: the chunk's buffer lives as long as needed
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise BagError(f"{self.path}: malformed MCAP record (opcode 0x{opcode:02x}) in the record at byte "
                           f"{offset}: {exc}") from exc

    def _top_records(self) -> Iterator[tuple[int, int, memoryview]]:
        try:
            f = self.path.open("rb")
        except OSError as exc:
            raise BagError(f"{self.path}: cannot open: {exc.strerror}") from exc
        with f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(len(MCAP_MAGIC))
            if magic != MCAP_MAGIC:
                if len(magic) < len(MCAP_MAGIC) and MCAP_MAGIC.startswith(magic):
                    raise BagError(f"{self.path}: truncated to {size} bytes, before the end of the MCAP magic")
                raise BagError(f"{self.path}: not an MCAP file (bad magic bytes {magic[:8]!r})")
            offset = len(MCAP_MAGIC)
            first = True
            while True:
                prefix = f.read(_RECORD_PREFIX)
                if len(prefix) < _RECORD_PREFIX:
                    if first:
                        raise BagError(f"{self.path}: truncated to {size} bytes, inside the MCAP header record")
                    self.note = (f"no footer: file ends at byte {size}" if not prefix
                                 else f"torn record prefix at byte {offset} dropped")
                    return
                opcode, length = struct.unpack("<BQ", prefix)
                if first and opcode != _OP_HEADER:
                    raise BagError(f"{self.path}: corrupt MCAP: first record has opcode 0x{opcode:02x}, not a header")
                if opcode == 0 and _zeros_to_end(f, offset + _RECORD_PREFIX, size):
                    # A filesystem can leave a zero-filled tail after a crash: the same as a truncation.
                    self.note = f"zero-filled tail from byte {offset} dropped"
                    return
                if opcode == 0:
                    raise BagError(f"{self.path}: corrupt MCAP: invalid record opcode 0x00 at byte {offset}")
                if offset + _RECORD_PREFIX + length > size:
                    if first:
                        raise BagError(f"{self.path}: truncated to {size} bytes, inside the MCAP header record")
                    self.note = (f"torn record (opcode 0x{opcode:02x}, {length} bytes) at byte {offset} "
                                 f"dropped; file ends at byte {size}")
                    return
                if opcode in (_OP_DATA_END, _OP_FOOTER):
                    self.note = f"complete data section (summary not used) up to byte {offset}"
                    return
                if opcode in (_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK):
                    body = memoryview(f.read(length))
                    yield opcode, offset, body
                else:
                    f.seek(length, os.SEEK_CUR)
                first = False
                offset += _RECORD_PREFIX + length


def _decompress_chunk(body: memoryview, path: Path, offset: int) -> memoryview:
    """The records of a Chunk record, decompressed and checked against its size and CRC (when set)."""
    try:
        _start, _end, raw_size, crc = struct.unpack_from("<QQQI", body, 0)
        compression, pos = _string(body, 28)
        data_size, = struct.unpack_from("<Q", body, pos)
        pos += 8
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise BagError(f"{path}: corrupt chunk header at byte {offset}: {exc}") from exc
    if pos + data_size > len(body):
        raise BagError(f"{path}: corrupt chunk at byte {offset}: data ({data_size} bytes) overruns its record")
    data = bytes(body[pos:pos + data_size])
    try:
        raw = _DECOMPRESSORS[compression](data)
    except KeyError:
        raise BagError(f"{path}: chunk at byte {offset} uses unsupported compression {compression!r}") from None
    except Exception as exc:  # lz4/zstd raise their own error types on damaged data
        raise BagError(f"{path}: corrupt {compression} chunk at byte {offset}: {exc}") from exc
    if len(raw) != raw_size:
        raise BagError(f"{path}: corrupt chunk at byte {offset}: {len(raw)} bytes after decompression, "
                       f"header says {raw_size}")
    if crc and crc32(raw) != crc:
        raise BagError(f"{path}: corrupt chunk at byte {offset}: CRC mismatch")
    return memoryview(raw)


def _records_in(data: memoryview, path: Path, chunk_offset: int) -> Iterator[tuple[int, int, memoryview]]:
    pos = 0
    while pos < len(data):
        if pos + _RECORD_PREFIX > len(data):
            raise BagError(f"{path}: corrupt chunk at byte {chunk_offset}: torn record at its byte {pos}")
        opcode, length = struct.unpack_from("<BQ", data, pos)
        end = pos + _RECORD_PREFIX + length
        if end > len(data):
            raise BagError(f"{path}: corrupt chunk at byte {chunk_offset}: record at its byte {pos} "
                           f"({length} bytes) overruns the chunk")
        yield opcode, pos, data[pos + _RECORD_PREFIX:end]
        pos = end


def _string(buf: memoryview, pos: int) -> tuple[str, int]:
    n, = struct.unpack_from("<I", buf, pos)
    start = pos + 4
    if start + n > len(buf):
        raise ValueError(f"string of {n} bytes overruns its record")
    return bytes(buf[start:start + n]).decode("utf-8"), start + n


def _zeros_to_end(f, start: int, size: int) -> bool:
    here = f.tell()
    f.seek(start)
    while True:
        block = f.read(1 << 20)
        if not block:
            break
        if block.count(0) != len(block):
            f.seek(here)
            return False
    f.seek(here)
    return start <= size


def _lz4(data: bytes) -> bytes:
    from lz4.frame import decompress

    return decompress(data)


def _zstd(data: bytes) -> bytes:
    try:
        from compression import zstd  # Python 3.14+
    except ImportError:
        from backports import zstd
    return zstd.decompress(data)


_DECOMPRESSORS: dict[str, Callable[[bytes], bytes]] = {"": bytes, "lz4": _lz4, "zstd": _zstd}


# --- types -------------------------------------------------------------------------------------------------

def _typestore_for(channels: Iterable[_Channel], where: Path):
    """The Kilted typestore plus any type only this bag knows (registered from its stored definition)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    for ch in channels:
        if ch.msgtype in store.fielddefs:
            continue
        if not ch.msgdef:
            raise BagError(f"{where}: topic {ch.topic} has type {ch.msgtype}, unknown to the ROS 2 typestore "
                           "and without a definition in the bag")
        try:
            found = get_types_from_msg(ch.msgdef, ch.msgtype)
            store.register({name: d for name, d in found.items() if name not in store.fielddefs})
        except Exception as exc:
            raise BagError(f"{where}: cannot parse the stored definition of {ch.msgtype} ({ch.topic}): {exc}") from exc
    return store


def _header_stamp_ns(msg: Any) -> int | None:
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    if stamp is None or not hasattr(stamp, "sec"):
        return None
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)

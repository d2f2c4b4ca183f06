"""One episode on disk: `<record_dir>/<episode_id>/episode.json` + `bag/` (rosbag2, MCAP), written from raw CDR.

The writer never deserialises: messages arrive as the CDR bytes a raw ROS subscription hands over and
go to the bag as they are. episode.json is written atomically when the episode opens (complete: false)
and again when it closes (outcome, stop time, counts, complete: true), so a recorder killed mid-episode
leaves a folder that magma_core.data.bag_io recognises and recovers.

Disk guard: `write_batch` checks the free space first and raises DiskSpaceError below `min_free_mb`;
the caller then closes the episode as aborted (`close("aborted", reason)`), which still leaves a
complete, readable bag.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterable

from magma_core.data.bag_io import BAG_DIR, write_episode_meta
from magma_core.errors import InvalidInputError, MagmaError
from magma_ros.recording.chunked_mcap import ChunkedBagWriter


class DiskSpaceError(MagmaError, OSError):
    """Free space fell below the recorder's threshold."""


def free_mb(path: str | Path) -> float:
    """Free space (MiB) on the filesystem holding `path` (its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / (1 << 20)


class EpisodeWriter:
    """Writes one episode folder. Not thread safe: call it from one thread (the node's executor).

    `meta` holds the episode fields known at start (episode_id, instruction, robot, start_ns,
    calibration); topics are added as they become known, before or during the episode.
    """

    def __init__(self, record_dir: str | Path, meta: dict, min_free_mb: float = 0.0,
                 chunk_bytes: int = 1 << 20, chunk_max_s: float = 1.0) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.episode_id = str(meta["episode_id"])
        self.folder = Path(record_dir).expanduser() / self.episode_id
        self.min_free_mb = float(min_free_mb)
        self.meta = {"instruction": "", "outcome": None, "robot": "", "start_ns": time.time_ns(), "stop_ns": None,
                     "topics": {}, "calibration": {"camera_info": None, "extrinsics_yaml": None},
                     "complete": False, "reason": None, "message_counts": {}, **meta}
        self._typestore = get_typestore(Stores.ROS2_KILTED)
        self._connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}
        self.bytes_written = 0
        self.closed = False

        self.check_disk()
        if self.folder.exists():
            raise InvalidInputError(f"episode folder {self.folder} exists already; not overwriting it")
        self.folder.mkdir(parents=True)
        write_episode_meta(self.folder, self.meta)
        self._bag = ChunkedBagWriter(self.folder / BAG_DIR, chunk_bytes=chunk_bytes, chunk_max_s=chunk_max_s)
        self._bag.open()

    @property
    def topics(self) -> dict[str, str]:
        return dict(self.meta["topics"])

    def knows_type(self, msgtype: str) -> bool:
        """True if the bag can store `msgtype` (the ROS 2 Kilted typestore has its definition)."""
        return msgtype in self._typestore.fielddefs

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Register a topic (fully qualified name, e.g. /camera/image_raw) and its type; idempotent."""
        if topic in self._connections:
            if self.meta["topics"][topic] != msgtype:
                raise InvalidInputError(f"{topic} is recorded as {self.meta['topics'][topic]}, not {msgtype}")
            return
        if not self.knows_type(msgtype):
            raise InvalidInputError(f"{topic}: type {msgtype} is not in the ROS 2 Kilted typestore; cannot record it")
        self._connections[topic] = self._bag.add_connection(topic, msgtype, typestore=self._typestore)
        self.meta["topics"][topic] = msgtype
        self.counts.setdefault(topic, 0)

    def check_disk(self) -> None:
        """Raise DiskSpaceError when free space is below min_free_mb."""
        if self.min_free_mb <= 0:
            return
        free = free_mb(self.folder)
        if free < self.min_free_mb:
            raise DiskSpaceError(f"only {free:.0f} MiB free on the disk of {self.folder}, below min_free_mb "
                                 f"{self.min_free_mb:g}")

    def write_batch(self, batch: Iterable[tuple[str, int, bytes]]) -> int:
        """Write (topic, log_time_ns, CDR bytes) messages after checking the disk; returns how many were written.

        Raises DiskSpaceError (nothing written) when the disk is too full.
        """
        if self.closed:
            raise InvalidInputError(f"episode {self.episode_id} is closed")
        batch = list(batch)
        if not batch:
            return 0
        self.check_disk()
        for topic, log_time_ns, data in batch:
            self._bag.write(self._connections[topic], log_time_ns, data)
            self.counts[topic] += 1
            self.bytes_written += len(data)
        return len(batch)

    def close_chunk_if_old(self) -> bool:
        """Close (and flush) the open chunk if its first message waited longer than chunk_max_s."""
        return False if self.closed else self._bag.close_chunk_if_old()

    def update_meta(self, **fields) -> None:
        """Change metadata fields (written at close)."""
        self.meta.update(fields)

    def close(self, outcome: str | None, reason: str | None = None, stop_ns: int | None = None) -> dict:
        """Finish the bag (summary, footer, metadata.yaml) and rewrite episode.json; returns the metadata.

        If the bag cannot be finished (disk full...), it is left as a killed recorder would leave it
        (readable by recovery) and episode.json says so.
        """
        if self.closed:
            return self.meta
        self.closed = True
        self.meta.update(outcome=outcome, reason=reason, stop_ns=stop_ns or time.time_ns(),
                         message_counts=dict(self.counts))
        try:
            self._bag.close()
            self.meta["complete"] = True
        except Exception as exc:  # an OSError (disk full) or a rosbags error: keep what was flushed
            self._bag.abort()
            self.meta["complete"] = False
            self.meta["reason"] = "; ".join(filter(None, [reason, f"bag not finished: {exc}"]))
        write_episode_meta(self.folder, self.meta)
        return self.meta

    def __repr__(self) -> str:
        return f"EpisodeWriter({str(self.folder)!r}, messages={sum(self.counts.values())}, closed={self.closed})"




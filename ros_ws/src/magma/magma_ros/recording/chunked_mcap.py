"""rosbags' MCAP writer with bounded loss on a crash: small chunks, each checksummed and flushed when closed.

rosbags keeps the open chunk in memory and closes it at 1 MiB, writing through a buffered file. A recorder
killed with -9 then loses up to a megabyte plus whatever sat in the file buffer. Here a chunk closes at
`chunk_bytes` or when its first message is older than `chunk_max_s`, and the file is flushed right
after, so a kill loses at most the open chunk. Each chunk also gets its CRC-32 (rosbags writes 0,
"no checksum"), so readers detect a damaged chunk instead of decoding garbage.
"""
from __future__ import annotations

import struct
import time
from binascii import crc32
from importlib.metadata import version as rosbags_version

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import McapWriter

from magma_core.errors import MagmaError

ROSBAGS_CHUNK_LIMIT = 1 << 20  # rosbags closes a chunk past this size whatever we ask
# Byte offset of a Chunk record's CRC field: opcode (1) + length (8) + start, end, uncompressed size (3 x 8).
_CRC_OFFSET = 1 + 8 + 24


class ChunkedMcapStorage(McapWriter):
    """McapWriter whose chunks close early (size or age) and reach the OS at once."""

    chunk_bytes = ROSBAGS_CHUNK_LIMIT
    chunk_max_s = 1.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # This class leans on rosbags internals (chunk, bio, close_chunk): fail clearly if they moved.
        if not (hasattr(self, "chunk") and hasattr(self, "bio") and hasattr(McapWriter, "close_chunk")):
            raise MagmaError(f"rosbags {rosbags_version('rosbags')} changed its MCAP writer (tested with 0.11.9): "
                             "the recorder's chunked storage needs updating")
        self._chunk_opened = None  # monotonic time of the open chunk's first message
        self.chunks_written = 0

    def write(self, connection, timestamp: int, data) -> None:
        if self._chunk_opened is None:
            self._chunk_opened = time.monotonic()
        super().write(connection, timestamp, data)
        if self.chunk.bio.tell() >= self.chunk_bytes:
            self.close_chunk()

    def close_if_old(self, now: float | None = None) -> bool:
        """Close the open chunk when its first message is older than `chunk_max_s`; True if it did."""
        now = time.monotonic() if now is None else now
        if self._chunk_opened is not None and self.chunk.msgs and now - self._chunk_opened >= self.chunk_max_s:
            self.close_chunk()
            return True
        return False

    def close_chunk(self) -> None:
        with self.chunk.bio.getbuffer() as view:
            crc = crc32(view)
        start = self.bio.tell()
        super().close_chunk()
        end = self.bio.tell()
        self.bio.seek(start + _CRC_OFFSET)
        self.bio.write(struct.pack("<I", crc))
        self.bio.seek(end)
        # Page cache is enough for a killed process; a power cut would also need fsync (not worth its stall).
        self.bio.flush()
        self._chunk_opened = None
        self.chunks_written += 1


class ChunkedBagWriter(Writer):
    """rosbags' rosbag2 Writer storing MCAP through ChunkedMcapStorage."""

    STORAGE_PLUGINS = {StoragePlugin.MCAP: ChunkedMcapStorage}

    def __init__(self, path, chunk_bytes: int = ROSBAGS_CHUNK_LIMIT, chunk_max_s: float = 1.0) -> None:
        super().__init__(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
        self.chunk_bytes = chunk_bytes
        self.chunk_max_s = chunk_max_s

    def open(self) -> None:
        super().open()
        self.storage.chunk_bytes = self.chunk_bytes
        self.storage.chunk_max_s = self.chunk_max_s

    def close_chunk_if_old(self) -> bool:
        return self.storage.close_if_old() if self.storage is not None else False

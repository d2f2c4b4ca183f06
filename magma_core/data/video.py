"""Video files for episode datasets: lossy RGB, lossless 16-bit depth, concatenation and decoding.

RGB is encoded as yuv420p (libx264 by default, libsvtav1 optional), the pixel format every
LeRobot reader expects. Depth is stored losslessly as uint16 millimetres in an FFV1 stream
(gray16le) inside the same .mp4 container, so it follows the dataset's video path template:
0 is the "unknown" sentinel (NaN in metres), 1..65535 are millimetres (depth past 65.535 m
saturates). Episodes are encoded one per temporary file and then remuxed, packet for packet,
into the shared file, so every episode starts on a keyframe and its exact size is known before
it is appended (which is how files rotate by size).
"""
from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from magma_core.errors import InvalidInputError

RGB_PIX_FMT = "yuv420p"
DEPTH_CODEC = "ffv1"
DEPTH_PIX_FMT = "gray16le"
DEPTH_UNKNOWN_MM = 0
_UINT16_MAX = 65535

# Quality per codec: visually lossless at the small sizes robot datasets use, far from raw size.
# H.264 without B-frames: with them an episode's first decode timestamps fall before its first
# frame by a delay that depends on its length (none for a one-frame episode), so appending a long
# episode after a very short one would step the shared file's timestamps backwards.
_CODEC_OPTIONS = {
    "libx264": {"crf": "18", "preset": "veryfast", "bf": "0"},
    "libsvtav1": {"crf": "24", "preset": "10"},
}


def _av():
    try:
        import av  # noqa: PLC0415 - heavy and optional: only dataset commands need it
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InvalidInputError("video files need the 'av' package (pip install 'magma-robot-stack[data]')") from exc
    return av


def codec_name_for_info(codec: str) -> str:
    """The codec name a LeRobot info.json records ("h264", "av1", "ffv1")."""
    return {"libx264": "h264", "libsvtav1": "av1"}.get(codec, codec)


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metres (NaN/inf/<=0 unknown) -> uint16 millimetres with 0 meaning unknown."""
    depth = np.asarray(depth_m, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    mm = np.zeros(depth.shape, dtype=np.uint16)
    # A real reading never maps to the sentinel: anything below 1 mm is stored as 1 mm.
    mm[valid] = np.clip(np.rint(depth[valid] * 1000.0), 1, _UINT16_MAX).astype(np.uint16)
    return mm


def mm_to_depth(depth_mm: np.ndarray) -> np.ndarray:
    """uint16 millimetres -> float32 metres with NaN where the sentinel 0 was stored."""
    mm = np.asarray(depth_mm)
    depth = mm.astype(np.float32) / np.float32(1000.0)
    depth[mm == DEPTH_UNKNOWN_MM] = np.nan
    return depth


def _even_pad(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: replicate the last row/column (cropped away when decoding)."""
    pad_h = frames.shape[1] % 2
    pad_w = frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    widths = [(0, 0), (0, pad_h), (0, pad_w)] + [(0, 0)] * (frames.ndim - 3)
    return np.pad(frames, widths, mode="edge")


def encode_rgb(frames: np.ndarray, path: Path, fps: float, codec: str = "libx264") -> None:
    """Encode (T, H, W, 3) uint8 RGB frames into an .mp4 at `fps`."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InvalidInputError(f"rgb frames must be (T,H,W,3) uint8, got {frames.shape} {frames.dtype}")
    _encode(_even_pad(frames), path, fps, codec, RGB_PIX_FMT, "rgb24", _CODEC_OPTIONS.get(codec, {}))


def encode_depth(depth_mm: np.ndarray, path: Path, fps: float) -> None:
    """Encode (T, H, W) uint16 millimetres losslessly (FFV1, gray16le) into an .mp4 at `fps`."""
    if depth_mm.ndim != 3 or depth_mm.dtype != np.uint16:
        raise InvalidInputError(f"depth frames must be (T,H,W) uint16 mm, got {depth_mm.shape} {depth_mm.dtype}")
    _encode(depth_mm, path, fps, DEPTH_CODEC, DEPTH_PIX_FMT, DEPTH_PIX_FMT, {})


def _encode(frames: np.ndarray, path: Path, fps: float, codec: str, pix_fmt: str, in_fmt: str,
            options: dict) -> None:
    av = _av()
    if codec == "libsvtav1":
        # SVT-AV1 prints its whole configuration to stderr per encoder unless told otherwise;
        # errors only, and a user's own SVT_LOG wins.
        os.environ.setdefault("SVT_LOG", "1")
    if codec not in av.codecs_available:
        raise InvalidInputError(f"video codec {codec!r} is not available in this PyAV/FFmpeg build")
    rate = _fps_fraction(fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width = int(frames.shape[2])
        stream.height = int(frames.shape[1])
        stream.pix_fmt = pix_fmt
        stream.options = dict(options)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=in_fmt)
            frame.pts = i
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _fps_fraction(fps: float) -> Fraction:
    if not (math.isfinite(fps) and fps > 0):
        raise InvalidInputError(f"fps must be a positive number, got {fps}")
    return Fraction(fps).limit_denominator(1001)


class VideoConcatenator:
    """Appends whole per-episode video files into one output file by remuxing their packets."""

    def __init__(self, path: Path, fps: float):
        self.path = Path(path)
        self.fps = float(fps)
        self.num_frames = 0
        self._container = None
        self._stream = None
        self._last_dts: int | None = None

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    def append(self, episode_file: Path, num_frames: int) -> float:
        """Append every packet of `episode_file`; return the timestamp (s) where it starts."""
        av = _av()
        start_s = self.duration_s
        with av.open(str(episode_file)) as src:
            in_stream = src.streams.video[0]
            if self._container is None:
                self._container = av.open(str(self.path), "w")
                self._stream = self._container.add_stream_from_template(in_stream, opaque=True)
            # Offsets are whole frames, expressed in the output stream's ticks.
            offset = Fraction(self.num_frames, 1) / _fps_fraction(self.fps)
            for packet in src.demux(in_stream):
                if packet.dts is None:  # the flush packet at the end of the demuxer
                    continue
                scale = in_stream.time_base / self._stream.time_base
                packet.pts = int(round(packet.pts * scale + offset / self._stream.time_base))
                packet.dts = int(round(packet.dts * scale + offset / self._stream.time_base))
                if self._last_dts is not None and packet.dts <= self._last_dts:
                    # The muxer would fail with a bare EINVAL; say which file and why.
                    raise InvalidInputError(
                        f"cannot append {episode_file} to {self.path}: its decode timestamps start before the end "
                        "of the previous episode (encoded with a reordering delay the earlier file did not have)")
                self._last_dts = packet.dts
                packet.stream = self._stream
                self._container.mux(packet)
        self.num_frames += int(num_frames)
        return start_s

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._last_dts = None


def decode_frames(path: Path, from_s: float, num_frames: int, fps: float, kind: str = "rgb",
                  size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode `num_frames` frames starting at `from_s` seconds of a (possibly shared) video file.

    kind "rgb" returns (T, H, W, 3) uint8; "depth" returns (T, H, W) uint16 millimetres.
    `size` (height, width) crops away the padding added for odd image sides.
    Raises InvalidInputError naming the file when it is missing, unreadable or too short.
    """
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"video file missing: {path}")
    first = int(round(from_s * fps))
    wanted = range(first, first + int(num_frames))
    out_fmt = "rgb24" if kind == "rgb" else DEPTH_PIX_FMT
    frames: list[np.ndarray] = []
    # One reformatter for the whole file: a fresh one per frame (what to_ndarray(format=) does)
    # costs more than the decoding itself.
    reformatter = av.video.reformatter.VideoReformatter()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if first > 0:
                # Seek lands on the keyframe at or before the target; frames before it are skipped.
                container.seek(int(first / fps / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                index = int(round(float(frame.pts * stream.time_base) * fps))
                if index < wanted.start:
                    continue
                if index >= wanted.stop:
                    break
                if frame.format.name != out_fmt:
                    frame = reformatter.reformat(frame, format=out_fmt)
                frames.append(frame.to_ndarray())
    except InvalidInputError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise InvalidInputError(f"cannot decode video file {path}: {exc}") from exc
    if len(frames) != len(wanted):
        raise InvalidInputError(
            f"video file {path} is truncated or corrupt: expected {len(wanted)} frames from t={from_s:.3f}s, "
            f"decoded {len(frames)}")
    stacked = np.stack(frames)
    if size is not None:
        stacked = stacked[:, : size[0], : size[1]]
    return stacked

"""Camera node: frames from a device, a video file or a folder -> camera/image_raw (rgb8),
camera/depth/image_raw (32FC1, when the source has depth) and camera/camera_info, all with one stamp.

Never imports torch. A frame that cannot be decoded is logged (throttled) and skipped.
"""
from __future__ import annotations

import math
import traceback
from typing import Sequence

import cv2
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from magma_core.errors import InvalidInputError
from magma_ros import qos
from magma_ros.converters import depth_to_image, numpy_to_camera_info, rgb_to_image
from magma_ros.frame_sources import open_source
from magma_ros.nodes import ConfigurationError, Param, ThrottledLog, declare_parameters, main_entry, parameter_values, run_node

PARAMETERS = (
    Param("source", "0", "Device index (\"0\"), a video file, or a folder of frames (depth/<stem>.npy|png beside them)."),
    Param("loop", True, "Start again at the end of a video file or folder."),
    Param("fps", 15.0, "Publishing rate in frames per second."),
    Param("width", 0, "Output width in pixels; 0 keeps the source's (resizing scales the intrinsics too)."),
    Param("height", 0, "Output height in pixels; 0 keeps the source's."),
    Param("camera_info_path", "", "camera_info YAML (ROS format, e.g. from `magma calib intrinsics`); empty publishes a nominal one with a warning."),
    Param("nominal_hfov_deg", 60.0, "Horizontal field of view of the nominal camera_info used without a calibration file."),
    Param("frame_id", "camera_optical", "frame_id of the published images (the camera optical frame)."),
    Param("publish_depth", True, "Publish camera/depth/image_raw when the source has depth."),
)


def nominal_intrinsics(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """Pinhole K with square pixels, the principal point at the image centre and the given horizontal FOV."""
    if not 1.0 < hfov_deg < 179.0:
        raise ConfigurationError(f"nominal_hfov_deg must be in (1, 179), got {hfov_deg}")
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def scale_intrinsics(K: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """K for the image resized from `from_size` to `to_size` (width, height); refuses a change of aspect ratio."""
    (w0, h0), (w1, h1) = from_size, to_size
    if (w0, h0) == (w1, h1):
        return np.asarray(K, dtype=np.float64).copy()
    sx, sy = w1 / w0, h1 / h0
    if abs(sx - sy) > 0.01 * max(sx, sy):
        raise ConfigurationError(f"camera_info is for {w0}x{h0}, images are {w1}x{h1}: the aspect ratio differs, "
                                 "so the calibration does not apply (calibrate at this size)")
    K = np.asarray(K, dtype=np.float64).copy()
    # Pixel centres sit at integer coordinates: scale about the image corner (-0.5, -0.5).
    K[0, 0] *= sx
    K[0, 1] *= sx
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 1] *= sy
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


class CameraNode(Node):
    """Publishes frames of one source at `fps` with a camera_info from a calibration file (or nominal)."""

    def __init__(self) -> None:
        super().__init__("camera")
        self.log = ThrottledLog(self.get_logger())
        declare_parameters(self, PARAMETERS)
        self.cfg = parameter_values(self, PARAMETERS)
        if not self.cfg["fps"] > 0:
            raise ConfigurationError(f"fps must be positive, got {self.cfg['fps']}")
        out = (int(self.cfg["width"]), int(self.cfg["height"]))
        if (out[0] > 0) != (out[1] > 0) or min(out) < 0:
            raise ConfigurationError(f"give both width and height (> 0) or neither, got {out[0]}x{out[1]}")
        self.out_size = out if out[0] > 0 else None
        try:
            self.source = open_source(self.cfg["source"], bool(self.cfg["loop"]), self.out_size)
        except InvalidInputError as exc:
            raise ConfigurationError(f"camera: {exc}") from exc
        self.calibration = self._load_calibration(self.cfg["camera_info_path"])
        self.frame_id = self.cfg["frame_id"]
        self.image_pub = self.create_publisher(Image, "camera/image_raw", qos.SENSOR)
        self.depth_pub = self.create_publisher(Image, "camera/depth/image_raw", qos.SENSOR)
        self.info_pub = self.create_publisher(CameraInfo, "camera/camera_info", qos.SENSOR)
        self._info_cache: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None
        self.frames_published = 0
        self.ended = False
        self.timer = self.create_timer(1.0 / float(self.cfg["fps"]), self._tick)
        self.get_logger().info(f"publishing {self.source.description} at {self.cfg['fps']:g} fps")

    def _load_calibration(self, path: str):
        if not path:
            self.get_logger().warning(
                f"no camera_info_path: publishing a NOMINAL camera_info ({self.cfg['nominal_hfov_deg']:g} deg horizontal "
                "field of view); traces lifted to 3D with it will be off. Calibrate and set camera_info_path.")
            return None
        from magma_calibration.camera_info import read_camera_info

        try:
            return read_camera_info(path)
        except InvalidInputError as exc:
            raise ConfigurationError(f"camera_info_path: {exc}") from exc

    def _intrinsics(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        if self._info_cache is None or self._info_cache[0] != size:
            if self.calibration is None:
                K, D = nominal_intrinsics(size[0], size[1], float(self.cfg["nominal_hfov_deg"])), np.zeros(5)
            else:
                cal = self.calibration
                K = scale_intrinsics(cal.K, (cal.width, cal.height), size)
                D = cal.dist
                if (cal.width, cal.height) != size:
                    self.get_logger().warning(f"camera_info is for {cal.width}x{cal.height}, frames are {size[0]}x{size[1]}: "
                                              "intrinsics scaled to match")
            self._info_cache = (size, K, D)
        return self._info_cache[1], self._info_cache[2]

    def _tick(self) -> None:
        if self.ended:
            return
        try:
            self._publish_next()
        except InvalidInputError as exc:
            self.log.error(f"skipping a frame: {exc}")
        except Exception:  # a driver hiccup must not end the stream
            self.log.error(f"skipping a frame:\n{traceback.format_exc()}")

    def _publish_next(self) -> None:
        frame = self.source.read()
        if frame is None:
            self.ended = True
            self.get_logger().info(f"{self.source.description} ended after {self.frames_published} frames")
            return
        rgb, depth = frame.rgb, frame.depth
        if self.out_size and (rgb.shape[1], rgb.shape[0]) != self.out_size:
            rgb = cv2.resize(rgb, self.out_size, interpolation=cv2.INTER_AREA)
            if depth is not None:  # nearest: never average depth across an object edge
                depth = cv2.resize(depth, self.out_size, interpolation=cv2.INTER_NEAREST)
        size = (rgb.shape[1], rgb.shape[0])
        K, D = self._intrinsics(size)  # ConfigurationError (an InvalidInputError) when the calibration cannot apply
        stamp = self.get_clock().now().to_msg()
        self.image_pub.publish(rgb_to_image(rgb, stamp=stamp, frame_id=self.frame_id))
        if depth is not None and self.cfg["publish_depth"]:
            self.depth_pub.publish(depth_to_image(depth, stamp=stamp, frame_id=self.frame_id))
        self.info_pub.publish(numpy_to_camera_info(K, D, size, stamp=stamp, frame_id=self.frame_id))
        self.frames_published += 1

    def close(self) -> None:
        self.source.close()


def main(args: Sequence[str] | None = None) -> int:
    return run_node(CameraNode, args, PARAMETERS, "magma_ros.nodes.camera")


if __name__ == "__main__":
    main_entry(main)

"""Policy node: camera + proprioception + instruction -> Policy.infer -> trace (or actions) on ROS.

Subscription callbacks only keep the newest message of each topic. A worker thread runs inference
at most `rate_hz` times a second, always on the newest camera frame, each frame at most once; so
inference never blocks the callbacks and no queue can grow. Every failure (a malformed image, a
missing camera_info, an error from the policy) is logged, throttled, and nothing is published for
that frame: the controller then holds still as the last trace goes stale.
"""
from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from typing import Any, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, KeyValue
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2
from std_msgs.msg import Float32MultiArray, String

from magma_core.errors import InvalidInputError, MagmaError
from magma_ros import qos
from magma_ros.converters import (LatencyReport, actions_to_msg, camera_info_to_numpy, image_to_depth, image_to_rgb,
                                  joint_positions, latency_to_msg, marks_to_cloud, pose_to_numpy, rgb_to_image,
                                  stamp_to_ns, traces_to_cloud)
from magma_ros.nodes import ConfigurationError, Param, ThrottledLog, declare_parameters, main_entry, parameter_values, run_node

MODES = ("trace", "action")
# How often a missing extrinsics file is read again (the sim bridge may write it after this node starts).
EXTRINSICS_RETRY_S = 1.0
PARAMETERS = (
    Param("policy", "embedded", "Policy to run: 'embedded' (the trained magma-tiny), 'heuristic' or 'package.module:ClassName'.",
          read_only=True),
    Param("policy_path", "", "Local directory handed to ClassName.from_pretrained (empty: construct without weights).", read_only=True),
    Param("mode", "trace", "Output: 'trace' (magma/trace, marks, trace_text) or 'action' (magma/actions)."),
    Param("rate_hz", 5.0, "Most inferences per second; each runs on the newest frame."),
    Param("instruction", "", "Instruction to follow; a message on magma/instruction replaces it."),
    Param("extrinsics_path", "", "Camera extrinsics YAML (magma_calibration format) for obs['extrinsics']; empty: none. "
          "Unreadable: frames are skipped (and the file read again every second)."),
    Param("sync_tolerance_s", 0.05, "A depth image goes with a frame only when their stamps are this close (seconds)."),
    Param("publish_overlay", True, "Publish magma/overlay (the frame with marks and trace drawn)."),
    Param("arm_joints", ["panda_joint1", "panda_joint2", "panda_joint3", "panda_joint4", "panda_joint5", "panda_joint6",
                         "panda_joint7"], "joint_states names that make obs['joints'], in order."),
    Param("finger_joints", ["panda_finger_joint1", "panda_finger_joint2"],
          "joint_states names whose positions add up to the gripper opening (obs['gripper'], metres)."),
)


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        self.log = ThrottledLog(self.get_logger())
        declare_parameters(self, PARAMETERS)
        self.cfg = parameter_values(self, PARAMETERS)
        if self.cfg["mode"] not in MODES:
            raise ConfigurationError(f"mode must be one of {MODES}, got {self.cfg['mode']!r}")
        if not self.cfg["rate_hz"] > 0:
            raise ConfigurationError(f"rate_hz must be positive, got {self.cfg['rate_hz']}")
        from magma_ros.policy_loader import load_policy

        try:
            self.policy = load_policy(self.cfg["policy"], self.cfg["policy_path"])
        except InvalidInputError as exc:
            raise ConfigurationError(str(exc)) from exc
        self.extrinsics = None
        self._extrinsics_tried = -1e9
        self._extrinsics_error = ""
        self.instruction = str(self.cfg["instruction"])

        # Newest message of each input; the worker reads these references (assignment is atomic).
        self._image: Image | None = None
        self._depth: Image | None = None
        self._depth_received = 0.0
        self._reset_policy = False
        self._info: CameraInfo | None = None
        self._ee_pose: PoseStamped | None = None
        self._joints: JointState | None = None
        self._new_frame = threading.Event()
        self._stop = threading.Event()
        self._last_frame_ns = -1
        self.infer_ms: deque[float] = deque(maxlen=200)
        self.inferences = 0

        self.trace_pub = self.create_publisher(PointCloud2, "magma/trace", qos.LATEST)
        self.marks_pub = self.create_publisher(PointCloud2, "magma/marks", qos.LATEST)
        self.text_pub = self.create_publisher(String, "magma/trace_text", qos.EVENTS)
        self.actions_pub = self.create_publisher(Float32MultiArray, "magma/actions", qos.LATEST)
        self.overlay_pub = self.create_publisher(Image, "magma/overlay", qos.SENSOR)
        self.latency_pub = self.create_publisher(DiagnosticArray, "magma/latency", qos.EVENTS)
        self.create_subscription(Image, "camera/image_raw", self._on_image, qos.SENSOR)
        self.create_subscription(Image, "camera/depth/image_raw", self._on_depth, qos.SENSOR)
        self.create_subscription(CameraInfo, "camera/camera_info", self._on_info, qos.SENSOR)
        self.create_subscription(PoseStamped, "magma/ee_pose", self._on_ee_pose, qos.LATEST)
        self.create_subscription(JointState, "joint_states", self._on_joints, qos.EVENTS)
        self.create_subscription(String, "magma/instruction", self._on_instruction, qos.LATCHED)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.worker = threading.Thread(target=self._run, name="magma-policy-infer", daemon=True)
        self.worker.start()
        self.get_logger().info(f"policy {self.cfg['policy']!r} in {self.cfg['mode']} mode at up to {self.cfg['rate_hz']:g} Hz")

    def _extrinsics(self):
        """The extrinsics file's contents, read again at most every second until it can be read
        (the sim bridge may write it after this node starts); raises InvalidInputError meanwhile."""
        path = self.cfg["extrinsics_path"]
        if self.extrinsics is None and path and time.monotonic() - self._extrinsics_tried >= EXTRINSICS_RETRY_S:
            from magma_ros.lifting import load_extrinsics

            self._extrinsics_tried = time.monotonic()
            try:
                self.extrinsics = load_extrinsics(path)
            except InvalidInputError as exc:
                self._extrinsics_error = str(exc)
        if path and self.extrinsics is None:
            raise InvalidInputError(f"no calibration: {self._extrinsics_error}")
        return self.extrinsics

    # -- callbacks: keep the newest only -----------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        self._image = msg
        self._new_frame.set()

    def _on_depth(self, msg: Image) -> None:
        self._depth = msg
        self._depth_received = time.monotonic()

    def _on_info(self, msg: CameraInfo) -> None:
        self._info = msg

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        self._ee_pose = msg

    def _on_joints(self, msg: JointState) -> None:
        self._joints = msg

    def _on_instruction(self, msg: String) -> None:
        # Every message starts a task afresh, even with the same text (the next episode of a task).
        self._set_instruction(msg.data, force=True)

    def _set_instruction(self, text: str, force: bool = False) -> None:
        if force or text != self.instruction:
            self.instruction = text
            self.get_logger().info(f"instruction: {text!r}")
            self._reset_policy = True

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == "mode" and param.value not in MODES:
                return SetParametersResult(successful=False, reason=f"mode must be one of {MODES}")
            if param.name == "rate_hz" and not param.value > 0:
                return SetParametersResult(successful=False, reason="rate_hz must be positive")
            if param.name in {"extrinsics_path", "arm_joints", "finger_joints"}:
                return SetParametersResult(successful=False, reason=f"{param.name} is read at start only")
        for param in params:
            if param.name == "instruction":
                self._set_instruction(str(param.value))
            else:
                self.cfg[param.name] = param.value
        return SetParametersResult(successful=True)

    # -- the worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            if not self._new_frame.wait(timeout=0.2):
                continue
            self._new_frame.clear()
            frame = self._image
            if frame is None or stamp_to_ns(frame.header.stamp) == self._last_frame_ns:
                continue
            self._last_frame_ns = stamp_to_ns(frame.header.stamp)
            try:
                self._infer_once(frame)
            except Exception:  # the worker thread must outlive any bug, or the node goes silently deaf
                if self._stop.is_set() or not self.context.ok():
                    return  # shutting down (Ctrl-C/SIGTERM invalidates the publishers first): nothing to report
                self.log.error(f"inference step failed:\n{traceback.format_exc()}")
            # Pace to rate_hz; frames arriving meanwhile only replace self._image.
            self._stop.wait(max(0.0, 1.0 / float(self.cfg["rate_hz"]) - (time.monotonic() - started)))

    def _infer_once(self, frame: Image) -> None:
        try:
            obs = self.observation(frame)
        except InvalidInputError as exc:
            self.log.error(f"frame skipped: {exc}")
            return
        if self._reset_policy:
            self._reset_policy = False
            self.policy.reset()
        t0 = time.perf_counter()
        try:
            result = self.policy.infer(obs)
        except MagmaError as exc:
            self.log.error(f"policy refused the frame: {exc}")
            return
        except Exception:  # a bug in a policy must not take the node (and the robot's hold) down
            self.log.error(f"policy failed:\n{traceback.format_exc()}")
            return
        infer_ms = (time.perf_counter() - t0) * 1e3
        try:
            self._publish(frame, obs, result, infer_ms)
        except (InvalidInputError, KeyError, TypeError) as exc:
            self.log.error(f"policy output not published: {exc}")

    def observation(self, frame: Image) -> dict[str, Any]:
        """The obs dict of magma_core.policy.Policy for this frame (raises InvalidInputError on bad input)."""
        if not self.instruction:
            raise InvalidInputError("no instruction yet (parameter instruction or topic magma/instruction)")
        rgb = image_to_rgb(frame)
        obs: dict[str, Any] = {"rgb": rgb, "instruction": self.instruction}
        info = self._info
        if info is None:
            raise InvalidInputError("no camera_info received yet")
        K, D, size = camera_info_to_numpy(info)
        if size != (rgb.shape[1], rgb.shape[0]):
            raise InvalidInputError(f"camera_info is for {size[0]}x{size[1]}, the frame is {rgb.shape[1]}x{rgb.shape[0]}")
        obs["intrinsics"] = K
        if np.any(D):
            obs["distortion"] = D
        depth = self._matching_depth(stamp_to_ns(frame.header.stamp))
        if depth is not None:
            depth_m = image_to_depth(depth)
            if depth_m.shape != rgb.shape[:2]:
                raise InvalidInputError(f"depth is {depth_m.shape[1]}x{depth_m.shape[0]}, the frame {rgb.shape[1]}x{rgb.shape[0]}")
            obs["depth"] = depth_m
        if self._ee_pose is not None:
            obs["ee_pose"] = pose_to_numpy(self._ee_pose)
        if self._joints is not None:
            obs["joints"] = joint_positions(self._joints, self.cfg["arm_joints"])
            obs["gripper"] = np.array([joint_positions(self._joints, self.cfg["finger_joints"]).sum()])
        extrinsics = self._extrinsics()
        if extrinsics is not None:
            from magma_ros.lifting import camera_pose_from_extrinsics

            needs_pose = extrinsics.mode == "eye_in_hand"
            if needs_pose and "ee_pose" not in obs:
                raise InvalidInputError("wrist camera extrinsics need magma/ee_pose, none received yet")
            obs["extrinsics"] = camera_pose_from_extrinsics(extrinsics, obs.get("ee_pose") if needs_pose else None)
        return obs

    def _matching_depth(self, frame_ns: int) -> Image | None:
        """The depth image stamped within sync_tolerance_s of the frame. When the camera streams depth,
        wait up to that tolerance for it: depth usually lands just after its colour frame."""
        tolerance = float(self.cfg["sync_tolerance_s"])
        deadline = time.monotonic() + tolerance
        while True:
            depth = self._depth
            if depth is None or time.monotonic() - self._depth_received > 1.0:
                return None  # this camera has no (live) depth stream
            if abs(stamp_to_ns(depth.header.stamp) - frame_ns) <= tolerance * 1e9:
                return depth
            if time.monotonic() >= deadline or self._stop.is_set():
                return None
            time.sleep(0.002)

    def _latency(self, frame_ns: int, infer_ms: float, mode: str, result: dict[str, Any]) -> DiagnosticArray:
        now = self.get_clock().now()
        report = LatencyReport(frame_ns, infer_ms, (now.nanoseconds - frame_ns) / 1e6, mode)
        msg = latency_to_msg(report, stamp=now.to_msg())
        if isinstance(result.get("phase"), str):  # what a scripted policy is doing: handy when watching a run
            msg.status[0].values.append(KeyValue(key="phase", value=result["phase"]))
        return msg

    def _publish(self, frame: Image, obs: dict[str, Any], result: dict[str, Any], infer_ms: float) -> None:
        stamp, frame_id = frame.header.stamp, frame.header.frame_id
        frame_ns = stamp_to_ns(stamp)
        mode = self.cfg["mode"]
        if mode == "action":
            if result.get("actions") is None:
                raise InvalidInputError("mode is 'action' but the policy returned no 'actions'")
            actions = actions_to_msg(np.asarray(result["actions"], dtype=np.float64))
            self.latency_pub.publish(self._latency(frame_ns, infer_ms, mode, result))  # first: the controller pairs actions with it
            self.actions_pub.publish(actions)
        else:
            traces = result.get("trace")
            if not traces:
                raise InvalidInputError("mode is 'trace' but the policy returned no 'trace'")
            cloud = traces_to_cloud(traces, stamp=stamp, frame_id=frame_id)
            marks = result.get("marks")
            self.trace_pub.publish(cloud)
            if marks is not None:
                self.marks_pub.publish(marks_to_cloud(marks, stamp=stamp, frame_id=frame_id))
            if result.get("trace_text"):
                self.text_pub.publish(String(data=str(result["trace_text"])))
            self.latency_pub.publish(self._latency(frame_ns, infer_ms, mode, result))
            if self.cfg["publish_overlay"]:
                self._publish_overlay(obs["rgb"], traces, marks, stamp, frame_id)
        self.inferences += 1
        self.infer_ms.append(infer_ms)
        if self.inferences % 50 == 0:
            self.get_logger().info(f"{self.inferences} inferences, median {np.median(self.infer_ms):.1f} ms")

    def _publish_overlay(self, rgb: np.ndarray, traces, marks, stamp, frame_id: str) -> None:
        from magma_core.tom.draw import draw_traces

        try:
            canvas = draw_traces(rgb, [t for t in traces if t.mark_id >= 1], marks if marks is not None and len(marks) else None)
        except InvalidInputError as exc:
            self.log.warning(f"overlay not drawn: {exc}")
            return
        self.overlay_pub.publish(rgb_to_image(canvas, stamp=stamp, frame_id=frame_id))

    def close(self) -> None:
        self._stop.set()
        self._new_frame.set()
        self.worker.join(timeout=5.0)


def main(args: Sequence[str] | None = None) -> int:
    return run_node(PolicyNode, args, PARAMETERS, "magma_ros.nodes.policy")


if __name__ == "__main__":
    main_entry(main)

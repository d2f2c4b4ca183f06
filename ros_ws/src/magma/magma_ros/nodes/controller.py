"""Controller node: predicted trace (or actions), or teleop commands -> base-frame targets -> safety -> arm.

Trace mode: the gripper mark's trace is lifted to the base frame (intrinsics from camera_info,
extrinsics from `extrinsics_path`; 2.5D traces use their own depth, 2D-only ones the depth image,
else the work plane) and followed one waypoint at a time. Action mode: 7-D deltas (dx dy dz, rotation
vector, gripper) are chained from the measured pose into waypoints. With `source: teleop` the policy's
topics are ignored and magma/teleop/twist (integrated into a target), magma/teleop/pose (absolute
target) and magma/teleop/gripper drive the arm instead (magma_ros.teleop.servo), through the same gate.

Every control step (a timer at control_hz) the next waypoint passes the safety gate (magma_ros.safety)
and becomes a magma/target_pose + magma/gripper_command, or nothing when holding: e-stop latched, plan
stale (its camera frame older than stale_after_s), NaN, unparsable input, missing calibration, or a
target outside the workspace box. magma/controller_state says which, every step.
Never imports torch.
"""
from __future__ import annotations

import time
import traceback
from collections import deque
from typing import Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, TwistStamped
from nav_msgs.msg import Path
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Bool, Float32, Float32MultiArray, String

from magma_core.errors import InvalidInputError
from magma_ros import qos
from magma_ros.converters import (camera_info_to_numpy, cloud_to_marks, cloud_to_traces, image_to_depth, make_status,
                                  msg_to_actions, msg_to_latency, numpy_to_pose, pose_to_numpy, poses_to_path, stamp_to_ns)
from magma_ros.follower import PHASE_MESSAGES, WaypointFollower, plan_from_deltas
from magma_ros.lifting import camera_pose_from_extrinsics, lift_trace, load_extrinsics, select_gripper_trace
from magma_ros.nodes import ConfigurationError, Param, ThrottledLog, declare_parameters, main_entry, parameter_values, run_node
from magma_ros.safety import EStopLatch, SafetyGate, SafetyLimits, staleness_reason
from magma_ros.teleop.servo import ServoHold, TeleopServo

MODES = ("trace", "action")
SOURCES = ("policy", "teleop")
ACTION_STAMP_SOURCES = ("latency", "receipt")
# Actions and their magma/latency arrive on two topics; they belong together when received this close.
ACTION_PAIRING_S = 0.5
# How often a missing or broken extrinsics file is read again (the sim bridge may write it later).
EXTRINSICS_RETRY_S = 1.0

PARAMETERS = (
    Param("source", "policy", "'policy' follows the policy (magma/trace or magma/actions, see mode); 'teleop' follows "
                              "magma/teleop/twist, magma/teleop/pose and magma/teleop/gripper."),
    Param("mode", "trace", "'trace' follows magma/trace; 'action' follows magma/actions (7-D deltas)."),
    Param("control_hz", 20.0, "Control steps per second: one target (or a hold) per step."),
    Param("extrinsics_path", "", "Camera extrinsics YAML (magma_calibration format); without it every trace is held."),
    Param("stale_after_s", 1.0, "Hold when the plan's camera frame (trace header stamp) is older than this."),
    Param("workspace_low", [0.15, -0.5, 0.005], "Workspace box lower corner, base frame, metres."),
    Param("workspace_high", [0.85, 0.5, 0.65], "Workspace box upper corner, base frame, metres."),
    Param("workspace_mode", "reject", "'reject': hold (and warn) on a target outside the box; 'clip': move it inside."),
    Param("workspace_margin", 0.01, "A target at most this far outside the box (metres) is moved inside in either mode."),
    Param("max_linear_speed", 0.25, "Fastest commanded TCP speed, m/s (successive targets are at most speed/control_hz apart)."),
    Param("max_angular_speed", 1.0, "Fastest commanded TCP rotation, rad/s."),
    Param("max_step", 0.05, "Farthest a target may lie from the measured TCP position, metres (bounds the pull on a lagging arm)."),
    Param("max_step_angle", 0.3, "Largest rotation between a target and the measured TCP orientation, radians."),
    Param("reach_tolerance", 0.01, "A waypoint counts as reached within this distance, metres."),
    Param("gripper_tolerance", 0.005, "A waypoint where the gripper opens or closes must be reached this closely, metres."),
    Param("lookahead", 0, "Aim this many waypoints past the next unreached one (smoother, less exact)."),
    Param("gripper_settle_s", 0.5, "Dwell at a waypoint where the gripper opens or closes, seconds."),
    Param("gripper_confirm_distance", 0.02, "The gripper opens or closes only on a plan whose frame showed the hand "
          "within this distance of the switch point, metres; otherwise the arm waits there for the next plan."),
    Param("work_plane_z", 0.02, "Height (base z, metres) of the plane a 2D-only trace step is assumed on when no depth is known."),
    Param("depth_window", 5, "Odd window size (pixels) for the robust depth lookup of 2D-only traces."),
    Param("depth_sync_tolerance_s", 0.05, "The depth image used for a trace must be stamped this close to it."),
    Param("action_stamp_source", "latency", "Age of actions from the paired magma/latency frame stamp ('latency', safe) or their arrival ('receipt')."),
    Param("base_frame", "base", "frame_id of targets and waypoints (the robot base)."),
    Param("estop_reset", False, "Set true to arm the e-stop reset; then a false on magma/estop releases the latch."),
    Param("teleop_twist_timeout_s", 0.3, "Teleop: a twist whose header stamp is older than this counts as zero velocity "
                                         "(the arm stops when the teleop stops publishing)."),
)


class ControllerNode(Node):
    def __init__(self) -> None:
        super().__init__("controller")
        self.log = ThrottledLog(self.get_logger())
        declare_parameters(self, PARAMETERS)
        self.cfg = parameter_values(self, PARAMETERS)
        for key, allowed in (("source", SOURCES), ("mode", MODES), ("action_stamp_source", ACTION_STAMP_SOURCES)):
            if self.cfg[key] not in allowed:
                raise ConfigurationError(f"{key} must be one of {allowed}, got {self.cfg[key]!r}")
        try:
            self.gate = SafetyGate(self._limits(self.cfg), EStopLatch())
            self.follower = self._follower(self.cfg)
            self.teleop = self._servo(self.cfg)
        except InvalidInputError as exc:
            raise ConfigurationError(f"controller: {exc}") from exc
        self.base_frame = self.cfg["base_frame"]
        self.extrinsics = None
        self._extrinsics_error = "not loaded yet"
        self._extrinsics_tried = -1e9
        if self.cfg["source"] == "policy":  # teleop needs no calibration; it is loaded when the policy is followed
            self._load_extrinsics()

        self._ee: tuple[np.ndarray, int] | None = None  # (pose 7, header stamp ns)
        self._info: CameraInfo | None = None
        self._depths: deque[Image] = deque(maxlen=8)
        self._marks: PointCloud2 | None = None
        self._pending_trace: PointCloud2 | None = None
        self._pending_actions: tuple[Float32MultiArray, int] | None = None  # (msg, receipt ns)
        self._latency: tuple[int, int] | None = None  # (frame stamp ns, receipt ns) of the newest action-mode latency
        self.plan_stamp_ns: int | None = None
        self.plan_info: dict[str, object] = {}
        self._hold: tuple[str, str, str] | None = ("OK", "waiting", "waiting for a plan")  # (level, code, message)
        self.targets_published = 0
        self.plans_outdated = 0

        self.target_pub = self.create_publisher(PoseStamped, "magma/target_pose", qos.LATEST)
        self.path_pub = self.create_publisher(Path, "magma/waypoints", qos.LATEST)
        self.gripper_pub = self.create_publisher(Float32, "magma/gripper_command", qos.LATEST)
        self.state_pub = self.create_publisher(DiagnosticStatus, "magma/controller_state", qos.EVENTS)
        self.create_subscription(PointCloud2, "magma/trace", self._on_trace, qos.LATEST)
        self.create_subscription(PointCloud2, "magma/marks", self._on_marks, qos.LATEST)
        self.create_subscription(Float32MultiArray, "magma/actions", self._on_actions, qos.LATEST)
        self.create_subscription(DiagnosticArray, "magma/latency", self._on_latency, qos.EVENTS)
        self.create_subscription(CameraInfo, "camera/camera_info", self._on_info, qos.SENSOR)
        self.create_subscription(Image, "camera/depth/image_raw", self._on_depth, qos.SENSOR)
        self.create_subscription(PoseStamped, "magma/ee_pose", self._on_ee_pose, qos.LATEST)
        self.create_subscription(String, "magma/instruction", self._on_instruction, qos.LATCHED)
        # Teleop commands: reliable, newest only, like the policy's plans (a late command is replaced, not queued).
        self.create_subscription(TwistStamped, "magma/teleop/twist", self._on_teleop_twist, qos.LATEST)
        self.create_subscription(PoseStamped, "magma/teleop/pose", self._on_teleop_pose, qos.LATEST)
        self.create_subscription(Float32, "magma/teleop/gripper", self._on_teleop_gripper, qos.LATEST)
        # A volatile e-stop publisher cannot match this transient-local subscription: say so loudly.
        self.create_subscription(Bool, "magma/estop", self._on_estop, qos.LATCHED,
                                 event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_estop_qos))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.timer = self.create_timer(1.0 / float(self.cfg["control_hz"]), self._tick)
        following = "teleop" if self.cfg["source"] == "teleop" else f"the policy in {self.cfg['mode']} mode"
        self.get_logger().info(f"controller following {following} at {self.cfg['control_hz']:g} Hz, "
                               f"{self.gate.limits.step_limit * 1000:.1f} mm per step, at most {self.gate.limits.max_step * 1000:.0f} mm "
                               f"ahead of the arm, workspace {self.cfg['workspace_mode']}")

    @staticmethod
    def _limits(cfg: dict) -> SafetyLimits:
        return SafetyLimits(workspace_low=tuple(cfg["workspace_low"]), workspace_high=tuple(cfg["workspace_high"]),
                            workspace_mode=cfg["workspace_mode"], workspace_margin=float(cfg["workspace_margin"]),
                            max_linear_speed=float(cfg["max_linear_speed"]),
                            max_angular_speed=float(cfg["max_angular_speed"]), max_step=float(cfg["max_step"]),
                            max_step_angle=float(cfg["max_step_angle"]),
                            control_hz=float(cfg["control_hz"]), stale_after_s=float(cfg["stale_after_s"]))

    @staticmethod
    def _servo(cfg: dict) -> TeleopServo:
        return TeleopServo(float(cfg["control_hz"]), float(cfg["teleop_twist_timeout_s"]), cfg["workspace_low"],
                           cfg["workspace_high"])

    @staticmethod
    def _follower(cfg: dict) -> WaypointFollower:
        return WaypointFollower(float(cfg["reach_tolerance"]), int(cfg["lookahead"]), float(cfg["gripper_settle_s"]),
                                gripper_tolerance=float(cfg["gripper_tolerance"]),
                                gripper_confirm_distance=float(cfg["gripper_confirm_distance"]))

    def _load_extrinsics(self) -> None:
        if self.extrinsics is not None or time.monotonic() - self._extrinsics_tried < EXTRINSICS_RETRY_S:
            return
        self._extrinsics_tried = time.monotonic()
        try:
            self.extrinsics = load_extrinsics(self.cfg["extrinsics_path"])
            self.get_logger().info(f"extrinsics: {self.extrinsics.child_frame} in {self.extrinsics.parent_frame} "
                                   f"({self.extrinsics.mode}) from {self.cfg['extrinsics_path']}")
        except InvalidInputError as exc:
            self._extrinsics_error = str(exc)
            self.log.error(f"no calibration, holding: {exc}", period=10.0)

    # -- inputs ---------------------------------------------------------------------------------------
    def _on_trace(self, msg: PointCloud2) -> None:
        self._pending_trace = msg

    def _on_marks(self, msg: PointCloud2) -> None:
        self._marks = msg

    def _on_actions(self, msg: Float32MultiArray) -> None:
        self._pending_actions = (msg, self._now_ns())

    def _on_latency(self, msg: DiagnosticArray) -> None:
        try:
            report = msg_to_latency(msg)
        except InvalidInputError as exc:
            self.log.warning(f"latency message ignored: {exc}")
            return
        if report.mode == "action":
            self._latency = (report.frame_stamp_ns, self._now_ns())

    def _on_info(self, msg: CameraInfo) -> None:
        self._info = msg

    def _on_depth(self, msg: Image) -> None:
        self._depths.append(msg)

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        try:
            self._ee = (pose_to_numpy(msg), stamp_to_ns(msg.header.stamp))
        except InvalidInputError as exc:
            self._ee = None
            self.log.error(f"end-effector pose unusable: {exc}")

    def _teleop_frame_ok(self, frame_id: str, what: str) -> bool:
        if frame_id and frame_id != self.base_frame:
            self.log.error(f"{what} in frame {frame_id!r} ignored: teleop commands must be in {self.base_frame!r}")
            return False
        return self.cfg["source"] == "teleop"  # ignored while following the policy

    def _on_teleop_twist(self, msg: TwistStamped) -> None:
        if not self._teleop_frame_ok(msg.header.frame_id, "teleop twist"):
            return
        lin, ang = msg.twist.linear, msg.twist.angular
        try:
            self.teleop.on_twist([lin.x, lin.y, lin.z], [ang.x, ang.y, ang.z], stamp_to_ns(msg.header.stamp))
        except InvalidInputError as exc:
            self.log.error(f"teleop twist ignored: {exc}")

    def _on_teleop_pose(self, msg: PoseStamped) -> None:
        if not self._teleop_frame_ok(msg.header.frame_id, "teleop pose"):
            return
        try:
            self.teleop.on_pose(pose_to_numpy(msg), stamp_to_ns(msg.header.stamp))
        except InvalidInputError as exc:
            self.log.error(f"teleop pose ignored: {exc}")

    def _on_teleop_gripper(self, msg: Float32) -> None:
        if self.cfg["source"] != "teleop":
            return
        try:
            self.teleop.on_gripper(msg.data, self._now_ns())
        except InvalidInputError as exc:
            self.log.error(f"teleop gripper ignored: {exc}")

    def _on_instruction(self, msg: String) -> None:
        # A new instruction is a new task (in simulation, a new episode in a new scene): the current plan and any
        # plan still being made from an earlier frame belong to the old one.
        self.follower.start_over(self._now_ns())
        self.plan_stamp_ns = None
        self._pending_trace = self._pending_actions = None
        self.gate.last_target = None
        if self.cfg["source"] == "policy":
            self._hold = ("OK", "waiting", "new instruction, waiting for a plan made for it")
        self.get_logger().info(f"instruction {msg.data!r}: earlier plans dropped")

    def _on_estop(self, msg: Bool) -> None:
        what = self.gate.estop.update(bool(msg.data))
        if what == "engaged":
            self.follower.clear()
            self.teleop.clear()
            self.plan_stamp_ns = None
            self.get_logger().error("E-STOP latched: no targets until reset (set estop_reset true, then publish false)")
        elif what == "released":
            self.get_logger().warning("e-stop released; waiting for a fresh plan")
            self._hold = ("OK", "waiting", "e-stop released, waiting for a fresh plan")
            self._clear_reset_parameter()
        elif what == "ignored":
            self.get_logger().warning("e-stop false ignored: arm the reset first (parameter estop_reset true)")

    def _on_estop_qos(self, event) -> None:
        self.get_logger().error("an e-stop publisher on magma/estop has incompatible QoS and is NOT heard: "
                                "publish it reliable + transient local (depth 1)")

    def _clear_reset_parameter(self) -> None:
        timer = None

        def clear() -> None:
            timer.cancel()
            self.set_parameters([Parameter("estop_reset", Parameter.Type.BOOL, False)])

        timer = self.create_timer(0.0, clear)

    def _on_set_parameters(self, params) -> SetParametersResult:
        updated = dict(self.cfg)
        for param in params:
            updated[param.name] = param.value
        if updated["mode"] not in MODES or updated["action_stamp_source"] not in ACTION_STAMP_SOURCES:
            return SetParametersResult(successful=False, reason=f"mode must be one of {MODES}, action_stamp_source one of {ACTION_STAMP_SOURCES}")
        if updated["source"] not in SOURCES:
            return SetParametersResult(successful=False, reason=f"source must be one of {SOURCES}")
        if any(p.name in {"control_hz", "base_frame"} for p in params):
            return SetParametersResult(successful=False, reason="control_hz and base_frame are read at start only")
        try:
            limits = self._limits(updated)
            follower = self._follower(updated)
            servo = self._servo(updated)
        except InvalidInputError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.gate.limits = limits
        self.follower.reach_tolerance, self.follower.lookahead = follower.reach_tolerance, follower.lookahead
        self.follower.settle_ns, self.follower.gripper_tolerance = follower.settle_ns, follower.gripper_tolerance
        self.follower.gripper_confirm_distance = follower.gripper_confirm_distance
        if updated["extrinsics_path"] != self.cfg["extrinsics_path"]:
            self.extrinsics, self._extrinsics_tried = None, -1e9
        self.teleop.twist_timeout_ns, self.teleop.low, self.teleop.high = servo.twist_timeout_ns, servo.low, servo.high
        if updated["mode"] != self.cfg["mode"] or updated["source"] != self.cfg["source"]:
            # A new input starts from nothing: no leftover plan or teleop command is acted on.
            self.follower.clear()
            self.plan_stamp_ns = None
            self.teleop.clear()
            self._pending_trace = self._pending_actions = None
            self._hold = ("OK", "waiting", "waiting for a plan")
        for param in params:
            if param.name == "estop_reset" and param.value and self.gate.estop.arm_reset():
                self.get_logger().warning("e-stop reset armed: publish false on magma/estop to release")
        self.cfg = updated
        return SetParametersResult(successful=True)

    # -- planning -------------------------------------------------------------------------------------
    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _plan_from_trace(self, msg: PointCloud2, now_ns: int) -> None:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        stale = staleness_reason(stamp_ns, now_ns, self.gate.limits.stale_after_s, "trace")
        if stale:
            raise _Hold("WARN", "stale", stale)
        self._load_extrinsics()
        if self.extrinsics is None:
            raise _Hold("ERROR", "no_calibration", f"no extrinsics: {self._extrinsics_error}")
        if self._info is None:
            raise _Hold("WARN", "no_camera_info", "no camera_info received yet")
        if self._ee is None:
            raise _Hold("WARN", "no_pose", "no end-effector pose yet")
        traces = cloud_to_traces(msg)
        marks = self._marks if self._marks is not None and self._marks.header.stamp == msg.header.stamp else None
        trace = select_gripper_trace(traces, cloud_to_marks(marks) if marks is not None else None)
        K, D, size = camera_info_to_numpy(self._info)
        ee = self._ee[0]
        T_base_cam = camera_pose_from_extrinsics(self.extrinsics, ee if self.extrinsics.mode == "eye_in_hand" else None)
        depth = None
        if trace.depth is None or not np.all(np.isfinite(trace.depth)):
            depth = self._depth_for(stamp_ns)
        lifted = lift_trace(trace, K, T_base_cam, dist=D, depth_image=depth, work_plane_z=float(self.cfg["work_plane_z"]),
                            depth_window=int(self.cfg["depth_window"]), image_size=size)
        poses = np.column_stack([lifted.positions, np.tile(ee[3:7], (lifted.positions.shape[0], 1))])
        self._set_plan(poses, lifted.gripper, stamp_ns, {"mark": lifted.mark_id, "sources": lifted.source_counts()})

    def _depth_for(self, stamp_ns: int) -> np.ndarray | None:
        tolerance = float(self.cfg["depth_sync_tolerance_s"]) * 1e9
        for msg in reversed(self._depths):
            if abs(stamp_to_ns(msg.header.stamp) - stamp_ns) <= tolerance:
                return image_to_depth(msg)
        return None

    def _plan_from_actions(self, msg: Float32MultiArray, receipt_ns: int, now_ns: int) -> None:
        actions = msg_to_actions(msg)
        if self.cfg["action_stamp_source"] == "latency":
            latency = self._latency
            if latency is None or abs(latency[1] - receipt_ns) > ACTION_PAIRING_S * 1e9:
                raise _Hold("WARN", "stale", "actions without a matching magma/latency (their frame's age is unknown)")
            stamp_ns = latency[0]
        else:
            stamp_ns = receipt_ns
        stale = staleness_reason(stamp_ns, now_ns, self.gate.limits.stale_after_s, "actions")
        if stale:
            raise _Hold("WARN", "stale", stale)
        if self._ee is None:
            raise _Hold("WARN", "no_pose", "no end-effector pose yet")
        poses, gripper = plan_from_deltas(self._ee[0], actions)
        self._set_plan(poses, gripper, stamp_ns, {"actions": len(actions)})

    def _set_plan(self, poses: np.ndarray, gripper: np.ndarray | None, stamp_ns: int, info: dict) -> None:
        if not self.follower.set_plan(poses, gripper, ee_position=self._ee[0][:3] if self._ee is not None else None,
                                      source_stamp_ns=stamp_ns):
            self.plans_outdated += 1  # made before the gripper's last switch settled: keep the current plan
            return
        self.plan_stamp_ns = stamp_ns
        self.plan_info = {**info, "length": len(poses)}
        self._hold = None
        self.path_pub.publish(poses_to_path(poses, stamp=stamp_ns, frame_id=self.base_frame))

    # -- the control step -----------------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            moved = self._control_step(self._now_ns())
        except Exception:  # a bug must not take the controller down; holding is the safe answer
            moved = False
            self._drop_plan("ERROR", "internal_error", "internal error, holding (see the log)")
            self.log.error(f"control step failed, holding:\n{traceback.format_exc()}")
            self._state(*self._hold)
        if not moved:
            self.gate.last_target = None  # after any hold, the next target is limited from the measured pose
            self.teleop.held()

    def _control_step(self, now_ns: int) -> bool:
        """One control step: publish a target (True) or hold and say why (False)."""
        if self.cfg["source"] == "teleop":
            return self._teleop_step(now_ns)
        self._update_plan(now_ns)
        if self.gate.estop.engaged:
            self._state("ERROR", "estop", "e-stop latched")
            return False
        if self._hold is not None:
            self._state(*self._hold)
            return False
        if self._ee is None or staleness_reason(self._ee[1], now_ns, self.gate.limits.stale_after_s):
            self._state("WARN", "no_pose", "end-effector pose missing or stale")
            return False
        ee = self._ee[0]
        command = self.follower.step(ee[:3], now_ns)
        if command is None:
            self._state("OK", "waiting", "waiting for a plan")
            return False
        verdict = self.gate.check(command.target, command.gripper, ee, source_stamp_ns=self.plan_stamp_ns, now_ns=now_ns)
        if verdict.hold:
            if verdict.code == "workspace":
                self.log.warning(f"holding: {verdict.reason}")
            self._state(verdict.level, verdict.code, verdict.reason, {"waypoint": command.index})
            return False
        stamp = self.get_clock().now().to_msg()
        self.target_pub.publish(numpy_to_pose(verdict.target, stamp=stamp, frame_id=self.base_frame))
        self.gripper_pub.publish(Float32(data=float(verdict.gripper)))
        self.targets_published += 1
        message = verdict.reason or PHASE_MESSAGES[command.phase]
        self._state(verdict.level, verdict.code, message, {"waypoint": command.index})
        return True

    def _teleop_step(self, now_ns: int) -> bool:
        """One control step following the teleop commands (the policy's topics are ignored)."""
        self._pending_trace = self._pending_actions = None
        if self.gate.estop.engaged:
            self._state("ERROR", "estop", "e-stop latched")
            return False
        if self._ee is None or staleness_reason(self._ee[1], now_ns, self.gate.limits.stale_after_s):
            self._state("WARN", "no_pose", "end-effector pose missing or stale")
            return False
        ee = self._ee[0]
        command = self.teleop.step(ee, now_ns)
        if isinstance(command, ServoHold):
            self._state(command.level, command.code, command.reason)
            return False
        verdict = self.gate.check(command.target, command.gripper, ee, source_stamp_ns=command.stamp_ns, now_ns=now_ns)
        if verdict.hold:
            if verdict.code == "workspace":
                self.log.warning(f"holding: {verdict.reason}")
            self._state(verdict.level, verdict.code, verdict.reason, {"input": command.source})
            return False
        self.teleop.accepted(verdict.target)
        stamp = self.get_clock().now().to_msg()
        self.target_pub.publish(numpy_to_pose(verdict.target, stamp=stamp, frame_id=self.base_frame))
        self.gripper_pub.publish(Float32(data=float(verdict.gripper)))
        self.targets_published += 1
        self._state(verdict.level, verdict.code, verdict.reason or f"following teleop {command.source}",
                    {"input": command.source})
        return True

    def _update_plan(self, now_ns: int) -> None:
        """Turn the newest trace or actions (whichever the mode follows) into the plan, or into a hold."""
        try:
            if self.cfg["mode"] == "trace" and self._pending_trace is not None:
                msg, self._pending_trace = self._pending_trace, None
                self._plan_from_trace(msg, now_ns)
            elif self.cfg["mode"] == "action" and self._pending_actions is not None:
                (msg, receipt_ns), self._pending_actions = self._pending_actions, None
                self._plan_from_actions(msg, receipt_ns, now_ns)
            else:
                return
        except _Hold as hold:
            self._drop_plan(hold.level, hold.code, hold.message)
        except InvalidInputError as exc:
            self._drop_plan("ERROR", "bad_input", f"unusable {self.cfg['mode']}: {exc}")
            self.log.error(f"holding: unusable {self.cfg['mode']}: {exc}")

    def _drop_plan(self, level: str, code: str, message: str) -> None:
        self.follower.clear()
        self.plan_stamp_ns = None
        self._hold = (level, code, message)

    def _state(self, level: str, code: str, message: str, extra: dict | None = None) -> None:
        values = {"code": code, "source": self.cfg["source"], "mode": self.cfg["mode"], "estop": self.gate.estop.engaged,
                  "targets_published": self.targets_published, "plans_outdated": self.plans_outdated, **self.plan_info, **(extra or {})}
        self.state_pub.publish(make_status("magma/controller", level, message, values))


class _Hold(Exception):
    """Why a new plan is not followed; the controller holds and reports it."""

    def __init__(self, level: str, code: str, message: str) -> None:
        super().__init__(message)
        self.level, self.code, self.message = level, code, message


def main(args: Sequence[str] | None = None) -> int:
    return run_node(ControllerNode, args, PARAMETERS, "magma_ros.nodes.controller")


if __name__ == "__main__":
    main_entry(main)

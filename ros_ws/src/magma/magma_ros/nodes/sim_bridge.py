"""Sim bridge node: a headless magma_sim TabletopEnv that looks like a robot with a camera on ROS.

Every 1/control_hz s (a timer) it steps the simulation with the newest command and publishes the
camera (rgb8, 32FC1 depth, CameraInfo), joint_states and magma/ee_pose. Commands: magma/target_pose
(+ magma/gripper_command) or magma/ee_delta (consumed once per message). Without a fresh command
(older than command_timeout_s) the arm holds the pose it had when commands stopped.

An episode ends on success or after max_steps; the arm then holds until sim/reset (or auto_reset). With
start_on_command an episode's steps begin at its first motion command (the simulated bringup sets it).
Changing the `task` parameter resets into the new task. The true camera extrinsics are written to
`extrinsics_path` (magma_calibration's YAML), which the controller and policy read.

With `publish_expert` the task's scripted expert (magma_sim.experts, which reads privileged simulator
state) computes its next target from each step's state, published on sim/expert_target (PoseStamped,
base frame, stamped like that step's images) and sim/expert_gripper (Float32): what the scripted
teleop relays to the controller. Nothing of it reaches a learned policy.
"""
from __future__ import annotations

import json
import time
import traceback
from typing import Sequence

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Float32, String
from std_srvs.srv import Trigger

from magma_core.errors import InvalidInputError, MagmaError
from magma_ros import qos
from magma_ros.converters import depth_to_image, numpy_to_camera_info, numpy_to_pose, pose_to_numpy, rgb_to_image
from magma_ros.nodes import ConfigurationError, Param, ThrottledLog, declare_parameters, main_entry, parameter_values, run_node

PARAMETERS = (
    Param("task", "pick_place", "Task to simulate (magma_sim.tasks.TASKS); setting it at run time resets into the new task."),
    Param("seed", 0, "Seed of the first episode; later resets use seed+1, seed+2, ... unless `seeds` is given."),
    Param("seeds", None, "Seeds of successive episodes, e.g. [3, 7, 11] (the first is used at start); unset: count up from `seed`.",
          type="integer_array"),
    Param("auto_reset", False, "Start the next episode by itself when one ends (after auto_reset_delay_s)."),
    Param("auto_reset_delay_s", 1.0, "Seconds to hold after an episode ends before an automatic reset."),
    Param("image_size", 128, "Camera image size: an int (square) or [width, height].", dynamic=True),
    Param("control_hz", 10, "Simulation steps per second (must divide 240)."),
    Param("max_steps", 0, "Steps before an episode is cut off; 0 uses the task's horizon."),
    Param("command_timeout_s", 0.5, "A command older than this is not executed: the arm holds still."),
    Param("max_target_distance", 0.15, "A target pose farther than this from the arm (metres) is not executed: the "
          "controller never sends one, so it was computed from an old pose (e.g. just before a reset)."),
    Param("start_on_command", False, "Start each episode's clock at its first motion command (target pose or delta): "
          "until then the world is not stepped and the camera keeps publishing, so a policy still loading or "
          "planning its first step does not use up the episode (as in `magma eval`, which waits for every step)."),
    Param("extrinsics_path", "", "Where to write the true camera extrinsics YAML at start (empty: do not write)."),
    Param("publish_instruction", True, "Publish each episode's task instruction on magma/instruction (latched)."),
    Param("base_frame", "base", "frame_id of poses (the robot base)."),
    Param("camera_frame", "camera_optical", "frame_id of the camera images."),
    Param("publish_expert", False, "Publish the scripted expert's next target for the running episode on sim/expert_target "
                                   "and sim/expert_gripper each step (uses privileged simulator state; for scripted teleop)."),
)

ARM_JOINT_NAMES = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINT_NAMES = ("panda_finger_joint1", "panda_finger_joint2")


def parse_image_size(value) -> tuple[int, int]:
    """(width, height) from an int or a [width, height] list."""
    if isinstance(value, bool):
        raise ConfigurationError(f"image_size must be an int or [width, height], got {value!r}")
    if isinstance(value, int):
        return value, value
    values = list(value) if isinstance(value, (list, tuple)) else None
    if values and len(values) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return int(values[0]), int(values[1])
    raise ConfigurationError(f"image_size must be an int or [width, height], got {value!r}")


class SeedSchedule:
    """Seeds of successive episodes: the given list, else counting up from the first seed."""

    def __init__(self, seed: int, seeds: Sequence[int]) -> None:
        listed = [int(s) for s in seeds or ()]
        if seed < 0 or any(s < 0 for s in listed):
            raise ConfigurationError(f"seeds must be >= 0, got seed={seed}, seeds={listed}")
        self.listed = listed
        self.first = listed[0] if listed else int(seed)
        self.count = 0

    @property
    def used_up(self) -> bool:
        return bool(self.listed) and self.count >= len(self.listed)

    def next(self) -> int | None:
        """The next episode's seed; None when a listed schedule is used up."""
        if self.listed:
            if self.count >= len(self.listed):
                return None
            seed = self.listed[self.count]
        else:
            seed = self.first + self.count
        self.count += 1
        return seed


class SimBridgeNode(Node):
    """Steps a TabletopEnv in a timer; one thread, so commands, resets and steps never race."""

    def __init__(self) -> None:
        super().__init__("sim_bridge")
        self.log = ThrottledLog(self.get_logger())
        declare_parameters(self, PARAMETERS)
        self.cfg = parameter_values(self, PARAMETERS)
        self.size = parse_image_size(self.cfg["image_size"])
        self.control_hz = int(self.cfg["control_hz"])
        self.base_frame, self.camera_frame = self.cfg["base_frame"], self.cfg["camera_frame"]
        self.schedule = SeedSchedule(int(self.cfg["seed"]), self.cfg["seeds"])
        self.env = None
        self.expert = None
        self._info: dict | None = None  # the newest step's info (privileged state for the expert)
        self._make_env(self.cfg["task"])

        self.image_pub = self.create_publisher(Image, "camera/image_raw", qos.SENSOR)
        self.depth_pub = self.create_publisher(Image, "camera/depth/image_raw", qos.SENSOR)
        self.info_pub = self.create_publisher(CameraInfo, "camera/camera_info", qos.SENSOR)
        self.joint_pub = self.create_publisher(JointState, "joint_states", qos.EVENTS)
        self.ee_pub = self.create_publisher(PoseStamped, "magma/ee_pose", qos.LATEST)
        self.success_pub = self.create_publisher(Bool, "sim/success", qos.LATCHED)
        self.episode_pub = self.create_publisher(String, "sim/episode", qos.LATCHED)
        self.instruction_pub = self.create_publisher(String, "magma/instruction", qos.LATCHED)
        self.create_subscription(PoseStamped, "magma/target_pose", self._on_target, qos.LATEST)
        self.create_subscription(Float32, "magma/gripper_command", self._on_gripper, qos.LATEST)
        self.create_subscription(TwistStamped, "magma/ee_delta", self._on_delta, qos.LATEST)
        self.create_service(Trigger, "sim/reset", self._on_reset)
        if self.cfg["publish_expert"]:
            # Like a command stream: reliable, newest only (it is a command for the next step).
            self.expert_target_pub = self.create_publisher(PoseStamped, "sim/expert_target", qos.LATEST)
            self.expert_gripper_pub = self.create_publisher(Float32, "sim/expert_gripper", qos.LATEST)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._target: tuple[np.ndarray, float] | None = None  # (pose 7, receipt time monotonic)
        self._delta: tuple[np.ndarray, float] | None = None
        self._gripper = 0.0
        self._pending_task: str | None = None
        self._reset_requested = False
        self._reset_at: float | None = None
        self._hold_pose: np.ndarray | None = None
        self.obs: dict | None = None
        self._awaiting_command = False
        self.done = False
        self.success = False
        self.episode_step = 0
        self.episode_index = -1
        self._last_success_published: bool | None = None
        seed = self.schedule.next()
        self._reset(seed)
        self.timer = self.create_timer(1.0 / self.control_hz, self._tick)
        self.get_logger().info(f"simulating {self.env.task_name} at {self.control_hz} Hz, images {self.size[0]}x{self.size[1]}")

    # -- simulation ----------------------------------------------------------------------------------
    def _make_env(self, task: str) -> None:
        from magma_sim.env import TabletopEnv

        max_steps = int(self.cfg["max_steps"]) or None
        try:
            env = TabletopEnv(task, image_size=self.size, control="waypoint", control_hz=self.control_hz,
                              max_steps=max_steps)
        except InvalidInputError as exc:
            raise ConfigurationError(f"sim_bridge: {exc}") from exc
        if self.env is not None:
            self.env.close()
        self.env = env
        if self.cfg["publish_expert"]:
            from magma_sim.experts import make_expert

            self.expert = make_expert(task, control="waypoint", control_hz=self.control_hz)
        self._write_extrinsics()

    def _write_extrinsics(self) -> None:
        path = self.cfg["extrinsics_path"]
        if not path:
            return
        from magma_calibration.extrinsics import Extrinsics, write_extrinsics

        ext = Extrinsics(parent_frame=self.base_frame, child_frame=self.camera_frame,
                         transform=self.env.camera_params.extrinsics, mode="fixed", method="simulator ground truth")
        write_extrinsics(path, ext)

    def _reset(self, seed: int | None) -> None:
        self._reset_at = None
        if seed is None:
            self.get_logger().info("seed schedule used up: holding the last episode")
            return
        self.obs, self._info = self.env.reset(seed=seed)
        if self.expert is not None:
            self.expert.reset()
        self.episode_index += 1
        self.episode_step = 0
        self.done = self.success = False
        self._target = self._delta = None
        self._gripper = 0.0
        self._hold_pose = self.obs["ee_pose"].copy()
        self._awaiting_command = bool(self.cfg["start_on_command"])
        self._publish_expert(self._publish_observation())
        self._publish_success(force=True)
        self._publish_episode()
        if self.cfg["publish_instruction"]:
            self.instruction_pub.publish(String(data=self.env.task.instruction))
        self.get_logger().info(f"episode {self.episode_index}: {self.env.task_name} seed {seed}: {self.env.task.instruction!r}")

    def _command(self, now: float) -> np.ndarray:
        """The waypoint (8) for this step: newest fresh command, else hold where the arm was."""
        timeout = float(self.cfg["command_timeout_s"])
        tcp = self.obs["ee_pose"]
        target, delta = self._target, self._delta
        if self.done:
            target = delta = None
        fresh_delta = delta is not None and now - delta[1] <= timeout and (target is None or delta[1] >= target[1])
        if fresh_delta:
            from magma_sim.control import delta_to_waypoint

            self._delta = None  # a delta moves the arm once
            waypoint = delta_to_waypoint(np.concatenate([delta[0], [self._gripper]]), tcp)
            self._hold_pose = waypoint[:7].copy()
            return waypoint
        if target is not None and now - target[1] <= timeout:
            distance = float(np.linalg.norm(target[0][:3] - tcp[:3]))
            if distance <= float(self.cfg["max_target_distance"]):
                self._hold_pose = None
                return np.concatenate([target[0], [self._gripper]])
            self.log.error(f"target {distance:.3f} m from the arm ignored (max_target_distance "
                           f"{float(self.cfg['max_target_distance']):.3f}): holding")
        if self._hold_pose is None:
            self._hold_pose = tcp.copy()
        return np.concatenate([self._hold_pose, [self._gripper]])

    def _tick(self) -> None:
        now = time.monotonic()
        if self._pending_task is not None:
            task, self._pending_task = self._pending_task, None
            last_seed = self.env.seed
            try:
                self._make_env(task)
            except ConfigurationError as exc:
                self.get_logger().error(str(exc))
            seed = self.schedule.next()
            self._reset(seed if seed is not None else last_seed)  # a new task always gets an episode
            return
        if self._reset_requested or (self._reset_at is not None and now >= self._reset_at):
            self._reset_requested = False
            self._reset(self.schedule.next())
            return
        if self._awaiting_command:
            if self._target is None and self._delta is None:
                self._publish_expert(self._publish_observation())  # the same world, freshly stamped
                return
            self._awaiting_command = False
        try:
            self.obs, _, terminated, truncated, info = self.env.step(self._command(now))
            self._info = info
        except MagmaError as exc:
            self.log.error(f"simulation step failed, holding: {exc}")
            return
        except Exception:  # e.g. an IK failure inside pybullet: keep the node (and the world) alive
            self.log.error(f"simulation step failed, holding:\n{traceback.format_exc()}")
            return
        if not self.done:
            self.episode_step += 1
            self.success = bool(info["success"])
            if terminated or truncated:
                self.done = True
                self._hold_pose = self.obs["ee_pose"].copy()
                outcome = "succeeded" if self.success else "ended without success"
                self.get_logger().info(f"episode {self.episode_index} {outcome} after {self.episode_step} steps")
                if self.cfg["auto_reset"]:
                    self._reset_at = now + float(self.cfg["auto_reset_delay_s"])
        self._publish_expert(self._publish_observation())
        self._publish_success()
        self._publish_episode()

    # -- publishing ----------------------------------------------------------------------------------
    def _publish_observation(self):
        """Publish this step's camera, joints and pose; returns their stamp."""
        obs = self.obs
        stamp = self.get_clock().now().to_msg()
        self.image_pub.publish(rgb_to_image(obs["rgb"], stamp=stamp, frame_id=self.camera_frame))
        self.depth_pub.publish(depth_to_image(obs["depth"], stamp=stamp, frame_id=self.camera_frame))
        self.info_pub.publish(numpy_to_camera_info(obs["intrinsics"], np.zeros(5), self.size, stamp=stamp,
                                                   frame_id=self.camera_frame))
        half = float(obs["gripper"][0]) / 2.0
        joints = JointState(name=list(ARM_JOINT_NAMES + FINGER_JOINT_NAMES),
                            position=[float(q) for q in obs["joints"]] + [half, half])
        joints.header.stamp = stamp
        self.joint_pub.publish(joints)
        self.ee_pub.publish(numpy_to_pose(obs["ee_pose"], stamp=stamp, frame_id=self.base_frame))
        return stamp

    def _publish_expert(self, stamp) -> None:
        """The expert's next target for the running episode (none once it has ended)."""
        if self.expert is None or self.done or self._info is None:
            return
        try:
            waypoint = self.expert.act(self.obs, self._info)
        except Exception:  # an expert bug must not stop the simulation
            self.log.error(f"scripted expert failed, no expert target:\n{traceback.format_exc()}")
            return
        self.expert_target_pub.publish(numpy_to_pose(waypoint[:7], stamp=stamp, frame_id=self.base_frame))
        self.expert_gripper_pub.publish(Float32(data=float(waypoint[7])))

    def _publish_success(self, force: bool = False) -> None:
        if force or self.success != self._last_success_published:
            self.success_pub.publish(Bool(data=self.success))
            self._last_success_published = self.success

    def episode_record(self) -> dict:
        return {"task": self.env.task_name, "seed": self.env.seed, "episode": self.episode_index,
                "step": self.episode_step, "max_steps": self.env.max_steps, "instruction": self.env.task.instruction,
                "success": self.success, "done": self.done}

    def _publish_episode(self) -> None:
        self.episode_pub.publish(String(data=json.dumps(self.episode_record())))

    # -- inputs --------------------------------------------------------------------------------------
    def _check_frame(self, frame_id: str, what: str) -> bool:
        if frame_id and frame_id != self.base_frame:
            self.log.error(f"{what} in frame {frame_id!r} ignored: commands must be in {self.base_frame!r}")
            return False
        return True

    def _on_target(self, msg: PoseStamped) -> None:
        if not self._check_frame(msg.header.frame_id, "target pose"):
            return
        try:
            self._target = (pose_to_numpy(msg), time.monotonic())
        except InvalidInputError as exc:
            self.log.error(f"target pose ignored: {exc}")

    def _on_gripper(self, msg: Float32) -> None:
        if not np.isfinite(msg.data):
            self.log.error("gripper command ignored: NaN or inf")
            return
        self._gripper = float(np.clip(msg.data, 0.0, 1.0))

    def _on_delta(self, msg: TwistStamped) -> None:
        if not self._check_frame(msg.header.frame_id, "ee delta"):
            return
        lin, ang = msg.twist.linear, msg.twist.angular
        delta = np.array([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z], dtype=np.float64)
        if not np.all(np.isfinite(delta)):
            self.log.error("ee delta ignored: NaN or inf")
            return
        self._delta = (delta, time.monotonic())

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        # The reset happens in the next tick, on the timer's thread of control, never mid-step.
        if self.schedule.used_up:
            response.success = False
            response.message = "the seed schedule (parameter seeds) is used up"
            return response
        self._reset_requested = True
        response.success = True
        response.message = "reset scheduled for the next control step"
        return response

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == "task":
                from magma_sim.tasks import check_task

                try:
                    check_task(param.value)
                except InvalidInputError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
                self._pending_task = param.value
            elif param.name in {"command_timeout_s", "max_target_distance", "auto_reset", "auto_reset_delay_s"}:
                self.cfg[param.name] = param.value
            elif param.name != "task":
                return SetParametersResult(successful=False, reason=f"{param.name} is read at start only; restart the node")
        return SetParametersResult(successful=True)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


def main(args: Sequence[str] | None = None) -> int:
    return run_node(SimBridgeNode, args, PARAMETERS, "magma_ros.nodes.sim_bridge")


if __name__ == "__main__":
    main_entry(main)

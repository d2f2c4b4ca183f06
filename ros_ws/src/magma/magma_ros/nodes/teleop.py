"""Teleop node: a person (keyboard, Joy device) or the simulation's expert drives the controller, and marks episodes.

Inputs (parameter `input`):
- keyboard: keys read from this process's terminal (docs/teleop.md has the key map);
- joy: sensor_msgs/Joy on `joy` (the ROS 2 joy driver for gamepads, spacenav_node for space mice);
- scripted: relays the sim bridge's expert (sim/expert_target, sim/expert_gripper, `publish_expert: true`)
  and runs `episodes` episodes itself: start, follow the expert, stop on sim/success (success) or
  after `episode_timeout_s` (failure), sim/reset between episodes.

Outputs: magma/teleop/twist (base-frame velocity, every 1/rate_hz s while a person drives: a zero
twist is the heartbeat that says "hold still"), magma/teleop/pose (scripted: the expert's target),
magma/teleop/gripper (0 open .. 1 closed), and magma/episode_event ("start" with the instruction,
"stop" with the outcome; JSON, see magma_ros.teleop.events). The controller (`source: teleop`)
turns the commands into targets through its safety gate. Never imports torch.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Joy
from std_msgs.msg import Bool, Float32, String
from std_srvs.srv import Trigger

from magma_core.errors import InvalidInputError
from magma_ros import qos
from magma_ros.converters import make_header
from magma_ros.nodes import ConfigurationError, Param, ThrottledLog, declare_parameters, main_entry, parameter_values, run_node
from magma_ros.teleop.command import TeleopCommand
from magma_ros.teleop.events import EPISODE_EVENT_TOPIC, EpisodeEvent, EpisodeTracker
from magma_ros.teleop.joy import JoyTeleop, joy_mapping
from magma_ros.teleop.keyboard import KeyboardTeleop, key_help
from magma_ros.teleop.scripted import ScriptedSession, parse_sim_episode

INPUTS = ("keyboard", "joy", "scripted")
# Episode events: every one must arrive (reliable), and a recorder started a little late must still
# see the start of the running episode (transient local); 20 keeps a session's recent history.
EPISODE_EVENT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=20, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Joy drivers publish with the default QoS (reliable, depth 10). A best-effort subscription matches
# reliable and best-effort publishers alike; the queue keeps button presses of a burst.
JOY_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT,
                     durability=DurabilityPolicy.VOLATILE)
# How long the last events may take to reach their subscribers before a finished scripted session exits.
EXIT_ACK_S = 2.0

PARAMETERS = (
    Param("input", "keyboard", "'keyboard' (keys in this terminal), 'joy' (sensor_msgs/Joy on `joy`) or 'scripted' "
                               "(relay the sim bridge's expert and run episodes by itself)."),
    Param("rate_hz", 20.0, "Commands per second: twist heartbeat and gripper (keyboard, joy), episode checks (scripted)."),
    Param("linear_speed", 0.1, "TCP speed at full command (key held, stick fully deflected), m/s; the controller's "
                               "limits still apply."),
    Param("angular_speed", 0.5, "TCP rotation speed at full command, rad/s."),
    Param("speed_scale_step", 1.25, "Factor by which the speed keys or buttons raise or lower both speeds."),
    Param("instruction", "", "Instruction recorded with each episode; empty: the newest magma/instruction "
                             "(scripted: the simulated episode's own)."),
    Param("base_frame", "base", "frame_id of the twist and pose commands (the robot base)."),
    Param("key_timeout_s", 0.6, "Keyboard: a motion key keeps its axis moving this long after its last press "
                                "(bridges the terminal's auto-repeat delay)."),
    Param("joy_preset", "gamepad", "Joy: 'gamepad' (joy game_controller_node layout) or 'spacemouse' (spacenav_node)."),
    Param("joy_linear_axes", None, "Joy: axis indices for linear x, y, z (-1: none); unset: the preset's.",
          type="integer_array"),
    Param("joy_angular_axes", None, "Joy: axis indices for angular x, y, z (-1: none); unset: the preset's.",
          type="integer_array"),
    Param("joy_axis_scales", None, "Joy: six factors (linear x y z, angular x y z) on the axes, e.g. -1.0 flips one; "
                                   "unset: the preset's.", type="double_array"),
    Param("joy_buttons", None, "Joy: button indices [enable, gripper, episode, failure, speed_down, speed_up] (-1: none; "
                               "enable is a dead-man button); unset: the preset's.", type="integer_array"),
    Param("joy_deadzone", 0.1, "Joy: axis values within this magnitude count as zero (the rest is rescaled)."),
    Param("joy_timeout_s", 0.5, "Joy: no Joy message for this long stops the motion (a device that went quiet "
                                "must not keep the arm moving)."),
    Param("episodes", 1, "Scripted: how many episodes to run (sim/reset between them)."),
    Param("episode_timeout_s", 60.0, "Scripted: an episode without success after this long stops with outcome failure."),
    Param("reset_first", False, "Scripted: call sim/reset before the first episode (else the running one is used)."),
    Param("exit_when_done", True, "Scripted: shut the node down after the last episode."),
)


class TeleopNode(Node):
    """Reads one input, publishes teleop commands and episode events; one timer, one thread."""

    def __init__(self) -> None:
        super().__init__("teleop")
        self.log = ThrottledLog(self.get_logger())
        declare_parameters(self, PARAMETERS)
        self.cfg = parameter_values(self, PARAMETERS)
        self.input = self.cfg["input"]
        if self.input not in INPUTS:
            raise ConfigurationError(f"input must be one of {INPUTS}, got {self.input!r}")
        if not float(self.cfg["rate_hz"]) > 0:
            raise ConfigurationError(f"rate_hz must be positive, got {self.cfg['rate_hz']!r}")
        self.base_frame = self.cfg["base_frame"]
        self.episodes = EpisodeTracker()
        self._topic_instruction = ""
        self.keyboard: KeyboardTeleop | None = None
        self.terminal = None
        self.joy: JoyTeleop | None = None
        self.session: ScriptedSession | None = None
        self._last_joy = -1e18
        self._reset_future = None
        try:
            self._make_input()
        except InvalidInputError as exc:
            raise ConfigurationError(f"teleop: {exc}") from exc

        self.twist_pub = self.create_publisher(TwistStamped, "magma/teleop/twist", qos.LATEST)
        self.pose_pub = self.create_publisher(PoseStamped, "magma/teleop/pose", qos.LATEST)
        self.gripper_pub = self.create_publisher(Float32, "magma/teleop/gripper", qos.LATEST)
        self.event_pub = self.create_publisher(String, EPISODE_EVENT_TOPIC, EPISODE_EVENT_QOS)
        self.create_subscription(String, "magma/instruction", self._on_instruction, qos.LATCHED)
        if self.input == "joy":
            self.create_subscription(Joy, "joy", self._on_joy, JOY_QOS)
        if self.input == "scripted":
            self.create_subscription(PoseStamped, "sim/expert_target", self._on_expert_target, qos.LATEST)
            self.create_subscription(Float32, "sim/expert_gripper", self._on_expert_gripper, qos.LATEST)
            self.create_subscription(String, "sim/episode", self._on_sim_episode, qos.LATCHED)
            self.create_subscription(Bool, "sim/success", self._on_sim_success, qos.LATCHED)
            self.reset_client = self.create_client(Trigger, "sim/reset")
        self.timer = self.create_timer(1.0 / float(self.cfg["rate_hz"]), self._tick)
        self.get_logger().info(f"teleop from {self.input} at {float(self.cfg['rate_hz']):g} Hz")

    def _make_input(self) -> None:
        cfg = self.cfg
        speeds = dict(linear_speed=float(cfg["linear_speed"]), angular_speed=float(cfg["angular_speed"]),
                      speed_scale_step=float(cfg["speed_scale_step"]))
        if self.input == "keyboard":
            from magma_ros.teleop.terminal import RawTerminal

            self.keyboard = KeyboardTeleop(key_timeout_s=float(cfg["key_timeout_s"]), **speeds)
            self.terminal = RawTerminal()
            self.terminal.open()
            print(key_help(), file=sys.stderr, flush=True)
        elif self.input == "joy":
            mapping = joy_mapping(cfg["joy_preset"]).with_overrides(
                cfg["joy_linear_axes"], cfg["joy_angular_axes"], cfg["joy_axis_scales"], cfg["joy_buttons"],
                float(cfg["joy_deadzone"]))
            if not float(cfg["joy_timeout_s"]) > 0:
                raise InvalidInputError(f"joy_timeout_s must be positive, got {cfg['joy_timeout_s']!r}")
            self.joy = JoyTeleop(mapping, **speeds)
        else:
            self.session = ScriptedSession(int(cfg["episodes"]), float(cfg["episode_timeout_s"]), bool(cfg["reset_first"]))

    # -- inputs ----------------------------------------------------------------------------------------
    def _on_instruction(self, msg: String) -> None:
        self._topic_instruction = msg.data

    def _on_joy(self, msg: Joy) -> None:
        try:
            notes = self.joy.update(msg.axes, msg.buttons)
        except InvalidInputError as exc:
            self.log.error(f"Joy message ignored: {exc}")
            return
        self._last_joy = time.monotonic()
        for note in notes:
            self.get_logger().info(note)

    def _on_expert_target(self, msg: PoseStamped) -> None:
        self.session.on_expert_target()
        if self.session.running:
            self.pose_pub.publish(msg)  # as received: frame and stamp are the expert's step

    def _on_expert_gripper(self, msg: Float32) -> None:
        if self.session.running:
            self.gripper_pub.publish(msg)

    def _on_sim_episode(self, msg: String) -> None:
        try:
            self.session.on_sim_episode(parse_sim_episode(msg.data))
        except InvalidInputError as exc:
            self.log.error(f"sim/episode ignored: {exc}")

    def _on_sim_success(self, msg: Bool) -> None:
        self.session.on_success(msg.data)

    # -- the step --------------------------------------------------------------------------------------
    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _tick(self) -> None:
        if self.session is not None:
            self._scripted_step()
            return
        now = time.monotonic()
        if self.keyboard is not None:
            for key in self.terminal.read_keys():
                note = self.keyboard.press(key, now)
                if note:
                    print(note, file=sys.stderr, flush=True)
            command = self.keyboard.command(now)
        else:
            if now - self._last_joy > float(self.cfg["joy_timeout_s"]):
                self.joy.stop()
            command = self.joy.command()
        self._publish_command(command)
        for action in command.episode:
            self._episode_action(action)

    def _publish_command(self, command: TeleopCommand) -> None:
        msg = TwistStamped(header=make_header(self._now_ns(), self.base_frame))
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in command.linear)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in command.angular)
        self.twist_pub.publish(msg)
        self.gripper_pub.publish(Float32(data=float(command.gripper)))

    def _instruction(self, fallback: str = "") -> str:
        return self.cfg["instruction"] or fallback or self._topic_instruction

    def _episode_action(self, action: str, instruction: str = "") -> None:
        try:
            event = self.episodes.apply(action, self._instruction(instruction), self._now_ns())
        except InvalidInputError as exc:
            self.get_logger().warning(f"episode {action} ignored: {exc}")
            return
        self._publish_event(event)

    def _publish_event(self, event: EpisodeEvent) -> None:
        self.event_pub.publish(String(data=event.to_json()))
        if event.event == "start":
            if not event.instruction:
                self.get_logger().warning("episode started without an instruction (set the parameter `instruction` "
                                          "or publish magma/instruction)")
            self.get_logger().info(f"episode {event.episode_id} started: {event.instruction!r}")
        else:
            self.get_logger().info(f"episode {event.episode_id} stopped: {event.outcome}")

    def _scripted_step(self) -> None:
        session = self.session
        for action in session.tick(time.monotonic()):
            if action.kind == "start":
                self._episode_action("start", action.instruction)
            elif action.kind == "stop":
                self.get_logger().info(f"stopping the episode: {action.reason}")
                self._episode_action({"success": "success", "failure": "failure"}[action.outcome])
            elif action.kind == "reset":
                self._call_reset()
            elif action.kind == "done":
                self._finish(action.reason)
        if self._reset_future is not None and self._reset_future.done():
            future, self._reset_future = self._reset_future, None
            result = future.result()
            done = session.on_reset_result(result is not None and result.success,
                                           result.message if result is not None else "no answer")
            if done is not None:
                self._finish(done.reason)

    def _call_reset(self) -> None:
        if not self.reset_client.wait_for_service(timeout_sec=5.0):
            self.session.on_reset_result(False, "the sim/reset service is not available")
            self._finish("sim/reset is not available")
            return
        self._reset_future = self.reset_client.call_async(Trigger.Request())

    def _finish(self, reason: str) -> None:
        outcomes = ", ".join(self.session.outcomes) or "none"
        self.get_logger().info(f"scripted teleop done ({reason}); outcomes: {outcomes}")
        self.timer.cancel()
        if self.cfg["exit_when_done"]:
            # The last stop event must reach the recorder before this process goes away.
            self.event_pub.wait_for_all_acked(Duration(seconds=EXIT_ACK_S))
            self.context.try_shutdown()

    def close(self) -> None:
        """Restore the terminal; an episode still running is marked aborted (best effort at shutdown)."""
        if self.terminal is not None:
            self.terminal.close()
        if self.episodes.running and self.context.ok():
            try:
                self._publish_event(self.episodes.stop("aborted", self._now_ns()))
            except Exception:  # shutting down: the middleware may already be gone
                pass


def main(args: Sequence[str] | None = None) -> int:
    return run_node(TeleopNode, args, PARAMETERS, "magma_ros.nodes.teleop")


if __name__ == "__main__":
    main_entry(main)

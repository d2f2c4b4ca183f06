"""Teleoperation without ROS: keyboard, Joy and scripted inputs, the controller's teleop servo, episode events.

Everything here is plain Python + numpy so it can be tested without DDS; the teleop node
(magma_ros.nodes.teleop) and the controller wire it to topics. docs/teleop.md explains the use.

- command: TeleopCommand (velocity, gripper, episode actions), the speed scale.
- keyboard: key map and key presses -> command; terminal: raw key reading that restores the terminal.
- joy: sensor_msgs/Joy axes/buttons -> command, with deadzone, presets and configurable indices.
- scripted: the expert-driven episode state machine.
- events: the magma/episode_event JSON and start/stop book-keeping.
- servo: newest twist/pose/gripper -> one target per control step (used by the controller).
"""
from magma_ros.teleop.command import TeleopCommand
from magma_ros.teleop.events import EPISODE_EVENT_TOPIC, EpisodeEvent, EpisodeTracker, new_episode_id

__all__ = ["EPISODE_EVENT_TOPIC", "EpisodeEvent", "EpisodeTracker", "TeleopCommand", "new_episode_id"]

"""The QoS profiles of the magma topics (docs/ros_interfaces.md), chosen per kind of data.

- SENSOR: camera images and camera_info. Best effort, keep only the newest: a late frame is worth
  less than the next one, and a reliable stream would back up behind a slow subscriber.
  A best-effort subscriber also accepts a reliable publisher, so SENSOR subscriptions match any camera.
- LATEST: commands and plans (trace, targets, e-stop release...). Reliable, depth 1: every message
  must arrive, but only the newest matters.
- LATCHED: state a late joiner must see (instruction, e-stop, episode): reliable + transient local.
- EVENTS: diagnostics and debugging text, reliable with a short queue.
"""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

SENSOR = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                    durability=DurabilityPolicy.VOLATILE)
LATEST = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
EVENTS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)

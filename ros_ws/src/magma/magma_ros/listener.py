"""An rclpy node inside a command's own process (demo, bench) that records what it hears.

It spins on a background thread in its own rclpy context, so the command's main thread stays free to
watch the launched graph. The process must join the graph's DDS domain first: :func:`join_environment`.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Mapping

# What a process must share with the launched nodes to see them.
ROS_KEYS = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR", "FASTDDS_BUILTIN_TRANSPORTS",
            "FASTDDS_DEFAULT_PROFILES_FILE")


def join_environment(env: Mapping[str, str]) -> None:
    """Put this process in the same DDS domain and discovery range as ``env`` (before rclpy.init)."""
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    for key in ROS_KEYS:
        if key in env:
            os.environ[key] = env[key]


class Listener:
    """Subscribe with callbacks or record into lists; ``close()`` shuts the context down."""

    def __init__(self, name: str) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context was shut down while spinning
                break

    def subscribe(self, msg_type, topic: str, qos, callback: Callable[[float, Any], None]) -> None:
        """Call ``callback(time.time(), msg)`` for each message, under the listener's lock."""
        def receive(msg) -> None:
            now = time.time()
            with self.lock:
                callback(now, msg)

        self.node.create_subscription(msg_type, topic, receive, qos)

    def record(self, msg_type, topic: str, qos) -> list[tuple[float, Any]]:
        """A list that fills with (receipt wall time, message)."""
        box: list[tuple[float, Any]] = []
        self.subscribe(msg_type, topic, qos, lambda t, m: box.append((t, m)))
        return box

    def call_trigger(self, service: str, timeout: float = 5.0) -> bool:
        """Call a std_srvs/Trigger service; False when it is not there or refuses."""
        from std_srvs.srv import Trigger

        client = self.node.create_client(Trigger, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                return False
            future = client.call_async(Trigger.Request())
            deadline = time.monotonic() + timeout
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            return bool(future.done() and future.result() is not None and future.result().success)
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        import rclpy

        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()

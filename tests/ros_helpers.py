"""Helpers for tests that talk DDS: an isolated ROS environment, node subprocesses, an in-test node.

- ``ros_env`` (fixture, module scope): localhost-only discovery, a random ROS_DOMAIN_ID drawn once per
  test session (120..200, offset per pytest-xdist worker), a temporary ROS_LOG_DIR and the LARGE_DATA
  transports, set for this process and inherited by every child.
- ``NodeProcess``: ``python -m magma_ros.nodes.<name> --ros-args -p ...`` with its output in a log
  file, stopped by SIGINT, then SIGTERM, then SIGKILL of its process group; it also gets SIGTERM
  if the test process dies first (nothing leaks).
- ``RosProbe``: an rclpy node in this process, spun on a background thread, that records what it
  hears and publishes test input.
- ``StubPolicy``: a policy with a fixed trace, for policy-node tests that must not depend on a model.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

ROS_AVAILABLE = importlib.util.find_spec("rclpy") is not None
requires_ros = pytest.mark.skipif(not ROS_AVAILABLE, reason="rclpy is not installed (pip install '.[ros]')")

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _session_domain_id() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    offset = int("".join(c for c in worker if c.isdigit()) or 0)
    base = random.SystemRandom().randint(120, 190)
    return 120 + (base - 120 + offset) % 81


SESSION_DOMAIN_ID = _session_domain_id()


@pytest.fixture(scope="module")
def ros_env(tmp_path_factory) -> dict[str, str]:
    """Isolated ROS environment for this process and its children (restored afterwards)."""
    from magma_ros.env import ros_environment

    log_dir = tmp_path_factory.mktemp("roslog")
    env = ros_environment(domain_id=SESSION_DOMAIN_ID, log_dir=str(log_dir))
    keys = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR", "FASTDDS_BUILTIN_TRANSPORTS")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ROS_LOCALHOST_ONLY", raising=False)
        for key in keys:
            mp.setenv(key, env[key])
        # Children import the test stub policy from tests/ and the project from the repository.
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])))
        yield dict(os.environ)


def ros_value(value: Any) -> str:
    """A parameter value as `-p name:=VALUE` parses it (YAML): strings quoted, lists as flow sequences."""
    if isinstance(value, (str, bool, list, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even if it is killed outright."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class NodeProcess:
    """One magma node in a subprocess, in its own process group."""

    def __init__(self, name: str, params: dict[str, Any], log_dir: Path, env: dict[str, str] | None = None,
                 params_file: Path | None = None) -> None:
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        args = [sys.executable, "-m", f"magma_ros.nodes.{name}", "--ros-args"]
        if params_file is not None:
            args += ["--params-file", str(params_file)]
        for key, value in params.items():
            args += ["-p", f"{key}:={ros_value(value)}"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env or dict(os.environ),
                                     cwd=str(REPO), start_new_session=True, preexec_fn=_die_with_parent)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> int:
        """Ctrl-C first (a clean rclpy shutdown), then SIGTERM, then SIGKILL; returns the exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()
        self._log.close()
        return self.proc.returncode


class NodeGroup:
    """Node subprocesses started together and stopped together (their log tails go to stderr)."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir, self.env = Path(log_dir), env
        self.nodes: list[NodeProcess] = []

    def launch(self, name: str, params_file: Path | None = None, **params: Any) -> NodeProcess:
        node = NodeProcess(name, params, self.log_dir, self.env, params_file)
        self.nodes.append(node)
        return node

    def stop_all(self) -> None:
        for node in self.nodes:
            code = node.stop()
            sys.stderr.write(f"--- {node.name} (exit {code}) ---\n{node.output()[-3000:]}\n")
        self.nodes.clear()


@pytest.fixture
def launch_node(ros_env, tmp_path):
    """Start node subprocesses in a test: ``launch_node("camera", source=...)``; all stop at teardown."""
    group = NodeGroup(tmp_path, ros_env)
    yield group.launch
    group.stop_all()


class RosProbe:
    """An rclpy node in the test process: subscribe and record, publish, wait for conditions."""

    def __init__(self, name: str = "magma_test_probe") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list[tuple[float, Any]]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context shut down under us
                break

    def listen(self, msg_type, topic: str, qos) -> list[tuple[float, Any]]:
        """Record every message on `topic` as (monotonic receipt time, message)."""
        box = self.received.setdefault(topic, [])

        def store(msg) -> None:
            with self._lock:
                box.append((time.monotonic(), msg))

        self.node.create_subscription(msg_type, topic, store, qos)
        return box

    def messages(self, topic: str, since: float = 0.0) -> list[Any]:
        with self._lock:
            return [m for t, m in self.received.get(topic, []) if t >= since]

    def publisher(self, msg_type, topic: str, qos):
        return self.node.create_publisher(msg_type, topic, qos)

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def close(self) -> None:
        import rclpy

        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


@pytest.fixture
def probe(ros_env):
    p = RosProbe()
    yield p
    p.close()


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until `condition()` is truthy and return its value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class StubPolicy:
    """A policy with a fixed answer: the gripper mark (id 1) moving 10 px right over 4 steps at 0.5 m depth.

    It checks its observation like a real policy would, so a bad frame reaching it would raise.
    """

    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def infer(self, obs: dict) -> dict:
        from magma_core.imageio import validate_rgb
        from magma_core.som.marks import MarkSet
        from magma_core.tom.types import Trace

        rgb = validate_rgb(obs["rgb"])
        h, w = rgb.shape[:2]
        u0, v0 = w / 2.0, h / 2.0
        points = np.array([[u0 + 2.5 * i, v0] for i in range(5)])
        trace = Trace(mark_id=1, points=points, visible=np.ones(5, bool), depth=np.full(5, 0.5), gripper=np.zeros(5))
        marks = MarkSet.from_points([[u0, v0]], kind="gripper")
        return {"marks": marks, "trace": [trace], "trace_text": "Mark 1: [[128,128],[130,128]]",
                "actions": np.zeros((1, 7))}

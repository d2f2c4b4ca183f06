"""Start a magma graph without the ROS `launch` package (pip installs): one subprocess per NodeSpec.

Each node runs as ``python -m <module> --ros-args --params-file ... -p k:=v -r from:=to`` in its own
process group, with the localhost DDS environment of :func:`magma_ros.env.ros_environment`. Its stdout
and stderr are read line by line by threads and written with a ``[name]`` prefix. SIGINT/SIGTERM to the
launcher stop the graph: every node gets SIGINT (a clean rclpy shutdown), then SIGTERM, then SIGKILL
after timeouts. A node that exits on its own is a failure: the others are stopped and the run returns 1.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Sequence

from magma_core.errors import InvalidInputError, MagmaError
from magma_ros.env import network_opted_in, random_domain_id, ros_environment
from magma_ros.graph import NodeSpec, config_file

# Seconds a node gets for each step of the shutdown ladder (SIGINT, SIGTERM) before the next.
STOP_TIMEOUT_S = 5.0
POLL_S = 0.1
LOCALHOST_PROFILE = "fastdds_localhost.xml"


class NodeDied(MagmaError):
    """A node exited while the graph was meant to be running."""


@dataclass
class RunningNode:
    spec: NodeSpec
    proc: subprocess.Popen
    readers: list[threading.Thread]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the launcher dies, even from SIGKILL (no orphans)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch_environment(base: dict[str, str] | None = None, *, network: bool = False, domain_id: int | None = None,
                       log_dir: str | None = None) -> dict[str, str]:
    """The environment of the graph's nodes: localhost DDS, a domain id, a log folder, unbuffered output.

    Without ``domain_id`` the one in ``base`` is kept (so the user can join with their own tools), else a
    random one is drawn; without ``log_dir`` a temporary folder is made. On this host only, the nodes also
    get config/fastdds_localhost.xml (a shared-memory segment large enough for 640x480 images) unless
    ``base`` names a Fast DDS profile of its own.
    """
    import tempfile

    source = dict(os.environ if base is None else base)
    if domain_id is None and "ROS_DOMAIN_ID" not in source:
        domain_id = random_domain_id()
    env = ros_environment(source, domain_id=domain_id, network=network,
                          log_dir=log_dir or source.get("ROS_LOG_DIR") or tempfile.mkdtemp(prefix="magma-roslog-"))
    if not (network or network_opted_in(env)) and "FASTDDS_DEFAULT_PROFILES_FILE" not in env:
        profile = config_file(LOCALHOST_PROFILE)
        if profile:
            env["FASTDDS_DEFAULT_PROFILES_FILE"] = profile
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "1"  # line-buffered rclpy logs, so prefixes stay in order
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    return env


class Launcher:
    """Runs a list of NodeSpecs as child processes; use as a context manager or call start()/stop().

    ``output`` receives the prefixed log lines (default stdout); ``python`` is the interpreter of the nodes.
    """

    def __init__(self, specs: Sequence[NodeSpec], env: dict[str, str] | None = None, output: IO[str] | None = None,
                 stop_timeout: float = STOP_TIMEOUT_S, python: str = sys.executable) -> None:
        if not specs:
            raise InvalidInputError("the graph has no nodes to launch")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"node names must be unique, got {names}")
        self.specs = list(specs)
        self.env = env if env is not None else launch_environment()
        self.output = output if output is not None else sys.stdout
        self.stop_timeout = stop_timeout
        self.python = python
        self.nodes: list[RunningNode] = []
        self.failed: str | None = None  # why the run failed, when a node died
        self._stop_requested = threading.Event()
        self._write_lock = threading.Lock()
        self._stopped_logged = False

    # ------------------------------------------------------------------ output

    def log(self, name: str, line: str) -> None:
        with self._write_lock:
            self.output.write(f"[{name}] {line.rstrip()}\n")
            self.output.flush()

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.log(name, raw.decode(errors="replace"))
        stream.close()

    # ------------------------------------------------------------------ life cycle

    def command(self, spec: NodeSpec) -> list[str]:
        return [self.python, "-m", spec.module, *spec.ros_args()]

    def start(self) -> "Launcher":
        domain = self.env.get("ROS_DOMAIN_ID", "0")
        self.log("launcher", f"ROS_DOMAIN_ID={domain} ROS_AUTOMATIC_DISCOVERY_RANGE="
                             f"{self.env.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '')} ROS_LOG_DIR={self.env.get('ROS_LOG_DIR', '')}")
        for spec in self.specs:
            try:
                # Own process group: a terminal Ctrl-C reaches the launcher only, which forwards it once.
                proc = subprocess.Popen(self.command(spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env={**self.env, **spec.env}, start_new_session=True,
                                        preexec_fn=_die_with_parent)
            except OSError as exc:
                self.stop()  # the nodes already started must not outlive a failed start
                raise MagmaError(f"cannot start node {spec.name}: {exc}") from exc
            readers = [threading.Thread(target=self._pump, args=(spec.name, stream), daemon=True)
                       for stream in (proc.stdout, proc.stderr)]
            for reader in readers:
                reader.start()
            self.nodes.append(RunningNode(spec, proc, readers))
            self.log("launcher", f"started {spec.name} (pid {proc.pid})")
        return self

    def request_stop(self) -> None:
        """Ask the run to end (safe from a signal handler or another thread)."""
        self._stop_requested.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def check(self) -> None:
        """Raise NodeDied if a node has exited while no stop was requested."""
        if self.failed is not None:
            raise NodeDied(self.failed)
        for node in self.nodes:
            code = node.proc.poll()
            if code == 0 and node.spec.finite and not self.stop_requested:
                # A node with a finite job (scripted teleop) finishing cleanly ends the run, successfully.
                self.log("launcher", f"node {node.spec.name} finished its job; stopping the others")
                self._stop_requested.set()
                return
            if code is not None and not self.stop_requested:
                self.failed = f"node {node.spec.name} exited with code {code} while the graph was running"
                self.log("launcher", self.failed + "; stopping the others")
                raise NodeDied(self.failed)

    def wait(self, duration: float | None = None) -> int:
        """Block until ``duration`` seconds pass, a stop is requested, or a node dies; then stop every node.

        Returns 0 on a requested or timed end, 1 when a node died.
        """
        deadline = None if duration is None else time.monotonic() + duration
        code = 0
        try:
            while not self.stop_requested and (deadline is None or time.monotonic() < deadline):
                self.check()
                time.sleep(POLL_S)
        except NodeDied:
            code = 1
        finally:
            self.stop()
        return code

    def stop(self) -> dict[str, int]:
        """SIGINT every node, then SIGTERM, then SIGKILL the ones still running; returns exit codes by name."""
        self._stop_requested.set()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            running = [n for n in self.nodes if n.proc.poll() is None]
            if not running:
                break
            for node in running:
                try:
                    os.killpg(node.proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline and any(n.proc.poll() is None for n in running):
                time.sleep(0.05)
        codes = {}
        for node in self.nodes:
            codes[node.spec.name] = node.proc.wait()
            for reader in node.readers:
                reader.join(timeout=2.0)
        if self.nodes and not self._stopped_logged:
            self._stopped_logged = True
            self.log("launcher", "stopped: " + ", ".join(f"{name} ({code})" for name, code in codes.items()))
        return codes

    def __enter__(self) -> "Launcher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class forward_signals:
    """While active (a ``with`` block in the main thread), SIGINT and SIGTERM ask the launcher to stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        self.launcher.log("launcher", f"{signal.Signals(signum).name}: stopping the graph")
        self.launcher.request_stop()

    def __enter__(self) -> "forward_signals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_graph(specs: Sequence[NodeSpec], duration: float | None = None, env: dict[str, str] | None = None,
              output: IO[str] | None = None) -> int:
    """Run the graph in the foreground until Ctrl-C/SIGTERM or ``duration``; 1 if a node died, else 0."""
    launcher = Launcher(specs, env=env, output=output)
    with forward_signals(launcher):
        launcher.start()
        return launcher.wait(duration)

"""The magma nodes (camera, sim_bridge, policy, controller) and what they share: parameter tables and main().

Each node module lists its parameters in ``PARAMETERS`` (name, default, description) so the node
declares them with a ParameterDescriptor, ``config/magma.yaml`` can be checked against them, and
the launcher can document them, all from one table.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from magma_core.errors import InvalidInputError

# How often the same error may be logged (seconds): a bad stream must not flood the log.
LOG_THROTTLE_S = 2.0


@dataclass(frozen=True)
class Param:
    """One node parameter. `dynamic` lets it take more than one type (e.g. int or [w, h])."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    dynamic: bool = False
    type: str = ""  # with default None: declare typed but unset ("integer_array", "string", ...)


class ThrottledLog:
    """Logs each distinct problem at most once per `period` seconds, with a count of the repeats held back.

    "Distinct" ignores numbers, so a stream of truncated images of varying sizes is one problem, while a
    new kind of problem shows at once (rclpy's own throttle is per call site and would hide it).
    """

    MAX_KEYS = 256

    def __init__(self, logger, period: float = LOG_THROTTLE_S) -> None:
        self.logger = logger
        self.period = period
        self._last: dict[str, tuple[float, int]] = {}

    def _emit(self, level: str, message: str, period: float | None) -> bool:
        key = level + re.sub(r"\d+", "#", message)
        now = time.monotonic()
        last, held = self._last.get(key, (-1e18, 0))
        if now - last < (self.period if period is None else period):
            self._last[key] = (last, held + 1)
            return False
        if len(self._last) >= self.MAX_KEYS:
            self._last.clear()
        self._last[key] = (now, 0)
        text = message + (f" ({held} more like this since the last report)" if held else "")
        # rclpy keys its logging state by call site and refuses a site that logs at two severities
        # ("Logger severity cannot be changed between calls"): one call line per severity.
        if level == "error":
            self.logger.error(text)
        else:
            self.logger.warning(text)
        return True

    def error(self, message: str, period: float | None = None) -> bool:
        return self._emit("error", message, period)

    def warning(self, message: str, period: float | None = None) -> bool:
        return self._emit("warning", message, period)


class ConfigurationError(InvalidInputError):
    """A node cannot work with the parameters it was given (missing file, unknown source, ...)."""


def declare_parameters(node, params: Sequence[Param]) -> None:
    """Declare every parameter with its description (visible to `ros2 param describe` and the launcher)."""
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.parameter import Parameter

    for p in params:
        value = p.default if p.default is not None else Parameter.Type[p.type.upper()]
        node.declare_parameter(p.name, value, ParameterDescriptor(description=p.description, read_only=p.read_only,
                                                                  dynamic_typing=p.dynamic))


def parameter_values(node, params: Sequence[Param]) -> dict[str, Any]:
    """Current values by name; a typed parameter without a default that nobody set is None."""
    from rclpy.exceptions import ParameterUninitializedException

    values = {}
    for p in params:
        try:
            values[p.name] = node.get_parameter(p.name).value
        except ParameterUninitializedException:
            values[p.name] = None
    return values


def run_node(factory: Callable[[], Any], args: Sequence[str] | None = None, params: Sequence[Param] = (),
             module: str = "") -> int:
    """Init rclpy (localhost DDS defaults first), spin the node until Ctrl-C/SIGTERM, shut down cleanly.

    ``--help`` before ``--ros-args`` prints the parameters instead. A ConfigurationError while
    building the node is reported on stderr and gives exit code 2 (no traceback).
    """
    from magma_ros.env import apply_process_defaults

    if wants_help(args):
        print(ros_args_help(module, params))
        return 0

    apply_process_defaults()
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=list(args) if args is not None else None)
    node = None
    code = 0
    try:
        node = factory()
        rclpy.spin(node)
    except ConfigurationError as exc:
        print(f"[FATAL] {exc}", file=sys.stderr, flush=True)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


def main_entry(main: Callable[[Sequence[str] | None], int]) -> None:
    """`python -m magma_ros.nodes.<name>`: run main with this process's argv and exit with its code."""
    sys.exit(main(sys.argv))


def ros_args_help(module: str, params: Sequence[Param]) -> str:
    lines = [f"usage: python -m {module} --ros-args -p NAME:=VALUE ... [--params-file config/magma.yaml]", "parameters:"]
    lines += [f"  {p.name} (default {p.default!r}): {p.description}" for p in params]
    return "\n".join(lines)


def wants_help(args: Sequence[str] | None) -> bool:
    argv = list(args if args is not None else sys.argv)
    ros_part = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    return any(a in ("-h", "--help") for a in argv[1:ros_part])

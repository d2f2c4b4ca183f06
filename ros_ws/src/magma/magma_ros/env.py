"""The environment every ROS process of this project runs in: DDS kept on this host unless asked otherwise.

``ROS_LOCALHOST_ONLY`` is ignored by ROS 2 Kilted; ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` is what
keeps discovery off the network. ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` lets best-effort camera
images through (with the default transports nearly all of them are lost).

Reaching other hosts (a real robot on the LAN) is an explicit opt-in: pass ``network=True`` or set
``MAGMA_ROS_NETWORK=1``; the discovery range is then left to the user (``SUBNET`` if unset).
"""
from __future__ import annotations

import os
import random
import tempfile
from typing import Mapping, MutableMapping

from magma_core.errors import InvalidInputError

NETWORK_OPT_IN = "MAGMA_ROS_NETWORK"
# Fast DDS maps a domain id to UDP ports; ids above 232 overflow the port range.
MAX_DOMAIN_ID = 232
LOCAL_DEFAULTS = {
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
}


def network_opted_in(environ: Mapping[str, str] | None = None) -> bool:
    """True when the user asked to reach other hosts (``MAGMA_ROS_NETWORK`` set to 1/true/yes)."""
    value = (environ if environ is not None else os.environ).get(NETWORK_OPT_IN, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def check_domain_id(domain_id: int) -> int:
    if isinstance(domain_id, bool) or not isinstance(domain_id, int) or not 0 <= domain_id <= MAX_DOMAIN_ID:
        raise InvalidInputError(f"ROS_DOMAIN_ID must be an integer in 0..{MAX_DOMAIN_ID}, got {domain_id!r}")
    return domain_id


def random_domain_id(low: int = 120, high: int = 200, rng: random.Random | None = None) -> int:
    """A domain id drawn from ``low..high``, so parallel test sessions rarely share one."""
    check_domain_id(low)
    check_domain_id(high)
    return (rng or random.SystemRandom()).randint(low, high)


def ros_environment(base: Mapping[str, str] | None = None, *, domain_id: int | None = None, log_dir: str | None = None,
                    network: bool = False) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) set up for a child ROS process of this project.

    Localhost-only discovery unless ``network``; ``domain_id`` and ``log_dir`` replace what ``base``
    has when given. ROS_LOCALHOST_ONLY is dropped: it is ignored by this ROS release and would only mislead.
    """
    env = dict(os.environ if base is None else base)
    env.pop("ROS_LOCALHOST_ONLY", None)
    if network or network_opted_in(env):
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
        env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", LOCAL_DEFAULTS["FASTDDS_BUILTIN_TRANSPORTS"])
    else:
        env.update(LOCAL_DEFAULTS)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(check_domain_id(domain_id))
    if log_dir is not None:
        env["ROS_LOG_DIR"] = str(log_dir)
    return env


def apply_process_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Give this process the localhost defaults (before ``rclpy.init``); returns what it changed.

    Values the user set explicitly are kept except the discovery range, which is forced to LOCALHOST
    unless the network opt-in is set. ``ROS_LOG_DIR`` gets a temporary folder when unset, so nodes
    never write into ``~/.ros``.
    """
    env = os.environ if environ is None else environ
    changed: dict[str, str] = {}

    def put(key: str, value: str) -> None:
        if env.get(key) != value:
            env[key] = value
            changed[key] = value

    if network_opted_in(env):
        if "ROS_AUTOMATIC_DISCOVERY_RANGE" not in env:
            put("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    else:
        put("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if "FASTDDS_BUILTIN_TRANSPORTS" not in env:
        put("FASTDDS_BUILTIN_TRANSPORTS", LOCAL_DEFAULTS["FASTDDS_BUILTIN_TRANSPORTS"])
    if "ROS_LOG_DIR" not in env:
        put("ROS_LOG_DIR", tempfile.mkdtemp(prefix="magma-roslog-"))
    return changed

"""Episode events on ``magma/episode_event``: the JSON payload and the start/stop book-keeping (no ROS).

A teleop session marks episodes with two events, each one std_msgs/String holding one JSON object::

    {"event": "start"|"stop", "episode_id": str, "instruction": str,
     "outcome": "success"|"failure"|"aborted"|null, "stamp_ns": int}

"start" carries the instruction (outcome null); "stop" repeats the id and instruction and carries the
outcome. The recorder opens one bag per episode on "start" and closes it on "stop", so an episode id
must be usable as a folder name.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import asdict, dataclass

from magma_core.errors import InvalidInputError

EPISODE_EVENT_TOPIC = "magma/episode_event"
EVENTS = ("start", "stop")
OUTCOMES = ("success", "failure", "aborted")
# What a teleop input may ask of the episode book-keeping. "toggle" starts when idle and stops with
# success when running (one button on a space mouse has to do both).
EPISODE_ACTIONS = ("start", "success", "failure", "abort", "toggle")
_ACTION_OUTCOMES = {"success": "success", "failure": "failure", "abort": "aborted"}
# Letters, digits, '-', '_' and '.', starting with a letter or digit: a safe folder name on every file
# system (the recorder checks the same).
_EPISODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class EpisodeEvent:
    """One start or stop of an episode."""

    event: str
    episode_id: str
    instruction: str
    outcome: str | None
    stamp_ns: int

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise InvalidInputError(f"episode event must be one of {EVENTS}, got {self.event!r}")
        if not isinstance(self.episode_id, str) or not _EPISODE_ID.match(self.episode_id):
            raise InvalidInputError(f"episode_id must be 1-128 letters, digits, '-', '_' or '.', starting with a "
                                    f"letter or digit, got {self.episode_id!r}")
        if not isinstance(self.instruction, str):
            raise InvalidInputError(f"instruction must be a string, got {type(self.instruction).__name__}")
        if self.event == "start" and self.outcome is not None:
            raise InvalidInputError(f"a start event has no outcome, got {self.outcome!r}")
        if self.event == "stop" and self.outcome not in OUTCOMES:
            raise InvalidInputError(f"a stop event needs an outcome in {OUTCOMES}, got {self.outcome!r}")
        if isinstance(self.stamp_ns, bool) or not isinstance(self.stamp_ns, int) or self.stamp_ns < 0:
            raise InvalidInputError(f"stamp_ns must be a non-negative integer, got {self.stamp_ns!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EpisodeEvent":
        """Parse and check one event; InvalidInputError names what is wrong."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"episode event is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInputError(f"episode event must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("event", "episode_id", "instruction", "outcome", "stamp_ns") if k not in data]
        if missing:
            raise InvalidInputError(f"episode event lacks {', '.join(missing)}")
        return cls(data["event"], data["episode_id"], data["instruction"], data["outcome"], data["stamp_ns"])


def new_episode_id(now_ns: int | None = None) -> str:
    """A unique, sortable, folder-safe id: UTC start time plus random hex, e.g. 20250102T030405-3fa9c1."""
    now_ns = time.time_ns() if now_ns is None else int(now_ns)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ns // 1_000_000_000))
    return f"{stamp}-{secrets.token_hex(3)}"


class EpisodeTracker:
    """Which episode is running; turns start/stop requests into events, refusing those that make no sense
    (a start while one runs, a stop while none does) with a reason instead."""

    def __init__(self) -> None:
        self.current: EpisodeEvent | None = None  # the start event of the running episode

    @property
    def running(self) -> bool:
        return self.current is not None

    def start(self, instruction: str, now_ns: int, episode_id: str | None = None) -> EpisodeEvent:
        if self.current is not None:
            raise InvalidInputError(f"episode {self.current.episode_id} is still running: stop it first")
        self.current = EpisodeEvent("start", episode_id or new_episode_id(now_ns), instruction, None, int(now_ns))
        return self.current

    def stop(self, outcome: str, now_ns: int) -> EpisodeEvent:
        if self.current is None:
            raise InvalidInputError("no episode is running")
        started, self.current = self.current, None
        return EpisodeEvent("stop", started.episode_id, started.instruction, outcome, int(now_ns))

    def apply(self, action: str, instruction: str, now_ns: int) -> EpisodeEvent:
        """The event for one input action (EPISODE_ACTIONS); InvalidInputError says why there is none."""
        if action == "toggle":
            action = "success" if self.running else "start"
        if action == "start":
            return self.start(instruction, now_ns)
        if action in _ACTION_OUTCOMES:
            return self.stop(_ACTION_OUTCOMES[action], now_ns)
        raise InvalidInputError(f"unknown episode action {action!r}; valid: {', '.join(EPISODE_ACTIONS)}")

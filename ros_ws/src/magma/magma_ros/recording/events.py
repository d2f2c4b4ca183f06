"""Episode events on `magma/episode_event` (std_msgs/String holding one JSON object).

{"event": "start"|"stop", "episode_id": str, "instruction": str, "outcome": "success"|"failure"|"aborted"|null,
 "stamp_ns": int}. The teleop node publishes them; the recorder opens a bag on "start" and closes it on "stop".
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from magma_core.errors import InvalidInputError

EVENTS = ("start", "stop")
OUTCOMES = ("success", "failure", "aborted")
# The id names the episode folder: keep it a plain file name on every filesystem.
_EPISODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class EpisodeEvent:
    """One parsed episode event."""

    event: str
    episode_id: str
    instruction: str = ""
    outcome: str | None = None
    stamp_ns: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def parse_episode_event(text: str) -> EpisodeEvent:
    """Parse and check one event payload; InvalidInputError says what is wrong with it."""
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"episode event is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"episode event must be a JSON object, got {type(data).__name__}")
    event = data.get("event")
    if event not in EVENTS:
        raise InvalidInputError(f"episode event 'event' must be one of {EVENTS}, got {event!r}")
    episode_id = data.get("episode_id")
    if not isinstance(episode_id, str) or not _EPISODE_ID.match(episode_id):
        raise InvalidInputError(f"episode_id must be 1-128 letters, digits, '.', '_' or '-' (not starting with "
                                f"a dot or dash), got {episode_id!r}")
    instruction = data.get("instruction") or ""
    if not isinstance(instruction, str):
        raise InvalidInputError(f"instruction must be a string, got {instruction!r}")
    outcome = data.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidInputError(f"outcome must be one of {OUTCOMES} or null, got {outcome!r}")
    stamp_ns = data.get("stamp_ns", 0)
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, int) or stamp_ns < 0:
        raise InvalidInputError(f"stamp_ns must be a non-negative integer (nanoseconds), got {stamp_ns!r}")
    return EpisodeEvent(event, episode_id, instruction, outcome, stamp_ns)

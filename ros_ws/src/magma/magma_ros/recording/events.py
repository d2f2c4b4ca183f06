"""Episode events as the recorder reads them: the teleop's `EpisodeEvent` (one definition of the payload),
parsed leniently so other publishers may omit the optional keys.

{"event": "start"|"stop", "episode_id": str, "instruction": str, "outcome": "success"|"failure"|"aborted"|null,
 "stamp_ns": int}. Omitted: instruction "", stamp_ns 0, outcome null on start. A stop without an outcome is
recorded as "aborted" (nobody said the episode succeeded, so conversion with --only-success skips it).
"""
from __future__ import annotations

import json

from magma_core.errors import InvalidInputError
from magma_ros.teleop.events import EVENTS, OUTCOMES, EpisodeEvent


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
    outcome = data.get("outcome")
    if event == "stop" and outcome is None:
        outcome = "aborted"
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidInputError(f"outcome must be one of {OUTCOMES} or null, got {outcome!r}")
    return EpisodeEvent(event, data.get("episode_id"), data.get("instruction") or "", outcome, data.get("stamp_ns", 0))


__all__ = ["EpisodeEvent", "parse_episode_event", "EVENTS", "OUTCOMES"]

"""Scripted teleoperation: episodes driven by the simulation's expert (no ROS here, only the decisions).

The sim bridge (``publish_expert: true``) publishes the scripted expert's next target each step on
``sim/expert_target`` / ``sim/expert_gripper``; the teleop node relays them to the controller as
teleop commands while an episode runs. This state machine decides when an episode starts (the
simulation runs a fresh episode and the expert has spoken for it), when it stops (``sim/success``:
success; the simulation ending the episode without success, or ``episode_timeout_s``: failure) and
when to ask for ``sim/reset`` between episodes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from magma_core.errors import InvalidInputError

WAITING, RUNNING, RESETTING, DONE = "waiting", "running", "resetting", "done"


@dataclass(frozen=True)
class SimEpisode:
    """The part of the sim bridge's ``sim/episode`` record the session needs."""

    index: int
    instruction: str
    success: bool
    done: bool


def parse_sim_episode(text: str) -> SimEpisode:
    """Read a ``sim/episode`` JSON record; InvalidInputError names what is wrong."""
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"sim/episode is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError("sim/episode must be a JSON object")
    missing = [k for k in ("episode", "instruction", "success", "done") if k not in data]
    if missing:
        raise InvalidInputError(f"sim/episode lacks {', '.join(missing)}")
    return SimEpisode(int(data["episode"]), str(data["instruction"]), bool(data["success"]), bool(data["done"]))


@dataclass(frozen=True)
class Action:
    """What the node must do: "start" (instruction), "stop" (outcome), "reset" (call sim/reset) or "done"."""

    kind: str
    instruction: str = ""
    outcome: str = ""
    reason: str = ""


class ScriptedSession:
    """Runs `episodes` expert episodes one after another.

    Feed it what the simulation says (``on_sim_episode``, ``on_success``, ``on_expert_target``,
    ``on_reset_result``) and call ``tick(now_s)`` each step for the actions to take.
    """

    def __init__(self, episodes: int = 1, episode_timeout_s: float = 60.0, reset_first: bool = False,
                 reset_timeout_s: float = 10.0) -> None:
        if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
            raise InvalidInputError(f"episodes must be a positive integer, got {episodes!r}")
        if not episode_timeout_s > 0 or not reset_timeout_s > 0:
            raise InvalidInputError(f"episode_timeout_s must be positive, got {episode_timeout_s!r}")
        self.episodes = episodes
        self.episode_timeout_s = float(episode_timeout_s)
        self.reset_timeout_s = float(reset_timeout_s)
        self.state = RESETTING if reset_first else WAITING
        self.finished = 0
        self.outcomes: list[str] = []
        self._sim: SimEpisode | None = None
        self._success = False  # newest sim/success
        self._used_index = -1 if not reset_first else None  # sim episode index the next start must exceed
        self._target_index: int | None = None  # sim episode index of the newest expert target
        self._running_index: int | None = None
        self._started_at = 0.0
        self._reset_asked_at: float | None = None
        self._reset_pending = reset_first

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    # -- what the simulation says --------------------------------------------------------------------
    def on_sim_episode(self, record: SimEpisode) -> None:
        self._sim = record

    def on_success(self, success: bool) -> None:
        self._success = bool(success)

    def on_expert_target(self) -> None:
        """An expert target arrived: it belongs to the newest simulated episode."""
        if self._sim is not None:
            self._target_index = self._sim.index

    def on_reset_result(self, ok: bool, message: str = "") -> Action | None:
        """sim/reset answered; a refusal (e.g. the seed list is used up) ends the session."""
        if ok:
            return None
        self.state = DONE
        return Action("done", reason=f"sim/reset refused: {message}")

    # -- decisions -----------------------------------------------------------------------------------
    def tick(self, now_s: float) -> list[Action]:
        if self.state == WAITING:
            return self._maybe_start(now_s)
        if self.state == RUNNING:
            return self._maybe_stop(now_s)
        if self.state == RESETTING:
            return self._reset(now_s)
        return []

    def _fresh_episode(self) -> bool:
        sim = self._sim
        return (sim is not None and not sim.done and not sim.success and not self._success
                and (self._used_index is None or sim.index > self._used_index) and self._target_index == sim.index)

    def _maybe_start(self, now_s: float) -> list[Action]:
        if not self._fresh_episode():
            return []
        self.state = RUNNING
        self._running_index = self._sim.index
        self._started_at = now_s
        return [Action("start", instruction=self._sim.instruction)]

    def _maybe_stop(self, now_s: float) -> list[Action]:
        sim = self._sim
        outcome, reason = None, ""
        if self._success or (sim.index == self._running_index and sim.success):
            outcome, reason = "success", "sim/success"
        elif sim.index != self._running_index:
            outcome, reason = "failure", "the simulation started another episode"
        elif sim.done:
            outcome, reason = "failure", "the simulation ended the episode without success"
        elif now_s - self._started_at > self.episode_timeout_s:
            outcome, reason = "failure", f"no success within episode_timeout_s ({self.episode_timeout_s:g} s)"
        if outcome is None:
            return []
        self.finished += 1
        self.outcomes.append(outcome)
        self._used_index = self._running_index
        actions = [Action("stop", outcome=outcome, reason=reason)]
        if self.finished >= self.episodes:
            self.state = DONE
            actions.append(Action("done", reason=f"{self.finished} episode(s) run"))
        else:
            self.state = RESETTING
            self._reset_pending = True
        return actions

    def _reset(self, now_s: float) -> list[Action]:
        if self._reset_pending:
            if self._used_index is None:  # reset_first: the episode running now is not ours, so learn its index
                if self._sim is None:
                    return []
                self._used_index = self._sim.index
            self._reset_pending = False
            self._reset_asked_at = now_s
            return [Action("reset")]
        if self._sim is not None and self._used_index is not None and self._sim.index > self._used_index:
            self.state = WAITING
            return self._maybe_start(now_s)
        if now_s - self._reset_asked_at > self.reset_timeout_s:
            self.state = DONE
            return [Action("done", reason=f"no new simulated episode within {self.reset_timeout_s:g} s of sim/reset")]
        return []

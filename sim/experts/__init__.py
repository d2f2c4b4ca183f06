"""Scripted experts (privileged state in, actions out): ``make_expert(task, control=...)``."""
from __future__ import annotations

from magma_sim.experts.base import ScriptedExpert
from magma_sim.experts.pick import PickPlaceExpert, PutInTrayExpert, StackExpert
from magma_sim.experts.push import PushExpert
from magma_sim.tasks import check_task

_EXPERTS: dict[str, type[ScriptedExpert]] = {e.task: e for e in (PickPlaceExpert, StackExpert, PushExpert, PutInTrayExpert)}


def make_expert(task: str, control: str = "waypoint", control_hz: int = 10) -> ScriptedExpert:
    """The scripted expert of `task`, emitting actions for `control` ("ee_delta" or "waypoint") at `control_hz`."""
    return _EXPERTS[check_task(task)](control=control, control_hz=control_hz)


__all__ = ["ScriptedExpert", "make_expert"]

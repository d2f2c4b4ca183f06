"""Task registry: ``TASKS`` names the tasks, ``make_task`` builds one, ``resolve_tasks`` expands ``all``."""
from __future__ import annotations

from magma_core.errors import InvalidInputError
from magma_sim.tasks.base import Task
from magma_sim.tasks.pick_place import PickPlaceTask
from magma_sim.tasks.push import PushTask
from magma_sim.tasks.put_in_tray import PutInTrayTask
from magma_sim.tasks.stack import StackTask

_REGISTRY: dict[str, type[Task]] = {t.name: t for t in (PickPlaceTask, StackTask, PushTask, PutInTrayTask)}
TASKS: list[str] = list(_REGISTRY)


def check_task(name: str) -> str:
    """Return `name` if it is a known task, else raise InvalidInputError listing the valid ones."""
    if name not in _REGISTRY:
        raise InvalidInputError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)} (or 'all' where a list is accepted)")
    return name


def make_task(name: str) -> Task:
    return _REGISTRY[check_task(name)]()


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """Expand 'all' or a comma-separated string (or a list) into validated task names."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return list(TASKS)
    if not names:
        raise InvalidInputError(f"no task given; valid tasks: {', '.join(TASKS)} or 'all'")
    return [check_task(n) for n in names]


__all__ = ["TASKS", "Task", "check_task", "make_task", "resolve_tasks"]

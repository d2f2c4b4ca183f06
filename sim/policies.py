"""Policies the evaluation harness can run: scripted experts, random actions, checkpoint folders.

A policy follows ``magma_core.policy.Policy``: ``reset()`` and ``infer(obs) -> dict``. Two
optional attributes tell the harness more:

- ``privileged = True``: the policy reads simulator state, so the harness calls
  ``infer(obs, info)``. Only scripted experts do; a learned policy never sees ``info``.
- ``needs_images = False``: the policy ignores images, so the harness may skip rendering.

``reset`` may take a ``seed`` keyword; the harness then passes each episode's seed so a
stochastic policy acts the same whichever worker runs the episode.

``infer`` returns ``{"actions": (7,) or (8,), "action_space": "ee_delta" | "waypoint"}`` or, in
trace mode, ``{"trace": ..., "marks": ...}`` (see ``magma_sim.trace_follow``).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from magma_core.errors import InvalidInputError
from magma_core.policy import Policy
from magma_sim.control import MAX_ROTATION, MAX_TRANSLATION, check_control

BUILTIN_POLICIES = ("scripted", "heuristic", "random")
POLICY_FILES = ("policy.json", "config.json")
# Only our own packages may be named by a checkpoint's policy.json: a downloaded folder must not
# make the harness import arbitrary code.
ALLOWED_MODULE_ROOTS = ("magma_core", "magma_sim")


class ScriptedPolicy:
    """The task's scripted expert behind the Policy interface; privileged (reads ``info``)."""

    privileged = True
    needs_images = False

    def __init__(self, control: str = "waypoint", control_hz: int = 10) -> None:
        self.control = check_control(control)
        self.control_hz = int(control_hz)
        self._experts: dict[str, Any] = {}

    def reset(self, seed: int | None = None) -> None:
        for expert in self._experts.values():
            expert.reset()

    def infer(self, obs: dict, info: dict) -> dict:
        if info is None or "privileged" not in info:
            raise InvalidInputError("ScriptedPolicy needs the env's info (it is a privileged expert)")
        task = info["task"]
        if task not in self._experts:
            from magma_sim.experts import make_expert  # noqa: PLC0415 - pulls pybullet; only when acting

            self._experts[task] = make_expert(task, control=self.control, control_hz=self.control_hz)
        action = self._experts[task].act(obs, info)
        return {"actions": action, "action_space": self.control}


class RandomPolicy:
    """Uniformly random ee_delta actions within the env's per-step limits; a floor for success rates."""

    privileged = False
    needs_images = False

    def __init__(self, seed: int = 0, rotation_scale: float = 0.3) -> None:
        self.seed = int(seed)
        self.rotation = float(rotation_scale) * MAX_ROTATION
        self.rng = np.random.default_rng(self.seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(self.seed if seed is None else [self.seed, int(seed)])

    def infer(self, obs: dict) -> dict:
        translation = self.rng.uniform(-MAX_TRANSLATION, MAX_TRANSLATION, 3)
        rotation = self.rng.uniform(-self.rotation, self.rotation, 3)
        gripper = float(self.rng.integers(2))
        return {"actions": np.concatenate([translation, rotation, [gripper]]), "action_space": "ee_delta"}


def parse_policy_spec(spec: str) -> tuple[str, Any]:
    """("scripted"|"heuristic"|"random"|"checkpoint", argument) for a --policy value, checked without loading anything.

    "embedded" is the trained magma-tiny checkpoint shipped in the package (magma_core.embedded).

    "random" and "random:SEED" pick RandomPolicy; anything else must be a checkpoint folder.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInputError(f"policy must be 'scripted', 'heuristic', 'random[:SEED]' or a checkpoint folder, got {spec!r}")
    spec = spec.strip()
    if spec in ("scripted", "heuristic"):
        return spec, None
    if spec == "embedded":  # the trained magma-tiny shipped with the package
        from magma_core.embedded import embedded_checkpoint

        folder = embedded_checkpoint()
        return "checkpoint", (folder, checkpoint_policy_class(folder))
    if spec == "random" or spec.startswith("random:"):
        _, _, seed = spec.partition(":")
        try:
            return "random", int(seed) if seed else 0
        except ValueError:
            raise InvalidInputError(f"policy {spec!r}: the random policy's seed must be an integer") from None
    folder = Path(spec).expanduser()
    policy_class = checkpoint_policy_class(folder)
    return "checkpoint", (folder, policy_class)


def checkpoint_policy_class(folder: Path) -> str:
    """The "module:Class" a checkpoint folder names in policy.json (or config.json)."""
    if not folder.exists():
        raise InvalidInputError(
            f"policy {str(folder)!r} is not a built-in policy ({', '.join(BUILTIN_POLICIES)}) and no such checkpoint folder exists")
    if not folder.is_dir():
        raise InvalidInputError(f"checkpoint {folder} is not a folder")
    for name in POLICY_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            meta = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"cannot read {path}: {exc}") from exc
        if isinstance(meta, dict) and "policy_class" in meta:
            return _check_class_path(meta["policy_class"], path)
    raise InvalidInputError(
        f"checkpoint folder {folder} has no {' or '.join(POLICY_FILES)} naming a policy class; "
        'write policy.json with {"policy_class": "magma_core.some_module:SomePolicy"}')


def _check_class_path(value: Any, source: Path) -> str:
    if not isinstance(value, str) or value.count(":") != 1:
        raise InvalidInputError(f"{source}: policy_class must be 'module:Class', got {value!r}")
    module, name = value.split(":")
    if module.split(".")[0] not in ALLOWED_MODULE_ROOTS or not name.isidentifier():
        raise InvalidInputError(
            f"{source}: policy_class {value!r} must name a class in {' or '.join(ALLOWED_MODULE_ROOTS)}")
    return value


def load_policy(spec: str, *, control_hz: int = 10) -> Policy:
    """Build the policy a --policy value names: "scripted", "heuristic", "random[:SEED]" or a checkpoint folder.

    A checkpoint folder holds policy.json (or config.json) with ``{"policy_class": "module:Class"}``;
    the class (in magma_core or magma_sim) is built with ``Class.from_pretrained(folder)``.
    """
    kind, arg = parse_policy_spec(spec)
    if kind == "scripted":
        return ScriptedPolicy(control="waypoint", control_hz=control_hz)
    if kind == "random":
        return RandomPolicy(seed=arg)
    if kind == "heuristic":
        from magma_core.policies.heuristic import HeuristicPolicy

        return HeuristicPolicy()
    folder, class_path = arg
    module_name, class_name = class_path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(f"checkpoint {folder}: cannot import {module_name} ({exc})") from exc
    cls = getattr(module, class_name, None)
    if cls is None or not callable(getattr(cls, "from_pretrained", None)):
        raise InvalidInputError(f"checkpoint {folder}: {class_path} is not a class with from_pretrained(folder)")
    policy = cls.from_pretrained(str(folder))
    if not isinstance(policy, Policy):
        raise InvalidInputError(f"checkpoint {folder}: {class_path}.from_pretrained returned no Policy (reset/infer)")
    return policy

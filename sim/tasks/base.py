"""What every tabletop task provides: a scene, an instruction, roles for experts and a success predicate."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import pybullet as p

from magma_sim.robot import Panda
from magma_sim.rotations import quat_to_matrix
from magma_sim.scene import BLOCK_KINDS, COLORS, SceneBuilder, SceneObject

# An object counts as resting below these speeds (m/s, rad/s).
REST_LINEAR = 0.03
REST_ANGULAR = 0.5
# Height tolerance (m) when checking that one box sits on a surface.
SIT_TOLERANCE = 0.008


class Task(ABC):
    """One task family. ``build`` fills a fresh scene for a seed; the rest reads the live simulation.

    Every task moves one ``object`` to one ``target``; both are exposed to experts and labels
    through :meth:`roles`, and their marked points (centre of the top face) become the
    ground-truth Trace-of-Mark marks 1 and 2 (mark 0 is the gripper).
    """

    name: ClassVar[str]
    templates: ClassVar[tuple[str, ...]]
    horizon_s: ClassVar[float] = 15.0

    def __init__(self) -> None:
        self.object: SceneObject | None = None
        self.target: SceneObject | None = None
        self.instruction = ""
        self.objects: dict[str, SceneObject] = {}
        self.client = -1

    def build(self, builder: SceneBuilder, rng: np.random.Generator) -> None:
        """Create this episode's bodies (random poses, colours, distractors) and its instruction."""
        self.client = builder.client
        self._build(builder, rng)
        self.objects = dict(builder.objects)
        template = self.templates[int(rng.integers(len(self.templates)))]
        self.instruction = template.format(object=self._phrase(self.object, rng), target=self._phrase(self.target, rng))

    @abstractmethod
    def _build(self, builder: SceneBuilder, rng: np.random.Generator) -> None:
        """Create the bodies and set ``self.object`` and ``self.target``."""

    @abstractmethod
    def is_success(self, robot: Panda) -> bool:
        """Whether the scene is in a success configuration now."""

    def on_step(self) -> None:
        """Called after every control step (tasks that judge the path, not only the end, record it here)."""

    def extras(self) -> dict:
        """Task-specific privileged facts for experts (e.g. the goal point)."""
        return {}

    @staticmethod
    def _phrase(obj: SceneObject, rng: np.random.Generator) -> str:
        noun = obj.nouns[int(rng.integers(len(obj.nouns)))]
        return noun if obj.kind == "tray" else f"{obj.color} {noun}"

    def roles(self) -> dict[str, str]:
        return {"object": self.object.name, "target": self.target.name}

    def mark_objects(self) -> list[SceneObject]:
        """The objects whose marked points follow the gripper in the ground-truth traces."""
        return [self.object, self.target]

    # -- geometry helpers shared by the success predicates -------------------------------------
    def pose(self, obj: SceneObject) -> tuple[np.ndarray, np.ndarray]:
        return obj.pose(self.client)

    def local(self, point: np.ndarray, frame: SceneObject) -> np.ndarray:
        """`point` (base frame) expressed in `frame`'s body frame."""
        pos, quat = self.pose(frame)
        return quat_to_matrix(quat).T @ (np.asarray(point) - pos)

    def resting(self, obj: SceneObject) -> bool:
        lin, ang = p.getBaseVelocity(obj.body_id, physicsClientId=self.client)
        return float(np.linalg.norm(lin)) < REST_LINEAR and float(np.linalg.norm(ang)) < REST_ANGULAR

    def released(self, robot: Panda, obj: SceneObject) -> bool:
        return not robot.touching(obj.body_id)

    def upright_half_height(self, obj: SceneObject) -> float:
        """Half of the object's vertical extent in its current orientation (cubes: any face down)."""
        _, quat = self.pose(obj)
        R = quat_to_matrix(quat)
        return float(np.abs(R[2]) @ obj.half_extents)

    def sits_on(self, obj: SceneObject, support_top_z: float) -> bool:
        pos, _ = self.pose(obj)
        return abs(pos[2] - self.upright_half_height(obj) - support_top_z) < SIT_TOLERANCE

    def inside_footprint(self, obj: SceneObject, area: SceneObject, margin: float = 0.0) -> bool:
        """Whether obj's centre lies over `area`'s footprint shrunk by `margin`."""
        pos, _ = self.pose(obj)
        loc = self.local(pos, area)
        return bool(np.all(np.abs(loc[:2]) <= area.half_extents[:2] - margin))

    def top_z(self, obj: SceneObject) -> float:
        pos, _ = self.pose(obj)
        return float(pos[2] + self.upright_half_height(obj))


def distinct_colors(rng: np.random.Generator, count: int, exclude: tuple[str, ...] = ()) -> list[str]:
    """`count` different colour names, none of `exclude`."""
    names = [c for c in COLORS if c not in exclude]
    picks = rng.choice(len(names), size=count, replace=False)
    return [names[int(i)] for i in picks]


def random_block_kind(rng: np.random.Generator) -> str:
    kinds = sorted(BLOCK_KINDS)
    return kinds[int(rng.integers(len(kinds)))]


def random_yaw(rng: np.random.Generator) -> float:
    return float(rng.uniform(-np.pi / 4, np.pi / 4))

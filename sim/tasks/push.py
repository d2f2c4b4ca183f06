"""Push a block across the table into a coloured zone, without lifting it."""
from __future__ import annotations

import numpy as np

from magma_core.errors import MagmaError
from magma_sim.robot import Panda
from magma_sim.scene import BLOCK_KINDS, ZONE_HALF, Layout, SceneBuilder, footprint_radius, sample_free_xy
from magma_sim.tasks.base import Task, distinct_colors, random_block_kind, random_yaw

PUSH_DISTANCE = (0.10, 0.18)
GOAL_X, GOAL_Y = (0.38, 0.66), (-0.24, 0.24)
# Room the pusher needs behind the block; where it starts must stay reachable with the gripper down.
PREPUSH_GAP = 0.06
PREPUSH_X, PREPUSH_Y = (0.30, 0.72), (-0.30, 0.30)
# Above this height of its bottom face (m) the block counts as lifted rather than pushed.
LIFT_LIMIT = 0.015


class PushTask(Task):
    name = "push"
    templates = (
        "push the {object} to the {target}",
        "slide the {object} into the {target}",
        "push the {object} onto the {target}",
        "push the {object} into the {target}",
        "slide the {object} over to the {target}",
    )
    horizon_s = 15.0

    def __init__(self) -> None:
        super().__init__()
        self.max_lift = 0.0

    def _build(self, builder: SceneBuilder, rng: np.random.Generator) -> None:
        self.max_lift = 0.0
        n_distractors = int(rng.integers(0, 3))
        colors = distinct_colors(rng, 3 + n_distractors)
        kind = random_block_kind(rng)
        half = BLOCK_KINDS[kind]["size"] / 2
        obj_xy, goal_xy = self._sample_push(rng, half)
        layout = Layout()
        zone_r = footprint_radius(ZONE_HALF)
        layout.add(goal_xy, zone_r)
        layout.add(obj_xy, half * np.sqrt(2))
        self.target = builder.add_zone(colors[1], goal_xy, random_yaw(rng))
        self.object = builder.add_block(kind, colors[0], obj_xy, random_yaw(rng))
        builder.add_zone(colors[2], sample_free_xy(rng, layout, zone_r, clearance=0.0), random_yaw(rng))
        start = obj_xy - (goal_xy - obj_xy) / np.linalg.norm(goal_xy - obj_xy) * (half + PREPUSH_GAP)
        for color in colors[3:]:
            other = random_block_kind(rng)
            r = BLOCK_KINDS[other]["size"] / np.sqrt(2)
            for _ in range(100):  # keep the pushing lane clear
                xy = sample_free_xy(rng, Layout(list(layout.circles)), r)
                if _distance_to_segment(xy, start, goal_xy) > r + 0.07:
                    layout.add(xy, r)
                    builder.add_block(other, color, xy, random_yaw(rng))
                    break

    @staticmethod
    def _sample_push(rng: np.random.Generator, half: float) -> tuple[np.ndarray, np.ndarray]:
        for _ in range(500):
            obj = rng.uniform([GOAL_X[0], GOAL_Y[0]], [GOAL_X[1], GOAL_Y[1]])
            angle = rng.uniform(-np.pi, np.pi)
            direction = np.array([np.cos(angle), np.sin(angle)])
            goal = obj + direction * rng.uniform(*PUSH_DISTANCE)
            start = obj - direction * (half + PREPUSH_GAP)
            if (GOAL_X[0] <= goal[0] <= GOAL_X[1] and GOAL_Y[0] <= goal[1] <= GOAL_Y[1]
                    and PREPUSH_X[0] <= start[0] <= PREPUSH_X[1] and PREPUSH_Y[0] <= start[1] <= PREPUSH_Y[1]):
                return obj, goal
        raise MagmaError("could not sample a reachable push")

    def on_step(self) -> None:
        pos, _ = self.pose(self.object)
        self.max_lift = max(self.max_lift, float(pos[2] - self.upright_half_height(self.object)))

    def extras(self) -> dict:
        return {"max_lift": self.max_lift, "lift_limit": LIFT_LIMIT}

    def is_success(self, robot: Panda) -> bool:
        return (self.inside_footprint(self.object, self.target)
                and self.sits_on(self.object, 0.0)
                and self.max_lift <= LIFT_LIMIT
                and self.released(robot, self.object)
                and self.resting(self.object))


def _distance_to_segment(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(point - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(point - (a + t * ab)))

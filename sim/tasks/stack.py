"""Stack one block on top of a cube."""
from __future__ import annotations

import numpy as np

from magma_sim.robot import Panda
from magma_sim.scene import BLOCK_KINDS, Layout, SceneBuilder, sample_free_xy
from magma_sim.tasks.base import Task, distinct_colors, random_block_kind, random_yaw


class StackTask(Task):
    name = "stack"
    templates = (
        "stack the {object} on the {target}",
        "put the {object} on top of the {target}",
        "place the {object} onto the {target}",
        "pick up the {object} and stack it on the {target}",
        "stack the {object} on top of the {target}",
    )
    horizon_s = 15.0

    def _build(self, builder: SceneBuilder, rng: np.random.Generator) -> None:
        n_distractors = int(rng.integers(1, 3))
        colors = distinct_colors(rng, 2 + n_distractors)
        layout = Layout()
        kinds = [random_block_kind(rng), "cube"] + [random_block_kind(rng) for _ in range(n_distractors)]
        bodies = []
        for kind, color in zip(kinds, colors):
            xy = sample_free_xy(rng, layout, BLOCK_KINDS[kind]["size"] / np.sqrt(2), clearance=0.045)
            bodies.append(builder.add_block(kind, color, xy, random_yaw(rng)))
        self.object, self.target = bodies[0], bodies[1]

    def is_success(self, robot: Panda) -> bool:
        return (self.inside_footprint(self.object, self.target)
                and self.sits_on(self.target, 0.0)
                and self.sits_on(self.object, self.top_z(self.target))
                and self.released(robot, self.object)
                and self.resting(self.object)
                and self.resting(self.target))

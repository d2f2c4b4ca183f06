"""Pick a block up and put it on a coloured pad."""
from __future__ import annotations

import numpy as np

from magma_sim.robot import Panda
from magma_sim.scene import BLOCK_KINDS, PAD_HALF, Layout, SceneBuilder, footprint_radius, sample_free_xy
from magma_sim.tasks.base import Task, distinct_colors, random_block_kind, random_yaw


class PickPlaceTask(Task):
    name = "pick_place"
    templates = (
        "put the {object} on the {target}",
        "place the {object} onto the {target}",
        "move the {object} to the {target}",
        "pick up the {object} and put it on the {target}",
        "set the {object} down on the {target}",
    )
    horizon_s = 15.0

    def _build(self, builder: SceneBuilder, rng: np.random.Generator) -> None:
        n_distractors = int(rng.integers(1, 3))
        colors = distinct_colors(rng, 3 + n_distractors)
        layout = Layout()
        pad_r = footprint_radius(PAD_HALF)
        self.target = builder.add_pad(colors[1], sample_free_xy(rng, layout, pad_r, clearance=0.01), random_yaw(rng))
        builder.add_pad(colors[2], sample_free_xy(rng, layout, pad_r, clearance=0.01), random_yaw(rng))
        kind = random_block_kind(rng)
        r = BLOCK_KINDS[kind]["size"] / np.sqrt(2)
        self.object = builder.add_block(kind, colors[0], sample_free_xy(rng, layout, r), random_yaw(rng))
        for color in colors[3:]:
            other = random_block_kind(rng)
            builder.add_block(other, color, sample_free_xy(rng, layout, BLOCK_KINDS[other]["size"] / np.sqrt(2)),
                              random_yaw(rng))

    def is_success(self, robot: Panda) -> bool:
        return (self.inside_footprint(self.object, self.target)
                and self.sits_on(self.object, 2 * PAD_HALF[2])
                and self.released(robot, self.object)
                and self.resting(self.object))

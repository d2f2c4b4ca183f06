"""Put a block into the tray."""
from __future__ import annotations

import numpy as np

from magma_sim.robot import Panda
from magma_sim.scene import (BLOCK_KINDS, TRAY_FLOOR, TRAY_INNER_HALF, TRAY_WALL, Layout, SceneBuilder, sample_free_xy)
from magma_sim.tasks.base import Task, distinct_colors, random_block_kind, random_yaw


class PutInTrayTask(Task):
    name = "put_in_tray"
    templates = (
        "put the {object} in the {target}",
        "place the {object} into the {target}",
        "drop the {object} in the {target}",
        "pick up the {object} and put it in the {target}",
        "move the {object} into the {target}",
    )
    horizon_s = 15.0

    def _build(self, builder: SceneBuilder, rng: np.random.Generator) -> None:
        n_distractors = int(rng.integers(1, 3))
        colors = distinct_colors(rng, 1 + n_distractors)
        layout = Layout()
        tray_r = TRAY_INNER_HALF + TRAY_WALL[0]  # its yaw stays small, so the inscribed circle is close enough
        xy = sample_free_xy(rng, layout, tray_r * 1.1, x_range=(0.36, 0.68), y_range=(-0.30, 0.30))
        self.target = builder.add_tray(xy, float(rng.uniform(-0.3, 0.3)))
        for i, color in enumerate(colors):
            kind = random_block_kind(rng)
            block = builder.add_block(kind, color, sample_free_xy(rng, layout, BLOCK_KINDS[kind]["size"] / np.sqrt(2)),
                                      random_yaw(rng))
            if i == 0:
                self.object = block

    def is_success(self, robot: Panda) -> bool:
        pos, _ = self.pose(self.object)
        loc = self.local(pos, self.target)
        floor_top = -self.target.half_extents[2] + TRAY_FLOOR
        return (bool(np.all(np.abs(loc[:2]) < TRAY_INNER_HALF))
                and floor_top < loc[2] < floor_top + TRAY_WALL[1]
                and self.released(robot, self.object)
                and self.resting(self.object))

"""What stands on the table: named colours, and builders for the table, cubes, pads, zones and the tray.

Every object is a plain box or a set of boxes, so its geometry (and thus success checks and
ground-truth points) follows from its pose and half extents alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pybullet as p

from magma_core.errors import MagmaError

# Colours an instruction may name; chosen to stay distinct under the renderer's flat lighting.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.12),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.12, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "orange": (1.00, 0.50, 0.05),
    "purple": (0.55, 0.20, 0.75),
    "cyan": (0.10, 0.80, 0.85),
    "pink": (1.00, 0.50, 0.75),
    "white": (0.95, 0.95, 0.95),
}

TABLE_COLOR = (0.62, 0.55, 0.47)
FLOOR_COLOR = (0.30, 0.30, 0.32)
TRAY_COLOR = (0.45, 0.36, 0.28)

# Movable object kinds: edge length (m), mass (kg) and the nouns an instruction may use.
BLOCK_KINDS: dict[str, dict] = {
    "cube": {"size": 0.04, "mass": 0.08, "nouns": ("cube", "block")},
    "small_block": {"size": 0.03, "mass": 0.05, "nouns": ("small block", "small cube")},
}
PAD_HALF = (0.05, 0.05, 0.002)
ZONE_HALF = (0.06, 0.06, 0.0005)
TRAY_INNER_HALF = 0.075
TRAY_WALL = (0.008, 0.04)  # thickness, height
TRAY_FLOOR = 0.006

# The table top is the base frame's z = 0 plane; the arm's base sits on it.
TABLE_HALF = (0.55, 0.65, 0.03)
TABLE_CENTER_X = 0.40

FRICTION_OBJECT = 1.0


@dataclass
class SceneObject:
    """One body on the table and what a task or a label needs to know about it."""

    name: str  # e.g. "red_cube"; unique in the scene
    kind: str  # cube, small_block, pad, zone, tray
    color: str
    body_id: int
    half_extents: np.ndarray  # of the bounding box, in the body frame
    static: bool
    nouns: tuple[str, ...] = ()

    def pose(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        pos, quat = p.getBasePositionAndOrientation(self.body_id, physicsClientId=client)
        return np.array(pos), np.array(quat)

    def top_point_local(self) -> np.ndarray:
        """The body-frame point a task marks: the centre of the top face (the floor centre for a tray)."""
        if self.kind == "tray":
            return np.array([0.0, 0.0, -self.half_extents[2] + TRAY_FLOOR])
        return np.array([0.0, 0.0, self.half_extents[2]])


@dataclass
class Layout:
    """Footprints already placed on the table, to sample new ones that do not overlap."""

    circles: list[tuple[np.ndarray, float]] = field(default_factory=list)

    def free(self, xy: np.ndarray, radius: float, clearance: float) -> bool:
        return all(np.linalg.norm(xy - c) >= radius + r + clearance for c, r in self.circles)

    def add(self, xy: np.ndarray, radius: float) -> None:
        self.circles.append((np.asarray(xy, dtype=np.float64), radius))


# Where objects may be spawned (base frame, metres): in front of the arm, inside the camera view.
SPAWN_X = (0.32, 0.70)
SPAWN_Y = (-0.28, 0.28)


class SceneBuilder:
    """Creates bodies in one PyBullet client; used by the tasks when an episode is reset."""

    def __init__(self, client: int) -> None:
        self.client = client
        self.objects: dict[str, SceneObject] = {}

    def _box_body(self, half: tuple[float, float, float], rgb: tuple[float, float, float], pos, yaw: float,
                  mass: float, collide: bool = True) -> int:
        c = self.client
        col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c) if collide else -1
        vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=(*rgb, 1.0), physicsClientId=c)
        quat = p.getQuaternionFromEuler((0.0, 0.0, yaw))
        return p.createMultiBody(mass, col, vis, basePosition=pos, baseOrientation=quat, physicsClientId=c)

    def add_table(self) -> int:
        table = self._box_body(TABLE_HALF, TABLE_COLOR, (TABLE_CENTER_X, 0.0, -TABLE_HALF[2]), 0.0, 0.0)
        floor = self._box_body((2.0, 2.0, 0.01), FLOOR_COLOR, (0.4, 0.0, -0.75), 0.0, 0.0)
        p.changeDynamics(table, -1, lateralFriction=0.6, physicsClientId=self.client)
        del floor  # the floor only gives the camera a background below the table edge
        return table

    def add_block(self, kind: str, color: str, xy, yaw: float) -> SceneObject:
        spec = BLOCK_KINDS[kind]
        h = spec["size"] / 2.0
        body = self._box_body((h, h, h), COLORS[color], (xy[0], xy[1], h), yaw, spec["mass"])
        p.changeDynamics(body, -1, lateralFriction=FRICTION_OBJECT, spinningFriction=0.001, rollingFriction=0.0001,
                         physicsClientId=self.client)
        return self._register(f"{color}_{kind}", kind, color, body, (h, h, h), False, spec["nouns"])

    def add_pad(self, color: str, xy, yaw: float) -> SceneObject:
        body = self._box_body(PAD_HALF, COLORS[color], (xy[0], xy[1], PAD_HALF[2]), yaw, 0.0)
        return self._register(f"{color}_pad", "pad", color, body, PAD_HALF, True, ("pad", "mat", "square"))

    def add_zone(self, color: str, xy, yaw: float) -> SceneObject:
        # Drawn on the table, without collision, so a pushed block slides onto it without a ledge.
        body = self._box_body(ZONE_HALF, COLORS[color], (xy[0], xy[1], ZONE_HALF[2]), yaw, 0.0, collide=False)
        return self._register(f"{color}_zone", "zone", color, body, ZONE_HALF, True, ("zone", "area", "region"))

    def add_tray(self, xy, yaw: float) -> SceneObject:
        """A static open box: a floor plate and four walls, one body with several collision boxes."""
        c = self.client
        t, wall_h = TRAY_WALL
        outer = TRAY_INNER_HALF + t
        half_h = (TRAY_FLOOR + wall_h) / 2.0
        parts = [((outer, outer, TRAY_FLOOR / 2), (0.0, 0.0, -half_h + TRAY_FLOOR / 2))]
        wall_z = -half_h + TRAY_FLOOR + wall_h / 2
        for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            half = (t / 2, outer, wall_h / 2) if sx else (outer, t / 2, wall_h / 2)
            offset = TRAY_INNER_HALF + t / 2
            parts.append((half, (sx * offset, sy * offset, wall_z)))
        halves = [list(h) for h, _ in parts]
        offsets = [list(o) for _, o in parts]
        col = p.createCollisionShapeArray([p.GEOM_BOX] * len(parts), halfExtents=halves, collisionFramePositions=offsets,
                                          physicsClientId=c)
        vis = p.createVisualShapeArray([p.GEOM_BOX] * len(parts), halfExtents=halves, visualFramePositions=offsets,
                                       rgbaColors=[(*TRAY_COLOR, 1.0)] * len(parts), physicsClientId=c)
        quat = p.getQuaternionFromEuler((0.0, 0.0, yaw))
        body = p.createMultiBody(0.0, col, vis, basePosition=(xy[0], xy[1], half_h), baseOrientation=quat,
                                 physicsClientId=c)
        return self._register("tray", "tray", "brown", body, (outer, outer, half_h), True, ("tray", "bin", "box"))

    def _register(self, name, kind, color, body, half, static, nouns) -> SceneObject:
        obj = SceneObject(name=name, kind=kind, color=color, body_id=body, half_extents=np.array(half, dtype=np.float64),
                          static=static, nouns=tuple(nouns))
        self.objects[name] = obj
        return obj


def sample_free_xy(rng: np.random.Generator, layout: Layout, radius: float, clearance: float = 0.03,
                   x_range=SPAWN_X, y_range=SPAWN_Y, tries: int = 200) -> np.ndarray:
    """A random table position whose footprint circle keeps `clearance` from everything placed so far."""
    lo = np.array([x_range[0] + radius, y_range[0] + radius])
    hi = np.array([x_range[1] - radius, y_range[1] - radius])
    for _ in range(tries):
        xy = rng.uniform(lo, hi)
        if layout.free(xy, radius, clearance):
            layout.add(xy, radius)
            return xy
    raise MagmaError("could not place an object without overlap; the table is too crowded")


def footprint_radius(half_extents) -> float:
    return float(np.hypot(half_extents[0], half_extents[1]))

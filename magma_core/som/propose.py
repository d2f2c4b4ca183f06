"""Run-time Set-of-Mark proposal from what a real robot has: RGB(-D), calibration, proprioception.

`propose_marks(obs)` numbers, on the current frame:

- the gripper: **always mark 1** (kind ``gripper``), the TCP from ``ee_pose`` projected through
  the calibration. Mark 1 matches the ground-truth traces, whose first mark is the gripper.
- objects (kind ``object``): connected regions standing on the table plane, split by colour;
- regions (kind ``region``): flat coloured patches on the table (pads, zones), told apart from
  the table by colour.

Objects and regions get ids 2, 3, ... from left to right (by mark point u, then v), so the
numbering is stable while a scene does not change. With ``mark_style="point"`` (default) an
object's mark is the projected centre of its top face (a container's: of its floor), the point
ground-truth traces start from; ``"box"`` marks the pixel bounding box instead.

How it works with depth: pixels are lifted to the base frame; the table plane is fitted by
RANSAC among near-horizontal planes (`ProposalConfig.up`, `max_tilt_deg`); every pixel gets its
height above that plane. The robot is removed by its coarse known geometry, not by colour (a
white block looks like the grey arm): a box around the hand and flange and one around each
finger, in the TCP frame from ``ee_pose`` and the measured opening ``gripper``; a cylinder
around the arm's base at the base-frame origin; and everything higher than
``max_object_height`` except the space between the fingers (so a held block stays a mark).
Raised pixels are grouped by connected components per colour group; flat pixels whose colour
differs from the table's (measured as the plane inliers' median colour) make the regions. A
raised component that encloses much more than its own pixels (its convex hull) is a container.

Without usable depth (missing, or fewer than `min_valid_depth_fraction` valid pixels) the
proposal falls back to colour alone: pixels far from the table's colour (the image's dominant
colour), minus the projected gripper and arm base, grouped the same way; each blob's pixel rays
are cut by the plane ``z = default_table_height + assumed_object_height`` (taken as a block's
middle) and the blob gets shape ``unknown``. If depth is valid but shows no table (fewer than 20
plane pixels), the same fallback runs. No objects found is an empty list, not an error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from magma_core.colors import (COLOR_NAMES, _lut, _lut_keys, color_distance, color_features, color_index, hue_group,
                               nearest_color)
from magma_core.errors import InvalidInputError
from magma_core.geometry import (project_unchecked, as_extrinsics, as_intrinsics, as_pose, pixel_rays, pose_matrix,
                                 ray_plane_intersection)
from magma_core.imageio import validate_rgb
from magma_core.som.marks import Mark, MarkSet
from magma_core.som.plane import TablePlane, fit_table_plane, horizontal_plane

__all__ = ["GRIPPER_MARK_ID", "MarkInfo", "ProposalConfig", "ProposedMarks", "TablePlane", "mark_recall", "propose_marks"]

GRIPPER_MARK_ID = 1


@dataclass(frozen=True)
class ProposalConfig:
    """Tuning of `propose_marks`. Lengths in metres, base frame; defaults suit a tabletop arm and a ~1 m camera."""

    up: tuple[float, float, float] = (0.0, 0.0, 1.0)  # the table's normal is near this base-frame direction
    max_tilt_deg: float = 20.0
    plane_inlier: float = 0.004
    ransac_iterations: int = 100
    ransac_points: int = 2000
    min_plane_fraction: float = 0.2  # of the valid points in the workspace box
    min_valid_depth_fraction: float = 0.1
    default_table_height: float = 0.0  # plane z when depth cannot give one
    # Where the table and the objects are sought (base frame).
    workspace_low: tuple[float, float, float] = (-0.3, -0.8, -0.3)
    workspace_high: tuple[float, float, float] = (1.3, 0.8, 0.6)
    min_object_height: float = 0.010
    max_object_height: float = 0.12
    min_object_size: float = 0.012  # longest footprint side
    max_object_size: float = 0.35
    min_pixels: int = 3
    merge_distance: float = 0.02  # same-colour pieces closer than this (footprint gap) are one object
    container_fill_ratio: float = 1.8  # hull area / own area above which a raised object is a container
    container_min_size: float = 0.07
    region_max_height: float = 0.009
    region_color_distance: float = 0.2  # shading-tolerant distance from the table colour (see magma_core.colors)
    min_region_size: float = 0.03
    # Flat patches with fewer pixels than this (per 128 x 128 image, scaled with the image's area) are shading,
    # shadows and edges, not pads: on pick_place frames they were ~2 of every 8 proposals.
    min_region_pixels: int = 20
    # The robot's coarse geometry. TCP frame: z along the fingers (out of the hand), y the opening direction.
    robot_base_xy: tuple[float, float] = (0.0, 0.0)
    robot_base_radius: float = 0.16
    hand_low: tuple[float, float, float] = (-0.045, -0.125, -0.40)
    hand_high: tuple[float, float, float] = (0.045, 0.125, -0.033)
    finger_half_x: float = 0.02
    finger_thickness: float = 0.03  # outward from the inner face
    finger_z: tuple[float, float] = (-0.045, 0.016)
    finger_inner_margin: float = 0.003
    mark_style: str = "point"
    assumed_object_height: float = 0.02  # RGB-only fallback: where blob rays are cut (a block's middle)
    fallback_color_distance: float = 0.12  # RGB-only fallback: colour alone must tell a brown tray from the table
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mark_style not in ("point", "box"):
            raise InvalidInputError(f"mark_style must be 'point' or 'box', got {self.mark_style!r}")
        if not 0 < self.min_object_height < self.max_object_height:
            raise InvalidInputError("need 0 < min_object_height < max_object_height")
        if not isinstance(self.min_region_pixels, int) or self.min_region_pixels < 0:
            raise InvalidInputError(f"min_region_pixels must be a non-negative integer, got {self.min_region_pixels!r}")
        if np.linalg.norm(self.up) < 1e-9:
            raise InvalidInputError("up must be a non-zero vector")


@dataclass
class MarkInfo:
    """What the proposal knows about one mark, beyond the Mark itself.

    position: base-frame centre of the body (objects), of the patch (regions) or the TCP (gripper).
    top: base-frame point the mark shows: top-face centre, container floor centre, TCP.
    height: top above the table plane; floor_height: a container's floor (else 0 for objects on the table).
    size: footprint side lengths (m), yaw: footprint heading in [-pi/4, pi/4) (rad, base frame).
    color_rgb: median colour (0..255) of the mark's pixels, color_name its nearest palette name.
    shape: gripper, block, container, flat or unknown (RGB-only).
    """

    mark_id: int
    kind: str
    shape: str
    label: str
    color_name: str
    color_rgb: tuple[int, int, int]
    point_px: tuple[float, float]
    box_px: tuple[float, float, float, float]
    pixel_count: int
    depth: float
    position: np.ndarray
    top: np.ndarray
    height: float = 0.0
    floor_height: float = 0.0
    size: tuple[float, float] = (0.0, 0.0)
    yaw: float = 0.0
    mask: np.ndarray | None = field(default=None, repr=False)


@dataclass
class ProposedMarks:
    """The marks (a MarkSet) and per-mark 3D information, the fitted plane and how they were found."""

    marks: MarkSet
    info: dict[int, MarkInfo]
    plane: TablePlane
    table_rgb: tuple[int, int, int]
    depth_used: bool
    image_size: tuple[int, int]  # (width, height)
    gripper_id: int | None = GRIPPER_MARK_ID

    def of_kind(self, *kinds: str) -> list[MarkInfo]:
        return [i for i in self.info.values() if i.kind in kinds]

    @property
    def objects(self) -> list[MarkInfo]:
        return self.of_kind("object")

    @property
    def regions(self) -> list[MarkInfo]:
        return self.of_kind("region")

    @property
    def gripper(self) -> MarkInfo | None:
        return self.info.get(self.gripper_id) if self.gripper_id is not None else None


# --------------------------------------------------------------------------- entry point


def propose_marks(obs: dict, config: ProposalConfig = ProposalConfig()) -> ProposedMarks:
    """Propose the gripper, object and region marks of one observation (see the module docstring).

    Needs ``rgb``, ``intrinsics``, ``extrinsics``; uses ``depth``, ``ee_pose`` and ``gripper`` when
    present (without ``ee_pose`` there is no gripper mark and the hand is not masked out).
    """
    if not isinstance(obs, dict):
        raise InvalidInputError(f"observation must be a dict, got {type(obs).__name__}")
    for key in ("rgb", "intrinsics", "extrinsics"):
        if key not in obs:
            raise InvalidInputError(f"observation lacks {key!r}; propose_marks needs rgb, intrinsics and extrinsics")
    rgb = validate_rgb(obs["rgb"], "rgb")
    K, T = _calibration(obs["intrinsics"], obs["extrinsics"])
    h, w = rgb.shape[:2]
    tcp = as_pose(obs["ee_pose"]) if obs.get("ee_pose") is not None else None
    opening = _opening(obs.get("gripper"))
    depth = _depth_or_none(obs.get("depth"), (h, w), config)
    scene = _Scene(rgb, K, T, tcp, opening, config)
    if depth is not None:
        found = scene.from_depth(depth)
        if found is not None:
            return found
    return scene.from_color()


# A camera's calibration rarely changes between frames, and checking it (allclose, det) costs ~0.2 ms:
# remember the exact bytes of calibrations that passed. Equal bytes pass equally, so nothing changes.
_VALID_CALIBRATIONS: set[tuple[bytes, bytes]] = set()
_VALID_CALIBRATIONS_MAX = 32


def _calibration(intrinsics, extrinsics) -> tuple[np.ndarray, np.ndarray]:
    """``(as_intrinsics(intrinsics), as_extrinsics(extrinsics))``, the checks skipped for a calibration seen valid."""
    try:
        K = np.asarray(intrinsics, dtype=np.float64)
        T = np.asarray(extrinsics, dtype=np.float64)
    except Exception:  # noqa: BLE001 - the checking functions raise the proper error below
        K = T = None
    if K is not None and K.shape == (3, 3) and T.shape == (4, 4):
        key = (K.tobytes(), T.tobytes())
        if key in _VALID_CALIBRATIONS:
            return K, T
    else:
        key = None
    K, T = as_intrinsics(intrinsics), as_extrinsics(extrinsics)
    if key is not None:
        if len(_VALID_CALIBRATIONS) >= _VALID_CALIBRATIONS_MAX:
            _VALID_CALIBRATIONS.clear()
        _VALID_CALIBRATIONS.add(key)
    return K, T


# Camera-frame rays of every pixel depend only on K and the image size; lifting a depth image is then a
# multiply and one small matrix product. Few cameras per process: a handful of entries, cleared when full.
_RAYS: dict[tuple[bytes, int, int], np.ndarray] = {}
_RAYS_MAX = 4


def _pixel_rays(K: np.ndarray, h: int, w: int) -> np.ndarray:
    """``geometry.pixel_rays`` of every pixel of an h x w image, row-major as (h * w, 3), read-only and cached."""
    key = (np.ascontiguousarray(K, dtype=np.float64).tobytes(), int(h), int(w))
    rays = _RAYS.get(key)
    if rays is None:
        vv, uu = np.mgrid[0:h, 0:w].astype(np.float64)  # as geometry.depth_to_points builds its pixel grid
        rays = pixel_rays(np.stack([uu, vv], axis=-1), K).reshape(-1, 3)
        rays.flags.writeable = False
        if len(_RAYS) >= _RAYS_MAX:
            _RAYS.clear()  # atomic, unlike evicting one entry while another thread may insert
        _RAYS[key] = rays
    return rays


def _opening(value) -> float:
    if value is None:
        return 0.08
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"gripper: expected the opening width (metres), got {value!r}") from exc
    if arr.size < 1 or not np.isfinite(arr[0]):
        raise InvalidInputError(f"gripper: expected the opening width (metres), got {value!r}")
    return float(max(arr[0], 0.0))


def _depth_or_none(depth, shape: tuple[int, int], config: ProposalConfig) -> np.ndarray | None:
    """The depth image as float64 with NaN for holes, or None when it is absent or mostly holes."""
    if depth is None:
        return None
    d = np.asarray(depth)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.shape != shape:
        raise InvalidInputError(f"depth {d.shape} does not match rgb {shape}")
    if d.dtype.kind not in "fiu":
        raise InvalidInputError(f"depth must be numeric metres, got dtype {d.dtype}")
    d = d.astype(np.float64)
    valid = np.isfinite(d) & (d > 0)  # NaN > 0 is False
    d[~valid] = np.nan
    fraction = np.count_nonzero(valid) / valid.size if valid.size else np.isfinite(d).mean()  # == isfinite(d).mean()
    if fraction < config.min_valid_depth_fraction:
        return None
    return d


# --------------------------------------------------------------------------- one frame's work


@dataclass
class _Blob:
    """A candidate mark before numbering."""

    kind: str
    mask: np.ndarray
    group: int


class _Scene:
    def __init__(self, rgb, K, T, tcp, opening, config: ProposalConfig) -> None:
        self.rgb, self.K, self.T, self.tcp, self.opening, self.cfg = rgb, K, T, tcp, opening, config
        self.h, self.w = rgb.shape[:2]
        self.rgb_flat = rgb.reshape(-1, 3)
        if rgb.size > 3 * 64:  # colors.color_index uses its lookup table from this size on: share its keys
            self.keys = _lut_keys(rgb).reshape(-1)
            self.groups = np.take(_group_lut(), self.keys).reshape(self.h, self.w)
        else:
            self.keys = None
            self.groups = hue_group(color_index(rgb))
        # The depth path's valid points (N, 3), their heights (N,) and an (h, w) image of their row in them (-1: none).
        self.pts = self.height = self.pos = None

    # -- with depth -----------------------------------------------------------------------------
    def from_depth(self, depth: np.ndarray) -> ProposedMarks | None:
        """The depth path. Per-pixel arithmetic runs on the valid pixels only, as flat (N,) / (N, 3) arrays
        (`idx` their flat pixel indices); each value is bit for bit what the full-image arithmetic gives there.
        Images (points, heights, masks) are built once, by scattering, for the per-blob steps."""
        cfg = self.cfg
        h, w = self.h, self.w
        flat_depth = depth.reshape(-1)
        idx = np.flatnonzero(np.isfinite(flat_depth))  # _depth_or_none turned every other pixel into NaN
        pts = _lift(_pixel_rays(self.K, h, w), idx, flat_depth[idx], self.T)
        finite = np.isfinite(pts)
        if not finite.all():  # only for absurd depths (overflow); the row test is slow, so only then
            keep = finite.all(axis=1)
            idx, pts = idx[keep], pts[keep]
        x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
        low, high = cfg.workspace_low, cfg.workspace_high
        in_box = (x >= low[0]) & (x <= high[0]) & (y >= low[1]) & (y <= high[1]) & (z >= low[2]) & (z <= high[2])
        plane = fit_table_plane(np.take(pts, np.flatnonzero(in_box), axis=0), up=cfg.up, max_tilt_deg=cfg.max_tilt_deg,
                                inlier=cfg.plane_inlier, iterations=cfg.ransac_iterations,
                                sample_size=cfg.ransac_points, min_fraction=cfg.min_plane_fraction, seed=cfg.seed)
        if plane is None:
            plane = horizontal_plane(cfg.default_table_height)
        height = plane.height_of(pts)
        robot = self._robot_mask(pts, height)
        table = (np.abs(height) < max(cfg.plane_inlier, 0.003)) & ~robot
        if np.count_nonzero(table) < 20:
            return None
        table_rgb = _median_rgb(np.take(self.rgb_flat, idx[table], axis=0))
        usable = in_box & ~robot
        # Nothing above max_object_height is left but a held object (the robot mask keeps the space between the fingers).
        raised = _scatter_mask(idx[usable & (height > cfg.min_object_height)], h, w)
        # Per-blob steps index the valid points through an image of their positions (-1: invalid pixel).
        pos = np.full(h * w, -1, dtype=np.intp)
        pos[idx] = np.arange(len(idx))
        self.pts, self.height, self.pos = pts, height, pos.reshape(h, w)
        blobs = [b for b in self._components(raised, "object")]
        blobs = self._merge(blobs)
        infos: list[MarkInfo] = []
        claimed = np.zeros((self.h, self.w), dtype=bool)
        # An object's lowest side-face rows fall under min_object_height: they must not become a region.
        skirt = np.zeros((self.h, self.w), dtype=bool)
        kernel = np.ones((3, 3), np.uint8)
        for blob in blobs:
            info = self._object_info(blob, plane)
            if info is not None:
                infos.append(info)
                claimed |= info.mask
                near = cv2.dilate(info.mask.astype(np.uint8), kernel).astype(bool)
                skirt |= near & (self.groups == blob.group)
        # The colour test only where the other region conditions already hold.
        flat_idx = idx[usable & (height > -cfg.region_max_height) & (height < cfg.region_max_height)]
        flat_idx = flat_idx[~claimed.reshape(-1)[flat_idx]]
        off_table = self._color_differs(flat_idx, table_rgb.astype(np.uint8), cfg.region_color_distance)
        flat = _scatter_mask(flat_idx[off_table], h, w)
        for blob in self._components(flat, "region"):
            if (blob.mask & skirt).any():
                continue
            info = self._region_info(blob, plane)
            if info is not None:
                infos.append(info)
        return self._finish(infos, plane, table_rgb, depth_used=True)

    def _color_differs(self, flat_idx: np.ndarray, colour: np.ndarray, limit: float) -> np.ndarray:
        """``color_distance(rgb, colour) > limit`` at the pixels `flat_idx`.

        A pixel's distance depends only on its lookup-table key, and a frame has a few hundred distinct
        keys among ~10^4 table pixels: compute each key's distance once (the same row arithmetic).
        """
        if self.keys is None:
            return color_distance(self.rgb, colour).reshape(-1)[flat_idx] > limit
        features = _lut("features")
        keys = self.keys[flat_idx]
        present = np.zeros(len(features), dtype=bool)
        present[keys] = True
        distinct = np.flatnonzero(present)
        far = np.zeros(len(features), dtype=bool)
        far[distinct] = np.linalg.norm(features[distinct] - color_features(colour), axis=-1) > limit
        return far[keys]

    def _robot_mask(self, pts, height) -> np.ndarray:
        """Robot pixels among the valid points `pts` (N, 3) with heights `height` (N,)."""
        cfg = self.cfg
        dx, dy, radius = pts[:, 0] - cfg.robot_base_xy[0], pts[:, 1] - cfg.robot_base_xy[1], cfg.robot_base_radius
        # hypot is slow and hypot(a, b) >= max(|a|, |b|) (also as rounded): only the enclosing square can be inside.
        square = np.flatnonzero((np.abs(dx) < radius) & (np.abs(dy) < radius))
        base = np.zeros(len(pts), dtype=bool)
        base[square] = np.hypot(dx[square], dy[square]) < radius
        robot = base | (height > cfg.max_object_height)
        if self.tcp is None:
            return robot
        inv = np.linalg.inv(pose_matrix(self.tcp))
        local = _rigid(pts, inv[:3, :3], inv[:3, 3])
        # Hand, fingers and the held space all lie in a slab of TCP x: test the other conditions only there.
        x_low = min(cfg.hand_low[0], -cfg.finger_half_x, -0.04)
        x_high = max(cfg.hand_high[0], cfg.finger_half_x, 0.04)
        lx = local[:, 0]
        near = np.flatnonzero((lx >= x_low) & (lx <= x_high))
        local = np.take(local, near, axis=0)
        x, y, z = local[:, 0], local[:, 1], local[:, 2]
        low, high = cfg.hand_low, cfg.hand_high
        hand = (x >= low[0]) & (x <= high[0]) & (y >= low[1]) & (y <= high[1]) & (z >= low[2]) & (z <= high[2])
        inner = self.opening / 2.0 - cfg.finger_inner_margin
        ax, ay = np.abs(x), np.abs(y)
        finger = ((ax < cfg.finger_half_x) & (ay > inner) & (ay < inner + cfg.finger_thickness)
                  & (z > cfg.finger_z[0]) & (z < cfg.finger_z[1]))
        held = (ax < 0.04) & (ay <= max(inner, 0.0)) & (z > cfg.finger_z[0]) & (z < 0.04)
        out = robot.copy()
        out[near] = hand | finger | (robot[near] & ~held)
        return out

    def _object_info(self, blob: _Blob, plane: TablePlane) -> MarkInfo | None:
        cfg = self.cfg
        where = self.pos[blob.mask]  # raised pixels are all valid
        pts = np.take(self.pts, where, axis=0)
        if len(pts) < cfg.min_pixels:
            return None
        rect = _footprint(pts[:, :2])
        if rect is None:
            return None
        (cx, cy), size, yaw = rect
        if not cfg.min_object_size <= max(size) <= cfg.max_object_size:
            return None
        hts = self.height[where]
        top_h = _percentile(hts, 95)
        # Only a footprint this wide can be a container: skip the hull for everything else.
        container = False
        if min(size) >= cfg.container_min_size:
            hull = _hull_mask(blob.mask)
            container = np.count_nonzero(hull) > cfg.container_fill_ratio * np.count_nonzero(blob.mask)
        shape = "container" if container else "block"
        ground = plane.z_at(cx, cy)
        if container:
            inside = self.height[self.pos[hull & ~blob.mask & (self.pos >= 0)]]
            inside = inside[np.isfinite(inside)]
            floor_h = _percentile(inside, 30) if len(inside) >= 3 else 0.0
            floor_h = float(np.clip(floor_h, 0.0, top_h))
            centre_h, mark_h = top_h / 2.0, floor_h
            mask = hull
        else:
            floor_h = 0.0
            centre_h = max(top_h - min(size) / 2.0, top_h / 2.0)
            mark_h = top_h
            mask = blob.mask
        position = np.array([cx, cy, ground + centre_h])
        top = np.array([cx, cy, ground + mark_h])
        return self._info(blob, mask, "object", shape, position, top, top_h, floor_h, size, yaw)

    def _region_info(self, blob: _Blob, plane: TablePlane) -> MarkInfo | None:
        cfg = self.cfg
        mask = _fill_holes(blob.mask)
        if np.count_nonzero(mask) < max(cfg.min_pixels, cfg.min_region_pixels * self.h * self.w / (128 * 128)):
            return None
        level = _nanmedian(self.height[self.pos[blob.mask]])  # flat pixels are all valid
        on_plane = self._plane_hits(np.flatnonzero(mask), plane.normal, plane.offset - level)
        rect = _footprint(on_plane[:, :2]) if len(on_plane) >= cfg.min_pixels else None
        if rect is None:
            return None
        (cx, cy), size, yaw = rect
        if not cfg.min_region_size <= max(size) <= cfg.max_object_size * 2:
            return None
        centre = np.array([cx, cy, plane.z_at(cx, cy) + max(level, 0.0)])
        return self._info(blob, mask, "region", "flat", centre, centre, max(level, 0.0), 0.0, size, yaw)

    # -- without depth --------------------------------------------------------------------------
    def from_color(self) -> ProposedMarks:
        cfg = self.cfg
        plane = horizontal_plane(cfg.default_table_height)
        table_rgb = _dominant_color(self.rgb)
        off_table = color_distance(self.rgb, table_rgb.astype(np.uint8)) > cfg.fallback_color_distance
        candidate = off_table & ~self._projected_robot()
        blobs = []
        for blob in self._components(candidate, "object"):
            # Grey things touching the top border are the arm or the background, not objects.
            touches_top = blob.mask[0].any()
            if touches_top and COLOR_NAMES[blob.group] == "grey":
                continue
            blobs.append(blob)
        infos = []
        cut = plane.offset - cfg.assumed_object_height
        for blob in blobs:
            if blob.mask.sum() < cfg.min_pixels:
                continue
            vv, uu = np.nonzero(blob.mask)
            on_plane = ray_plane_intersection(np.stack([uu, vv], axis=-1).astype(np.float64), self.K, self.T,
                                              plane.normal, cut)
            on_plane = on_plane[np.all(np.isfinite(on_plane), axis=1)]
            rect = _footprint(on_plane[:, :2]) if len(on_plane) >= cfg.min_pixels else None
            if rect is None:
                continue
            (cx, cy), size, yaw = rect
            if not cfg.min_object_size <= max(size) <= cfg.max_object_size * 2:
                continue
            # Assume a block standing on the table whose middle is at the cut height.
            centre = np.array([cx, cy, plane.z_at(cx, cy) + cfg.assumed_object_height])
            top = centre + [0.0, 0.0, cfg.assumed_object_height]
            infos.append(self._info(blob, blob.mask, "object", "unknown", centre, top, 2 * cfg.assumed_object_height,
                                    0.0, size, yaw))
        return self._finish(infos, plane, table_rgb, depth_used=False)

    def _projected_robot(self) -> np.ndarray:
        """Pixels covered by the hand, fingers and arm base, drawn from their boxes' projected corners."""
        cfg = self.cfg
        mask = np.zeros((self.h, self.w), dtype=np.uint8)
        solids = []
        bx, by = cfg.robot_base_xy
        r = cfg.robot_base_radius
        solids.append(np.array([[bx + sx * r, by + sy * r, z] for sx in (-1, 1) for sy in (-1, 1) for z in (0.0, 0.35)]))
        if self.tcp is not None:
            M = pose_matrix(self.tcp)
            low = np.array(cfg.hand_low)
            high = np.array([cfg.hand_high[0], cfg.hand_high[1], cfg.finger_z[1]])  # hand and fingers together
            corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
            solids.append(corners @ M[:3, :3].T + M[:3, 3])
        for corners in solids:
            uvz = project_unchecked(corners, self.K, self.T)
            if np.any(uvz[:, 2] <= 0):
                continue
            hull = cv2.convexHull(np.round(uvz[:, :2]).astype(np.int32))
            cv2.fillConvexPoly(mask, hull, 1)
        return cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool)

    # -- shared ---------------------------------------------------------------------------------
    def _plane_hits(self, flat_idx: np.ndarray, normal, offset: float) -> np.ndarray:
        """``ray_plane_intersection`` of the pixels `flat_idx` (row-major, as np.nonzero orders them), finite rows only.

        Same arithmetic, on the cached rays and the frame's checked calibration instead of per-call checks.
        """
        n = np.asarray(normal, dtype=np.float64).reshape(3)
        if not (np.all(np.isfinite(n)) and np.isfinite(offset)) or np.linalg.norm(n) < 1e-9:
            vv, uu = np.divmod(flat_idx, self.w)  # let the checked version raise its error
            hits = ray_plane_intersection(np.stack([uu, vv], axis=-1).astype(np.float64), self.K, self.T, n, offset)
        else:
            rays = np.take(_pixel_rays(self.K, self.h, self.w), flat_idx, axis=0) @ self.T[:3, :3].T  # base frame
            origin = self.T[:3, 3]
            denom = rays @ n
            with np.errstate(divide="ignore", invalid="ignore"):
                s = -(origin @ n + offset) / denom
            s = np.where((np.abs(denom) > 1e-12) & (s > 0), s, np.nan)
            hits = origin + rays * s[..., None]
        finite = np.isfinite(hits)
        return hits if finite.all() else hits[finite.all(axis=1)]

    def _components(self, mask: np.ndarray, kind: str) -> list[_Blob]:
        """Connected components of `mask`, one colour group at a time (so touching blocks of two colours split)."""
        blobs = []
        # Groups are small non-negative ints: bincount lists the present ones in np.unique's (sorted) order.
        for group in np.flatnonzero(np.bincount(self.groups[mask].reshape(-1))):
            n, labels = cv2.connectedComponents((mask & (self.groups == group)).astype(np.uint8), connectivity=8)
            if n <= 8:
                for i in range(1, n):
                    part = labels == i
                    if np.count_nonzero(part) >= self.cfg.min_pixels:
                        blobs.append(_Blob(kind, part, int(group)))
                continue
            areas = np.bincount(labels.reshape(-1), minlength=n)  # many labels (specks): one counting pass
            for i in np.flatnonzero(areas[1:] >= self.cfg.min_pixels) + 1:
                blobs.append(_Blob(kind, labels == i, int(group)))
        return blobs

    def _merge(self, blobs: list[_Blob]) -> list[_Blob]:
        """Join same-colour pieces of one object cut apart by an occluder (a finger, the arm)."""
        boxes = []
        for b in blobs:
            xy = np.take(self.pts, self.pos[b.mask], axis=0)[:, :2]
            boxes.append((xy.min(axis=0), xy.max(axis=0)))
        merged = True
        while merged:
            merged = False
            for i in range(len(blobs)):
                for j in range(i + 1, len(blobs)):
                    if blobs[i].group != blobs[j].group:
                        continue
                    gap = np.maximum(boxes[i][0] - boxes[j][1], boxes[j][0] - boxes[i][1])
                    if np.all(gap < self.cfg.merge_distance):
                        blobs[i] = _Blob(blobs[i].kind, blobs[i].mask | blobs[j].mask, blobs[i].group)
                        boxes[i] = (np.minimum(boxes[i][0], boxes[j][0]), np.maximum(boxes[i][1], boxes[j][1]))
                        del blobs[j], boxes[j]
                        merged = True
                        break
                if merged:
                    break
        return blobs

    def _info(self, blob: _Blob, mask, kind, shape, position, top, height, floor_h, size, yaw) -> MarkInfo:
        pix = np.take(self.rgb_flat, np.flatnonzero(blob.mask), axis=0)
        if kind == "object" and shape == "block":
            # The top face is the best-lit: name the colour from the brightest half (white vs grey sides).
            brightest = pix.max(axis=1)
            colour = _median_rgb(pix[brightest >= _median_u8(brightest)])
        else:
            colour = _median_rgb(pix)
        name = _color_name(*colour.astype(np.uint8).tolist())
        u, v, depth = _project_point(top, self.K, self.T)
        x0, y0, bw, bh = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))  # of the non-zero pixels
        box = (float(x0) - 0.5, float(y0) - 0.5, float(x0 + bw - 1) + 0.5, float(y0 + bh - 1) + 0.5)
        label = f"{name} {shape}" if shape != "unknown" else name
        return MarkInfo(mark_id=0, kind=kind, shape=shape, label=label, color_name=name,
                        color_rgb=tuple(int(c) for c in colour), point_px=(u, v), box_px=box,
                        pixel_count=int(np.count_nonzero(mask)), depth=depth, position=position, top=top,
                        height=float(height), floor_height=float(floor_h), size=(float(size[0]), float(size[1])),
                        yaw=float(yaw), mask=mask)

    def _finish(self, infos: list[MarkInfo], plane: TablePlane, table_rgb, depth_used: bool) -> ProposedMarks:
        marks = MarkSet()
        out: dict[int, MarkInfo] = {}
        gripper_id = None
        if self.tcp is not None:
            u, v, depth = _project_point(self.tcp[:3], self.K, self.T)
            point = (u, v)
            g = MarkInfo(mark_id=GRIPPER_MARK_ID, kind="gripper", shape="gripper", label="gripper", color_name="",
                         color_rgb=(0, 0, 0), point_px=point, box_px=(point[0] - 0.5, point[1] - 0.5, point[0] + 0.5, point[1] + 0.5),
                         pixel_count=0, depth=depth, position=self.tcp[:3].copy(), top=self.tcp[:3].copy(),
                         height=float(plane.height_of(self.tcp[:3])))
            marks.add(Mark(id=GRIPPER_MARK_ID, point=self._clip(point), label="gripper", kind="gripper"))
            out[GRIPPER_MARK_ID] = g
            gripper_id = GRIPPER_MARK_ID
        infos = [i for i in infos if i.depth > 0]
        infos.sort(key=lambda i: (round(i.point_px[0], 3), i.point_px[1]))
        for n, info in enumerate(infos, start=GRIPPER_MARK_ID + 1):
            info.mark_id = n
            if self.cfg.mark_style == "box" and info.kind != "gripper":
                mark = Mark(id=n, box=info.box_px, label=info.label, kind=info.kind)
            else:
                mark = Mark(id=n, point=self._clip(info.point_px), label=info.label, kind=info.kind)
            marks.add(mark)
            out[n] = info
        return ProposedMarks(marks=marks, info=out, plane=plane, table_rgb=tuple(int(c) for c in table_rgb),
                             depth_used=depth_used, image_size=(self.w, self.h), gripper_id=gripper_id)

    def _clip(self, point: tuple[float, float]) -> tuple[float, float]:
        """Keep a mark on the image (a TCP out of view still gets a mark at the border)."""
        return (_clip_float(point[0], 0.0, self.w - 1.0), _clip_float(point[1], 0.0, self.h - 1.0))


# --------------------------------------------------------------------------- small helpers


def _lift(rays: np.ndarray, idx: np.ndarray, depth: np.ndarray, T: np.ndarray) -> np.ndarray:
    """geometry.unproject of the pixels `idx` at `depth` (N,): ``(rays * depth) @ R.T + t``, as (N, 3).

    Same operations, but the per-row (3,) broadcasts become column passes: numpy's broadcast over a
    3-long inner axis is several times slower than three strided passes.
    """
    cam = np.take(rays, idx, axis=0)
    for j in range(3):
        cam[:, j] *= depth
    return _rigid(cam, T[:3, :3], T[:3, 3])


def _rigid(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``points @ R.T + t`` for (N, 3) points, the translation added column by column (see _lift)."""
    out = points @ R.T
    for j in range(3):
        out[:, j] += t[j]
    return out


def _clip_float(x: float, low: float, high: float) -> float:
    """``float(np.clip(x, low, high))`` for a Python float, ~20x faster; the same comparisons, so NaN stays NaN
    and -0.0 stays -0.0 as in numpy."""
    x = low if low > x else x
    return high if high < x else x


def _scatter_mask(flat_idx: np.ndarray, h: int, w: int) -> np.ndarray:
    """An (h, w) bool image, True at the flat pixel indices `flat_idx`."""
    out = np.zeros(h * w, dtype=bool)
    out[flat_idx] = True
    return out.reshape(h, w)


_GROUP_LUT: list[np.ndarray] = []


def _group_lut() -> np.ndarray:
    """hue_group of colors' palette-index lookup table: an image's colour groups in one gather."""
    if not _GROUP_LUT:
        _GROUP_LUT.append(hue_group(_lut("index")).astype(np.uint8))  # a dozen groups: bytes compare faster
    return _GROUP_LUT[0]


@lru_cache(maxsize=1024)
def _color_name(r: int, g: int, b: int) -> str:
    """nearest_color's name of one uint8 colour, remembered: the same few colours come back every frame."""
    return nearest_color(np.array([r, g, b], dtype=np.uint8))[0]


def _project_point(point: np.ndarray, K: np.ndarray, T: np.ndarray) -> tuple[float, float, float]:
    """``project_unchecked`` of one point as floats (u, v, depth): the same operations, in Python floats
    after the rotation, which for a single point is several times faster than the array version."""
    cam = (point - T[:3, 3]) @ T[:3, :3]
    x, y, z = float(cam[0]), float(cam[1]), float(cam[2])
    safe = 1e-9 if abs(z) < 1e-9 else z
    u = float(K[0, 0]) * x / safe + float(K[0, 1]) * y / safe + float(K[0, 2])
    v = float(K[1, 1]) * y / safe + float(K[1, 2])
    return u, v, z


# Medians and percentiles of the small per-mark arrays: numpy's functions spend most of their time in
# argument handling there. These give numpy's values exactly (the tests compare them bit for bit).
_CHANNEL_OFFSETS = np.array([0, 256, 512], dtype=np.intp)


_PARTITION_MAX = 4096  # below this many values a partition beats a histogram


def _median_u8(values: np.ndarray) -> float:
    """``float(np.median(values))`` of uint8 values: the middle values are integers, so (a + b) / 2 is exact."""
    n = values.size
    if n == 0:
        return float(np.median(values))
    if n <= _PARTITION_MAX:
        k = n // 2
        part = np.partition(values.reshape(-1), ((n - 1) // 2, k) if n % 2 == 0 else k)
        return (float(part[(n - 1) // 2]) + float(part[k])) / 2.0
    cum = np.cumsum(np.bincount(values.reshape(-1), minlength=256))
    low = int(np.searchsorted(cum, (n - 1) // 2, side="right"))
    high = int(np.searchsorted(cum, n // 2, side="right"))
    return (low + high) / 2.0


_TILED_OFFSETS = [np.zeros(0, dtype=np.intp)]


def _median_rgb(pixels: np.ndarray) -> np.ndarray:
    """``np.median(pixels, axis=0)`` of (N, 3) uint8 pixels (exact, see _median_u8); many pixels: from one histogram."""
    n = len(pixels)
    if n == 0:
        return np.median(pixels, axis=0)
    if n <= _PARTITION_MAX:
        k = n // 2
        part = np.partition(pixels, ((n - 1) // 2, k) if n % 2 == 0 else k, axis=0)
        return (part[(n - 1) // 2].astype(np.float64) + part[k]) / 2.0
    # Channel c's values are binned at 256 c + value; in the cumulative count its k-th smallest value is the
    # first bin whose count exceeds c n + k. The bin offsets come from a kept tiled array: broadcasting a (3,)
    # offset over (N, 3) has a slow 3-long inner loop.
    offsets = _TILED_OFFSETS[0]
    if len(offsets) < 3 * n:
        offsets = _TILED_OFFSETS[0] = np.tile(_CHANNEL_OFFSETS, max(n, 4096))
    cum = np.cumsum(np.bincount(np.add(np.ascontiguousarray(pixels).reshape(-1), offsets[:3 * n]), minlength=768))
    ranks = np.array([(n - 1) // 2, n // 2]) + n * np.arange(3)[:, None]
    bins = np.searchsorted(cum, ranks, side="right") - 256 * np.arange(3)[:, None]
    return (bins[:, 0] + bins[:, 1]) / 2.0


def _nanmedian(values: np.ndarray) -> float:
    """``float(np.nanmedian(values))`` of a 1-D float array (numpy's median: partition, then mean of the middle)."""
    n = values.size
    if n == 0 or np.isnan(values).any():
        return float(np.nanmedian(values))
    k = n // 2
    if n % 2:
        return 0.0 + float(np.partition(values, k)[k])  # np.mean's sum starts from 0.0 (turns -0.0 into 0.0)
    part = np.partition(values, (k - 1, k))
    return (0.0 + float(part[k - 1]) + float(part[k])) / 2


def _percentile(values: np.ndarray, q: float) -> float:
    """``float(np.percentile(values, q))`` (method "linear") of a 1-D float array, numpy's arithmetic step by step."""
    n = values.size
    if n == 0 or np.isnan(values).any():
        return float(np.percentile(values, q))
    virtual = (n - 1) * (q / 100)
    if virtual >= n - 1:
        below = above = n - 1
        gamma = virtual + 1  # numpy measures gamma from the index it set to -1
    else:
        below = int(math.floor(virtual))
        above = below + 1
        gamma = virtual - below
    part = np.partition(values, (below, above) if above != below else below)
    a, b = float(part[below]), float(part[above])
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1 - gamma)
    return a + diff * gamma


def _footprint(xy: np.ndarray) -> tuple[tuple[float, float], tuple[float, float], float] | None:
    """Minimum-area rectangle of base-frame xy points: centre, side lengths, heading in [-pi/4, pi/4)."""
    xy = np.asarray(xy, dtype=np.float32)
    if len(xy) < 3:
        return None
    (cx, cy), (a, b), angle = cv2.minAreaRect(xy)
    yaw = (np.deg2rad(angle) + np.pi / 4) % (np.pi / 2) - np.pi / 4
    return (float(cx), float(cy)), (float(a), float(b)), float(yaw)


def _hull_mask(mask: np.ndarray) -> np.ndarray:
    vv, uu = np.nonzero(mask)
    out = np.zeros(mask.shape, dtype=np.uint8)
    if len(uu) >= 3:
        cv2.fillConvexPoly(out, cv2.convexHull(np.stack([uu, vv], axis=1).astype(np.int32)), 1)
    return out.astype(bool) | mask


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(m)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out.astype(bool) | mask


def _dominant_color(rgb: np.ndarray) -> np.ndarray:
    """The most common colour (median of the fullest 16-level RGB bin): the table in a tabletop view."""
    q = (rgb // 16).reshape(-1, 3).astype(np.int64)
    keys = q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]
    best = np.bincount(keys).argmax()
    return np.median(rgb.reshape(-1, 3)[keys == best], axis=0)


def mark_recall(proposed: ProposedMarks | MarkSet, privileged_pixels, radius_px: float = 3.0) -> float:
    """Fraction of ground-truth pixels (N, 2) that have a proposed non-gripper mark within `radius_px`.

    For tests and benchmarks only: the ground truth comes from the simulator's privileged state.
    """
    marks = proposed.marks if isinstance(proposed, ProposedMarks) else proposed
    targets = np.asarray(privileged_pixels, dtype=np.float64).reshape(-1, 2)
    if len(targets) == 0:
        raise InvalidInputError("mark_recall needs at least one ground-truth pixel")
    centres = np.array([m.center for m in marks if m.kind != "gripper"], dtype=np.float64).reshape(-1, 2)
    if len(centres) == 0:
        return 0.0
    d = np.linalg.norm(targets[:, None, :] - centres[None, :, :], axis=-1)
    return float(np.mean(d.min(axis=1) <= radius_px))

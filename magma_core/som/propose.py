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

from dataclasses import dataclass, field

import cv2
import numpy as np

from magma_core.colors import COLOR_NAMES, color_distance, color_index, hue_group, nearest_color
from magma_core.errors import InvalidInputError
from magma_core.geometry import (project_unchecked, as_extrinsics, as_intrinsics, as_pose, depth_to_points, pose_matrix,
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
    K, T = as_intrinsics(obs["intrinsics"]), as_extrinsics(obs["extrinsics"])
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
    d[~np.isfinite(d) | (d <= 0)] = np.nan
    if np.isfinite(d).mean() < config.min_valid_depth_fraction:
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
        self.groups = hue_group(color_index(rgb))

    # -- with depth -----------------------------------------------------------------------------
    def from_depth(self, depth: np.ndarray) -> ProposedMarks | None:
        cfg = self.cfg
        points = depth_to_points(depth, self.K, self.T)
        valid = np.all(np.isfinite(points), axis=-1)
        in_box = valid & np.all((points >= cfg.workspace_low) & (points <= cfg.workspace_high), axis=-1)
        plane = fit_table_plane(points[in_box], up=cfg.up, max_tilt_deg=cfg.max_tilt_deg, inlier=cfg.plane_inlier,
                                iterations=cfg.ransac_iterations, sample_size=cfg.ransac_points,
                                min_fraction=cfg.min_plane_fraction, seed=cfg.seed)
        if plane is None:
            plane = horizontal_plane(cfg.default_table_height)
        height = np.where(valid, plane.height_of(np.where(valid[..., None], points, 0.0)), np.nan)
        robot = self._robot_mask(points, height, valid)
        table = valid & (np.abs(height) < max(cfg.plane_inlier, 0.003)) & ~robot
        if table.sum() < 20:
            return None
        table_rgb = np.median(self.rgb[table], axis=0)
        usable = in_box & ~robot
        # Nothing above max_object_height is left but a held object (the robot mask keeps the space between the fingers).
        raised = usable & (height > cfg.min_object_height)
        blobs = [b for b in self._components(raised, "object")]
        blobs = self._merge(blobs, points)
        infos: list[MarkInfo] = []
        claimed = np.zeros((self.h, self.w), dtype=bool)
        # An object's lowest side-face rows fall under min_object_height: they must not become a region.
        skirt = np.zeros((self.h, self.w), dtype=bool)
        kernel = np.ones((3, 3), np.uint8)
        for blob in blobs:
            info = self._object_info(blob, points, height, plane)
            if info is not None:
                infos.append(info)
                claimed |= info.mask
                near = cv2.dilate(info.mask.astype(np.uint8), kernel).astype(bool)
                skirt |= near & (self.groups == blob.group)
        off_table = color_distance(self.rgb, table_rgb.astype(np.uint8)) > cfg.region_color_distance
        flat = usable & (height > -cfg.region_max_height) & (height < cfg.region_max_height) & off_table & ~claimed
        for blob in self._components(flat, "region"):
            if (blob.mask & skirt).any():
                continue
            info = self._region_info(blob, height, plane)
            if info is not None:
                infos.append(info)
        return self._finish(infos, plane, table_rgb, depth_used=True)

    def _robot_mask(self, points, height, valid) -> np.ndarray:
        cfg = self.cfg
        base = np.hypot(points[..., 0] - cfg.robot_base_xy[0], points[..., 1] - cfg.robot_base_xy[1]) < cfg.robot_base_radius
        robot = valid & (base | (height > cfg.max_object_height))
        if self.tcp is None:
            return robot
        inv = np.linalg.inv(pose_matrix(self.tcp))
        local = np.where(valid[..., None], points, 0.0) @ inv[:3, :3].T + inv[:3, 3]
        x, y, z = local[..., 0], local[..., 1], local[..., 2]
        hand = np.all((local >= cfg.hand_low) & (local <= cfg.hand_high), axis=-1)
        inner = self.opening / 2.0 - cfg.finger_inner_margin
        finger = ((np.abs(x) < cfg.finger_half_x) & (np.abs(y) > inner) & (np.abs(y) < inner + cfg.finger_thickness)
                  & (z > cfg.finger_z[0]) & (z < cfg.finger_z[1]))
        held = (np.abs(x) < 0.04) & (np.abs(y) <= max(inner, 0.0)) & (z > cfg.finger_z[0]) & (z < 0.04)
        return valid & (hand | finger | (robot & ~held))

    def _object_info(self, blob: _Blob, points, height, plane: TablePlane) -> MarkInfo | None:
        cfg = self.cfg
        pts = points[blob.mask]
        if len(pts) < cfg.min_pixels:
            return None
        rect = _footprint(pts[:, :2])
        if rect is None:
            return None
        (cx, cy), size, yaw = rect
        if not cfg.min_object_size <= max(size) <= cfg.max_object_size:
            return None
        hts = height[blob.mask]
        top_h = float(np.percentile(hts, 95))
        hull = _hull_mask(blob.mask)
        container = (hull.sum() > cfg.container_fill_ratio * blob.mask.sum() and min(size) >= cfg.container_min_size)
        shape = "container" if container else "block"
        ground = plane.z_at(cx, cy)
        if container:
            inside = hull & ~blob.mask & np.isfinite(height)
            floor_h = float(np.percentile(height[inside], 30)) if inside.sum() >= 3 else 0.0
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

    def _region_info(self, blob: _Blob, height, plane: TablePlane) -> MarkInfo | None:
        cfg = self.cfg
        mask = _fill_holes(blob.mask)
        if mask.sum() < max(cfg.min_pixels, cfg.min_region_pixels * self.h * self.w / (128 * 128)):
            return None
        level = float(np.nanmedian(height[blob.mask]))
        vv, uu = np.nonzero(mask)
        on_plane = ray_plane_intersection(np.stack([uu, vv], axis=-1).astype(np.float64), self.K, self.T,
                                          plane.normal, plane.offset - level)
        on_plane = on_plane[np.all(np.isfinite(on_plane), axis=1)]
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
    def _components(self, mask: np.ndarray, kind: str) -> list[_Blob]:
        """Connected components of `mask`, one colour group at a time (so touching blocks of two colours split)."""
        blobs = []
        for group in np.unique(self.groups[mask]):
            n, labels = cv2.connectedComponents((mask & (self.groups == group)).astype(np.uint8), connectivity=8)
            for i in range(1, n):
                part = labels == i
                if part.sum() >= self.cfg.min_pixels:
                    blobs.append(_Blob(kind, part, int(group)))
        return blobs

    def _merge(self, blobs: list[_Blob], points: np.ndarray) -> list[_Blob]:
        """Join same-colour pieces of one object cut apart by an occluder (a finger, the arm)."""
        boxes = []
        for b in blobs:
            xy = points[b.mask][:, :2]
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
        colour = np.median(self.rgb[blob.mask], axis=0)
        if kind == "object" and shape == "block":
            # The top face is the best-lit: name the colour from the brightest half (white vs grey sides).
            pix = self.rgb[blob.mask].astype(np.float64)
            bright = pix.max(axis=1) >= np.median(pix.max(axis=1))
            colour = np.median(pix[bright], axis=0)
        name, _ = nearest_color(colour.astype(np.uint8))
        uvz = project_unchecked(top, self.K, self.T)
        vv, uu = np.nonzero(mask)
        box = (float(uu.min()) - 0.5, float(vv.min()) - 0.5, float(uu.max()) + 0.5, float(vv.max()) + 0.5)
        label = f"{name} {shape}" if shape != "unknown" else name
        return MarkInfo(mark_id=0, kind=kind, shape=shape, label=label, color_name=name,
                        color_rgb=tuple(int(c) for c in colour), point_px=(float(uvz[0]), float(uvz[1])), box_px=box,
                        pixel_count=int(mask.sum()), depth=float(uvz[2]), position=position, top=top,
                        height=float(height), floor_height=float(floor_h), size=(float(size[0]), float(size[1])),
                        yaw=float(yaw), mask=mask)

    def _finish(self, infos: list[MarkInfo], plane: TablePlane, table_rgb, depth_used: bool) -> ProposedMarks:
        marks = MarkSet()
        out: dict[int, MarkInfo] = {}
        gripper_id = None
        if self.tcp is not None:
            uvz = project_unchecked(self.tcp[:3], self.K, self.T)
            point = (float(uvz[0]), float(uvz[1]))
            g = MarkInfo(mark_id=GRIPPER_MARK_ID, kind="gripper", shape="gripper", label="gripper", color_name="",
                         color_rgb=(0, 0, 0), point_px=point, box_px=(point[0] - 0.5, point[1] - 0.5, point[0] + 0.5, point[1] + 0.5),
                         pixel_count=0, depth=float(uvz[2]), position=self.tcp[:3].copy(), top=self.tcp[:3].copy(),
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
        return (float(np.clip(point[0], 0.0, self.w - 1.0)), float(np.clip(point[1], 0.0, self.h - 1.0)))


# --------------------------------------------------------------------------- small helpers


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

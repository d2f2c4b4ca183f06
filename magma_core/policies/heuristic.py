"""A non-learned baseline policy: proposed marks + a scripted plan, output as a 2.5D Trace-of-Mark.

`HeuristicPolicy` implements `magma_core.policy.Policy` with only what a real robot has. Each
`infer` call proposes marks from the observation (`propose_marks`), grounds the instruction's
object and place on them (`magma_core.policies.instruction`), decides the phase of the skill
from the measured TCP and gripper opening plus a small memory (phase, what was last seen where,
the grasp offset), and plans the gripper's next `n_steps` positions from the current state. The
plan leaves as the same 2.5D trace a trace-mode model writes (pixels + depth + gripper per step;
the gripper's mark first, then the object's and the place's), so a controller lifts it with the
calibration alone (`magma_core.geometry.lift_trace`) and executes the first future step.

Skills: pick and place (on a pad), stack (on a block), put in (a container), push (into a zone),
pick (lift and hold). Dwell phases (closing, releasing) count `infer` calls at `control_hz`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from magma_core.codecs.trace_text import DepthBinning, encode_traces, grid_traces_from_traces
from magma_core.errors import InvalidInputError
from magma_core.geometry import as_pose
from magma_core.policies.instruction import ParsedInstruction, ground, parse_instruction
from magma_core.policies.trace_plan import Keyframe, object_path, sample_plan, to_trace
from magma_core.som.propose import MarkInfo, ProposalConfig, ProposedMarks, propose_marks

HELD_PHASES = ("close", "lift", "transport", "lower", "release")
REQUIRED_KEYS = ("rgb", "intrinsics", "extrinsics", "ee_pose", "gripper", "instruction")


@dataclass(frozen=True)
class HeuristicConfig:
    """Speeds (m/s), heights and distances (m, base frame), step counts (calls at `control_hz`)."""

    n_steps: int = 16
    control_hz: float = 10.0
    fast_speed: float = 0.35
    slow_speed: float = 0.18
    push_speed: float = 0.12
    hover: float = 0.08  # above the object's top while approaching
    grasp_depth: float = 0.012  # TCP below the object's centre when closing
    min_grasp_height: float = 0.014  # TCP above the table: keeps the fingertips off it
    carry_clearance: float = 0.08  # carried object's bottom above the place's top
    place_clearance: float = 0.006
    retreat: float = 0.10
    close_steps: int = 5
    release_steps: int = 4
    recover_steps: int = 4
    reach_tolerance: float = 0.01
    fine_tolerance: float = 0.005
    settle_tolerance: float = 0.025  # stopped this close to a goal counts as there
    stall_motion: float = 0.0015  # TCP motion per call below which the arm has stopped
    pinch_fraction: float = 0.6  # opening / object width above which a grasp holds something
    lost_width: float = 0.006  # opening below which a held object has slipped out
    push_height: float = 0.018
    push_hover: float = 0.10
    finger_half_depth: float = 0.015
    push_standoff: float = 0.03
    push_done_radius: float = 0.012
    push_max_lateral: float = 0.018
    min_visible_fraction: float = 0.6  # of an object's unoccluded pixel count, to trust its mark
    place_visible_fraction: float = 0.85  # the same for the place
    max_attempts: int = 4
    proposal: ProposalConfig = field(default_factory=ProposalConfig)
    depth_binning: DepthBinning = field(default_factory=DepthBinning)

    def __post_init__(self) -> None:
        if not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise InvalidInputError(f"n_steps must be a positive integer, got {self.n_steps!r}")
        if not self.control_hz > 0:
            raise InvalidInputError(f"control_hz must be positive, got {self.control_hz!r}")


@dataclass
class _Thing:
    """What the policy remembers of the object or the place (base frame)."""

    centre: np.ndarray
    top: np.ndarray  # the mark's point: top face, container floor, patch centre
    rim_z: float  # highest point (a container's walls)
    size: tuple[float, float]
    yaw: float
    shape: str
    pixels: int

    @classmethod
    def of(cls, info: MarkInfo, proposal: ProposedMarks) -> "_Thing":
        ground_z = proposal.plane.z_at(info.position[0], info.position[1])
        return cls(info.position.copy(), info.top.copy(), ground_z + info.height, info.size, info.yaw, info.shape,
                   info.pixel_count)

    @property
    def half_height(self) -> float:
        return float(self.top[2] - self.centre[2]) if self.shape != "container" else 0.0

    @property
    def half_width(self) -> float:
        return float(max(self.size)) / 2.0


@dataclass
class _Memory:
    instruction: str = ""
    parsed: ParsedInstruction | None = None
    phase: str = "start"
    phase_steps: int = 0
    attempts: int = 0
    obj: _Thing | None = None
    place: _Thing | None = None
    full_pixels: int = 0
    place_full_pixels: int = 0
    grasp_offset: float = 0.0  # TCP z minus the object's centre z while held
    release_point: np.ndarray | None = None
    push_dir: np.ndarray | None = None
    gripper_cmd: float = 0.0
    last_tcp: np.ndarray | None = None
    yaw: float = 0.0


class HeuristicPolicy:
    """Closed-loop scripted policy on proposed marks; see the module docstring."""

    def __init__(self, config: HeuristicConfig = HeuristicConfig()) -> None:
        if not isinstance(config, HeuristicConfig):
            raise InvalidInputError(f"config must be a HeuristicConfig, got {type(config).__name__}")
        self.config = config
        self.memory = _Memory()

    def reset(self) -> None:
        self.memory = _Memory()

    @property
    def phase(self) -> str:
        return self.memory.phase

    # -- the Policy contract ---------------------------------------------------------------------
    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Plan from this observation. Returns a dict with

        marks (MarkSet), trace (list of 2.5D Trace: the gripper's mark 1 first, then the object's and
        the place's when seen; n_steps + 1 rows, row 0 now, one row per 1/control_hz s), trace_text
        (the same in the model's text format), target_object / target_place (mark ids or None when
        not seen in this frame), phase (str; "search" holds still when the instruction's things are
        not found), gripper_yaw (advised heading of the downward gripper, rad; a trace-only
        controller may ignore it) and proposal (the ProposedMarks with 3D facts, for overlays/logs).
        """
        _check_obs(obs)
        mem, cfg = self.memory, self.config
        if obs["instruction"] != mem.instruction or mem.parsed is None:
            self.reset()
            mem = self.memory
            mem.instruction = obs["instruction"]
            mem.parsed = parse_instruction(obs["instruction"])
        pose = as_pose(obs["ee_pose"])
        tcp = pose[:3]
        width = float(np.asarray(obs["gripper"], dtype=np.float64).reshape(-1)[0])
        proposal = propose_marks(obs, cfg.proposal)
        obj_info, place_info = self._ground(proposal)
        self._remember(proposal, obj_info, place_info, tcp)
        if mem.obj is None or (mem.parsed.place is not None and mem.place is None):
            keyframes = []
            mem.phase = "search"
        else:
            if mem.phase in ("start", "search"):
                self._go("approach")
            for _ in range(4):  # a phase may end at once; let the next one look too
                if not self._advance(tcp, width, obj_info):
                    break
            keyframes = self._plan(tcp)
        mem.phase_steps += 1
        mem.last_tcp = tcp.copy()
        plan = sample_plan(tcp, mem.gripper_cmd, keyframes, cfg.n_steps, 1.0 / cfg.control_hz)
        mem.gripper_cmd = float(plan.gripper[1])
        traces = self._traces(plan, obs, proposal, obj_info, place_info)
        width_px, height_px = proposal.image_size
        grid = grid_traces_from_traces(traces, width_px, height_px, cfg.depth_binning)
        return {
            "marks": proposal.marks,
            "trace": traces,
            "trace_text": encode_traces(grid, n_depth_bins=cfg.depth_binning.n_bins),
            "target_object": obj_info.mark_id if obj_info is not None else None,
            "target_place": place_info.mark_id if place_info is not None else None,
            "phase": mem.phase,
            "gripper_yaw": float(mem.yaw),
            "proposal": proposal,
        }

    # -- seeing ------------------------------------------------------------------------------------
    def _ground(self, proposal: ProposedMarks) -> tuple[MarkInfo | None, MarkInfo | None]:
        """The object and place marks in this frame; ties go to the one nearest where each was last seen."""
        mem = self.memory
        near_obj = mem.obj.centre if mem.obj is not None else None
        obj = ground(mem.parsed.object, proposal, near=near_obj)
        place = None
        if mem.parsed.place is not None:
            near_place = mem.place.centre if mem.place is not None else None
            place = ground(mem.parsed.place, proposal, near=near_place, exclude=(obj.mark_id,) if obj else ())
        return obj, place

    def _remember(self, proposal: ProposedMarks, obj: MarkInfo | None, place: MarkInfo | None, tcp: np.ndarray) -> None:
        """Update what is known of the object and the place, trusting only unoccluded, unheld sightings."""
        mem, cfg = self.memory, self.config
        # Near the fingers a sighting is partial (a shrunken footprint moves the estimated centre):
        # a pick trusts what it saw from above until the grasp is judged.
        settled = mem.phase in HELD_PHASES or (mem.phase == "descend" and mem.parsed.skill != "push")
        if obj is not None and not settled:
            # Beside the hand a partly hidden object's centre shifts: trust only a near-complete view there.
            near_hand = float(np.linalg.norm(obj.position[:2] - tcp[:2])) < 0.08
            fraction = cfg.place_visible_fraction if near_hand else cfg.min_visible_fraction
            if obj.pixel_count >= fraction * mem.full_pixels:
                mem.obj = _Thing.of(obj, proposal)
                mem.full_pixels = max(mem.full_pixels, obj.pixel_count)
        if mem.parsed.skill == "push" and mem.phase == "push" and mem.obj is not None and mem.push_dir is not None:
            # Hidden behind the hand, a pushed object is at least as far along as the fingers put it.
            d = mem.push_dir
            reach = float(tcp[:2] @ d) + mem.obj.half_width + cfg.finger_half_depth
            ahead = reach - float(mem.obj.centre[:2] @ d)
            if ahead > 0:
                mem.obj.centre[:2] += d * ahead
                mem.obj.top[:2] += d * ahead
        # The place is occluded by the hand while placing and by the arm while pushing: freeze it then.
        # Otherwise only a sighting about as complete as the best one so far moves it: the arm passing
        # over a pad hides part of it, and a half-seen pad's centre would drag the plan along.
        frozen = mem.phase in ("transport", "lower", "release", "retreat", "push", "done")
        if place is not None and (mem.place is None or not frozen):
            if place.pixel_count >= cfg.place_visible_fraction * mem.place_full_pixels:
                mem.place = _Thing.of(place, proposal)
                mem.place_full_pixels = max(mem.place_full_pixels, place.pixel_count)

    # -- deciding the phase ---------------------------------------------------------------------------
    def _go(self, phase: str) -> None:
        self.memory.phase = phase
        self.memory.phase_steps = 0

    def _advance(self, tcp: np.ndarray, width: float, obj_info: MarkInfo | None) -> bool:
        """Apply one phase transition if the observation calls for it; True if the phase changed."""
        if self.memory.parsed.skill == "push":
            return self._advance_push(tcp)
        return self._advance_pick(tcp, width, obj_info)

    def _advance_pick(self, tcp: np.ndarray, width: float, obj_info: MarkInfo | None) -> bool:
        mem, cfg = self.memory, self.config
        phase = mem.phase
        if phase in ("lift", "transport", "lower") and (width < cfg.lost_width or self._fell(obj_info, tcp)):
            self._go("recover")
            return True
        if phase == "approach":
            mem.yaw = mem.obj.yaw
            if self._arrived(tcp, self._hover_point(), cfg.reach_tolerance):
                self._go("descend")
                return True
        elif phase == "descend":
            if self._arrived(tcp, self._grasp_point(), cfg.fine_tolerance):
                self._go("close")
                return True
        elif phase == "close":
            if mem.phase_steps >= cfg.close_steps:
                mem.grasp_offset = float(tcp[2] - mem.obj.centre[2])
                pinched = width > max(cfg.pinch_fraction * min(mem.obj.size), cfg.lost_width)
                self._go("lift" if pinched else "recover")
                return True
        elif phase == "lift":
            if mem.place is None:
                return False  # "pick": hold it up
            if tcp[2] > self._carry_z() - 0.015 or self._stalled(tcp, self._carry_z(), axis=2):
                self._go("transport")
                return True
        elif phase == "transport":
            if self._arrived(tcp, self._above_place(), cfg.reach_tolerance):
                self._go("lower")
                return True
        elif phase == "lower":
            if self._arrived(tcp, self._place_point(), cfg.fine_tolerance):
                mem.release_point = tcp.copy()
                # Where it is let go is the best guess of where it lies until it is seen again.
                shift = np.array([tcp[0], tcp[1], 0.0]) - np.array([mem.obj.centre[0], mem.obj.centre[1], 0.0])
                shift[2] = tcp[2] - mem.grasp_offset - mem.obj.centre[2]
                mem.obj.centre, mem.obj.top = mem.obj.centre + shift, mem.obj.top + shift
                mem.full_pixels = 0
                self._go("release")
                return True
        elif phase == "release":
            if mem.phase_steps >= cfg.release_steps:
                self._go("retreat")
                return True
        elif phase == "retreat":
            top = mem.release_point[2] + cfg.retreat
            if tcp[2] > top - 0.02 or self._stalled(tcp, top, axis=2):
                self._go("done")
                return True
        elif phase == "recover":
            if mem.phase_steps >= cfg.recover_steps:
                mem.attempts += 1
                self._go("approach" if mem.attempts < cfg.max_attempts else "failed")
                return True
        elif phase == "done":
            if not self._placed() and mem.attempts + 1 < cfg.max_attempts:
                mem.attempts += 1
                self._go("approach")
                return True
        return False

    def _arrived(self, tcp: np.ndarray, goal: np.ndarray, tol: float) -> bool:
        """Within `tol` of `goal`, or stopped close to it: a controller with an offset (or a trace
        quantised by the text codec) may settle a little off the planned point, and waiting there
        forever would be worse than going on."""
        return _near(tcp, goal, tol) or self._stalled(tcp, goal)

    def _stalled(self, tcp: np.ndarray, goal, axis: int | None = None) -> bool:
        mem, cfg = self.memory, self.config
        if mem.last_tcp is None or mem.phase_steps < 2:
            return False
        still = float(np.linalg.norm(tcp - mem.last_tcp)) < cfg.stall_motion
        gap = abs(float(tcp[axis]) - float(goal)) if axis is not None else float(np.linalg.norm(tcp - np.asarray(goal)))
        return still and gap < cfg.settle_tolerance

    def _fell(self, obj_info: MarkInfo | None, tcp: np.ndarray) -> bool:
        """The object is seen resting on the table away from the hand."""
        if obj_info is None:
            return False
        far = np.linalg.norm(obj_info.position[:2] - tcp[:2]) > 0.05
        return bool(far and obj_info.height < 0.06 and self.memory.phase_steps > 2)

    def _placed(self) -> bool:
        mem = self.memory
        if mem.obj is None or mem.place is None:
            return True
        return bool(np.linalg.norm(mem.obj.centre[:2] - mem.place.centre[:2]) < max(mem.place.half_width, 0.02))

    def _advance_push(self, tcp: np.ndarray) -> bool:
        mem, cfg = self.memory, self.config
        obj_xy, d, dist = self._push_geometry()
        phase = mem.phase
        if phase in ("approach", "descend", "push") and dist < cfg.push_done_radius:
            mem.release_point = tcp.copy()
            self._go("retreat")
            return True
        if phase == "approach":
            if self._arrived(tcp, self._behind(cfg.push_hover), cfg.reach_tolerance):
                self._go("descend")
                return True
        elif phase == "descend":
            if self._arrived(tcp, self._behind(cfg.push_height), cfg.fine_tolerance):
                self._go("push")
                return True
        elif phase == "push":
            rel = tcp[:2] - obj_xy
            lateral = abs(float(d[0] * rel[1] - d[1] * rel[0]))
            along = float(rel @ d)
            if lateral > cfg.push_max_lateral or along > -mem.obj.half_width:
                self._go("lift")
                return True
        elif phase == "lift":
            if tcp[2] > cfg.push_hover - 0.02 or self._stalled(tcp, cfg.push_hover, axis=2):
                self._go("approach")
                return True
        elif phase == "retreat":
            if tcp[2] > cfg.push_hover - 0.02 or self._stalled(tcp, cfg.push_hover, axis=2):
                self._go("done")
                return True
        elif phase == "done":
            if dist > 2 * cfg.push_done_radius and mem.attempts + 1 < cfg.max_attempts:
                mem.attempts += 1
                self._go("approach")
                return True
        return False

    # -- planning --------------------------------------------------------------------------------------
    def _hover_point(self) -> np.ndarray:
        o = self.memory.obj
        return np.array([o.centre[0], o.centre[1], o.top[2] + self.config.hover])

    def _grasp_point(self) -> np.ndarray:
        o, cfg = self.memory.obj, self.config
        table_z = o.top[2] - (o.top[2] - o.centre[2]) * 2.0  # the object's bottom
        return np.array([o.centre[0], o.centre[1], max(o.centre[2] - cfg.grasp_depth, table_z + cfg.min_grasp_height)])

    def _support_z(self) -> float:
        return float(self.memory.place.top[2])

    def _carry_z(self) -> float:
        mem, cfg = self.memory, self.config
        clear = max(mem.place.rim_z, self._support_z())
        return clear + cfg.carry_clearance + mem.obj.half_height + mem.grasp_offset

    def _above_place(self) -> np.ndarray:
        c = self.memory.place.centre
        return np.array([c[0], c[1], self._carry_z()])

    def _place_point(self) -> np.ndarray:
        mem, cfg = self.memory, self.config
        c = mem.place.centre
        return np.array([c[0], c[1], self._support_z() + cfg.place_clearance + mem.obj.half_height + mem.grasp_offset])

    def _plan(self, tcp: np.ndarray) -> list[Keyframe]:
        if self.memory.parsed.skill == "push":
            return self._plan_push(tcp)
        return self._plan_pick(tcp)

    def _plan_pick(self, tcp: np.ndarray) -> list[Keyframe]:
        mem, cfg = self.memory, self.config
        fast, slow = cfg.fast_speed, cfg.slow_speed
        phase = mem.phase
        if phase in ("failed", "done"):
            return [Keyframe(tcp, 0.0, slow)]
        if phase == "recover":
            up = np.array([tcp[0], tcp[1], max(tcp[2], self._hover_point()[2])])
            return [Keyframe(up, 0.0, slow)]
        if phase == "retreat":
            r = mem.release_point
            return [Keyframe(r + [0.0, 0.0, cfg.retreat], 0.0, slow)]
        if phase == "release":
            left = max(cfg.release_steps - mem.phase_steps - 1, 0)
            r = mem.release_point
            return [Keyframe(r, 0.0, slow, dwell=left), Keyframe(r + [0.0, 0.0, cfg.retreat], 0.0, slow)]
        frames: list[Keyframe] = []
        grasp = self._grasp_point()
        if phase == "approach":
            frames.append(Keyframe(self._hover_point(), 0.0, fast))
        if phase in ("approach", "descend"):
            frames.append(Keyframe(grasp, 0.0, slow))
        if phase in ("approach", "descend", "close"):
            left = cfg.close_steps - (mem.phase_steps if phase == "close" else 0) - 1
            frames.append(Keyframe(grasp, 1.0, slow, dwell=max(left, 0)))
        start = tcp if phase == "lift" else grasp
        if mem.place is None:  # pick only: lift and hold
            frames.append(Keyframe([start[0], start[1], self._hover_point()[2]], 1.0, slow, carry="held"))
            return frames
        carry_z = self._carry_z()
        if phase in ("approach", "descend", "close", "lift"):
            frames.append(Keyframe([start[0], start[1], carry_z], 1.0, slow, carry="held"))
        if phase in ("approach", "descend", "close", "lift", "transport"):
            frames.append(Keyframe(self._above_place(), 1.0, fast, carry="held"))
        place = self._place_point()
        frames.append(Keyframe(place, 1.0, slow, carry="held"))
        frames.append(Keyframe(place, 0.0, slow, dwell=cfg.release_steps - 1))
        frames.append(Keyframe(place + [0.0, 0.0, cfg.retreat], 0.0, slow))
        return frames

    def _push_geometry(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The object's xy, the unit push direction (object -> place) and the remaining distance."""
        mem = self.memory
        obj_xy = mem.obj.centre[:2]
        to_goal = mem.place.centre[:2] - obj_xy
        dist = float(np.linalg.norm(to_goal))
        d = to_goal / dist if dist > 1e-6 else (mem.push_dir if mem.push_dir is not None else np.array([1.0, 0.0]))
        mem.push_dir = d
        mem.yaw = float(np.arctan2(d[1], d[0]))
        return obj_xy, d, dist

    def _behind(self, z: float) -> np.ndarray:
        mem, cfg = self.memory, self.config
        obj_xy, d, _ = self._push_geometry()
        xy = obj_xy - d * (mem.obj.half_width + cfg.finger_half_depth + cfg.push_standoff)
        return np.array([xy[0], xy[1], z])

    def _plan_push(self, tcp: np.ndarray) -> list[Keyframe]:
        mem, cfg = self.memory, self.config
        phase = mem.phase
        if phase in ("failed", "done"):
            return [Keyframe(tcp, 1.0, cfg.slow_speed)]
        if phase == "retreat":
            r = mem.release_point
            return [Keyframe([r[0], r[1], cfg.push_hover], 1.0, cfg.slow_speed)]
        if phase == "lift":
            return [Keyframe([tcp[0], tcp[1], cfg.push_hover], 1.0, cfg.slow_speed)]
        _, d, _ = self._push_geometry()
        goal_xy = mem.place.centre[:2]
        end_xy = goal_xy - d * (mem.obj.half_width + cfg.finger_half_depth)
        frames = []
        if phase == "approach":
            frames.append(Keyframe(self._behind(cfg.push_hover), 1.0, cfg.fast_speed))
        if phase in ("approach", "descend"):
            frames.append(Keyframe(self._behind(cfg.push_height), 1.0, cfg.slow_speed))
        else:
            # Back onto the pushing line at pushing height first: a TCP that drifted up or aside
            # (controller offset, a quantised trace) would otherwise slide over the object.
            along = float((tcp[:2] - goal_xy) @ d)
            end_along = -(mem.obj.half_width + cfg.finger_half_depth)
            advance = float(np.clip(end_along - along, 0.0, cfg.push_speed / cfg.control_hz))
            on_line = goal_xy + d * (along + advance)
            if np.linalg.norm(np.append(tcp[:2] - on_line, tcp[2] - cfg.push_height)) > cfg.fine_tolerance:
                frames.append(Keyframe([on_line[0], on_line[1], cfg.push_height], 1.0, cfg.slow_speed, carry="pushed"))
        frames.append(Keyframe([end_xy[0], end_xy[1], cfg.push_height], 1.0, cfg.push_speed, carry="pushed"))
        frames.append(Keyframe([end_xy[0], end_xy[1], cfg.push_hover], 1.0, cfg.slow_speed))
        return frames

    # -- output -------------------------------------------------------------------------------------
    def _traces(self, plan, obs, proposal: ProposedMarks, obj_info: MarkInfo | None, place_info: MarkInfo | None):
        K, T = obs["intrinsics"], obs["extrinsics"]
        mem, cfg = self.memory, self.config
        traces = [to_trace(proposal.gripper_id, plan.positions, plan.gripper, K, T)]
        if obj_info is not None:
            push = None
            if mem.phase in HELD_PHASES:
                grasp = np.array([0.0, 0.0, mem.obj.half_height - mem.grasp_offset])
            else:
                grasp = mem.obj.top - self._grasp_point()
            if mem.parsed.skill == "push" and mem.push_dir is not None:
                ahead = mem.push_dir * (mem.obj.half_width + cfg.finger_half_depth)
                push = np.array([ahead[0], ahead[1], obj_info.top[2] - cfg.push_height])
            path = object_path(plan, obj_info.top, grasp, push)
            traces.append(to_trace(obj_info.mark_id, path, plan.gripper, K, T))
        if place_info is not None:
            still = np.repeat(place_info.top[None, :], len(plan.positions), axis=0)
            traces.append(to_trace(place_info.mark_id, still, plan.gripper, K, T))
        return traces


def _near(tcp: np.ndarray, goal: np.ndarray, tol: float) -> bool:
    return float(np.linalg.norm(np.asarray(tcp)[:3] - np.asarray(goal))) < tol


def _check_obs(obs: Any) -> None:
    if not isinstance(obs, dict):
        raise InvalidInputError(f"observation must be a dict, got {type(obs).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obs or obs[k] is None]
    if missing:
        raise InvalidInputError(f"observation lacks {missing}; HeuristicPolicy needs {list(REQUIRED_KEYS)}")
    if not isinstance(obs["instruction"], str) or not obs["instruction"].strip():
        raise InvalidInputError("observation 'instruction' must be a non-empty string")

"""TabletopEnv: a Franka Panda at a table in PyBullet, with a gymnasium-style reset/step API.

Observations hold only what a real robot has (images, camera parameters, proprioception,
the instruction); simulator state goes to ``info["privileged"]`` for experts, success checks
and labels. Everything is deterministic per seed: ``reset(seed)`` rebuilds the world from scratch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pybullet as p

from magma_core.data.episode import CameraParams
from magma_core.errors import InvalidInputError, MagmaError
from magma_sim.camera import CameraConfig, WristCameraConfig, camera_params, render
from magma_sim.control import ACTION_SIZES, check_control, target_from_action, validate_action
from magma_sim.robot import GRIPPER_LINKS, Panda, data_path
from magma_sim.scene import SceneBuilder
from magma_sim.tasks import Task, make_task

PHYSICS_HZ = 240
# Physics steps after spawning, so blocks are settled before the first observation.
SETTLE_STEPS = 24
OBS_KEYS = ("rgb", "depth", "intrinsics", "extrinsics", "ee_pose", "gripper", "joints", "instruction")
WRIST_KEYS = ("wrist_rgb", "wrist_depth", "wrist_intrinsics", "wrist_extrinsics")


def _image_size(size) -> tuple[int, int]:
    try:
        w, h = (size, size) if np.isscalar(size) else tuple(size)
        ok = int(w) == w and int(h) == h and 8 <= w <= 2048 and 8 <= h <= 2048
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidInputError(f"image_size must be an int or (width, height) between 8 and 2048, got {size!r}")
    return int(w), int(h)


class TabletopEnv:
    """One task's tabletop scene. See ``magma_sim.control`` for the two action formats.

    Args:
        task: a name from ``magma_sim.tasks.TASKS``.
        image_size: int or (width, height) of the camera images.
        camera: the static front camera.
        wrist_camera: False, True (default mount) or a WristCameraConfig.
        control: "ee_delta" (7 numbers) or "waypoint" (8 numbers).
        control_hz: control rate; must divide the 240 Hz physics rate.
        max_steps: truncation horizon; default the task's horizon in seconds times control_hz.
        render: False skips all images (rgb/depth keys absent): for experts, tests and benchmarks.
        segmentation: also render the front camera's segmentation into info["privileged"].
        terminate_on_success: end the episode at the first step the task's success predicate holds.
    """

    def __init__(self, task: str, *, image_size=128, camera: CameraConfig = CameraConfig(),
                 wrist_camera: bool | WristCameraConfig = False, control: str = "ee_delta", control_hz: int = 10,
                 max_steps: int | None = None, render: bool = True, segmentation: bool = False,
                 terminate_on_success: bool = True) -> None:
        self.task_name = task
        self._task_probe = make_task(task)  # validates the name before any simulator exists
        self.control = check_control(control)
        if not isinstance(control_hz, (int, np.integer)) or control_hz <= 0 or PHYSICS_HZ % control_hz:
            raise InvalidInputError(f"control_hz must divide {PHYSICS_HZ} (e.g. 10, 20, 30), got {control_hz!r}")
        self.control_hz = int(control_hz)
        self.substeps = PHYSICS_HZ // self.control_hz
        self.width, self.height = _image_size(image_size)
        self.camera = camera
        self.wrist = WristCameraConfig() if wrist_camera is True else (wrist_camera or None)
        self.max_steps = int(max_steps) if max_steps is not None else int(round(self._task_probe.horizon_s * control_hz))
        if self.max_steps <= 0:
            raise InvalidInputError(f"max_steps must be positive, got {max_steps}")
        self.render_images = bool(render)
        self.segmentation = bool(segmentation)
        self.terminate_on_success = terminate_on_success
        self.action_size = ACTION_SIZES[self.control]
        self.camera_params: CameraParams = camera_params(camera.name, self.width, self.height, camera.fov_deg,
                                                         camera.extrinsics())
        self.client = p.connect(p.DIRECT)
        self.task: Task | None = None
        self.robot: Panda | None = None
        self.seed: int | None = None
        self.steps = 0
        self.gripper_command = 0.0
        self._segmentation: np.ndarray | None = None
        self._last_target = np.zeros(7)
        self._seed_rng = np.random.default_rng()

    # -- episode control ------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Rebuild the world for `seed` (a fresh random one if None) and return (obs, info)."""
        if self.client < 0:
            raise MagmaError("environment is closed")
        if seed is None:
            seed = int(self._seed_rng.integers(2**31))
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        c = self.client
        p.resetSimulation(physicsClientId=c)
        p.setPhysicsEngineParameter(fixedTimeStep=1.0 / PHYSICS_HZ, numSolverIterations=50,
                                    deterministicOverlappingPairs=1, physicsClientId=c)
        p.setGravity(0.0, 0.0, -9.81, physicsClientId=c)
        p.setAdditionalSearchPath(data_path(), physicsClientId=c)
        builder = SceneBuilder(c)
        builder.add_table()
        self.robot = Panda(c)
        self.task = make_task(self.task_name)
        self.task.build(builder, np.random.default_rng(self.seed))
        for _ in range(SETTLE_STEPS):
            p.stepSimulation(physicsClientId=c)
        self.steps = 0
        self.gripper_command = 0.0
        self._last_target = self.robot.tcp_pose()
        return self._observe(), self._info(success=False, clipped=False)

    def step(self, action) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Apply one command for 1/control_hz s of physics. Bad actions raise before anything moves."""
        if self.client < 0:
            raise MagmaError("environment is closed")
        if self.task is None:
            raise MagmaError("call reset() before step()")
        action = validate_action(action, self.control)
        tcp = self.robot.tcp_pose()
        position, quat, grip, clipped = target_from_action(action, self.control, tcp)
        self.robot.command_joints(self.robot.inverse_kinematics(position, quat))
        self.robot.command_gripper(grip)
        self.gripper_command = grip
        self._last_target = np.concatenate([position, quat])
        for _ in range(self.substeps):
            p.stepSimulation(physicsClientId=self.client)
        self.steps += 1
        self.task.on_step()
        success = self.task.is_success(self.robot)
        terminated = bool(success and self.terminate_on_success)
        truncated = self.steps >= self.max_steps and not terminated
        return self._observe(), float(success), terminated, truncated, self._info(success, clipped)

    def close(self) -> None:
        if self.client >= 0:
            p.disconnect(self.client)
            self.client = -1

    def __enter__(self) -> "TabletopEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: pybullet may already be gone
            pass

    # -- what the policy and the expert see -------------------------------------------------------
    def _observe(self) -> dict[str, Any]:
        robot = self.robot
        obs: dict[str, Any] = {
            "intrinsics": self.camera_params.intrinsics.copy(),
            "extrinsics": self.camera_params.extrinsics.copy(),
            "ee_pose": robot.tcp_pose(),
            "gripper": np.array([robot.gripper_opening()]),
            "joints": robot.joint_positions(),
            "instruction": self.task.instruction,
        }
        self._segmentation = None
        if self.render_images:
            cam = self.camera
            rgb, depth, seg = render(self.client, self.width, self.height, cam.fov_deg, cam.near, cam.far,
                                     self.camera_params.extrinsics, segmentation=self.segmentation)
            obs["rgb"], obs["depth"] = rgb, depth
            self._segmentation = seg
            if self.wrist is not None:
                params = self.wrist_camera_params()
                w_rgb, w_depth, _ = render(self.client, self.width, self.height, self.wrist.fov_deg, self.wrist.near,
                                           self.wrist.far, params.extrinsics)
                obs.update(wrist_rgb=w_rgb, wrist_depth=w_depth, wrist_intrinsics=params.intrinsics,
                           wrist_extrinsics=params.extrinsics)
        return obs

    def wrist_camera_params(self) -> CameraParams:
        """The wrist camera's parameters now (its extrinsics follow the hand)."""
        if self.wrist is None:
            raise MagmaError("this environment has no wrist camera (wrist_camera=False)")
        extrinsics = self.robot.hand_pose_matrix() @ self.wrist.hand_to_camera()
        return camera_params(self.wrist.name, self.width, self.height, self.wrist.fov_deg, extrinsics)

    def _info(self, success: bool, clipped: bool) -> dict[str, Any]:
        return {
            "task": self.task_name,
            "seed": self.seed,
            "step": self.steps,
            "success": bool(success),
            "action_clipped": clipped,
            "gripper_command": self.gripper_command,
            "target_pose": self._last_target.copy(),
            "privileged": self.privileged_state(),
        }

    def privileged_state(self) -> dict[str, Any]:
        """Simulator ground truth: object poses and ids, roles, marked points, (segmentation)."""
        objects = {}
        for name, obj in self.task.objects.items():
            pos, quat = obj.pose(self.client)
            objects[name] = {"body_id": obj.body_id, "kind": obj.kind, "color": obj.color, "position": pos,
                             "orientation": quat, "half_extents": obj.half_extents.copy(), "static": obj.static}
        state = {
            "objects": objects,
            "roles": self.task.roles(),
            "mark_names": ["gripper"] + [o.name for o in self.task.mark_objects()],
            "mark_points": self.mark_points(),
            "robot_body_id": self.robot.body_id,
            "gripper_links": GRIPPER_LINKS,
            "task_extras": self.task.extras(),
        }
        if self._segmentation is not None:
            state["segmentation"] = self._segmentation
        return state

    def mark_points(self) -> np.ndarray:
        """(M, 3) base-frame points of the ground-truth marks: TCP, then each task object's marked point."""
        points = [self.robot.tcp_pose()[:3]]
        for obj in self.task.mark_objects():
            pos, quat = obj.pose(self.client)
            R = np.asarray(p.getMatrixFromQuaternion(quat), dtype=np.float64).reshape(3, 3)
            points.append(pos + R @ obj.top_point_local())
        return np.array(points)

    def render_segmentation(self) -> np.ndarray:
        """Front-camera segmentation now: body id + ((link index + 1) << 24), -1 for nothing."""
        cam = self.camera
        _, _, seg = render(self.client, self.width, self.height, cam.fov_deg, cam.near, cam.far,
                           self.camera_params.extrinsics, segmentation=True)
        return seg

    def teleport(self, name: str, position, orientation=(0.0, 0.0, 0.0, 1.0)) -> None:
        """Move an object (privileged access, for tests and hand-made scenes) and stop it."""
        obj = self.task.objects.get(name) if self.task else None
        if obj is None:
            known = ", ".join(self.task.objects) if self.task else "(call reset first)"
            raise InvalidInputError(f"no object {name!r} in the scene; objects: {known}")
        p.resetBasePositionAndOrientation(obj.body_id, list(position), list(orientation), physicsClientId=self.client)
        p.resetBaseVelocity(obj.body_id, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)


def make_env(task: str, **kwargs) -> TabletopEnv:
    """Build a TabletopEnv for `task` (see TabletopEnv for the keyword arguments)."""
    return TabletopEnv(task, **kwargs)

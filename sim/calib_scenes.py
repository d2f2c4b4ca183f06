"""Calibration boards rendered by PyBullet at known poses: ground truth for magma_calibration.

The scene is one textured board in an otherwise empty DIRECT world, rendered with ER_TINY_RENDERER.
Two details of that renderer shape the code:
- it interpolates texture coordinates affinely in screen space (not perspective-correct), so the
  board is a mesh with a vertex at every square corner: square edges then lie on triangle edges,
  where the affine error vanishes, and the corners land exactly where the camera model puts them;
- it does not anti-alias, so each image is rendered ``supersample`` times larger and shrunk by
  pixel-area averaging, which is what a real sensor's pixels do. The intrinsics of the shrunk image
  follow from the renderer's pixel convention (measured: column i, row j of a W x H render sees the
  pinhole ray through x = i - W/2, y = j - H/2 + 1 in focal units).

Hand-eye samples come from end-effector poses chosen so the board stays in view, with the board
moved (eye-to-hand: board held by the gripper, camera fixed) or the camera moved (eye-in-hand:
camera on the wrist, board on the table) accordingly; no arm is simulated, since the calibration
only ever sees the images and the recorded end-effector poses.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pybullet as p

from magma_calibration.boards import BoardSpec
from magma_calibration.samples import SampleWriter
from magma_calibration.transforms import invert_transform, make_transform, matrix_to_quat, rotvec_to_matrix
from magma_core.errors import InvalidInputError

_CV_TO_GL = np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes (y down, z forward) -> OpenGL (y up, z back)


@dataclass(frozen=True)
class SimCamera:
    """A pinhole camera rendered by PyBullet: size in pixels and vertical field of view."""

    width: int = 640
    height: int = 480
    fov_deg: float = 50.0
    near: float = 0.05
    far: float = 5.0

    def intrinsics(self, supersample: int = 1) -> np.ndarray:
        """True 3x3 K of images rendered ``supersample`` times larger and area-averaged back to this size."""
        s = int(supersample)
        f = (self.height / 2.0) / np.tan(np.radians(self.fov_deg) / 2.0)
        # A big-image pixel centre k maps to (k + 0.5) / s - 0.5 in the small image.
        cx = (s * self.width / 2.0 + 0.5) / s - 0.5
        cy = (s * self.height / 2.0 - 1.0 + 0.5) / s - 0.5
        return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """T_base_cam (OpenCV axes) of a camera at `eye` looking at `target`, image top toward `up`."""
    z = np.subtract(target, eye).astype(np.float64)
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        raise InvalidInputError("look_at: viewing direction parallel to up")
    x /= np.linalg.norm(x)
    return make_transform(np.stack([x, np.cross(z, x), z], axis=1), eye)


class BoardScene:
    """A PyBullet DIRECT world with one calibration board; move it, render it from any camera pose."""

    def __init__(self, board: BoardSpec, px_per_square: int = 40):
        self.board = board
        self.client = p.connect(p.DIRECT)
        try:
            self.body = self._build_board(px_per_square)
        except Exception:
            p.disconnect(self.client)
            raise

    def _build_board(self, px_per_square: int) -> int:
        margin = 1
        image = self.board.pattern_image(px_per_square, margin_squares=margin)
        nx, ny = self.board.squares()
        mx, my = nx + 2 * margin, ny + 2 * margin
        origin = self.board.squares_origin() - np.array([margin, margin, 0.0]) * self.board.square
        jj, ii = np.mgrid[0:my + 1, 0:mx + 1]
        vertices = np.stack([origin[0] + ii.ravel() * self.board.square, origin[1] + jj.ravel() * self.board.square,
                             np.zeros(ii.size)], axis=1)
        uvs = np.stack([ii.ravel() / mx, 1.0 - jj.ravel() / my], axis=1)  # texture rows run bottom-up
        indices = []
        for j in range(my):
            for i in range(mx):
                a = j * (mx + 1) + i
                b, c, d = a + 1, a + mx + 1, a + mx + 2
                indices += [a, b, d, a, d, c, a, d, b, a, c, d]  # both windings: visible from either side
        shape = p.createVisualShape(p.GEOM_MESH, vertices=vertices.tolist(), indices=indices, uvs=uvs.tolist(),
                                    normals=[[0.0, 0.0, -1.0]] * len(vertices), physicsClientId=self.client)
        body = p.createMultiBody(baseMass=0, baseVisualShapeIndex=shape, physicsClientId=self.client)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "board.png")
            cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
            texture = p.loadTexture(path, physicsClientId=self.client)
        p.changeVisualShape(body, -1, textureUniqueId=texture, rgbaColor=[1, 1, 1, 1], physicsClientId=self.client)
        return body

    def set_board_pose(self, T_base_board: np.ndarray) -> None:
        T = np.asarray(T_base_board, dtype=np.float64)
        p.resetBasePositionAndOrientation(self.body, T[:3, 3].tolist(), matrix_to_quat(T[:3, :3]).tolist(),
                                          physicsClientId=self.client)

    def render(self, T_base_cam: np.ndarray, camera: SimCamera, supersample: int = 3, noise_std: float = 0.0,
               rng: np.random.Generator | None = None) -> np.ndarray:
        """RGB uint8 image (camera.height, camera.width, 3) with Gaussian pixel noise of `noise_std` grey levels."""
        s = int(supersample)
        if s < 1:
            raise InvalidInputError(f"supersample must be >= 1, got {supersample}")
        width, height = camera.width * s, camera.height * s
        cam_to_base = np.eye(4)
        cam_to_base[:3, :3] = np.asarray(T_base_cam)[:3, :3] @ _CV_TO_GL
        cam_to_base[:3, 3] = np.asarray(T_base_cam)[:3, 3]
        view = np.linalg.inv(cam_to_base).T.reshape(-1).tolist()
        proj = p.computeProjectionMatrixFOV(fov=camera.fov_deg, aspect=camera.width / camera.height,
                                            nearVal=camera.near, farVal=camera.far)
        # Light from behind the camera and mostly ambient: an evenly lit board, no shadows.
        light = (-np.asarray(T_base_cam)[:3, 2]).tolist()
        _, _, rgba, _, _ = p.getCameraImage(width, height, viewMatrix=view, projectionMatrix=proj,
                                            renderer=p.ER_TINY_RENDERER, flags=p.ER_NO_SEGMENTATION_MASK,
                                            lightDirection=light, shadow=0, lightAmbientCoeff=0.8,
                                            lightDiffuseCoeff=0.2, lightSpecularCoeff=0.0, physicsClientId=self.client)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3]
        if s > 1:
            rgb = cv2.resize(rgb, (camera.width, camera.height), interpolation=cv2.INTER_AREA)
        if noise_std > 0:
            rng = rng or np.random.default_rng()
            noisy = rgb.astype(np.float32) + rng.normal(0.0, noise_std, rgb.shape[:2])[:, :, None]
            rgb = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb)

    def close(self) -> None:
        if self.client is not None and p.isConnected(self.client):
            p.disconnect(self.client)
        self.client = None

    def __enter__(self) -> "BoardScene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def board_in_view(board: BoardSpec, T_base_board: np.ndarray, T_base_cam: np.ndarray, camera: SimCamera,
                  margin_px: float = 12.0, max_tilt_deg: float = 55.0) -> bool:
    """Whether every board corner (with a margin) projects inside the image and the board faces the camera."""
    T_cam_board = invert_transform(T_base_cam) @ T_base_board
    nx, ny = board.squares()
    o = board.squares_origin()
    outline = o + np.array([[0, 0, 0], [nx, 0, 0], [0, ny, 0], [nx, ny, 0]], dtype=np.float64) * board.square
    pts = outline @ T_cam_board[:3, :3].T + T_cam_board[:3, 3]
    if np.any(pts[:, 2] <= camera.near):
        return False
    # The camera must see the front: the board's z axis (into the board) points away from it.
    to_board = T_cam_board[:3, 3] / np.linalg.norm(T_cam_board[:3, 3])
    if np.degrees(np.arccos(np.clip(T_cam_board[:3, 2] @ to_board, -1, 1))) > max_tilt_deg:
        return False
    K = camera.intrinsics()
    uv = pts[:, :2] / pts[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
    return bool(np.all((uv >= margin_px) & (uv <= [camera.width - 1 - margin_px, camera.height - 1 - margin_px])))


def board_centre(board: BoardSpec) -> np.ndarray:
    nx, ny = board.squares()
    return board.squares_origin() + np.array([nx / 2.0, ny / 2.0, 0.0]) * board.square


def random_view_of_board(board: BoardSpec, T_base_board: np.ndarray, camera: SimCamera, rng: np.random.Generator,
                         distance=(0.35, 0.7), max_polar_deg: float = 45.0, spread: float = 1.0,
                         tries: int = 1000) -> np.ndarray:
    """A camera pose T_base_cam that sees the whole board from a random direction, distance and roll.

    The board lands anywhere in the image where it fits (`spread` < 1 keeps it nearer the centre),
    so a set of views covers the image edges too: lens distortion is only measured where the
    board has been.
    """
    centre = T_base_board[:3, :3] @ board_centre(board) + T_base_board[:3, 3]
    normal_out = -T_base_board[:3, 2]  # the side the printed face looks toward
    K_inv = np.linalg.inv(camera.intrinsics())
    size = np.array([camera.width, camera.height], dtype=np.float64)
    for _ in range(tries):
        polar = np.radians(rng.uniform(0.0, max_polar_deg))
        azimuth = rng.uniform(0.0, 2 * np.pi)
        tilt_axis = T_base_board[:3, :3] @ np.array([np.cos(azimuth), np.sin(azimuth), 0.0])
        direction = rotvec_to_matrix(tilt_axis * polar) @ normal_out
        eye = centre + direction * rng.uniform(*distance)
        roll = rng.uniform(-np.pi, np.pi)
        up = rotvec_to_matrix(direction * roll) @ _any_perpendicular(direction)
        T = look_at(eye, centre, up)
        # Turn the camera about its centre so the board centre moves from the image centre to `pixel`,
        # chosen where the board still fits, with a bias toward the edges.
        half_extent = _projected_half_extent(board, T_base_board, T, camera)
        room = size / 2 - half_extent - 16.0
        if np.any(room <= 0):
            continue
        offset = rng.uniform(-1.0, 1.0, 2)
        pixel = size / 2 + np.sign(offset) * np.sqrt(np.abs(offset)) * room * spread
        ray = K_inv @ np.array([pixel[0], pixel[1], 1.0])
        ray /= np.linalg.norm(ray)
        axis = np.cross(ray, [0.0, 0.0, 1.0])
        angle = np.arcsin(min(np.linalg.norm(axis), 1.0))
        if angle > 1e-9:
            T[:3, :3] = T[:3, :3] @ rotvec_to_matrix(axis / np.linalg.norm(axis) * angle)
        if board_in_view(board, T_base_board, T, camera):
            return T
    raise InvalidInputError("could not find a camera pose that sees the whole board; use a smaller board or a wider camera")


def _projected_half_extent(board: BoardSpec, T_base_board: np.ndarray, T_base_cam: np.ndarray, camera: SimCamera) -> np.ndarray:
    """Half width and height (pixels) of the board's bounding box as seen from T_base_cam."""
    nx, ny = board.squares()
    outline = board.squares_origin() + np.array([[0, 0, 0], [nx, 0, 0], [0, ny, 0], [nx, ny, 0]], dtype=np.float64) * board.square
    T = invert_transform(T_base_cam) @ T_base_board
    pts = outline @ T[:3, :3].T + T[:3, 3]
    uv = pts[:, :2] / pts[:, 2:] * np.diag(camera.intrinsics())[:2]
    return (uv.max(axis=0) - uv.min(axis=0)) / 2


def _any_perpendicular(v: np.ndarray) -> np.ndarray:
    a = np.array([1.0, 0.0, 0.0]) if abs(v[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    w = np.cross(v, a)
    return w / np.linalg.norm(w)


def render_intrinsics_views(board: BoardSpec, camera: SimCamera, n_views: int, seed: int = 0, supersample: int = 3,
                            noise_std: float = 2.0) -> tuple[list[np.ndarray], np.ndarray]:
    """`n_views` RGB images of the board from random poses and the true K of those images."""
    rng = np.random.default_rng(seed)
    T_base_board = np.eye(4)
    images = []
    with BoardScene(board) as scene:
        scene.set_board_pose(T_base_board)
        for _ in range(n_views):
            T_base_cam = random_view_of_board(board, T_base_board, camera, rng)
            images.append(scene.render(T_base_cam, camera, supersample, noise_std, rng))
    return images, camera.intrinsics(supersample)


# ----------------------------------------------------------------------------- hand-eye


@dataclass(frozen=True)
class HandEyeTruth:
    """What the simulated rig really was. ``camera`` is T_base_cam (eye_to_hand) or T_ee_cam (eye_in_hand);
    ``target`` is T_ee_board (eye_to_hand) or T_base_board (eye_in_hand)."""

    mode: str
    camera: np.ndarray
    target: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]
    ee_poses: list[np.ndarray]

    def to_json(self) -> dict:
        return {"mode": self.mode, "camera": self.camera.tolist(), "target": self.target.tolist(), "K": self.K.tolist(),
                "image_size": list(self.image_size), "ee_poses": [T.tolist() for T in self.ee_poses]}


# The rigs: a front camera watching the workspace, a board bolted to the flange facing outward
# (turned and offset so no axis of the truth is trivially aligned), a wrist camera, a board on the table.
FIXED_CAMERA = look_at((0.95, 0.25, 0.60), (0.45, 0.0, 0.22))
BOARD_ON_FLANGE = make_transform(rotvec_to_matrix([np.pi, 0.0, 0.0]) @ rotvec_to_matrix([0.0, 0.0, np.radians(12.0)]),
                                 [-0.09, 0.06, 0.015])
WRIST_CAMERA = make_transform(rotvec_to_matrix([0.0, 0.0, np.pi / 2]) @ rotvec_to_matrix([np.radians(-15.0), 0.0, 0.0]),
                              [0.06, -0.01, 0.035])
BOARD_ON_TABLE = make_transform(rotvec_to_matrix([np.pi, 0.0, 0.0]) @ rotvec_to_matrix([0.0, 0.0, np.radians(20.0)]),
                                [0.40, 0.05, 0.0])


def collect_handeye_samples(out_dir: str | os.PathLike, mode: str, board: BoardSpec, camera: SimCamera = SimCamera(),
                            n_samples: int = 15, seed: int = 0, supersample: int = 3, noise_std: float = 2.0,
                            max_rotation_deg: float = 35.0) -> HandEyeTruth:
    """Render a hand-eye samples folder (magma_calibration.samples format) and return the truth.

    The truth is also written to ``ground_truth.json`` in the folder (the samples reader ignores it).
    """
    if mode not in ("eye_to_hand", "eye_in_hand"):
        raise InvalidInputError(f"mode must be eye_to_hand or eye_in_hand, got {mode!r}")
    rng = np.random.default_rng(seed)
    writer = SampleWriter(out_dir, base_frame="base", ee_frame="ee", camera_name="sim_camera", overwrite=True)
    ee_poses = []
    with BoardScene(board) as scene:
        if mode == "eye_in_hand":
            scene.set_board_pose(BOARD_ON_TABLE)
        while len(ee_poses) < n_samples:
            if mode == "eye_to_hand":
                T_base_board = _random_held_board(board, rng, max_rotation_deg)
                if not board_in_view(board, T_base_board, FIXED_CAMERA, camera):
                    continue
                T_base_ee = T_base_board @ invert_transform(BOARD_ON_FLANGE)
                scene.set_board_pose(T_base_board)
                image = scene.render(FIXED_CAMERA, camera, supersample, noise_std, rng)
            else:
                T_base_cam = random_view_of_board(board, BOARD_ON_TABLE, camera, rng, distance=(0.3, 0.55),
                                                  max_polar_deg=max_rotation_deg)
                T_base_ee = T_base_cam @ invert_transform(WRIST_CAMERA)
                image = scene.render(T_base_cam, camera, supersample, noise_std, rng)
            writer.add(image, T_base_ee)
            ee_poses.append(T_base_ee)
    truth = HandEyeTruth(mode, FIXED_CAMERA if mode == "eye_to_hand" else WRIST_CAMERA,
                         BOARD_ON_FLANGE if mode == "eye_to_hand" else BOARD_ON_TABLE,
                         camera.intrinsics(supersample), (camera.width, camera.height), ee_poses)
    (Path(out_dir) / "ground_truth.json").write_text(json.dumps(truth.to_json(), indent=1))
    return truth


def _random_held_board(board: BoardSpec, rng: np.random.Generator, max_rotation_deg: float) -> np.ndarray:
    """A board pose in front of the fixed camera: facing it, tilted and spun by random amounts."""
    centre = np.array([0.45, 0.0, 0.25]) + rng.uniform([-0.08, -0.12, -0.06], [0.08, 0.12, 0.08])
    facing = look_at(FIXED_CAMERA[:3, 3], centre)[:3, :3]  # z from the camera to the board: the board's z
    tilt = rotvec_to_matrix(_random_unit(rng) * np.radians(rng.uniform(0.0, max_rotation_deg)))
    R = tilt @ facing
    # Put the board centre (not its origin corner) at `centre`.
    return make_transform(R, centre - R @ board_centre(board))


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


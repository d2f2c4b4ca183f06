"""Hand-eye calibration: where the camera is relative to the robot, from board views at known robot poses.

Two rigs, one equation. With A_i the robot pose of sample i and B_i = T_cam_board seen in image i:
- eye_to_hand (fixed camera, board held by the gripper): A_i = T_base_ee, unknowns X = T_base_cam and
  Y = T_ee_board;
- eye_in_hand (camera on the wrist, board fixed on the table): A_i = T_ee_base (the inverse of the
  recorded pose), unknowns X = T_ee_cam and Y = T_base_board;
and in both ``A_i @ Y = X @ B_i``.

Method (``METHOD`` below):
1. Reject motion that cannot determine X before solving (too few samples, pure translation, every
   rotation about one axis): `check_motion`.
2. Board poses B_i by PnP (IPPE for planar targets, then Levenberg-Marquardt).
3. Closed form: over every pair of samples, ``(A_i A_j^-1) X = X (B_i B_j^-1)``. The rotation
   axes of both sides are related by R_X, found by orthogonal Procrustes on the rotation vectors
   (Park & Martin's least squares); the translation then solves a linear system. Y is the rotation
   average of ``A_i^-1 X B_i``.
4. Refinement: Levenberg-Marquardt over X and Y (12 parameters) minimising the reprojection error of
   every detected corner through the whole chain ``X^-1 A_i Y``: the maximum-likelihood estimate
   under pixel noise, which is what a robot's accurate joint encoders leave as the main error.
OpenCV's calibrateHandEye / calibrateRobotWorldHandEye are not in the OpenCV 5.0 Python build this
project uses (only their constants are), and step 4 subsumes what they would provide.

Residuals: for each sample, the board pose predicted by the chain versus the one PnP measured,
compared in the camera frame (translation in mm, rotation in degrees), plus the chain's reprojection
error in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from magma_calibration.boards import BoardDetection, BoardSpec, detect_board
from magma_calibration.camera_info import CameraInfo
from magma_calibration.errors import BoardNotFoundError, CalibrationError, DegenerateMotionError, TooFewViewsError
from magma_calibration.extrinsics import Extrinsics
from magma_calibration.images import check_one_size, read_gray
from magma_calibration.projection import _distort, as_distortion, as_intrinsics
from magma_calibration.samples import SampleSet
from magma_calibration.transforms import (invert_transform, make_transform, matrix_to_rotvec, nearest_rotation,
                                          rotation_angle_deg, rotvec_to_matrix)

MODES = ("eye_to_hand", "eye_in_hand")
MIN_SAMPLES = 3  # two independent motions
METHOD = ("closed-form AX=XB over all sample pairs (rotation by Procrustes on rotation vectors, translation by "
          "linear least squares), refined by Levenberg-Marquardt on the board-corner reprojection error of X and Y jointly")


@dataclass
class MotionStats:
    max_rotation_deg: float
    axis_spread_deg: float
    max_translation_m: float


@dataclass
class HandEyeResult:
    """X (camera transform) and Y (board transform) as named in the module docstring, with residuals."""

    mode: str
    camera: np.ndarray  # T_base_cam (eye_to_hand) or T_ee_cam (eye_in_hand)
    target: np.ndarray  # T_ee_board (eye_to_hand) or T_base_board (eye_in_hand)
    residuals: dict[str, float]
    per_sample: list[dict]
    motion: MotionStats
    method: str = METHOD
    warnings: list[str] = field(default_factory=list)

    def to_extrinsics(self, base_frame: str = "base", ee_frame: str = "ee", camera_frame: str = "camera_optical_frame") -> Extrinsics:
        eye_to_hand = self.mode == "eye_to_hand"
        return Extrinsics(parent_frame=base_frame if eye_to_hand else ee_frame, child_frame=camera_frame,
                          transform=self.camera, mode=self.mode, method=self.method, residuals=dict(self.residuals),
                          num_samples=len(self.per_sample), target_transform=self.target,
                          target_parent_frame=ee_frame if eye_to_hand else base_frame)


def check_motion(ee_poses: Sequence[np.ndarray], min_rotation_deg: float = 5.0, min_axis_spread_deg: float = 5.0) -> MotionStats:
    """Refuse robot motion that leaves the hand-eye transform undetermined; return what was measured.

    The camera translation is only observable through rotations, and along a single rotation axis
    it stays unknown, so the samples need rotations of several degrees about at least two axes.
    """
    poses = [np.asarray(T, dtype=np.float64) for T in ee_poses]
    if len(poses) < MIN_SAMPLES:
        raise TooFewViewsError(f"hand-eye needs at least {MIN_SAMPLES} samples with the board visible (15 or more recommended), got {len(poses)}")
    R = np.stack([T[:3, :3] for T in poses])
    rotvecs, max_translation = [], 0.0
    for i in range(len(poses)):
        for j in range(i + 1, len(poses)):
            rotvecs.append(matrix_to_rotvec(R[i] @ R[j].T))
            max_translation = max(max_translation, float(np.linalg.norm(poses[i][:3, 3] - poses[j][:3, 3])))
    rotvecs = np.array(rotvecs)
    angles = np.degrees(np.linalg.norm(rotvecs, axis=1))
    max_rot = float(angles.max())
    if max_rot < min_rotation_deg:
        kind = "pure translation" if max_rot < 0.1 else "too little rotation"
        raise DegenerateMotionError(
            f"degenerate robot motion ({kind}): the end effector turns at most {max_rot:.2f} deg between samples, "
            f"need at least {min_rotation_deg:g}; rotate it by 15-30 deg about different axes between samples")
    axes = rotvecs[angles >= min_rotation_deg]
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(axes.T @ axes)
    dominant = vecs[:, -1]
    spread = float(np.degrees(np.arccos(np.clip(np.abs(axes @ dominant), 0.0, 1.0))).max())
    if spread < min_axis_spread_deg:
        raise DegenerateMotionError(
            f"degenerate robot motion: every rotation between samples is about one axis (within {spread:.2f} deg), "
            "which leaves the camera position along it unknown; add rotations about a second axis")
    return MotionStats(max_rot, spread, max_translation)


def board_pose_pnp(detection: BoardDetection, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """T_cam_board of one detection (IPPE for the planar board, then LM refinement)."""
    obj = detection.object_points.astype(np.float64).reshape(-1, 1, 3)
    img = detection.image_points.astype(np.float64).reshape(-1, 1, 2)
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, dist, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        raise CalibrationError("PnP failed on a board detection")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, dist, rvec, tvec)
    return make_transform(cv2.Rodrigues(rvec)[0], tvec.reshape(3))


def calibrate_hand_eye(ee_poses: Sequence[np.ndarray], detections: Sequence[BoardDetection], K: np.ndarray,
                       dist: np.ndarray | None, mode: str, names: Sequence[str] | None = None, refine: bool = True,
                       min_rotation_deg: float = 5.0) -> HandEyeResult:
    """Solve X and Y from end-effector poses (T_base_ee, 4x4 each) and the board detections at those poses."""
    if mode not in MODES:
        raise CalibrationError(f"hand-eye mode must be eye_to_hand or eye_in_hand, got {mode!r}")
    if len(ee_poses) != len(detections):
        raise CalibrationError(f"{len(ee_poses)} robot poses but {len(detections)} board detections")
    names = list(names) if names is not None else [f"sample {i}" for i in range(len(detections))]
    K = as_intrinsics(K)
    dist_full = as_distortion(dist)  # padded to 8 for our projection; None when there is no distortion
    dist_cv = np.zeros(5) if dist_full is None else np.asarray(dist, dtype=np.float64).reshape(-1)
    motion = check_motion(ee_poses, min_rotation_deg)
    A = [np.asarray(T, dtype=np.float64) if mode == "eye_to_hand" else invert_transform(T) for T in ee_poses]
    B = [board_pose_pnp(d, K, dist_cv) for d in detections]
    X, Y = _closed_form(A, B)
    if refine:
        X, Y = _refine(A, detections, K, dist_full, X, Y)
    residuals, per_sample = _residuals(A, B, detections, K, dist_full, X, Y, names)
    warnings = []
    if motion.max_rotation_deg < 20.0:
        warnings.append(f"small rotations (at most {motion.max_rotation_deg:.1f} deg between samples): accuracy suffers; aim for 30 deg or more")
    median = np.median([s["reprojection_rms_px"] for s in per_sample])
    outliers = [s["name"] for s in per_sample if s["reprojection_rms_px"] > max(5 * median, 1.0)]
    if outliers:
        warnings.append(f"samples fitting much worse than the rest (pose recorded at the wrong time?): {', '.join(outliers)}")
    return HandEyeResult(mode, X, Y, residuals, per_sample, motion, METHOD, warnings)


def calibrate_hand_eye_from_samples(samples: SampleSet, board: BoardSpec, camera: CameraInfo, mode: str,
                                    refine: bool = True, progress: bool = True) -> HandEyeResult:
    """Detect the board in every sample image and solve; samples without the board are left out."""
    if not board.orientation_unambiguous:
        raise CalibrationError(f"board {board} looks the same turned round, so its pose is ambiguous; "
                               "use a chessboard with COLS != ROWS and COLS + ROWS odd (e.g. 9x6) or a charuco board")
    poses, detections, names, missing = [], [], [], []
    sizes: dict[tuple[int, int], list[str]] = {}
    for sample in tqdm(samples.samples, desc="detecting board", unit="img", disable=not progress, leave=False):
        gray = read_gray(sample.image_path)
        sizes.setdefault((gray.shape[1], gray.shape[0]), []).append(sample.image_path.name)
        found = detect_board(gray, board)
        if found is None:
            missing.append(sample.image_path.name)
            continue
        poses.append(sample.T_base_ee)
        detections.append(found)
        names.append(sample.image_path.name)
    check_one_size(sizes)
    size = next(iter(sizes))
    if size != (camera.width, camera.height):
        raise CalibrationError(f"sample images are {size[0]}x{size[1]} but the intrinsics are for {camera.width}x{camera.height}")
    if not detections:
        raise BoardNotFoundError(f"no {board} board found in any of the {len(missing)} sample images: {', '.join(missing)}")
    if len(detections) < MIN_SAMPLES:
        raise TooFewViewsError(f"hand-eye needs at least {MIN_SAMPLES} samples with the board visible, got {len(detections)}; "
                               f"no board in: {', '.join(missing)}")
    result = calibrate_hand_eye(poses, detections, camera.K, camera.dist, mode, names, refine)
    if missing:
        result.warnings.append(f"no board found in {len(missing)} images (left out): {', '.join(missing)}")
    return result


# ----------------------------------------------------------------------------- solver internals


def _closed_form(A: list[np.ndarray], B: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    alphas, betas, pairs = [], [], []
    for i in range(len(A)):
        for j in range(i + 1, len(A)):
            M = A[i] @ invert_transform(A[j])
            N = B[i] @ invert_transform(B[j])
            a, b = matrix_to_rotvec(M[:3, :3]), matrix_to_rotvec(N[:3, :3])
            if np.linalg.norm(a) < np.radians(1.0):  # nearly pure translations say little about R_X
                continue
            alphas.append(a)
            betas.append(b)
            pairs.append((M, N))
    H = np.array(betas).T @ np.array(alphas)  # sum of beta alpha^T: R_X maps each beta onto its alpha
    U, _, Vt = np.linalg.svd(H)
    R_X = Vt.T @ np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))]) @ U.T
    lhs = np.concatenate([M[:3, :3] - np.eye(3) for M, _ in pairs])
    rhs = np.concatenate([R_X @ N[:3, 3] - M[:3, 3] for M, N in pairs])
    t_X = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    X = make_transform(R_X, t_X)
    Ys = [invert_transform(Ai) @ X @ Bi for Ai, Bi in zip(A, B)]
    Y = make_transform(nearest_rotation(sum(Yi[:3, :3] for Yi in Ys)), np.mean([Yi[:3, 3] for Yi in Ys], axis=0))
    return X, Y


def _perturb(T: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """T moved by a small rotation vector delta[:3] (applied on the left) and translation delta[3:]."""
    return make_transform(rotvec_to_matrix(delta[:3]) @ T[:3, :3], T[:3, 3] + delta[3:])


def _project(T_cam_board: np.ndarray, obj: np.ndarray, K: np.ndarray, dist: np.ndarray | None) -> np.ndarray:
    cam = obj @ T_cam_board[:3, :3].T + T_cam_board[:3, 3]
    xy = cam[:, :2] / cam[:, 2:3]
    if dist is not None:
        xy = _distort(xy, dist)
    return np.stack([K[0, 0] * xy[:, 0] + K[0, 1] * xy[:, 1] + K[0, 2], K[1, 1] * xy[:, 1] + K[1, 2]], axis=1)


def _chain_residuals(A, detections, K, dist, X, Y) -> np.ndarray:
    X_inv = invert_transform(X)
    res = [(_project(X_inv @ Ai @ Y, d.object_points, K, dist) - d.image_points).ravel() for Ai, d in zip(A, detections)]
    return np.concatenate(res)


def _refine(A, detections, K, dist, X, Y, max_iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on the chain reprojection error, re-linearised around X, Y after each step."""
    def residuals(X_, Y_):
        return _chain_residuals(A, detections, K, dist, X_, Y_)

    def moved(delta):
        return _perturb(X, delta[:6]), _perturb(Y, delta[6:])

    r = residuals(X, Y)
    cost = float(r @ r)
    lam = 1e-3
    eps = 1e-7
    for _ in range(max_iterations):
        J = np.empty((r.size, 12))
        for k in range(12):
            step = np.zeros(12)
            step[k] = eps
            J[:, k] = (residuals(*moved(step)) - r) / eps
        JtJ, Jtr = J.T @ J, J.T @ r
        improved = False
        while lam < 1e10:
            delta = np.linalg.solve(JtJ + lam * np.diag(np.diag(JtJ) + 1e-12), -Jtr)
            X_new, Y_new = moved(delta)
            r_new = residuals(X_new, Y_new)
            cost_new = float(r_new @ r_new)
            if cost_new < cost:
                improved = True
                lam = max(lam / 10.0, 1e-9)
                break
            lam *= 10.0
        if not improved:
            break
        relative_gain = (cost - cost_new) / max(cost, 1e-300)
        X, Y, r, cost = X_new, Y_new, r_new, cost_new
        if relative_gain < 1e-10 or np.linalg.norm(delta) < 1e-12:
            break
    return X, Y


def _residuals(A, B, detections, K, dist, X, Y, names) -> tuple[dict[str, float], list[dict]]:
    X_inv = invert_transform(X)
    per_sample, t_err, r_err, sq, n = [], [], [], 0.0, 0
    for Ai, Bi, d, name in zip(A, B, detections, names):
        predicted = X_inv @ Ai @ Y
        diff = invert_transform(Bi) @ predicted
        t_mm = float(np.linalg.norm(predicted[:3, 3] - Bi[:3, 3]) * 1000.0)
        r_deg = rotation_angle_deg(diff[:3, :3])
        e = _project(predicted, d.object_points, K, dist) - d.image_points
        rms = float(np.sqrt((e ** 2).sum(axis=1).mean()))
        sq += float((e ** 2).sum())
        n += len(d)
        t_err.append(t_mm)
        r_err.append(r_deg)
        per_sample.append({"name": name, "translation_mm": t_mm, "rotation_deg": r_deg, "reprojection_rms_px": rms})
    t_err, r_err = np.array(t_err), np.array(r_err)
    residuals = {
        "translation_rms_mm": float(np.sqrt((t_err ** 2).mean())), "translation_max_mm": float(t_err.max()),
        "rotation_rms_deg": float(np.sqrt((r_err ** 2).mean())), "rotation_max_deg": float(r_err.max()),
        "reprojection_rms_px": float(np.sqrt(sq / max(n, 1))),
    }
    return residuals, per_sample

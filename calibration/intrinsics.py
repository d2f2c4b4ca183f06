"""Camera intrinsics from board images (OpenCV's planar-target calibration, Zhang's method)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

import cv2
import numpy as np

from magma_calibration.boards import BoardDetection, BoardSpec
from magma_calibration.camera_info import CameraInfo
from magma_calibration.errors import CalibrationError, TooFewViewsError
from magma_calibration.images import detect_in_images, list_images

MIN_VIEWS = 3  # a planar board gives two constraints on K per view; the principal point and focal lengths need three


@dataclass
class IntrinsicsResult:
    """A calibrated camera and how well the model fits the views it came from."""

    K: np.ndarray
    dist: np.ndarray  # plumb_bob: k1, k2, p1, p2, k3
    image_size: tuple[int, int]  # (width, height)
    rms_px: float  # over all corners of all views
    per_view_rms_px: dict[str, float]
    board: BoardSpec
    skipped: list[str] = field(default_factory=list)  # images where the board was not found
    board_poses: dict[str, np.ndarray] = field(default_factory=dict)  # T_cam_board per view

    def camera_info(self, camera_name: str = "camera") -> CameraInfo:
        return CameraInfo(width=self.image_size[0], height=self.image_size[1], K=self.K, dist=self.dist,
                          camera_name=camera_name)

    def summary(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "fx": float(self.K[0, 0]), "fy": float(self.K[1, 1]), "cx": float(self.K[0, 2]), "cy": float(self.K[1, 2]),
            "distortion": [float(x) for x in self.dist],
            "rms_px": self.rms_px,
            "views": len(self.per_view_rms_px),
            "per_view_rms_px": self.per_view_rms_px,
            "skipped_images": self.skipped,
            "board": str(self.board),
        }


def calibrate_intrinsics(detections: Mapping[str, BoardDetection], image_size: tuple[int, int], board: BoardSpec,
                         fit_k3: bool = False, fix_distortion: bool = False, skipped: list[str] | None = None) -> IntrinsicsResult:
    """Solve K and plumb_bob distortion from detections keyed by image name.

    ``fit_k3`` also fits the sixth-order radial term (OpenCV's default; it overfits with few or
    central views, which is why ROS's calibrator leaves it at zero, as this does by default).
    ``fix_distortion`` keeps all distortion at zero (for cameras known to be ideal, e.g. rendered).
    """
    names = sorted(detections)
    if len(names) < MIN_VIEWS:
        missing = f"; no board in: {', '.join(skipped)}" if skipped else ""
        raise TooFewViewsError(f"intrinsics need at least {MIN_VIEWS} views with the board, got {len(names)}{missing}")
    width, height = image_size
    if width <= 0 or height <= 0:
        raise CalibrationError(f"bad image size {width}x{height}")
    obj = [detections[n].object_points.astype(np.float32).reshape(-1, 1, 3) for n in names]
    img = [detections[n].image_points.astype(np.float32).reshape(-1, 1, 2) for n in names]
    flags = 0 if fit_k3 else cv2.CALIB_FIX_K3
    if fix_distortion:
        flags |= cv2.CALIB_FIX_K1 | cv2.CALIB_FIX_K2 | cv2.CALIB_FIX_K3 | cv2.CALIB_ZERO_TANGENT_DIST
    criteria = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 200, 1e-12)
    try:
        rms, K, dist_cv, rvecs, tvecs, _, _, per_view = cv2.calibrateCameraExtended(
            obj, img, (width, height), None, None, flags=flags, criteria=criteria)
    except cv2.error as exc:
        raise CalibrationError(f"OpenCV could not calibrate from {len(names)} views ({exc}); "
                               "add views with the board tilted in different directions") from exc
    K = np.asarray(K, dtype=np.float64)
    dist = np.zeros(5)
    fitted = np.asarray(dist_cv, dtype=np.float64).reshape(-1)[:5]
    dist[: fitted.size] = fitted
    if not (np.all(np.isfinite(K)) and np.all(np.isfinite(dist)) and K[0, 0] > 0 and K[1, 1] > 0):
        raise CalibrationError("calibration diverged (non-finite or negative focal length); add views with the board tilted in different directions")
    poses = {}
    for n, r, t in zip(names, rvecs, tvecs):
        R, _ = cv2.Rodrigues(r)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, np.asarray(t).reshape(3)
        poses[n] = T
    per_view_rms = {n: float(e) for n, e in zip(names, np.asarray(per_view).reshape(-1))}
    return IntrinsicsResult(K, dist, (int(width), int(height)), float(rms), per_view_rms, board, list(skipped or []), poses)


def calibrate_intrinsics_from_folder(folder: str | os.PathLike, board: BoardSpec, fit_k3: bool = False,
                                     fix_distortion: bool = False, progress: bool = True) -> IntrinsicsResult:
    """Detect the board in every image of `folder` and calibrate; images without the board are skipped and listed."""
    paths = list_images(folder)
    detections, size = detect_in_images(paths, board, progress=progress)
    skipped = [p.name for p in paths if p.name not in detections]
    return calibrate_intrinsics(detections, size, board, fit_k3=fit_k3, fix_distortion=fix_distortion, skipped=skipped)

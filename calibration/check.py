"""Checking a calibration on images: reprojection errors as a JSON report and overlay pictures.

Intrinsics alone: for each image the board pose is fitted by PnP and its corners reprojected
(the intrinsics' fit on these images). With extrinsics and a samples folder (end-effector poses),
the board is also predicted through the whole chain camera <- robot <- board, without looking at
the image, which checks the hand-eye result as the controller will use it.

Overlays: detected corners as green circles, reprojected ones as red crosses, and each error as a
yellow line drawn 20 times longer so sub-pixel errors show.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from magma_calibration.boards import BoardSpec, detect_board
from magma_calibration.camera_info import CameraInfo
from magma_calibration.errors import BoardNotFoundError, CalibrationError
from magma_calibration.extrinsics import Extrinsics
from magma_calibration.handeye import board_pose_pnp
from magma_calibration.images import list_images
from magma_calibration.projection import camera_to_pixel
from magma_calibration.samples import SAMPLES_FILES, read_samples
from magma_calibration.transforms import invert_transform, rotation_angle_deg
from magma_calibration.yaml_io import atomic_write_text

ERROR_GAIN = 20.0  # overlay error lines are drawn this many times longer than the error
OVERVIEW_TILES = 12


def check_calibration(images_dir: str | os.PathLike, board: BoardSpec, camera: CameraInfo, out_dir: str | os.PathLike,
                      extrinsics: Extrinsics | None = None, progress: bool = True) -> dict:
    """Measure reprojection errors on the images, write report.json and overlays under out_dir; return the report.

    Every check runs before anything is written, so a refused input leaves out_dir untouched.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    ee_poses: dict[str, np.ndarray] = {}
    if extrinsics is not None:
        if not any((images_dir / name).is_file() for name in SAMPLES_FILES):
            raise CalibrationError(f"checking extrinsics needs the end-effector pose of each image: {images_dir} has no "
                                   "samples.yaml (see magma_calibration.samples)")
        if extrinsics.target_transform is None:
            raise CalibrationError("the extrinsics file has no target (board) transform to predict the board from; "
                                   "it must come from `magma calibrate handeye`")
        samples = read_samples(images_dir)
        paths = [s.image_path for s in samples.samples]
        ee_poses = {s.image_path.name: s.T_base_ee for s in samples.samples}
    else:
        paths = list_images(images_dir)
    K, dist = camera.K, camera.dist
    entries, pictures, thumbnails = [], {}, []
    for path in tqdm(paths, desc="checking", unit="img", disable=not progress, leave=False):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise CalibrationError(f"cannot decode image {path}")
        if (image.shape[1], image.shape[0]) != (camera.width, camera.height):
            raise CalibrationError(f"image {path.name} is {image.shape[1]}x{image.shape[0]} but the intrinsics are for "
                                   f"{camera.width}x{camera.height}")
        entry: dict = {"image": path.name, "board_found": False}
        entries.append(entry)
        found = detect_board(image, board)
        if found is None:
            continue
        entry.update(board_found=True, corners=len(found))
        T_pnp = board_pose_pnp(found, K, dist)
        uv_pnp = _project(T_pnp, found.object_points, K, dist)
        entry["pnp_rms_px"] = _rms(uv_pnp - found.image_points)
        shown = uv_pnp
        if extrinsics is not None:
            T_chain = _chain_board_pose(extrinsics, ee_poses[path.name])
            uv_chain = _project(T_chain, found.object_points, K, dist)
            entry["chain_rms_px"] = _rms(uv_chain - found.image_points)
            entry["chain_translation_mm"] = float(np.linalg.norm(T_chain[:3, 3] - T_pnp[:3, 3]) * 1000.0)
            entry["chain_rotation_deg"] = rotation_angle_deg(T_pnp[:3, :3].T @ T_chain[:3, :3])
            shown = uv_chain
        overlay = draw_overlay(image, found.image_points, shown, _caption(entry))
        entry["overlay"] = f"overlays/{Path(path.name).stem}.png"
        pictures[entry["overlay"]] = cv2.imencode(".png", overlay)[1]  # compressed: hundreds of images stay small
        if len(thumbnails) < OVERVIEW_TILES:
            thumbnails.append(overlay)
    found = [e for e in entries if e["board_found"]]
    if not found:
        raise BoardNotFoundError(f"no {board} board found in any of the {len(entries)} images: {', '.join(e['image'] for e in entries)}")
    report = {
        "images": len(entries),
        "board_found": len(found),
        "no_board": [e["image"] for e in entries if not e["board_found"]],
        "board": str(board),
        "pnp_rms_px": _pooled(found, "pnp_rms_px"),
        "per_image": entries,
    }
    if extrinsics is not None:
        report.update(mode=extrinsics.mode, chain_rms_px=_pooled(found, "chain_rms_px"),
                      chain_translation_max_mm=max(e["chain_translation_mm"] for e in found),
                      chain_rotation_max_deg=max(e["chain_rotation_deg"] for e in found))
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    for name, png in pictures.items():
        (out_dir / name).write_bytes(png.tobytes())
    cv2.imwrite(str(out_dir / "overview.png"), _mosaic(thumbnails))
    report["overview"] = "overview.png"
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1) + "\n")
    return report


def _chain_board_pose(ext: Extrinsics, T_base_ee: np.ndarray) -> np.ndarray:
    """T_cam_board predicted from the robot pose alone."""
    if ext.mode == "eye_in_hand":  # camera on the hand, board in the base
        return invert_transform(ext.transform) @ invert_transform(T_base_ee) @ ext.target_transform
    return invert_transform(ext.transform) @ T_base_ee @ ext.target_transform  # fixed camera, board on the hand


def _project(T_cam_board: np.ndarray, obj: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    uv, _ = camera_to_pixel(obj @ T_cam_board[:3, :3].T + T_cam_board[:3, 3], K, dist)
    return uv


def _rms(err: np.ndarray) -> float:
    return float(np.sqrt((err ** 2).sum(axis=1).mean()))


def _pooled(entries: list[dict], key: str) -> float:
    """RMS over all corners of all images (weighting each image by its corner count)."""
    total = sum(e[key] ** 2 * e["corners"] for e in entries)
    return float(np.sqrt(total / sum(e["corners"] for e in entries)))


def _caption(entry: dict) -> str:
    text = f"{entry['image']}  PnP {entry['pnp_rms_px']:.3f} px"
    if "chain_rms_px" in entry:
        text += f"  chain {entry['chain_rms_px']:.3f} px"
    return text


def draw_overlay(image_bgr: np.ndarray, detected: np.ndarray, reprojected: np.ndarray, caption: str = "") -> np.ndarray:
    """Detected corners (green circles), reprojected (red crosses), errors x20 (yellow), a caption."""
    out = image_bgr.copy() if image_bgr.ndim == 3 else cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    shift = 4  # sub-pixel drawing: coordinates in 1/16 px
    scale = 1 << shift
    for d, r in zip(detected, reprojected):
        if not np.all(np.isfinite(r)):
            continue
        tip = d + (r - d) * ERROR_GAIN
        cv2.line(out, _fixed(d, scale), _fixed(tip, scale), (0, 220, 255), 1, cv2.LINE_AA, shift)
        cv2.circle(out, _fixed(d, scale), 4 * scale, (0, 200, 0), 1, cv2.LINE_AA, shift)
        cv2.drawMarker(out, tuple(int(round(x)) for x in r), (0, 0, 255), cv2.MARKER_CROSS, 7, 1, cv2.LINE_AA)
    if caption:
        _label(out, caption, (8, 8))
    _label(out, f"green: detected  red: reprojected  yellow: error x{ERROR_GAIN:g}", (8, out.shape[0] - 26))
    return out


def _label(image: np.ndarray, text: str, top_left: tuple[int, int]) -> None:
    """White text on a dark box, readable over any background."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    (w, h), baseline = cv2.getTextSize(text, font, scale, 1)
    x, y = top_left
    cv2.rectangle(image, (x - 4, y - 3), (x + w + 4, y + h + baseline + 3), (40, 40, 40), cv2.FILLED)
    cv2.putText(image, text, (x, y + h), font, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _fixed(point: np.ndarray, scale: int) -> tuple[int, int]:
    return int(round(point[0] * scale)), int(round(point[1] * scale))


def _mosaic(images: list[np.ndarray], columns: int = 4, tile_width: int = 320) -> np.ndarray:
    h, w = images[0].shape[:2]
    tile_height = int(round(h * tile_width / w))
    tiles = [cv2.resize(im, (tile_width, tile_height), interpolation=cv2.INTER_AREA) for im in images]
    while len(tiles) % columns:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


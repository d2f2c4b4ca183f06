"""`magma calibrate intrinsics | handeye | check`: the calibration room's CLI commands."""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

from magma_calibration.boards import BoardSpec

BOARD_HELP = "chessboard:COLSxROWS:SQUARE_M (inner corners, e.g. chessboard:9x6:0.025) or charuco:COLSxROWS:SQUARE_M:MARKER_M[:DICT]"


def _board(text: str) -> BoardSpec:
    try:
        return BoardSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _emit(args: argparse.Namespace, payload: dict, human: list[str]) -> None:
    print(json.dumps(payload, indent=1) if args.json else "\n".join(human))


# ----------------------------------------------------------------------------- intrinsics


def register_intrinsics(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("intrinsics", help="camera matrix and distortion from board images -> ROS camera_info YAML",
                              description="Calibrate a camera from a folder of board images; writes a ROS camera_info YAML.")
    p.add_argument("--images", required=True, help="folder of board images (one camera, one resolution)")
    p.add_argument("--board", required=True, type=_board, help=BOARD_HELP)
    p.add_argument("--out", required=True, help="camera_info YAML to write")
    p.add_argument("--camera-name", default="camera", help="camera_name in the YAML (default: camera)")
    p.add_argument("--fit-k3", action="store_true", help="also fit the k3 radial term (wide-angle lenses, many views)")
    p.add_argument("--no-distortion", action="store_true", help="keep distortion at zero (an ideal or rectified camera)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_intrinsics)


def run_intrinsics(args: argparse.Namespace) -> int:
    from magma_calibration.camera_info import write_camera_info
    from magma_calibration.intrinsics import calibrate_intrinsics_from_folder

    result = calibrate_intrinsics_from_folder(args.images, args.board, fit_k3=args.fit_k3, fix_distortion=args.no_distortion)
    comments = [f"magma calibrate intrinsics, {_now()}", f"board {args.board}, {len(result.per_view_rms_px)} views, "
                f"reprojection RMS {result.rms_px:.4f} px"]
    write_camera_info(args.out, result.camera_info(args.camera_name), comments)
    summary = {**result.summary(), "out": str(args.out)}
    worst = max(result.per_view_rms_px, key=result.per_view_rms_px.get)
    human = [
        f"calibrated {result.image_size[0]}x{result.image_size[1]} camera from {len(result.per_view_rms_px)} views -> {args.out}",
        f"  fx {result.K[0, 0]:.2f}  fy {result.K[1, 1]:.2f}  cx {result.K[0, 2]:.2f}  cy {result.K[1, 2]:.2f}",
        f"  distortion {', '.join(f'{x:.5f}' for x in result.dist)}",
        f"  reprojection RMS {result.rms_px:.4f} px (worst view {worst}: {result.per_view_rms_px[worst]:.4f} px)",
    ]
    if result.skipped:
        human.append(f"  no board in {len(result.skipped)} images (skipped): {', '.join(result.skipped)}")
    _emit(args, summary, human)
    return 0


# ----------------------------------------------------------------------------- hand-eye


def register_handeye(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("handeye", help="camera pose relative to the robot from board samples -> extrinsics YAML",
                              description="Hand-eye calibration from a samples folder (images + end-effector poses; "
                                          "format in magma_calibration.samples).")
    p.add_argument("--samples", required=True, help="samples folder holding samples.yaml (or .json) and the images")
    p.add_argument("--mode", required=True, choices=["eye_to_hand", "eye_in_hand"],
                   help="eye_to_hand: fixed camera, board on the gripper; eye_in_hand: camera on the wrist, board fixed")
    p.add_argument("--intrinsics", required=True, help="camera_info YAML of the camera that took the images")
    p.add_argument("--board", required=True, type=_board, help=BOARD_HELP)
    p.add_argument("--out", required=True, help="extrinsics YAML to write")
    p.add_argument("--base-frame", help="robot base frame name (default: the samples file's base_frame)")
    p.add_argument("--ee-frame", help="end-effector frame name (default: the samples file's ee_frame)")
    p.add_argument("--camera-frame", help="camera optical frame name (default: <camera_name>_optical_frame)")
    p.add_argument("--no-refine", action="store_true", help="keep the closed-form solution (skip the reprojection refinement)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_handeye)


def run_handeye(args: argparse.Namespace) -> int:
    from magma_calibration.camera_info import read_camera_info
    from magma_calibration.extrinsics import write_extrinsics
    from magma_calibration.handeye import calibrate_hand_eye_from_samples
    from magma_calibration.samples import read_samples
    from magma_calibration.transforms import matrix_to_pose

    camera = read_camera_info(args.intrinsics)
    samples = read_samples(args.samples)
    result = calibrate_hand_eye_from_samples(samples, args.board, camera, args.mode, refine=not args.no_refine)
    ext = result.to_extrinsics(args.base_frame or samples.base_frame, args.ee_frame or samples.ee_frame,
                               args.camera_frame or f"{camera.camera_name}_optical_frame")
    write_extrinsics(args.out, ext)
    position, quat = matrix_to_pose(ext.transform)
    payload = {
        "out": str(args.out), "mode": args.mode, "parent_frame": ext.parent_frame, "child_frame": ext.child_frame,
        "translation": position.tolist(), "rotation_xyzw": quat.tolist(), "residuals": result.residuals,
        "samples_used": len(result.per_sample), "per_sample": result.per_sample, "warnings": result.warnings,
        "max_rotation_between_samples_deg": result.motion.max_rotation_deg, "method": result.method,
    }
    r = result.residuals
    human = [
        f"{args.mode}: {ext.child_frame} in {ext.parent_frame} from {len(result.per_sample)} samples -> {args.out}",
        f"  translation {', '.join(f'{x:.4f}' for x in position)} m   rotation xyzw {', '.join(f'{x:.4f}' for x in quat)}",
        f"  residuals: translation RMS {r['translation_rms_mm']:.2f} mm (max {r['translation_max_mm']:.2f}), rotation RMS "
        f"{r['rotation_rms_deg']:.3f} deg (max {r['rotation_max_deg']:.3f}), reprojection RMS {r['reprojection_rms_px']:.3f} px",
        *[f"  warning: {w}" for w in result.warnings],
    ]
    _emit(args, payload, human)
    return 0


# ----------------------------------------------------------------------------- check


def register_check(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check", help="reprojection report and overlay pictures for a calibration",
                              description="Reproject the board with the calibration on new images: report.json, overlays/, overview.png.")
    p.add_argument("--intrinsics", required=True, help="camera_info YAML")
    p.add_argument("--extrinsics", help="extrinsics YAML from `magma calibrate handeye`; then --images must be a samples folder")
    p.add_argument("--images", required=True, help="folder of board images (a samples folder when --extrinsics is given)")
    p.add_argument("--board", required=True, type=_board, help=BOARD_HELP)
    p.add_argument("--out", required=True, help="report folder to write")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from magma_calibration.camera_info import read_camera_info
    from magma_calibration.check import check_calibration
    from magma_calibration.extrinsics import read_extrinsics

    camera = read_camera_info(args.intrinsics)
    ext = read_extrinsics(args.extrinsics) if args.extrinsics else None
    report = check_calibration(args.images, args.board, camera, args.out, ext)
    human = [f"board found in {report['board_found']}/{report['images']} images; PnP reprojection RMS {report['pnp_rms_px']:.3f} px"]
    if ext is not None:
        human.append(f"through the robot chain ({report['mode']}): reprojection RMS {report['chain_rms_px']:.3f} px, "
                     f"board pose off by up to {report['chain_translation_max_mm']:.2f} mm / {report['chain_rotation_max_deg']:.3f} deg")
    if report["no_board"]:
        human.append(f"no board in: {', '.join(report['no_board'])}")
    human.append(f"report: {args.out}/report.json, overlays: {args.out}/overlays/, overview: {args.out}/overview.png")
    _emit(args, report, human)
    return 0


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

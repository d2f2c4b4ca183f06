"""`magma bench calibration`: calibrate cameras rendered by PyBullet and compare with the truth.

Runs the same paths as the `magma calibrate` commands (images and samples written to disk, YAML
read back): intrinsics from rendered board views, hand-eye in both rigs, then the pixel-to-base
projection of the calibrated cameras at about 1 m with true depth. Prints each error beside its target.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

TARGETS = {
    "focal_error_pct": 0.5,
    "reprojection_rms_px": 0.3,
    "handeye_translation_mm": 3.0,
    "handeye_rotation_deg": 0.3,
    "roundtrip_1m_mm": 2.0,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibration", help="calibration accuracy against PyBullet ground truth",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--board", default="chessboard:9x6:0.025", help="board spec (default chessboard:9x6:0.025)")
    p.add_argument("--views", type=int, default=20, help="intrinsics views (default 20)")
    p.add_argument("--samples", type=int, default=20, help="hand-eye samples per rig (default 20)")
    p.add_argument("--noise", type=float, default=2.0, help="Gaussian pixel noise, grey levels (default 2)")
    p.add_argument("--supersample", type=int, default=4, help="render this many times larger, then area-average (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="keep the rendered images, samples and YAML files in this folder")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magma_calibration.boards import BoardSpec

    board = BoardSpec.parse(args.board)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        figures = _bench(board, Path(args.keep), args)
    else:
        with tempfile.TemporaryDirectory(prefix="magma_bench_calib_") as tmp:
            figures = _bench(board, Path(tmp), args)
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        _print_human(figures)
    return 0 if all(t["pass"] for t in figures["targets"].values()) else 1


def _bench(board, work: Path, args: argparse.Namespace) -> dict:
    from magma_calibration.camera_info import read_camera_info, write_camera_info
    from magma_calibration.extrinsics import read_extrinsics, write_extrinsics
    from magma_calibration.handeye import calibrate_hand_eye_from_samples
    from magma_calibration.intrinsics import calibrate_intrinsics_from_folder
    from magma_calibration.samples import read_samples
    from magma_calibration.transforms import rotation_angle_deg
    from magma_sim.calib_scenes import SimCamera, collect_handeye_samples, render_intrinsics_views

    camera = SimCamera()
    started = time.perf_counter()
    steps = tqdm(total=3, desc="bench calibration", unit="step", file=sys.stderr, leave=False)

    # Intrinsics.
    images, K_true = render_intrinsics_views(board, camera, args.views, seed=args.seed, supersample=args.supersample,
                                             noise_std=args.noise)
    folder = work / "intrinsics"
    folder.mkdir(exist_ok=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    result = calibrate_intrinsics_from_folder(folder, board, progress=False)
    write_camera_info(work / "camera_info.yaml", result.camera_info("sim_camera"))
    info = read_camera_info(work / "camera_info.yaml")
    K = info.K
    intrinsics = {
        "views": len(result.per_view_rms_px),
        "fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        "true_f": float(K_true[0, 0]), "true_cx": float(K_true[0, 2]), "true_cy": float(K_true[1, 2]),
        "fx_error_pct": float(abs(K[0, 0] / K_true[0, 0] - 1) * 100), "fy_error_pct": float(abs(K[1, 1] / K_true[1, 1] - 1) * 100),
        "cx_error_px": float(abs(K[0, 2] - K_true[0, 2])), "cy_error_px": float(abs(K[1, 2] - K_true[1, 2])),
        "distortion": [float(x) for x in info.dist],
        "reprojection_rms_px": result.rms_px,
    }
    steps.update()

    # Hand-eye, both rigs, with the calibrated intrinsics.
    handeye, roundtrip = {}, {}
    for mode in ("eye_to_hand", "eye_in_hand"):
        truth = collect_handeye_samples(work / mode, mode, board, camera, args.samples, seed=args.seed + 1,
                                        supersample=args.supersample, noise_std=args.noise)
        solved = calibrate_hand_eye_from_samples(read_samples(work / mode), board, info, mode, progress=False)
        write_extrinsics(work / f"extrinsics_{mode}.yaml", solved.to_extrinsics())
        ext = read_extrinsics(work / f"extrinsics_{mode}.yaml")
        handeye[mode] = {
            "samples": len(solved.per_sample),
            "translation_error_mm": float(np.linalg.norm(ext.transform[:3, 3] - truth.camera[:3, 3]) * 1000),
            "rotation_error_deg": rotation_angle_deg(ext.transform[:3, :3].T @ truth.camera[:3, :3]),
            "residuals": solved.residuals,
        }
        # The camera pose the controller would use: fixed, or wrist camera at the first sample's robot pose.
        T_base_ee = truth.ee_poses[0]
        T_true = truth.camera if mode == "eye_to_hand" else T_base_ee @ truth.camera
        T_est = ext.camera_in_base(T_base_ee)
        roundtrip[mode] = _roundtrip(K_true, T_true, info.K, info.dist, T_est, np.random.default_rng(args.seed))
        steps.update()
    steps.close()

    worst_focal = max(intrinsics["fx_error_pct"], intrinsics["fy_error_pct"])
    checks = {
        "focal_error_pct": worst_focal,
        "reprojection_rms_px": intrinsics["reprojection_rms_px"],
        "handeye_translation_mm": max(h["translation_error_mm"] for h in handeye.values()),
        "handeye_rotation_deg": max(h["rotation_error_deg"] for h in handeye.values()),
        "roundtrip_1m_mm": max(r["calibrated_max_mm"] for r in roundtrip.values()),
    }
    targets = {k: {"value": v, "target": TARGETS[k], "pass": bool(v < TARGETS[k])} for k, v in checks.items()}
    return {
        "board": str(board), "image_size": [camera.width, camera.height], "noise_std": args.noise,
        "supersample": args.supersample, "seconds": round(time.perf_counter() - started, 2),
        "intrinsics": intrinsics, "handeye": handeye, "roundtrip": roundtrip, "targets": targets,
    }


def _roundtrip(K_true, T_true, K_est, dist_est, T_est, rng, n: int = 500) -> dict:
    """Pixels seen by the true camera, lifted with true depth (0.9-1.1 m) by the calibrated one."""
    from magma_calibration.projection import base_to_pixel, pixel_to_base

    uv = rng.uniform([0, 0], [640, 480], size=(n, 2))
    depth = rng.uniform(0.9, 1.1, size=n)
    truth = pixel_to_base(uv, depth, K_true, T_true)
    estimated = pixel_to_base(uv, depth, K_est, T_est, dist_est)
    err_mm = np.linalg.norm(estimated - truth, axis=1) * 1000
    uv_back, depth_back = base_to_pixel(estimated, K_est, T_est, dist_est)
    again = pixel_to_base(uv_back, depth_back, K_est, T_est, dist_est)
    return {
        "calibrated_mean_mm": float(err_mm.mean()), "calibrated_max_mm": float(err_mm.max()),
        "numeric_max_mm": float(np.abs(again - estimated).max() * 1000),
        "pixel_max_px": float(np.abs(uv_back - uv).max()),
    }


def _print_human(f: dict) -> None:
    i = f["intrinsics"]
    print(f"calibration bench ({f['board']}, {f['image_size'][0]}x{f['image_size'][1]}, noise {f['noise_std']} grey levels, "
          f"{f['seconds']} s)")
    print(f"  intrinsics from {i['views']} views: fx {i['fx']:.2f} fy {i['fy']:.2f} (true {i['true_f']:.2f}), "
          f"cx {i['cx']:.2f} cy {i['cy']:.2f} (true {i['true_cx']:.2f}, {i['true_cy']:.2f}), RMS {i['reprojection_rms_px']:.3f} px")
    for mode, h in f["handeye"].items():
        print(f"  {mode} from {h['samples']} samples: camera off by {h['translation_error_mm']:.2f} mm, {h['rotation_error_deg']:.3f} deg")
    for mode, r in f["roundtrip"].items():
        print(f"  pixel->base at ~1 m ({mode}): mean {r['calibrated_mean_mm']:.2f} mm, max {r['calibrated_max_mm']:.2f} mm; "
              f"numeric round trip {r['numeric_max_mm']:.1e} mm")
    for name, t in f["targets"].items():
        print(f"  [{'ok' if t['pass'] else 'FAIL'}] {name}: {t['value']:.4g} (target < {t['target']})")

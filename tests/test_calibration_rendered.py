"""Calibration against PyBullet renders of boards at known poses, through the `magma calibrate` commands."""
import argparse
import json

import cv2
import numpy as np
import pytest

pytest.importorskip("pybullet")

from magma_calibration import commands  # noqa: E402
from magma_calibration.boards import BoardSpec, detect_board  # noqa: E402
from magma_calibration.camera_info import CameraInfo, read_camera_info, write_camera_info  # noqa: E402
from magma_calibration.errors import BoardNotFoundError, CalibrationError, TooFewViewsError  # noqa: E402
from magma_calibration.extrinsics import read_extrinsics  # noqa: E402
from magma_calibration.intrinsics import calibrate_intrinsics_from_folder  # noqa: E402
from magma_calibration.projection import base_to_pixel  # noqa: E402
from magma_calibration.transforms import rotation_angle_deg  # noqa: E402
from magma_sim.calib_scenes import (BoardScene, SimCamera, collect_handeye_samples, random_view_of_board,  # noqa: E402
                                    render_intrinsics_views)

CHESS = BoardSpec.parse("chessboard:9x6:0.025")
CAMERA = SimCamera(640, 480, fov_deg=50.0)
SUPERSAMPLE = 3


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(required=True)
    commands.register_intrinsics(sub)
    commands.register_handeye(sub)
    commands.register_check(sub)
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def save(folder, images, prefix="view"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{prefix}{i:02d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)


def test_intrinsics_from_rendered_views_meet_the_targets(tmp_path, capsys):
    images, K_true = render_intrinsics_views(CHESS, CAMERA, n_views=8, seed=3, supersample=SUPERSAMPLE, noise_std=2.0)
    save(tmp_path / "views", images)
    blank = np.full((480, 640), 255, np.uint8)
    cv2.imwrite(str(tmp_path / "views" / "zz_blank.png"), blank)
    out = tmp_path / "camera_info.yaml"
    assert run_cli("intrinsics", "--images", tmp_path / "views", "--board", CHESS, "--out", out, "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    info = read_camera_info(out)
    assert abs(info.K[0, 0] / K_true[0, 0] - 1) < 0.005 and abs(info.K[1, 1] / K_true[1, 1] - 1) < 0.005
    assert np.all(np.abs(info.K[:2, 2] - K_true[:2, 2]) < 3.0)
    assert printed["rms_px"] < 0.3 and printed["views"] == 8
    assert printed["skipped_images"] == ["zz_blank.png"] and set(printed["per_view_rms_px"]) == {f"view{i:02d}.png" for i in range(8)}


@pytest.mark.parametrize("spec", ["chessboard:9x6:0.025", "charuco:7x5:0.04:0.03"])
def test_detected_corners_sit_on_the_true_projection_in_the_board_order(spec):
    """Sub-pixel accuracy, and corner ids that match the board frame whatever the view's roll."""
    board = BoardSpec.parse(spec)
    rng = np.random.default_rng(11)
    K = CAMERA.intrinsics(SUPERSAMPLE)
    with BoardScene(board) as scene:
        scene.set_board_pose(np.eye(4))
        for _ in range(3):
            T_base_cam = random_view_of_board(board, np.eye(4), CAMERA, rng)
            found = detect_board(scene.render(T_base_cam, CAMERA, SUPERSAMPLE, noise_std=2.0, rng=rng), board)
            assert found is not None and len(found) >= board.num_corners - 2
            truth, _ = base_to_pixel(found.object_points, K, T_base_cam)
            assert np.abs(found.image_points - truth).max() < 0.5


def test_no_board_too_few_views_and_mixed_sizes_are_named(tmp_path):
    blank = np.full((480, 640), 255, np.uint8)
    save(tmp_path / "empty", [blank, blank])
    with pytest.raises(BoardNotFoundError, match="view00.png, view01.png"):
        calibrate_intrinsics_from_folder(tmp_path / "empty", CHESS, progress=False)

    images, _ = render_intrinsics_views(CHESS, CAMERA, n_views=2, seed=0, supersample=1, noise_std=0.0)
    save(tmp_path / "two", images + [blank])
    with pytest.raises(TooFewViewsError, match="at least 3 views.*got 2.*no board in: view02.png"):
        calibrate_intrinsics_from_folder(tmp_path / "two", CHESS, progress=False)

    save(tmp_path / "mixed", images)
    cv2.imwrite(str(tmp_path / "mixed" / "small.png"), cv2.resize(images[0], (320, 240)))
    with pytest.raises(CalibrationError, match=r"differ in size: most are 640x480, but small.png \(320x240\)"):
        calibrate_intrinsics_from_folder(tmp_path / "mixed", CHESS, progress=False)
    assert not (tmp_path / "camera_info.yaml").exists()


def test_eye_in_hand_from_rendered_samples_then_check(tmp_path, capsys):
    truth = collect_handeye_samples(tmp_path / "samples", "eye_in_hand", CHESS, CAMERA, n_samples=8, seed=5,
                                    supersample=SUPERSAMPLE, noise_std=2.0)
    write_camera_info(tmp_path / "camera_info.yaml", CameraInfo(640, 480, truth.K, np.zeros(5), camera_name="wrist"))
    out = tmp_path / "extrinsics.yaml"
    assert run_cli("handeye", "--samples", tmp_path / "samples", "--mode", "eye_in_hand", "--intrinsics",
                   tmp_path / "camera_info.yaml", "--board", CHESS, "--out", out, "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    ext = read_extrinsics(out)
    assert (ext.parent_frame, ext.child_frame, ext.mode) == ("ee", "wrist_optical_frame", "eye_in_hand")
    assert np.linalg.norm(ext.transform[:3, 3] - truth.camera[:3, 3]) * 1000 < 3.0
    assert rotation_angle_deg(ext.transform[:3, :3].T @ truth.camera[:3, :3]) < 0.3
    assert printed["residuals"]["reprojection_rms_px"] < 0.3

    report_dir = tmp_path / "report"
    assert run_cli("check", "--intrinsics", tmp_path / "camera_info.yaml", "--extrinsics", out, "--images",
                   tmp_path / "samples", "--board", CHESS, "--out", report_dir) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["board_found"] == report["images"] == 8
    assert report["chain_rms_px"] < 0.5 and report["pnp_rms_px"] < 0.3
    overlay = cv2.imread(str(report_dir / report["per_image"][0]["overlay"]))
    assert overlay.shape == (480, 640, 3) and (report_dir / "overview.png").is_file()

    write_camera_info(tmp_path / "small.yaml", CameraInfo(320, 240, truth.K / 2 + np.diag([0, 0, 0.5]), np.zeros(5)))
    with pytest.raises(CalibrationError, match="image 0000.png is 640x480 but the intrinsics are for 320x240"):
        run_cli("check", "--intrinsics", tmp_path / "small.yaml", "--images", tmp_path / "samples", "--board", CHESS,
                "--out", tmp_path / "report_small")
    assert not (tmp_path / "report_small").exists()

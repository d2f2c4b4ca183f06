"""Calibration files: camera_info and extrinsics YAML, samples folders, board specs; atomic writes."""
import os

import numpy as np
import pytest
import yaml

from magma_calibration import yaml_io
from magma_calibration.boards import BoardSpec
from magma_calibration.camera_info import CameraInfo, read_camera_info, write_camera_info
from magma_calibration.errors import CalibrationFileError
from magma_calibration.extrinsics import Extrinsics, read_extrinsics, write_extrinsics
from magma_calibration.samples import SampleWriter, read_samples
from magma_calibration.transforms import make_transform, matrix_to_quat, quat_to_matrix, rotvec_to_matrix
from magma_core.errors import InvalidInputError

K = np.array([[612.25, 0.0, 318.5], [0.0, 611.75, 242.125], [0.0, 0.0, 1.0]])
DIST = np.array([-0.11, 0.031, 0.0004, -0.0002, 0.0])


def write(tmp_path, text, name="file.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_camera_info_round_trip_is_exact_and_ros_shaped(tmp_path):
    info = CameraInfo(640, 480, K, DIST, camera_name="front")
    path = write_camera_info(tmp_path / "camera_info.yaml", info, comments=["RMS 0.1 px"])
    back = read_camera_info(path)
    assert (back.width, back.height, back.camera_name, back.distortion_model) == (640, 480, "front", "plumb_bob")
    np.testing.assert_array_equal(back.K, K)
    np.testing.assert_array_equal(back.dist, DIST)
    np.testing.assert_array_equal(back.P, np.hstack([K, np.zeros((3, 1))]))
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == {"image_width", "image_height", "camera_name", "camera_matrix", "distortion_model",
                        "distortion_coefficients", "rectification_matrix", "projection_matrix"}
    assert raw["camera_matrix"]["rows"] == 3 and raw["camera_matrix"]["cols"] == 3 and len(raw["camera_matrix"]["data"]) == 9
    assert raw["projection_matrix"]["cols"] == 4 and raw["distortion_coefficients"]["cols"] == 5
    assert path.read_text().startswith("# RMS 0.1 px")


@pytest.fixture
def good_camera_info(tmp_path):
    return write_camera_info(tmp_path / "good.yaml", CameraInfo(640, 480, K, DIST)).read_text()


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("image_width: 640", "image_width: [640"), "not valid YAML"),
    (lambda t: "just a string\n", "must hold a mapping"),
    (lambda t: t.replace("image_width: 640\n", ""), "missing image_width"),
    (lambda t: t.replace("image_height: 480", "image_height: -4"), "image_height must be a positive integer"),
    (lambda t: t.replace("camera_matrix:\n  rows: 3", "camera_matrix:\n  rows: 2"), "camera_matrix: must be 3x3"),
    (lambda t: t.replace("[612.25,", "[612.25, 1.0,"), "needs 9 values, data has 10"),
    (lambda t: t.replace("[612.25,", "[.nan,"), "NaN"),
    (lambda t: t.replace("[612.25,", "[oops,"), "numbers only"),
    (lambda t: t.replace("plumb_bob", "equidistant"), "not supported"),
    (lambda t: t.replace("  cols: 5\n  data: [-0.11, ", "  cols: 4\n  data: ["), "plumb_bob needs 5"),
    (lambda t: t.replace("[612.25,", "[-612.25,"), "focal lengths must be positive"),
])
def test_malformed_camera_info_is_refused_with_a_reason(tmp_path, good_camera_info, edit, message):
    path = write(tmp_path, edit(good_camera_info))
    with pytest.raises(CalibrationFileError, match=message) as info:
        read_camera_info(path)
    assert str(path) in str(info.value)


def test_missing_camera_info_file(tmp_path):
    with pytest.raises(CalibrationFileError, match="not found"):
        read_camera_info(tmp_path / "nope.yaml")


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = write_camera_info(tmp_path / "camera_info.yaml", CameraInfo(640, 480, K, DIST))
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(yaml_io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_camera_info(path, CameraInfo(1280, 720, K, DIST))
    assert path.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["camera_info.yaml"]  # no temporary file left behind


def test_extrinsics_round_trip_and_camera_pose(tmp_path):
    T = make_transform(rotvec_to_matrix([0.4, -1.2, 2.0]), [0.9, 0.25, 0.6])
    target = make_transform(rotvec_to_matrix([np.pi, 0.0, 0.0]), [0.0, 0.05, 0.02])
    ext = Extrinsics("base", "front_optical_frame", T, mode="eye_to_hand", method="test",
                     residuals={"translation_rms_mm": 0.4}, num_samples=12, target_transform=target, target_parent_frame="ee")
    back = read_extrinsics(write_extrinsics(tmp_path / "ext.yaml", ext))
    np.testing.assert_allclose(back.transform, T, atol=1e-12)
    np.testing.assert_allclose(back.target_transform, target, atol=1e-12)
    assert (back.parent_frame, back.child_frame, back.mode, back.num_samples) == ("base", "front_optical_frame", "eye_to_hand", 12)
    assert back.residuals == {"translation_rms_mm": 0.4} and back.date
    np.testing.assert_allclose(back.camera_in_base(), T)

    wrist = Extrinsics("ee", "wrist_optical_frame", T, mode="eye_in_hand")
    with pytest.raises(CalibrationFileError, match="end-effector pose"):
        wrist.camera_in_base()
    T_base_ee = make_transform(rotvec_to_matrix([0.0, 0.0, 0.5]), [0.4, 0.0, 0.3])
    np.testing.assert_allclose(wrist.camera_in_base(T_base_ee), T_base_ee @ T)


def test_extrinsics_from_translation_and_quaternion_only(tmp_path):
    q = matrix_to_quat(rotvec_to_matrix([0.1, 0.2, 0.3]))
    path = write(tmp_path, f"parent_frame: base\nchild_frame: cam\ntransform:\n  translation: [1, 2, 3]\n"
                           f"  rotation_xyzw: {list(map(float, q))}\n")
    ext = read_extrinsics(path)
    np.testing.assert_allclose(ext.transform[:3, :3], rotvec_to_matrix([0.1, 0.2, 0.3]), atol=1e-12)
    np.testing.assert_allclose(ext.transform[:3, 3], [1, 2, 3])
    assert ext.mode == "fixed"


@pytest.mark.parametrize("body, message", [
    ("parent_frame: base\nchild_frame: cam\n", "missing transform"),
    ("parent_frame: base\nchild_frame: cam\ntransform:\n  translation: [1, 2]\n  rotation_xyzw: [0, 0, 0, 1]\n", "expected 3 numbers"),
    ("parent_frame: base\nchild_frame: cam\ntransform:\n  translation: [1, 2, .nan]\n  rotation_xyzw: [0, 0, 0, 1]\n", "NaN"),
    ("parent_frame: base\nchild_frame: cam\ntransform:\n  translation: [1, 2, 3]\n  rotation_xyzw: [0, 0, 0, 2]\n", "unit quaternion"),
    ("parent_frame: base\nchild_frame: cam\ntransform:\n  matrix: [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]\n",
     "not a rigid transform"),
    ("parent_frame: base\nchild_frame: cam\ntransform:\n  matrix: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\n", "must be 4x4"),
    ("parent_frame: base\nchild_frame: cam\ntransform:\n  matrix: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]\n"
     "  translation: [1, 0, 0]\n  rotation_xyzw: [0, 0, 0, 1]\n", "disagree"),
    ("parent_frame: base\nchild_frame: cam\nmode: sideways\ntransform:\n  translation: [1, 2, 3]\n  rotation_xyzw: [0, 0, 0, 1]\n", "mode"),
    ("parent_frame: base\nchild_frame: cam\ntransform: {translation: [1, 2, 3], rotation_xyzw: [0, 0, 0, 1]\n", "not valid YAML"),
])
def test_malformed_extrinsics_are_refused_with_a_reason(tmp_path, body, message):
    with pytest.raises(CalibrationFileError, match=message):
        read_extrinsics(write(tmp_path, body))


def test_samples_round_trip_and_validation(tmp_path):
    rng = np.random.default_rng(0)
    writer = SampleWriter(tmp_path / "s", base_frame="panda_link0", ee_frame="panda_hand")
    poses = [make_transform(rotvec_to_matrix(rng.normal(size=3)), rng.normal(size=3)) for _ in range(3)]
    for T in poses:
        writer.add(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), T)
    sset = read_samples(tmp_path / "s")
    assert (sset.base_frame, sset.ee_frame, len(sset.samples)) == ("panda_link0", "panda_hand", 3)
    for sample, T in zip(sset.samples, poses):
        assert sample.image_path.is_file()
        np.testing.assert_allclose(sample.T_base_ee, T, atol=1e-12)
    with pytest.raises(CalibrationFileError, match="already exists"):
        SampleWriter(tmp_path / "s")

    index = tmp_path / "s" / "samples.yaml"
    text = index.read_text()
    index.write_text(text.replace("0001.png", "missing.png", 1))
    with pytest.raises(CalibrationFileError, match="sample 1: image .*missing.png not found"):
        read_samples(tmp_path / "s")
    q = matrix_to_quat(poses[2][:3, :3])
    index.write_text(text.replace(str(list(map(float, q))).replace("'", ""), "[0.0, 0.0, 0.0, 3.0]"))
    with pytest.raises(CalibrationFileError, match="sample 2: ee_orientation_xyzw must be a unit quaternion"):
        read_samples(tmp_path / "s")
    with pytest.raises(CalibrationFileError, match="no samples.yaml"):
        read_samples(tmp_path)


def test_board_specs():
    b = BoardSpec.parse("chessboard:9x6:0.025")
    assert (b.kind, b.cols, b.rows, b.square, b.num_corners, b.orientation_unambiguous) == ("chessboard", 9, 6, 0.025, 54, True)
    pts = b.object_points()
    assert pts.shape == (54, 3) and np.allclose(pts[1], [0.025, 0, 0]) and np.allclose(pts[9], [0, 0.025, 0])
    c = BoardSpec.parse("charuco:7x5:0.04:0.03")
    assert c.dictionary == "DICT_5X5_100" and c.num_corners == 24 and str(c) == "charuco:7x5:0.04:0.03:DICT_5X5_100"
    assert np.allclose(c.object_points()[0], [0.04, 0.04, 0]) and np.allclose(c.object_points()[6], [0.04, 0.08, 0])
    assert not BoardSpec.parse("chessboard:8x6:0.02").orientation_unambiguous
    assert b.pattern_image(16).shape == ((7 + 2) * 16, (10 + 2) * 16)
    for bad in ["chessboard:9x6", "chessboard:9by6:0.02", "chessboard:9x6:-1", "charuco:7x5:0.04", "charuco:7x5:0.04:0.05",
                "charuco:7x5:0.04:0.03:DICT_NOPE", "circles:4x11:0.02", "chessboard:2x6:0.02"]:
        with pytest.raises(InvalidInputError):
            BoardSpec.parse(bad)


def test_quaternion_conversions_agree():
    rng = np.random.default_rng(3)
    for _ in range(50):
        R = rotvec_to_matrix(rng.uniform(-np.pi, np.pi, 3))
        np.testing.assert_allclose(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-12)
    R180 = rotvec_to_matrix([np.pi, 0, 0])
    np.testing.assert_allclose(quat_to_matrix(matrix_to_quat(R180)), R180, atol=1e-12)

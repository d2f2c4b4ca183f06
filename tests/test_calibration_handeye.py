"""Hand-eye on synthetic correspondences: board corners projected by a known camera, plus pixel noise."""
import numpy as np
import pytest

from magma_calibration.boards import BoardDetection, BoardSpec
from magma_calibration.camera_info import CameraInfo
from magma_calibration.errors import CalibrationError, DegenerateMotionError, TooFewViewsError
from magma_calibration.handeye import calibrate_hand_eye, calibrate_hand_eye_from_samples, check_motion
from magma_calibration.projection import base_to_pixel
from magma_calibration.samples import SampleSet
from magma_calibration.transforms import invert_transform, make_transform, rotation_angle_deg, rotvec_to_matrix

BOARD = BoardSpec.parse("chessboard:9x6:0.025")
K = np.array([[600.0, 0.0, 322.0], [0.0, 598.0, 238.0], [0.0, 0.0, 1.0]])
DIST = np.array([-0.12, 0.05, 0.0005, -0.0003, 0.0])
CENTRE = np.array([0.1, 0.0625, 0.0])  # middle of the 9x6 corner grid, board frame


def look_at(eye, target, up=(0.0, 0.0, 1.0)):
    z = np.subtract(target, eye) / np.linalg.norm(np.subtract(target, eye))
    x = np.cross(z, up) / np.linalg.norm(np.cross(z, up))
    return make_transform(np.stack([x, np.cross(z, x), z], axis=1), eye)


def observe(T_cam_board, rng, noise_px):
    pts = BOARD.object_points()
    uv, depth = base_to_pixel(pts, K, invert_transform(T_cam_board), DIST)  # camera pose in the board frame
    assert np.all(depth > 0) and np.all((uv > 0) & (uv < [640, 480]))
    return BoardDetection(np.arange(len(pts)), uv + rng.normal(0.0, noise_px, uv.shape), pts, (640, 480))


def random_tilt(rng, max_deg):
    axis = rng.normal(size=3)
    return rotvec_to_matrix(axis / np.linalg.norm(axis) * np.radians(rng.uniform(10.0, max_deg)))


def eye_to_hand_rig(n, rng, noise_px=0.2):
    """Fixed camera; the board rides on the gripper. Returns truth X, Y and the samples."""
    X = look_at((0.95, 0.25, 0.6), (0.45, 0.0, 0.22))  # T_base_cam
    Y = make_transform(rotvec_to_matrix([np.pi, 0.0, 0.3]), [-0.09, 0.06, 0.015])  # T_ee_board
    poses, dets = [], []
    while len(poses) < n:
        centre = np.array([0.45, 0.0, 0.25]) + rng.uniform(-0.08, 0.08, 3)
        R = random_tilt(rng, 35.0) @ look_at(X[:3, 3], centre)[:3, :3]
        T_base_board = make_transform(R, centre - R @ CENTRE)
        poses.append(T_base_board @ invert_transform(Y))
        dets.append(observe(invert_transform(X) @ T_base_board, rng, noise_px))
    return X, Y, poses, dets


def eye_in_hand_rig(n, rng, noise_px=0.2):
    """Wrist camera; the board lies on the table."""
    X = make_transform(rotvec_to_matrix([0.0, 0.0, np.pi / 2]) @ rotvec_to_matrix([-0.26, 0.0, 0.0]), [0.06, -0.01, 0.035])
    Y = make_transform(rotvec_to_matrix([np.pi, 0.0, 0.0]), [0.4, 0.05, 0.0])  # T_base_board, face up
    centre = Y[:3, :3] @ CENTRE + Y[:3, 3]
    poses, dets = [], []
    while len(poses) < n:
        direction = random_tilt(rng, 35.0) @ np.array([0.0, 0.0, 1.0])
        direction[2] = abs(direction[2])
        up = rotvec_to_matrix(direction * rng.uniform(-np.pi, np.pi)) @ np.array([1.0, 0.0, 0.0])
        T_base_cam = look_at(centre + direction * rng.uniform(0.35, 0.5), centre, up)
        poses.append(T_base_cam @ invert_transform(X))
        dets.append(observe(invert_transform(T_base_cam) @ Y, rng, noise_px))
    return X, Y, poses, dets


def errors(T_est, T_true):
    return np.linalg.norm(T_est[:3, 3] - T_true[:3, 3]) * 1000.0, rotation_angle_deg(T_est[:3, :3].T @ T_true[:3, :3])


@pytest.mark.parametrize("rig, mode", [(eye_to_hand_rig, "eye_to_hand"), (eye_in_hand_rig, "eye_in_hand")])
def test_recovers_the_camera_and_the_board(rig, mode):
    rng = np.random.default_rng(7)
    X, Y, poses, dets = rig(15, rng)
    result = calibrate_hand_eye(poses, dets, K, DIST, mode)
    t_mm, r_deg = errors(result.camera, X)
    assert t_mm < 1.0 and r_deg < 0.05
    t_mm, r_deg = errors(result.target, Y)
    assert t_mm < 1.0 and r_deg < 0.05
    # Noise of 0.2 px per coordinate is 0.28 px per corner: the refined fit explains all but that.
    assert 0.2 < result.residuals["reprojection_rms_px"] < 0.35
    assert result.residuals["translation_max_mm"] < 3.0 and len(result.per_sample) == 15
    assert result.to_extrinsics().parent_frame == ("base" if mode == "eye_to_hand" else "ee")


def test_exact_correspondences_give_the_exact_answer_and_refinement_helps_with_noise():
    X, _, poses, dets = eye_in_hand_rig(10, np.random.default_rng(1), noise_px=0.0)
    t_mm, r_deg = errors(calibrate_hand_eye(poses, dets, K, DIST, "eye_in_hand").camera, X)
    assert t_mm < 1e-4 and r_deg < 1e-5
    X, _, poses, dets = eye_to_hand_rig(12, np.random.default_rng(2), noise_px=0.5)
    closed = errors(calibrate_hand_eye(poses, dets, K, DIST, "eye_to_hand", refine=False).camera, X)
    refined = errors(calibrate_hand_eye(poses, dets, K, DIST, "eye_to_hand").camera, X)
    assert refined[0] < closed[0] and refined[0] < 2.0


def test_pure_translation_is_refused_before_solving():
    R = rotvec_to_matrix([np.pi, 0.0, 0.0])
    poses = [make_transform(R, [0.4 + 0.05 * i, 0.02 * i, 0.3]) for i in range(6)]
    with pytest.raises(DegenerateMotionError, match="pure translation"):
        check_motion(poses)
    nudged = [make_transform(rotvec_to_matrix([0.0, 0.0, np.radians(1.0 * i)]) @ R, [0.4, 0.0, 0.3]) for i in range(4)]
    with pytest.raises(DegenerateMotionError, match="too little rotation"):
        check_motion(nudged)


def test_rotations_about_a_single_axis_are_refused():
    poses = [make_transform(rotvec_to_matrix([0.0, 0.0, np.radians(25.0 * i)]), [0.4, 0.1 * i, 0.3]) for i in range(5)]
    with pytest.raises(DegenerateMotionError, match="about one axis"):
        check_motion(poses)
    X, _, good, _ = eye_to_hand_rig(5, np.random.default_rng(0))
    stats = check_motion(good)
    assert stats.max_rotation_deg > 20 and stats.axis_spread_deg > 5


def test_too_few_samples():
    X, _, poses, dets = eye_to_hand_rig(2, np.random.default_rng(0))
    with pytest.raises(TooFewViewsError, match="at least 3 samples"):
        calibrate_hand_eye(poses, dets, K, DIST, "eye_to_hand")
    with pytest.raises(CalibrationError, match="2 robot poses but 1"):
        calibrate_hand_eye(poses, dets[:1], K, DIST, "eye_to_hand")
    with pytest.raises(CalibrationError, match="mode"):
        calibrate_hand_eye(poses, dets, K, DIST, "eye_on_table")


def test_a_board_that_looks_the_same_turned_round_is_refused(tmp_path):
    camera = CameraInfo(640, 480, K, DIST)
    with pytest.raises(CalibrationError, match="ambiguous"):
        calibrate_hand_eye_from_samples(SampleSet(tmp_path, []), BoardSpec.parse("chessboard:8x6:0.025"), camera, "eye_to_hand")

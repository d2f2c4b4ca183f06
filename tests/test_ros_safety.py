"""The controller's pure parts: safety gate and e-stop latch, trace lifting, waypoint following (no DDS)."""
from __future__ import annotations

import numpy as np
import pytest

from camera_fixtures import sim_camera_pose
from magma_calibration.extrinsics import Extrinsics, write_extrinsics
from magma_calibration.projection import base_to_pixel
from magma_calibration.transforms import matrix_to_quat, quat_to_matrix, rotvec_to_matrix
from magma_core.errors import InvalidInputError
from magma_core.som.marks import Mark, MarkSet
from magma_core.tom.types import Trace
from magma_ros.follower import WaypointFollower, plan_from_deltas
from magma_ros.lifting import camera_pose_from_extrinsics, lift_trace, load_extrinsics, select_gripper_trace
from magma_ros.safety import EStopLatch, SafetyGate, SafetyLimits, limit_step, staleness_reason

DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # tool pointing down
NOW = 10_000_000_000


def pose(x, y, z, q=DOWN):
    return np.concatenate([[x, y, z], q])


# --------------------------------------------------------------------------- safety limits and gate


def test_per_step_limits_follow_the_speeds_and_rate():
    assert SafetyLimits(max_linear_speed=0.25, control_hz=20).step_limit == pytest.approx(0.0125)
    assert SafetyLimits(max_angular_speed=2.0, control_hz=20).angle_limit == pytest.approx(0.1)


@pytest.mark.parametrize("kwargs,message", [
    ({"workspace_low": (0.0, 0.0, 1.0), "workspace_high": (1.0, 1.0, 0.5)}, "empty"),
    ({"workspace_mode": "bounce"}, "workspace_mode"),
    ({"workspace_margin": -0.01}, "workspace_margin"),
    ({"max_step": 0.0}, "max_step must be a positive"),
    ({"stale_after_s": float("nan")}, "stale_after_s"),
])
def test_invalid_limits_raise(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        SafetyLimits(**kwargs)


def test_limit_step_caps_translation_and_rotation():
    current = pose(0.4, 0.0, 0.3)
    target = pose(0.5, 0.0, 0.3, matrix_to_quat(rotvec_to_matrix([0.0, 0.0, 1.0]) @ quat_to_matrix(DOWN)))
    out = limit_step(current, target, max_distance=0.02, max_angle=0.1)
    np.testing.assert_allclose(out[:3], [0.42, 0.0, 0.3])
    turned = quat_to_matrix(out[3:]) @ quat_to_matrix(DOWN).T
    assert np.degrees(np.arccos((np.trace(turned) - 1) / 2)) == pytest.approx(np.degrees(0.1), abs=1e-6)
    near = pose(0.405, 0.0, 0.3)
    np.testing.assert_allclose(limit_step(current, near, 0.02, 0.1), near)


def test_gate_passes_a_close_target_unchanged():
    gate = SafetyGate(SafetyLimits())
    verdict = gate.check(pose(0.41, 0.0, 0.3), 0.7, pose(0.4, 0.0, 0.3), source_stamp_ns=NOW - 100_000_000, now_ns=NOW)
    assert not verdict.hold and verdict.code == "ok" and verdict.level == "OK"
    np.testing.assert_allclose(verdict.target, pose(0.41, 0.0, 0.3))
    assert verdict.gripper == 0.7


def test_gate_limits_the_commanded_speed_and_the_lead_over_the_arm():
    gate = SafetyGate(SafetyLimits(max_step=0.025, max_linear_speed=0.2, control_hz=20))
    far, arm = pose(0.6, 0.0, 0.3), pose(0.4, 0.0, 0.3)
    verdict = gate.check(far, 1.4, arm, source_stamp_ns=NOW, now_ns=NOW)
    np.testing.assert_allclose(verdict.target[:3], [0.41, 0.0, 0.3])  # 0.2 m/s at 20 Hz, from the arm at first
    assert verdict.gripper == 1.0  # clipped to 0..1
    # The next target moves on from the previous one, not from the (lagging) arm ...
    np.testing.assert_allclose(gate.check(far, 0.0, arm, source_stamp_ns=NOW, now_ns=NOW).target[:3], [0.42, 0.0, 0.3])
    # ... but never more than max_step ahead of it.
    for _ in range(5):
        verdict = gate.check(far, 0.0, arm, source_stamp_ns=NOW, now_ns=NOW)
    np.testing.assert_allclose(verdict.target[:3], [0.425, 0.0, 0.3])
    # A hold forgets the previous target: the next one starts from the arm again.
    assert gate.check(far, 0.0, arm, source_stamp_ns=None, now_ns=NOW).hold
    np.testing.assert_allclose(gate.check(far, 0.0, arm, source_stamp_ns=NOW, now_ns=NOW).target[:3], [0.41, 0.0, 0.3])


def test_workspace_reject_holds_and_clip_moves_inside():
    current = pose(0.8, 0.0, 0.3)
    outside = pose(0.95, 0.0, 0.3)
    rejected = SafetyGate(SafetyLimits()).check(outside, 0.0, current, source_stamp_ns=NOW, now_ns=NOW)
    assert rejected.hold and rejected.code == "workspace" and "outside the workspace" in rejected.reason
    clipped = SafetyGate(SafetyLimits(workspace_mode="clip", max_step=1.0, max_linear_speed=100.0)).check(
        outside, 0.0, current, source_stamp_ns=NOW, now_ns=NOW)
    assert clipped.code == "clipped" and clipped.level == "WARN"
    np.testing.assert_allclose(clipped.target[:3], [0.85, 0.0, 0.3])
    # Just below the box's floor (a grasp point rounded a depth bin too low): clipped even in reject mode.
    low = pose(0.44, 0.0, 0.001)
    nudged = SafetyGate(SafetyLimits(max_step=1.0, max_linear_speed=100.0)).check(
        low, 0.0, pose(0.44, 0.0, 0.02), source_stamp_ns=NOW, now_ns=NOW)
    assert nudged.code == "clipped" and not nudged.hold
    np.testing.assert_allclose(nudged.target[:3], [0.44, 0.0, 0.005])
    strict = SafetyGate(SafetyLimits(workspace_margin=0.0)).check(low, 0.0, pose(0.44, 0.0, 0.02), source_stamp_ns=NOW,
                                                                  now_ns=NOW)
    assert strict.hold and strict.code == "workspace"


@pytest.mark.parametrize("target,current,stamp,code", [
    (pose(np.nan, 0, 0.3), pose(0.4, 0, 0.3), NOW, "nan"),
    (pose(0.4, 0, 0.3), pose(0.4, np.inf, 0.3), NOW, "nan"),
    (pose(0.4, 0, 0.3, [0, 0, 0, 0]), pose(0.4, 0, 0.3), NOW, "nan"),
    (pose(0.4, 0, 0.3), None, NOW, "no_pose"),
    (pose(0.4, 0, 0.3), pose(0.4, 0, 0.3), NOW - 1_500_000_000, "stale"),
    (pose(0.4, 0, 0.3), pose(0.4, 0, 0.3), NOW + 5_000_000_000, "stale"),
    (pose(0.4, 0, 0.3), pose(0.4, 0, 0.3), None, "stale"),
])
def test_gate_holds_on_bad_or_stale_input(target, current, stamp, code):
    verdict = SafetyGate(SafetyLimits(stale_after_s=1.0)).check(target, 0.0, current, source_stamp_ns=stamp, now_ns=NOW)
    assert verdict.hold and verdict.code == code and verdict.reason


def test_staleness_reason_texts():
    assert staleness_reason(NOW - 500_000_000, NOW, 1.0) is None
    assert "1.50 s old" in staleness_reason(NOW - 1_500_000_000, NOW, 1.0, "trace")
    assert "future" in staleness_reason(NOW + 2_000_000_000, NOW, 1.0)


def test_estop_latch_needs_an_armed_reset_to_release():
    latch = EStopLatch()
    assert latch.update(False) == "unchanged" and not latch.engaged
    assert latch.update(True) == "engaged"
    assert latch.update(False) == "ignored" and latch.engaged
    assert latch.arm_reset()
    assert latch.update(True) == "unchanged" and not latch.reset_armed  # a new stop cancels the armed reset
    latch.arm_reset()
    assert latch.update(False) == "released" and not latch.engaged
    assert not latch.arm_reset()  # nothing to reset


def test_gate_holds_while_estop_latched():
    gate = SafetyGate(SafetyLimits())
    gate.estop.update(True)
    verdict = gate.check(pose(0.4, 0, 0.3), 0.0, pose(0.4, 0, 0.3), source_stamp_ns=NOW, now_ns=NOW)
    assert verdict.hold and verdict.code == "estop" and verdict.level == "ERROR"


# --------------------------------------------------------------------------- lifting

K = np.array([[120.0, 0.0, 64.0], [0.0, 120.0, 63.0], [0.0, 0.0, 1.0]])
SIZE = (128, 128)


T_BASE_CAM = sim_camera_pose()


def _table_depth() -> np.ndarray:
    """Depth image of the z = 0 table plane seen by the camera above."""
    u, v = np.meshgrid(np.arange(SIZE[0]), np.arange(SIZE[1]))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=float)], axis=-1)
    rays_base = rays @ T_BASE_CAM[:3, :3].T
    t = -T_BASE_CAM[2, 3] / rays_base[..., 2]  # camera z along the ray is t (the ray has unit z in camera axes)
    return t.astype(np.float32)


def test_2_5d_trace_lifts_to_the_points_it_was_projected_from():
    points = np.array([[0.45, 0.05, 0.20], [0.47, 0.03, 0.15], [0.50, 0.0, 0.05]])
    uv, depth = base_to_pixel(points, K, T_BASE_CAM)
    trace = Trace(mark_id=1, points=uv, visible=np.ones(3, bool), depth=depth, gripper=[0.0, 0.0, 1.0])
    lifted = lift_trace(trace, K, T_BASE_CAM)
    np.testing.assert_allclose(lifted.positions, points, atol=1e-9)
    assert lifted.sources == ("trace_depth",) * 3
    np.testing.assert_array_equal(lifted.gripper, [0.0, 0.0, 1.0])


def test_2d_trace_uses_the_depth_image_then_the_work_plane():
    on_table = np.array([[0.45, 0.05, 0.0], [0.50, -0.05, 0.0]])
    uv = np.round(base_to_pixel(on_table, K, T_BASE_CAM)[0])  # pixel centres: the depth there is exact
    off_image = np.array([[-30.0, 40.0]])
    trace = Trace(mark_id=1, points=np.vstack([uv, off_image]), visible=np.ones(3, bool))
    lifted = lift_trace(trace, K, T_BASE_CAM, depth_image=_table_depth(), work_plane_z=0.02, image_size=SIZE)
    assert lifted.sources == ("depth_image", "depth_image", "plane")
    np.testing.assert_allclose(lifted.positions[:2, :2], on_table[:, :2], atol=5e-3)
    np.testing.assert_allclose(lifted.positions[:2, 2], 0.0, atol=2e-4)  # on the table the depth image shows
    assert lifted.positions[2, 2] == pytest.approx(0.02)
    assert lifted.source_counts() == {"depth_image": 2, "plane": 1}


def test_2d_trace_with_nan_depth_falls_back_to_the_work_plane():
    uv, _ = base_to_pixel(np.array([[0.5, 0.0, 0.0]]), K, T_BASE_CAM)
    holes = np.full((SIZE[1], SIZE[0]), np.nan, np.float32)
    trace = Trace(mark_id=1, points=uv, visible=[True], depth=[np.nan])
    lifted = lift_trace(trace, K, T_BASE_CAM, depth_image=holes, work_plane_z=0.0, image_size=SIZE)
    assert lifted.sources == ("plane",)
    np.testing.assert_allclose(lifted.positions[0], [0.5, 0.0, 0.0], atol=1e-9)


@pytest.mark.parametrize("trace,kwargs,message", [
    (Trace(mark_id=1, points=[[np.nan, 3.0]], visible=[True]), {}, "NaN/inf pixels at steps \\[0\\]"),
    (Trace(mark_id=1, points=[[3.0, 3.0]], visible=[True]), {"depth_image": np.ones((4, 4), np.float32), "image_size": SIZE},
     "depth image is 4x4"),
    (Trace(mark_id=1, points=[[64.0, -400.0]], visible=[True]), {}, "step 0 .* has no depth"),
])
def test_lifting_errors_name_the_problem(trace, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        lift_trace(trace, K, T_BASE_CAM, **kwargs)


def test_select_gripper_trace_prefers_the_gripper_mark():
    traces = [Trace(mark_id=i, points=[[i, i]], visible=[True]) for i in (1, 2, 3)]
    marks = MarkSet([Mark(id=1, point=(1, 1), kind="object"), Mark(id=2, point=(2, 2), kind="gripper")])
    assert select_gripper_trace(traces, marks).mark_id == 2
    assert select_gripper_trace(traces).mark_id == 1
    with pytest.raises(InvalidInputError, match="no marks"):
        select_gripper_trace([])


def test_extrinsics_file_and_wrist_camera(tmp_path):
    path = write_extrinsics(tmp_path / "ext.yaml", Extrinsics("base", "camera_optical", T_BASE_CAM))
    ext = load_extrinsics(path)
    np.testing.assert_allclose(camera_pose_from_extrinsics(ext), T_BASE_CAM, atol=1e-9)
    wrist = Extrinsics("ee", "wrist_optical", np.eye(4), mode="eye_in_hand")
    np.testing.assert_allclose(camera_pose_from_extrinsics(wrist, pose(0.4, 0.1, 0.3, [0, 0, 0, 1]))[:3, 3], [0.4, 0.1, 0.3])
    with pytest.raises(InvalidInputError, match="needs the current end-effector pose"):
        camera_pose_from_extrinsics(wrist)
    with pytest.raises(InvalidInputError, match="no extrinsics file"):
        load_extrinsics("")
    with pytest.raises(InvalidInputError):
        load_extrinsics(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------- following


def _plan(*xs, gripper=None):
    return np.array([pose(x, 0.0, 0.3) for x in xs]), gripper


def test_follower_aims_at_the_next_unreached_waypoint_and_advances():
    f = WaypointFollower(reach_tolerance=0.01, gripper_settle_s=0.0)
    f.set_plan(*_plan(0.40, 0.42, 0.44, 0.46))
    assert f.step([0.40, 0, 0.3], NOW).target[0] == pytest.approx(0.42)  # step 0 is "now"
    cmd = f.step([0.415, 0, 0.3], NOW)
    assert cmd.index == 2 and cmd.target[0] == pytest.approx(0.44)
    cmd = f.step([0.46, 0, 0.3], NOW)
    assert cmd.index == 2 and not cmd.finished  # waypoints are reached in order, none is skipped
    f.step([0.44, 0, 0.3], NOW)
    cmd = f.step([0.46, 0, 0.3], NOW)
    assert cmd.index == 3 and cmd.finished


def test_follower_lookahead_skips_ahead():
    f = WaypointFollower(lookahead=2, gripper_settle_s=0.0)
    f.set_plan(*_plan(0.40, 0.42, 0.44, 0.46, 0.48))
    assert f.step([0.40, 0, 0.3], NOW).target[0] == pytest.approx(0.46)
    assert f.step([0.40, 0, 0.3], NOW).index == 3


def test_gripper_changes_on_reaching_and_dwells_before_moving_on():
    f = WaypointFollower(gripper_settle_s=0.5)
    f.set_plan(*_plan(0.40, 0.42, 0.44, gripper=np.array([0.0, 1.0, 1.0])))
    cmd = f.step([0.40, 0, 0.3], NOW)
    assert cmd.gripper == 0.0 and cmd.target[0] == pytest.approx(0.42)  # not closed on the way
    cmd = f.step([0.42, 0, 0.3], NOW)
    assert cmd.gripper == 1.0 and cmd.dwelling and cmd.target[0] == pytest.approx(0.42)
    f.set_plan(*_plan(0.42, 0.50, gripper=np.array([1.0, 1.0])))  # a new plan does not cut the dwell short
    assert f.step([0.42, 0, 0.3], NOW + 400_000_000).dwelling
    cmd = f.step([0.42, 0, 0.3], NOW + 600_000_000)
    assert not cmd.dwelling and cmd.target[0] == pytest.approx(0.50) and cmd.gripper == 1.0


def test_unknown_gripper_steps_keep_the_command():
    f = WaypointFollower(gripper_settle_s=0.0, initial_gripper=1.0)
    f.set_plan(*_plan(0.40, 0.42, gripper=np.array([np.nan, np.nan])))
    assert f.step([0.42, 0, 0.3], NOW).gripper == 1.0



def test_the_first_row_of_a_plan_never_switches_the_gripper():
    # Row 0 is the hand as the frame showed it. Just after the fingers opened at the place, a plan can
    # still read them as closed there ("closed now, open next"): the arm must not close them again.
    f = WaypointFollower(gripper_settle_s=0.5, initial_gripper=0.0)
    f.set_plan(*_plan(0.40, 0.40, 0.40, gripper=np.array([1.0, 0.0, 0.0])), ee_position=[0.40, 0, 0.3])
    for t in range(3):
        cmd = f.step([0.40, 0, 0.3], NOW + t * 50_000_000)
        assert cmd.gripper == 0.0 and not cmd.dwelling
    assert f.switch_settled_ns == 0


def test_starting_over_drops_the_plan_and_refuses_plans_from_older_frames():
    f = WaypointFollower(gripper_settle_s=0.0)
    assert f.set_plan(*_plan(0.40, 0.42), source_stamp_ns=NOW - 50_000_000)
    f.start_over(NOW)  # a new instruction: the previous episode's plans are void
    assert f.step([0.40, 0, 0.3], NOW) is None
    assert not f.set_plan(*_plan(0.40, 0.44), source_stamp_ns=NOW - 10_000_000)  # planned from the old scene
    assert f.step([0.40, 0, 0.3], NOW) is None
    assert f.set_plan(*_plan(0.40, 0.46), source_stamp_ns=NOW + 10_000_000)
    assert f.step([0.40, 0, 0.3], NOW).target[0] == pytest.approx(0.46)


def test_a_gripper_switch_planned_from_afar_waits_for_a_plan_seen_from_close_by():
    f = WaypointFollower(gripper_settle_s=0.5, gripper_confirm_distance=0.02)
    # Planned while the hand was 6 cm away: go there, but do not close on that plan's word.
    f.set_plan(*_plan(0.40, 0.43, 0.46, gripper=np.array([0.0, 0.0, 1.0])), ee_position=[0.40, 0, 0.3])
    f.step([0.40, 0, 0.3], NOW)
    f.step([0.43, 0, 0.3], NOW)
    cmd = f.step([0.46, 0, 0.3], NOW)
    assert cmd.confirming and not cmd.dwelling and cmd.gripper == 0.0 and cmd.target[0] == pytest.approx(0.46)
    # The next plan comes from a frame with the hand 1 cm from the grasp point: it closes there.
    f.set_plan(*_plan(0.45, 0.46, 0.46, gripper=np.array([0.0, 1.0, 1.0])), ee_position=[0.46, 0, 0.3])
    cmd = f.step([0.46, 0, 0.3], NOW + 100_000_000)
    assert cmd.dwelling and cmd.gripper == 1.0 and not cmd.confirming
    with pytest.raises(InvalidInputError, match="gripper_confirm_distance"):
        WaypointFollower(gripper_confirm_distance=0.0)

def test_follower_rejects_bad_plans_and_has_none_after_clear():
    f = WaypointFollower()
    with pytest.raises(InvalidInputError, match="NaN"):
        f.set_plan(np.array([pose(np.nan, 0, 0)]))
    with pytest.raises(InvalidInputError, match="2 poses but 3 gripper"):
        f.set_plan(*_plan(0.4, 0.5, gripper=np.zeros(3)))
    f.set_plan(*_plan(0.4, 0.5))
    f.clear()
    assert f.step([0.4, 0, 0.3], NOW) is None


def test_a_new_plan_starts_where_the_arm_is_not_at_step_one():
    f = WaypointFollower(reach_tolerance=0.002, gripper_settle_s=0.0)
    f.set_plan(*_plan(0.40, 0.42, 0.44, 0.46), ee_position=[0.435, 0, 0.3])  # between steps 1 and 2, nearer 2
    assert f.step([0.435, 0, 0.3], NOW).target[0] == pytest.approx(0.44)
    f.set_plan(*_plan(0.40, 0.42, 0.44, 0.46), ee_position=[0.445, 0, 0.3])  # just past step 2
    assert f.index == 3
    f.set_plan(*_plan(0.40, 0.42, 0.44, 0.46))  # no position given: step 0 is taken as reached
    assert f.index == 1


def test_a_new_plan_does_not_skip_a_gripper_change():
    f = WaypointFollower(gripper_settle_s=0.5)
    f.set_plan(*_plan(0.40, 0.42, 0.44, gripper=np.array([0.0, 1.0, 1.0])), ee_position=[0.427, 0, 0.3])
    assert f.index == 1  # past step 1, but the gripper closes there: go back to it
    cmd = f.step([0.427, 0, 0.3], NOW)
    assert not cmd.dwelling and cmd.gripper == 0.0 and cmd.target[0] == pytest.approx(0.42)  # 7 mm: not close enough
    cmd = f.step([0.423, 0, 0.3], NOW)
    assert cmd.dwelling and cmd.gripper == 1.0 and cmd.target[0] == pytest.approx(0.42)


def test_lookahead_stops_at_a_gripper_change():
    f = WaypointFollower(lookahead=3, gripper_settle_s=0.0)
    f.set_plan(*_plan(0.40, 0.42, 0.44, 0.46, 0.48, gripper=np.array([0.0, 0.0, 1.0, 1.0, 1.0])))
    assert f.step([0.40, 0, 0.3], NOW).target[0] == pytest.approx(0.44)


def test_action_deltas_chain_from_the_measured_pose():
    start = pose(0.4, 0.0, 0.3, [0, 0, 0, 1])
    actions = np.array([[0.01, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0], [0.0, 0.02, 0.0, 0.0, 0.0, 0.1, 1.0]])
    poses, gripper = plan_from_deltas(start, actions)
    np.testing.assert_allclose(poses[:, :3], [[0.4, 0, 0.3], [0.41, 0, 0.3], [0.41, 0.02, 0.3]])
    np.testing.assert_allclose(quat_to_matrix(poses[2, 3:]), rotvec_to_matrix([0, 0, 0.2]), atol=1e-12)
    np.testing.assert_array_equal(np.isnan(gripper), [True, False, False])
    assert gripper[2] == 1.0


def test_a_plan_from_a_frame_before_the_gripper_settled_does_not_undo_the_switch():
    f = WaypointFollower(gripper_settle_s=0.5)
    assert f.set_plan(*_plan(0.40, 0.42, 0.44, gripper=np.array([0.0, 1.0, 1.0])), source_stamp_ns=NOW - 100_000_000)
    f.step([0.40, 0, 0.3], NOW)
    assert f.step([0.42, 0, 0.3], NOW).dwelling  # closes at 0.42 and dwells until NOW + 0.5 s
    # A late plan from a frame taken while the fingers were still open would open them again: turned down.
    late = _plan(0.42, 0.43, gripper=np.array([0.0, 0.0]))
    assert not f.set_plan(*late, ee_position=[0.42, 0, 0.3], source_stamp_ns=NOW + 200_000_000)
    cmd = f.step([0.42, 0, 0.3], NOW + 700_000_000)
    assert cmd.gripper == 1.0 and cmd.target[0] == pytest.approx(0.44)  # the current plan goes on, still closed
    # A frame taken after the switch settled shows the closed fingers: its plan is followed.
    assert f.set_plan(*_plan(0.42, 0.50, gripper=np.array([1.0, 1.0])), source_stamp_ns=NOW + 600_000_000)
    assert f.step([0.42, 0, 0.3], NOW + 800_000_000).target[0] == pytest.approx(0.50)

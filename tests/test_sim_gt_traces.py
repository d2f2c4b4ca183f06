"""Ground-truth Trace-of-Mark, camera model and recorded expert episodes."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pybullet")

from magma_core.data.episode import CameraParams  # noqa: E402
from magma_core.errors import InvalidInputError  # noqa: E402
from magma_sim.camera import CameraConfig, intrinsics_from_fov, project_points, zbuffer_to_depth  # noqa: E402
from magma_sim.env import make_env  # noqa: E402
from magma_sim.gt_traces import compute_gt_traces  # noqa: E402
from magma_sim.robot import GRIPPER_LINKS  # noqa: E402
from magma_sim.rollout import rollout_expert  # noqa: E402
from magma_sim.rotations import yaw_quat_down  # noqa: E402


def _camera(width=64, height=48) -> CameraParams:
    cfg = CameraConfig()
    return CameraParams(width, height, intrinsics_from_fov(width, height, cfg.fov_deg), cfg.extrinsics())


def test_projection_of_known_points():
    cam = _camera()
    E = cam.extrinsics
    on_axis = E[:3, 3] + 0.8 * E[:3, 2]
    np.testing.assert_allclose(project_points(on_axis, cam.intrinsics, E), [cam.intrinsics[0, 2], cam.intrinsics[1, 2], 0.8])
    right_and_down = E[:3, 3] + 1.0 * E[:3, 2] + 0.1 * E[:3, 0] + 0.05 * E[:3, 1]
    u, v, d = project_points(right_and_down, cam.intrinsics, E)
    fx = cam.intrinsics[0, 0]
    assert (u, v, d) == pytest.approx((cam.intrinsics[0, 2] + 0.1 * fx, cam.intrinsics[1, 2] + 0.05 * fx, 1.0))
    behind = E[:3, 3] - 0.5 * E[:3, 2]
    assert project_points(behind, cam.intrinsics, E)[2] == pytest.approx(-0.5)


def test_zbuffer_conversion():
    near, far = 0.1, 4.0
    z = np.array([0.1, 1.0, 2.5])
    zbuf = (1 / near - 1 / z) / (1 / near - 1 / far)  # what an OpenGL depth buffer stores
    np.testing.assert_allclose(zbuffer_to_depth(np.append(zbuf, 1.0), near, far)[:3], z, rtol=1e-5)
    assert np.isnan(zbuffer_to_depth(np.array([1.0]), near, far)[0])


def test_traces_from_points_shapes_and_clamping():
    cam = _camera()
    T, M, n = 5, 2, 3
    pts = np.zeros((T, M, 3))
    pts[:, 0] = np.linspace([0.4, -0.1, 0.1], [0.6, 0.1, 0.3], T)
    pts[:, 1] = [0.5, 0.0, 0.02]
    grip = np.array([0, 0, 1, 1, 0], dtype=float)
    traces, tgrip = compute_gt_traces(pts, grip, cam, n)
    assert traces.shape == (T, M, n + 1, 3) and tgrip.shape == (T, n + 1)
    proj = project_points(pts, cam.intrinsics, cam.extrinsics)
    for t in range(T):
        for k in range(n + 1):
            src = min(t + k, T - 1)  # steps past the end repeat the last one
            np.testing.assert_allclose(traces[t, :, k], proj[src], rtol=1e-6)
            assert tgrip[t, k] == grip[src]
    assert np.ptp(traces[:, 1, :, :2], axis=(0, 1)).max() < 1e-4  # a still object makes a still trace


@pytest.mark.parametrize("points, grip, n", [(np.zeros((4, 3)), np.zeros(4), 2), (np.zeros((4, 1, 3)), np.zeros(3), 2),
                                             (np.full((2, 1, 3), np.nan), np.zeros(2), 2), (np.zeros((2, 1, 3)), np.zeros(2), -1)])
def test_trace_bad_input(points, grip, n):
    with pytest.raises(InvalidInputError):
        compute_gt_traces(points, grip, _camera(), n)


def _ray_plane_depth(cam: CameraParams, z_plane: float) -> np.ndarray:
    u, v = np.meshgrid(np.arange(cam.width), np.arange(cam.height))
    K, E = cam.intrinsics, cam.extrinsics
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], -1)
    rays = rays_cam @ E[:3, :3].T
    t = (z_plane - E[2, 3]) / rays[..., 2]
    return t  # camera z of the hit point, since rays_cam has z = 1


def test_rendered_depth_and_pixels_match_the_pinhole_model():
    """Intrinsics, extrinsics and depth conversion agree with what the renderer draws (the table plane)."""
    with make_env("push", image_size=(96, 72), render=True, segmentation=True) as env:
        obs, info = env.reset(seed=0)
        seg = info["privileged"]["segmentation"]
        table = seg == 0  # the table is the first body created
        table[: int(0.6 * seg.shape[0])] = False  # the near part of the table, clear of the arm
        expected = _ray_plane_depth(env.camera_params, 0.0)
        err = np.abs(obs["depth"][table] - expected[table])
        assert table.sum() > 500 and np.median(err) < 2e-3 and err.max() < 1e-2


def _gripper_pixels(seg: np.ndarray, robot: int) -> np.ndarray:
    body = seg & ((1 << 24) - 1)
    link = (seg >> 24) - 1
    return (seg >= 0) & (body == robot) & np.isin(link, GRIPPER_LINKS)


@pytest.mark.parametrize("target", [[0.45, 0.0, 0.15], [0.6, 0.15, 0.08], [0.38, -0.2, 0.25]])
def test_projected_gripper_mark_lies_on_the_rendered_gripper(target):
    with make_env("stack", image_size=128, control="waypoint", segmentation=True) as env:
        env.reset(seed=1)
        for _ in range(12):  # fingers closed, so the TCP sits between touching finger pads
            obs, _, _, _, info = env.step(np.concatenate([target, yaw_quat_down(0.3), [1.0]]))
        u, v, depth = project_points(info["privileged"]["mark_points"][0], obs["intrinsics"], obs["extrinsics"])
        mask = _gripper_pixels(info["privileged"]["segmentation"], info["privileged"]["robot_body_id"])
        ys, xs = np.nonzero(mask)
        nearest = np.hypot(xs - u, ys - v)
        assert nearest.min() < 1.5  # on (or right beside) the rendered gripper
        close = nearest < 3.0
        gripper_depths = obs["depth"][ys[close], xs[close]]
        assert np.min(np.abs(gripper_depths - depth)) < 0.02


def test_rollout_expert_records_a_consistent_episode():
    ep = rollout_expert("pick_place", 4, image_size=32, n_future=8)
    T = len(ep)
    assert ep.success and ep.seed == 4 and ep.task == "pick_place" and ep.fps == 10.0
    assert ep.rgb.shape == (T, 32, 32, 3) and ep.depth.shape == (T, 32, 32) and ep.depth.dtype == np.float32
    assert ep.actions.shape == (T, 7) and ep.waypoints.shape == (T, 8) and ep.gt_traces.shape == (T, 3, 9, 3)
    assert ep.metadata["mark_names"][0] == "gripper"
    # both action formats describe the same targets
    np.testing.assert_allclose(ep.waypoints[:, :3] - ep.ee_pose[:, :3], ep.actions[:, :3], atol=1e-12)
    np.testing.assert_array_equal(ep.waypoints[:, 7], ep.actions[:, 6])
    # mark 0 is the TCP; a trace's step k is the mark's position k steps later
    proj = project_points(ep.ee_pose[:, :3], ep.camera.intrinsics, ep.camera.extrinsics)
    np.testing.assert_allclose(ep.gt_traces[:, 0, 0], proj, atol=1e-3)
    np.testing.assert_allclose(ep.gt_traces[:-3, :, 3], ep.gt_traces[3:, :, 0], atol=1e-4)
    # the trace's gripper state is the command in effect: it closes for the grasp and opens at release
    assert ep.gt_trace_gripper[0, 0] == 0 and ep.gt_trace_gripper.max() == 1
    closed_from = int(np.argmax(ep.actions[:, 6] > 0.5))
    assert ep.gt_trace_gripper[closed_from, 0] == 0 and ep.gt_trace_gripper[closed_from + 1, 0] == 1
    # the object mark ends on the pad's mark (same place in the image, a block height above it)
    np.testing.assert_allclose(ep.gt_traces[-1, 1, -1, :2], ep.gt_traces[-1, 2, -1, :2], atol=3.0)


def test_recorded_deltas_replay_to_the_same_outcome():
    """The ee_delta actions of a waypoint-driven episode reproduce it when replayed open loop."""
    ep = rollout_expert("stack", 2, image_size=32)
    with make_env("stack", render=False, control="ee_delta", terminate_on_success=False) as env:
        obs, info = env.reset(seed=2)
        for t, action in enumerate(ep.actions):
            np.testing.assert_allclose(obs["ee_pose"], ep.ee_pose[t], atol=1e-6)
            obs, _, _, _, info = env.step(action)
        assert info["success"]

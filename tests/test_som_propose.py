"""Run-time Set-of-Mark proposal: a ray-cast synthetic RGB-D scene with exact answers, then the PyBullet tabletop."""
from __future__ import annotations

import numpy as np
import pytest

from camera_fixtures import pinhole, sim_camera_pose
from magma_core.colors import color_rgb, color_words, nearest_color
from magma_core.errors import InvalidInputError
from magma_core.geometry import project, unproject, yaw_down_quat
from magma_core.som.plane import fit_table_plane
from magma_core.som.propose import GRIPPER_MARK_ID, ProposalConfig, mark_recall, propose_marks

W = H = 128
TABLE_RGB = (148, 131, 111)


def _camera(width=W, height=H, fov_deg=50.0):
    return pinhole(width, height, (height / 2.0) / np.tan(np.deg2rad(fov_deg) / 2.0)), sim_camera_pose()


def _render(boxes, K, T, width=W, height=H):
    """Ray-cast a table (z = 0, |x - 0.4| < 0.55, |y| < 0.65) and boxes (centre, half extents, yaw, rgb 0..255).

    Top faces get the full colour, side faces 65 % of it (the shading a renderer adds).
    """
    vv, uu = np.mgrid[0:height, 0:width].astype(np.float64)
    rays_cam = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], axis=-1)
    dirs = rays_cam @ T[:3, :3].T  # base frame; the camera z component of each is 1
    origin = T[:3, 3]
    best = np.full((height, width), np.inf)
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    t_table = -origin[2] / dirs[..., 2]
    hit = origin + dirs * t_table[..., None]
    on_table = (t_table > 0) & (np.abs(hit[..., 0] - 0.4) < 0.55) & (np.abs(hit[..., 1]) < 0.65)
    best[on_table] = t_table[on_table]
    rgb[on_table] = TABLE_RGB
    for centre, half, yaw, colour in boxes:
        c, s = np.cos(yaw), np.sin(yaw)
        R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        o = R.T @ (origin - np.asarray(centre, dtype=np.float64))
        d = dirs @ R
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-np.asarray(half) - o) / d
            t2 = (np.asarray(half) - o) / d
        near = np.nanmax(np.minimum(t1, t2), axis=-1)
        far = np.nanmin(np.maximum(t1, t2), axis=-1)
        axis = np.nanargmax(np.minimum(t1, t2), axis=-1)
        hit = (far >= near) & (near > 0) & (near < best)
        best[hit] = near[hit]
        shade = np.where(axis == 2, 1.0, 0.65)[..., None]
        rgb[hit] = np.clip(np.asarray(colour) * shade, 0, 255).astype(np.uint8)[hit]
    depth = np.where(np.isfinite(best), best, np.nan).astype(np.float32)
    return rgb, depth


def _obs(boxes, ee_xyz=(0.35, 0.0, 0.40), width=W, height=H):
    K, T = _camera(width, height)
    rgb, depth = _render(boxes, K, T, width, height)
    return {"rgb": rgb, "depth": depth, "intrinsics": K, "extrinsics": T,
            "ee_pose": np.concatenate([ee_xyz, yaw_down_quat(0.0)]), "gripper": np.array([0.08]),
            "instruction": "put the red cube on the green pad"}


RED_CUBE = ((0.55, 0.12, 0.02), (0.02, 0.02, 0.02), 0.3, color_rgb("red"))
GREEN_PAD = ((0.50, -0.12, 0.002), (0.05, 0.05, 0.002), -0.2, color_rgb("green"))
WHITE_BLOCK = ((0.42, 0.02, 0.015), (0.015, 0.015, 0.015), 0.0, color_rgb("white"))


def _by_label(proposal, label):
    found = [i for i in proposal.info.values() if i.label == label]
    assert len(found) == 1, f"expected one {label!r}, got {[i.label for i in proposal.info.values()]}"
    return found[0]


def test_synthetic_scene_gives_each_thing_one_mark_with_its_3d_facts():
    obs = _obs([RED_CUBE, GREEN_PAD, WHITE_BLOCK])
    proposal = propose_marks(obs)
    assert proposal.depth_used and proposal.plane.source == "depth"
    assert abs(proposal.plane.z_at(0.5, 0.0)) < 1e-3
    assert sorted(i.label for i in proposal.info.values()) == sorted(["gripper", "green flat", "red block", "white block"])
    cube, pad, white = _by_label(proposal, "red block"), _by_label(proposal, "green flat"), _by_label(proposal, "white block")
    K, T = obs["intrinsics"], obs["extrinsics"]
    # The object mark sits on the projected centre of the top face, like a ground-truth trace's start.
    top = project(np.array([0.55, 0.12, 0.04]), K, T)[:2]
    assert np.linalg.norm(np.subtract(proposal.marks[cube.mark_id].center, top)) < 1.5
    np.testing.assert_allclose(cube.position, (0.55, 0.12, 0.02), atol=0.008)
    assert cube.height == pytest.approx(0.04, abs=0.004)
    assert max(cube.size) == pytest.approx(0.04, abs=0.012)
    assert (cube.kind, cube.shape, cube.color_name) == ("object", "block", "red")
    np.testing.assert_allclose(pad.position[:2], (0.50, -0.12), atol=0.01)
    assert (pad.kind, pad.shape) == ("region", "flat") and pad.height < 0.006
    assert white.color_name == "white"  # named from its lit top, though its sides render grey
    assert cube.depth == pytest.approx(project(cube.top, K, T)[2])


def test_flat_slivers_are_dropped_but_pads_stay_at_any_resolution():
    """A thin flat strip (a shadow or edge: a few pixels) is no mark; the pad is, at 128 and 256 px alike."""
    strip = ((0.45, -0.30, 0.002), (0.03, 0.004, 0.002), 0.0, color_rgb("blue"))
    for size in (W, 2 * W):
        labels = sorted(i.label for i in propose_marks(_obs([GREEN_PAD, strip], width=size, height=size)).info.values())
        assert labels == ["green flat", "gripper"], (size, labels)
    kept = propose_marks(_obs([GREEN_PAD, strip]), ProposalConfig(min_region_pixels=0))
    assert sorted(i.label for i in kept.info.values()) == ["blue flat", "green flat", "gripper"]
    with pytest.raises(InvalidInputError, match="min_region_pixels"):
        ProposalConfig(min_region_pixels=-1)


def test_gripper_is_mark_1_at_the_projected_tcp_and_the_rest_are_numbered_left_to_right():
    obs = _obs([RED_CUBE, GREEN_PAD, WHITE_BLOCK], ee_xyz=(0.45, -0.05, 0.25))
    proposal = propose_marks(obs)
    gripper = proposal.marks[GRIPPER_MARK_ID]
    assert gripper.kind == "gripper" and proposal.gripper_id == GRIPPER_MARK_ID
    expected = project(np.array([0.45, -0.05, 0.25]), obs["intrinsics"], obs["extrinsics"])[:2]
    assert np.linalg.norm(np.subtract(gripper.center, expected)) < 1e-6
    others = [m for m in proposal.marks if m.kind != "gripper"]
    assert [m.id for m in others] == list(range(2, 2 + len(others)))
    assert [m.center[0] for m in others] == sorted(m.center[0] for m in others)


def test_box_style_marks_cover_the_object_pixels():
    obs = _obs([RED_CUBE])
    proposal = propose_marks(obs, ProposalConfig(mark_style="box"))
    cube = _by_label(proposal, "red block")
    x0, y0, x1, y1 = proposal.marks[cube.mark_id].box
    vv, uu = np.nonzero(np.all(obs["rgb"] == color_rgb("red"), axis=-1))
    assert x0 <= uu.min() and uu.max() <= x1 and y0 <= vv.min() and vv.max() <= y1


def test_nan_holes_in_depth_do_not_lose_objects():
    obs = _obs([RED_CUBE, GREEN_PAD])
    rng = np.random.default_rng(0)
    obs["depth"][rng.random(obs["depth"].shape) < 0.15] = np.nan
    proposal = propose_marks(obs)
    assert proposal.depth_used
    np.testing.assert_allclose(_by_label(proposal, "red block").position, (0.55, 0.12, 0.02), atol=0.01)
    np.testing.assert_allclose(_by_label(proposal, "green flat").position[:2], (0.50, -0.12), atol=0.012)


def test_without_usable_depth_colour_blobs_are_cut_at_the_default_table_height():
    obs = _obs([RED_CUBE, GREEN_PAD])
    for depth in (np.full_like(obs["depth"], np.nan), None):
        obs_no = dict(obs, depth=depth)
        proposal = propose_marks(obs_no)
        assert not proposal.depth_used and proposal.plane.source == "default"
        names = sorted(i.color_name for i in proposal.objects)
        assert names == ["green", "red"]
        red = next(i for i in proposal.objects if i.color_name == "red")
        assert red.shape == "unknown"
        np.testing.assert_allclose(red.position[:2], (0.55, 0.12), atol=0.03)


def test_empty_table_has_only_the_gripper_mark():
    proposal = propose_marks(_obs([]))
    assert [m.kind for m in proposal.marks] == ["gripper"]
    assert proposal.objects == [] and proposal.regions == []


def test_the_hand_is_masked_out_but_a_block_between_the_fingers_stays():
    held = ((0.50, 0.0, 0.20), (0.02, 0.02, 0.02), 0.0, color_rgb("blue"))
    # The hand (a grey box above the TCP) and the fingers, where the robot geometry says they are.
    hand = ((0.50, 0.0, 0.30), (0.03, 0.10, 0.04), 0.0, (150, 150, 150))
    fingers = [((0.50, s * 0.045, 0.215), (0.01, 0.005, 0.025), 0.0, (150, 150, 150)) for s in (-1, 1)]
    obs = _obs([held, hand, *fingers], ee_xyz=(0.50, 0.0, 0.19))
    obs["gripper"] = np.array([0.08])
    proposal = propose_marks(obs, ProposalConfig(max_object_height=0.10))
    labels = sorted(i.label for i in proposal.info.values())
    assert labels == ["blue block", "gripper"]


def test_plane_fit_is_robust_to_clutter_and_refuses_vertical_walls():
    rng = np.random.default_rng(1)
    table = np.column_stack([rng.uniform(0, 1, 3000), rng.uniform(-0.5, 0.5, 3000), 0.05 + rng.normal(0, 0.001, 3000)])
    clutter = rng.uniform([0, -0.5, 0.05], [1, 0.5, 0.3], size=(1000, 3))
    plane = fit_table_plane(np.vstack([table, clutter]))
    assert plane is not None and plane.z_at(0.3, 0.1) == pytest.approx(0.05, abs=1e-3)
    assert plane.normal[2] > 0.999
    wall = np.column_stack([np.full(2000, 0.5), rng.uniform(-0.5, 0.5, 2000), rng.uniform(0, 0.5, 2000)])
    assert fit_table_plane(wall) is None


def test_bad_observations_are_refused_with_a_clear_error():
    obs = _obs([RED_CUBE])
    with pytest.raises(InvalidInputError, match="rgb"):
        propose_marks({k: v for k, v in obs.items() if k != "rgb"})
    with pytest.raises(InvalidInputError, match="depth"):
        propose_marks(dict(obs, depth=obs["depth"][:10]))
    with pytest.raises(InvalidInputError, match="extrinsics"):
        propose_marks(dict(obs, extrinsics=np.eye(3)))
    with pytest.raises(InvalidInputError):
        propose_marks(dict(obs, rgb=obs["rgb"].astype(np.float32)))


def test_mark_recall_counts_ground_truth_pixels_with_a_nearby_mark():
    proposal = propose_marks(_obs([RED_CUBE, GREEN_PAD]))
    cube = _by_label(proposal, "red block")
    centre = np.asarray(proposal.marks[cube.mark_id].center)
    assert mark_recall(proposal, [centre + 1.0]) == 1.0
    assert mark_recall(proposal, [centre + 1.0, (0.0, 0.0)]) == 0.5
    # The gripper mark never counts as finding an object.
    assert mark_recall(proposal, [proposal.marks[1].center]) == 0.0


def test_colour_names_survive_shading_and_aliases_are_read():
    for name in ("red", "green", "blue", "yellow", "orange", "purple", "cyan", "pink"):
        lit = np.array(color_rgb(name))
        assert nearest_color(lit.astype(np.uint8))[0] == name
        assert nearest_color((lit * 0.6).astype(np.uint8))[0] == name
    assert color_words("Put the gray block on the violet pad") == [(2, "grey"), (6, "purple")]


def test_unproject_inverts_project():
    K, T = _camera()
    pts = np.array([[0.5, 0.1, 0.0], [0.3, -0.2, 0.15]])
    uvz = project(pts, K, T)
    np.testing.assert_allclose(unproject(uvz[:, :2], uvz[:, 2], K, T), pts, atol=1e-9)


# --------------------------------------------------------------------------- the PyBullet tabletop

pytest.importorskip("pybullet")


@pytest.fixture(scope="module")
def pick_place_env():
    from magma_sim.env import make_env

    env = make_env("pick_place", image_size=128)
    yield env
    env.close()


def _truth(obs, info):
    from magma_sim.camera import project_points

    return project_points(info["privileged"]["mark_points"], obs["intrinsics"], obs["extrinsics"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pick_place_marks_land_on_the_task_object_and_target(pick_place_env, seed):
    obs, info = pick_place_env.reset(seed=seed)
    proposal = propose_marks(obs)
    truth = _truth(obs, info)
    assert np.linalg.norm(np.subtract(proposal.marks[1].center, truth[0, :2])) < 2.0
    assert abs(proposal.plane.z_at(0.5, 0.0)) < 0.01  # the table top is the base frame's z = 0
    assert mark_recall(proposal, truth[1:, :2], radius_px=3.0) == 1.0
    priv = info["privileged"]
    # One mark per scene object, each named with the simulator's colour.
    assert sorted(i.color_name for i in proposal.info.values() if i.kind != "gripper") == sorted(
        o["color"] for o in priv["objects"].values())
    obj = priv["objects"][priv["roles"]["object"]]
    found = next(i for i in proposal.objects if i.color_name == obj["color"])
    np.testing.assert_allclose(found.position, obj["position"], atol=0.012)
    target = priv["objects"][priv["roles"]["target"]]
    pad = next(i for i in proposal.regions if i.color_name == target["color"])
    np.testing.assert_allclose(pad.position[:2], target["position"][:2], atol=0.012)


def test_tray_is_a_container_marked_at_its_floor():
    from magma_sim.env import make_env

    with make_env("put_in_tray", image_size=128) as env:
        obs, info = env.reset(seed=0)
    proposal = propose_marks(obs)
    tray = [i for i in proposal.objects if i.shape == "container"]
    assert len(tray) == 1 and tray[0].color_name == "brown"
    truth = _truth(obs, info)
    assert np.linalg.norm(np.subtract(proposal.marks[tray[0].mark_id].center, truth[2, :2])) < 3.0
    assert 0.0 < tray[0].floor_height < 0.015 and tray[0].height == pytest.approx(0.046, abs=0.006)


def test_bench_marks_command_reports_recall_as_json(capsys):
    import argparse
    import json

    from magma_sim import commands_bench_marks

    parser = argparse.ArgumentParser()
    commands_bench_marks.register(parser.add_subparsers())
    args = parser.parse_args(["marks", "--tasks", "pick_place", "--seeds", "2", "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    row = result["tasks"]["pick_place"]
    assert result["radius_px"] == 3.0 and row["frames"] == 2
    assert row["object_recall"] == 1.0 and row["target_recall"] == 1.0
    assert row["gripper_error_px"] < 0.5 and row["plane_error_mm"] < 5.0

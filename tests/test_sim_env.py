"""TabletopEnv: observation contract, determinism, both control modes, bad input."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pybullet")

from magma_core.errors import InvalidInputError, MagmaError  # noqa: E402
from magma_sim.control import MAX_TRANSLATION, delta_to_waypoint, waypoint_to_delta  # noqa: E402
from magma_sim.env import OBS_KEYS, WRIST_KEYS, TabletopEnv, make_env  # noqa: E402
from magma_sim.rotations import (apply_rotation_delta, axis_angle_to_quat, quat_to_axis_angle,  # noqa: E402
                                 quat_to_matrix, rotation_delta, yaw_quat_down)
from magma_sim.tasks import TASKS  # noqa: E402

HOLD = np.zeros(7)


@pytest.fixture(scope="module")
def env():
    e = make_env("pick_place", image_size=64, render=True)
    yield e
    e.close()


def test_unknown_task_lists_valid_tasks():
    with pytest.raises(InvalidInputError) as err:
        make_env("fold_laundry")
    for name in TASKS:
        assert name in str(err.value)


@pytest.mark.parametrize("kwargs, word", [({"control": "joint"}, "control mode"), ({"control_hz": 7}, "control_hz"),
                                          ({"image_size": 0}, "image_size"), ({"max_steps": 0}, "max_steps")])
def test_bad_settings_are_rejected(kwargs, word):
    with pytest.raises(InvalidInputError, match=word):
        make_env("push", render=False, **kwargs)


def test_observation_holds_exactly_what_a_robot_has(env):
    obs, info = env.reset(seed=0)
    assert set(obs) == set(OBS_KEYS)  # nothing privileged leaks into the observation
    assert obs["rgb"].shape == (64, 64, 3) and obs["rgb"].dtype == np.uint8
    assert obs["depth"].shape == (64, 64) and obs["depth"].dtype == np.float32
    assert np.nanmin(obs["depth"]) > 0.3 and np.nanmax(obs["depth"]) < 3.0
    assert obs["intrinsics"].shape == (3, 3) and obs["extrinsics"].shape == (4, 4)
    R = obs["extrinsics"][:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-9)
    assert R[:, 2] @ [0, 0, -1] > 0.5  # the camera looks down at the table
    assert obs["ee_pose"].shape == (7,) and obs["joints"].shape == (7,) and obs["gripper"].shape == (1,)
    assert obs["gripper"][0] == pytest.approx(0.08, abs=2e-3)  # reset opens the gripper
    assert isinstance(obs["instruction"], str) and obs["instruction"]
    priv = info["privileged"]
    assert set(priv["roles"]) == {"object", "target"}
    assert priv["roles"]["object"] in priv["objects"] and priv["mark_points"].shape == (3, 3)


def test_render_off_drops_images_and_wrist_camera_adds_its_keys():
    with make_env("stack", render=False) as blind:
        obs, _ = blind.reset(seed=1)
        assert set(obs) == set(OBS_KEYS) - {"rgb", "depth"}
    with make_env("stack", image_size=32, wrist_camera=True) as wrist:
        obs, _ = wrist.reset(seed=1)
        assert set(obs) == set(OBS_KEYS) | set(WRIST_KEYS)
        before = obs["wrist_extrinsics"].copy()
        for _ in range(3):
            obs, *_ = wrist.step([0.0, 0.04, 0.0, 0, 0, 0, 0])
        # the wrist camera follows the hand: it moved by what the TCP moved
        assert obs["wrist_extrinsics"][1, 3] - before[1, 3] == pytest.approx(0.12, abs=0.015)
        np.testing.assert_allclose(obs["wrist_extrinsics"], wrist.wrist_camera_params().extrinsics)


def _run(env: TabletopEnv, seed: int, actions: list) -> list:
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        out.append(env.step(a)[0])
    return out


def test_same_seed_gives_bit_identical_observations(env):
    actions = [[0.02, -0.01, -0.03, 0.0, 0.0, 0.1, 0.0], [0.0, 0.0, -0.05, 0.0, 0.0, 0.0, 1.0]] * 3
    first = _run(env, 5, actions)
    _run(env, 6, actions)  # something else in between must not leak into the next episode
    with make_env("pick_place", image_size=64) as other:
        second = _run(other, 5, actions)
    for a, b in zip(first, second):
        for key in OBS_KEYS:
            if key == "instruction":
                assert a[key] == b[key]
            else:
                assert np.array_equal(a[key], b[key], equal_nan=key == "depth"), key
    different = _run(env, 7, [])[0]
    assert not np.array_equal(different["rgb"], first[0]["rgb"])


@pytest.mark.parametrize("bad", [np.zeros(6), np.zeros(8), np.zeros((1, 7)), [0, 0, np.nan, 0, 0, 0, 0],
                                 [np.inf, 0, 0, 0, 0, 0, 0], ["a"] * 7, None])
def test_bad_action_raises_and_robot_holds_still(env, bad):
    obs, info = env.reset(seed=2)
    with pytest.raises(InvalidInputError):
        env.step(bad)
    again = env._observe()
    assert env.steps == 0
    np.testing.assert_array_equal(again["joints"], obs["joints"])
    np.testing.assert_array_equal(again["ee_pose"], obs["ee_pose"])
    obs2, *_ = env.step(HOLD)  # the env still works afterwards
    np.testing.assert_allclose(obs2["ee_pose"][:3], obs["ee_pose"][:3], atol=2e-3)


def test_step_before_reset_is_an_error():
    with make_env("push", render=False) as fresh:
        with pytest.raises(MagmaError, match="reset"):
            fresh.step(HOLD)


def test_ee_delta_moves_by_the_delta_and_clips():
    with make_env("push", render=False, control="ee_delta") as e:
        obs, _ = e.reset(seed=0)
        start = obs["ee_pose"][:3].copy()
        for _ in range(4):
            before = obs["ee_pose"]
            obs, _, _, _, info = e.step([0.0, 0.0, -0.03, 0, 0, 0, 0])
            # the delta applies to the measured pose; the joints then lag the moving target by a few mm
            np.testing.assert_allclose(info["target_pose"][:3], before[:3] + [0, 0, -0.03], atol=1e-12)
            np.testing.assert_allclose(info["target_pose"][3:], before[3:], atol=1e-12)
        moved = obs["ee_pose"][:3] - start
        assert -0.12 <= moved[2] <= -0.10 and np.hypot(moved[0], moved[1]) < 3e-3
        assert not info["action_clipped"]
        before = obs["ee_pose"][:3].copy()
        obs, _, _, _, info = e.step([1.0, 0.0, 0.0, 0, 0, 0, 0])
        assert info["action_clipped"]
        assert info["target_pose"][0] - before[0] == pytest.approx(MAX_TRANSLATION, abs=1e-9)
        assert obs["ee_pose"][0] - before[0] <= MAX_TRANSLATION + 1e-3


def test_waypoint_reaches_pose_and_gripper_closes():
    with make_env("stack", render=False, control="waypoint") as e:
        e.reset(seed=0)
        quat = yaw_quat_down(0.5)
        target = np.array([0.5, -0.1, 0.2])
        for _ in range(15):
            obs, *_ = e.step(np.concatenate([target, quat, [1.0]]))
        np.testing.assert_allclose(obs["ee_pose"][:3], target, atol=2e-3)
        assert np.linalg.norm(rotation_delta(obs["ee_pose"][3:], quat)) < 0.01
        assert obs["gripper"][0] < 0.002
        with pytest.raises(InvalidInputError, match="quaternion"):
            e.step(np.concatenate([target, [0, 0, 0, 0], [0.0]]))


def test_control_hz_sets_substeps_and_horizon():
    with make_env("push", render=False, control_hz=20) as e:
        assert e.substeps == 12 and e.max_steps == 300


def test_rotation_helpers_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        rv = rng.uniform(-1.5, 1.5, 3)
        q = axis_angle_to_quat(rv)
        np.testing.assert_allclose(quat_to_axis_angle(q), rv, atol=1e-9)
        R = quat_to_matrix(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        q0 = axis_angle_to_quat(rng.uniform(-2, 2, 3))
        q1 = apply_rotation_delta(q0, rv * 0.5)
        np.testing.assert_allclose(rotation_delta(q0, q1), rv * 0.5, atol=1e-9)


def test_action_format_conversions_agree():
    tcp = np.concatenate([[0.4, 0.1, 0.2], yaw_quat_down(0.3)])
    delta = np.array([0.01, -0.02, 0.03, 0.0, 0.05, -0.1, 1.0])
    waypoint = delta_to_waypoint(delta, tcp)
    np.testing.assert_allclose(waypoint[:3], tcp[:3] + delta[:3])
    np.testing.assert_allclose(waypoint_to_delta(waypoint, tcp), delta, atol=1e-12)

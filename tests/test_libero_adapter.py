"""LIBERO adapter: the pure conversions always; a smoke test only where the libero extra is installed."""
from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from magma_core.errors import InvalidInputError, MagmaError
from magma_sim.libero_adapter import (LiberoEnv, LiberoUnavailableError, ee_delta_to_libero, mirrored_intrinsics,
                                      mujoco_depth_to_metres, world_to_base)
from magma_sim.rotations import quat_to_matrix
from magma_sim.trace_follow import project

HAS_LIBERO = importlib.util.find_spec("libero") is not None
# TabletopEnv's observation keys (magma_sim.env.OBS_KEYS), spelled out so this file needs no pybullet.
OBS_KEYS = {"rgb", "depth", "intrinsics", "extrinsics", "ee_pose", "gripper", "joints", "instruction"}


def test_ee_delta_maps_to_libero_osc_units_in_the_world_frame():
    yaw90 = quat_to_matrix([0, 0, np.sqrt(0.5), np.sqrt(0.5)])  # base turned 90 degrees about z in the world
    out = ee_delta_to_libero(np.array([0.01, 0.0, -0.025, 0.0, 0.0, 0.1, 1.0]), np.eye(3))
    np.testing.assert_allclose(out, [0.2, 0.0, -0.5, 0.0, 0.0, 0.2, 1.0])
    turned = ee_delta_to_libero(np.array([0.01, 0, 0, 0, 0, 0, 0.0]), yaw90)
    np.testing.assert_allclose(turned, [0.0, 0.2, 0, 0, 0, 0, -1.0], atol=1e-12)  # base x is world y; gripper open
    np.testing.assert_allclose(ee_delta_to_libero(np.array([1.0, 0, 0, 0, 0, 0, 0.5]), np.eye(3))[[0, 6]], [1.0, 0.0])
    with pytest.raises(InvalidInputError):
        ee_delta_to_libero(np.zeros(8), np.eye(3))


def test_frames_and_camera_conventions():
    T = world_to_base([1.0, 2.0, 0.5], [0, 0, np.sqrt(0.5), np.sqrt(0.5)])
    np.testing.assert_allclose(T @ [1.0, 3.0, 0.5, 1.0], [1.0, 0.0, 0.0, 1.0], atol=1e-12)
    K = np.array([[100.0, 0, 64], [0, 100.0, 64], [0, 0, 1]])
    E = np.eye(4)
    points = np.array([[0.1, -0.05, 1.0], [-0.2, 0.1, 2.0]])
    upright, mirrored = project(points, K, E), project(points, mirrored_intrinsics(K, 128), E)
    np.testing.assert_allclose(mirrored[:, 0], 127 - upright[:, 0])  # the left-right flipped image
    np.testing.assert_allclose(mirrored[:, 1:], upright[:, 1:])


def test_mujoco_depth_buffer_to_metres():
    sim = SimpleNamespace(model=SimpleNamespace(stat=SimpleNamespace(extent=2.0),
                                                vis=SimpleNamespace(map=SimpleNamespace(znear=0.01, zfar=50.0))))
    near, far = 0.02, 100.0
    depth = mujoco_depth_to_metres(sim, np.array([0.0, 1.0, 0.5]))
    np.testing.assert_allclose(depth[:2], [near, far])
    assert near < depth[2] < 2 * near  # the buffer is non-linear: half-way is close to the near plane


@pytest.mark.skipif(HAS_LIBERO, reason="checks the message shown without the extra")
def test_without_the_extra_the_error_says_what_to_install():
    with pytest.raises(LiberoUnavailableError, match=r"\[libero\]") as err:
        LiberoEnv("libero_spatial", 0)
    assert isinstance(err.value, MagmaError)


def test_smoke_where_libero_is_installed():
    pytest.importorskip("libero")
    with pytest.raises(InvalidInputError, match="libero_spatial"):
        LiberoEnv("libero_nowhere", 0)
    with LiberoEnv("libero_spatial", 0, image_size=64, max_steps=3) as env:
        obs, info = env.reset(seed=0)
        assert set(obs) == OBS_KEYS and obs["rgb"].shape == (64, 64, 3) and obs["depth"].shape == (64, 64)
        assert "bowl" in obs["instruction"] and info["success"] is False
        assert np.all(np.isfinite(obs["depth"])) and 0.2 < np.nanmin(obs["depth"]) < np.nanmax(obs["depth"]) < 10
        assert 0.0 <= obs["gripper"][0] <= 0.085 and obs["joints"].shape == (7,)
        u, v, d = project(obs["ee_pose"][:3], obs["intrinsics"], obs["extrinsics"])
        assert 0 <= u < 64 and 0 <= v < 64 and d > 0  # the hand is in view of the front camera
        start = obs["ee_pose"][:3].copy()
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step([0.0, 0.0, 0.03, 0, 0, 0, 0])
        assert obs["ee_pose"][2] > start[2] + 0.005  # up in the base frame is up
        assert truncated and not terminated and reward == 0.0

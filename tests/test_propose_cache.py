"""The caches and exact shortcuts behind propose_marks' speed: each must give what it replaces, bit for bit.

No timings here (speed is measured by benchmarks): these are behaviour tests of the per-camera caches
(pixel rays, checked calibrations), the rewound RANSAC generator, the colour-name memo, and the
numpy-equivalent helpers (medians, percentiles, means, cross products, clipping, lifting, ray casts).
"""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest

import magma_core.som.plane as plane_mod
from camera_fixtures import pinhole, sim_camera_pose
import magma_core.som.propose as prop
from magma_core.colors import color_distance, color_index, hue_group, nearest_color
from magma_core.errors import InvalidInputError
from magma_core.geometry import (as_extrinsics, as_intrinsics, pixel_rays, ray_plane_intersection, unproject,
                                 yaw_down_quat)
from magma_core.som.plane import fit_table_plane
from magma_core.som.propose import ProposalConfig, propose_marks


def _same_bits(a, b) -> bool:
    """Equal arrays or floats, NaN equal to NaN and -0.0 told from 0.0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def _camera(width=64, height=48, f=60.0):
    return pinhole(width, height, f), sim_camera_pose()


def _scene(width=128, height=128, seed=0):
    """A table (z = 0) with a raised red square and a flat green patch, seen by `_camera`, plus depth noise."""
    K, T = _camera(width, height, f=height * 1.07)
    vv, uu = np.mgrid[0:height, 0:width].astype(np.float64)
    dirs = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], axis=-1) @ T[:3, :3].T
    origin = T[:3, 3]
    rgb = np.full((height, width, 3), (148, 131, 111), dtype=np.uint8)
    depth = -origin[2] / dirs[..., 2]  # camera z of the table hit (dirs have camera z 1)
    hit = origin + dirs * depth[..., None]
    top = 0.04
    t_top = (top - origin[2]) / dirs[..., 2]
    on_top = origin + dirs * t_top[..., None]
    cube = (np.abs(on_top[..., 0] - 0.55) < 0.025) & (np.abs(on_top[..., 1] - 0.1) < 0.025)
    depth = np.where(cube, t_top, depth)
    rgb[cube] = (217, 31, 31)
    pad = (np.abs(hit[..., 0] - 0.5) < 0.05) & (np.abs(hit[..., 1] + 0.12) < 0.05) & ~cube
    rgb[pad] = (38, 178, 51)
    rng = np.random.default_rng(seed)
    depth = (depth + rng.normal(scale=0.0005, size=depth.shape)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.05] = np.nan
    return {"rgb": rgb, "depth": depth, "intrinsics": K, "extrinsics": T,
            "ee_pose": np.concatenate([[0.35, 0.0, 0.40], yaw_down_quat(0.0)]), "gripper": np.array([0.08])}


def _summary(result):
    """Everything propose_marks returns, as plain comparable values (masks as bytes)."""
    infos = []
    for i in result.info.values():
        infos.append((i.mark_id, i.kind, i.shape, i.label, i.color_name, i.color_rgb, i.point_px, i.box_px,
                      i.pixel_count, i.depth, i.position.tobytes(), i.top.tobytes(), i.height, i.floor_height, i.size,
                      i.yaw, None if i.mask is None else i.mask.tobytes()))
    plane = result.plane
    return ([m.to_dict() for m in result.marks], infos, plane.normal.tobytes(), plane.offset, plane.inlier_fraction,
            plane.rms, plane.source, result.table_rgb, result.depth_used, result.image_size)


# --------------------------------------------------------------------------- pixel-ray cache


def test_pixel_rays_are_geometry_rays_and_cached_per_camera():
    K, _ = _camera()
    rays = prop._pixel_rays(K, 48, 64)
    vv, uu = np.mgrid[0:48, 0:64].astype(np.float64)
    assert _same_bits(rays, pixel_rays(np.stack([uu, vv], axis=-1), K).reshape(-1, 3))
    assert prop._pixel_rays(K.copy(), 48, 64) is rays  # same camera (by value): the kept array
    assert not rays.flags.writeable


def test_pixel_rays_change_with_camera_and_size():
    K, _ = _camera()
    rays = prop._pixel_rays(K, 48, 64)
    K2 = K.copy()
    K2[0, 0] += 1e-9
    other = prop._pixel_rays(K2, 48, 64)
    assert other is not rays and not _same_bits(other, rays)
    assert prop._pixel_rays(K, 64, 48).shape == (64 * 48, 3)
    assert prop._pixel_rays(K, 48, 32).shape == (48 * 32, 3)


def test_pixel_ray_cache_is_bounded():
    K, _ = _camera()
    for i in range(3 * prop._RAYS_MAX):
        Ki = K.copy()
        Ki[0, 2] += i
        prop._pixel_rays(Ki, 8, 8)
    assert len(prop._RAYS) <= prop._RAYS_MAX


# --------------------------------------------------------------------------- calibration checks


def test_calibration_matches_the_checks_and_remembers_valid_ones():
    K, T = _camera()
    K1, T1 = prop._calibration(K, T)
    assert _same_bits(K1, as_intrinsics(K)) and _same_bits(T1, as_extrinsics(T))
    K2, T2 = prop._calibration(K.tolist(), T.tolist())  # same values as lists: a hit, same arrays
    assert _same_bits(K2, K) and _same_bits(T2, T)
    assert (K.tobytes(), T.tobytes()) in prop._VALID_CALIBRATIONS


@pytest.mark.parametrize("bad", ["K", "T", "both", "shape", "text"])
def test_calibration_errors_are_those_of_the_checks_even_after_a_valid_call(bad):
    K, T = _camera()
    prop._calibration(K, T)
    Kb, Tb = K.copy(), T.copy()
    if bad in ("K", "both"):
        Kb[0, 0] = -1.0
    if bad in ("T", "both"):
        Tb[0, 0] = 3.0
    if bad == "shape":
        Kb = np.eye(4)
    if bad == "text":
        Tb = "not a matrix"
    with pytest.raises(InvalidInputError) as expected:
        as_intrinsics(Kb), as_extrinsics(Tb)
    with pytest.raises(InvalidInputError) as got:
        prop._calibration(Kb, Tb)
    assert str(got.value) == str(expected.value)
    with pytest.raises(InvalidInputError):  # never remembered as valid
        prop._calibration(Kb, Tb)


def test_calibration_memory_is_bounded():
    K, T = _camera()
    for i in range(3 * prop._VALID_CALIBRATIONS_MAX):
        Ki = K.copy()
        Ki[0, 2] += i
        prop._calibration(Ki, T)
    assert len(prop._VALID_CALIBRATIONS) <= prop._VALID_CALIBRATIONS_MAX


# --------------------------------------------------------------------------- RANSAC generator


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_seeded_rng_restarts_the_seed_stream_every_time(seed):
    for _ in range(3):
        rng = plane_mod._seeded_rng(seed)
        fresh = np.random.default_rng(seed)
        assert np.array_equal(rng.choice(5000, size=300, replace=False), fresh.choice(5000, size=300, replace=False))
        assert np.array_equal(rng.integers(0, 300, size=(100, 3)), fresh.integers(0, 300, size=(100, 3)))
        assert rng.random() == fresh.random()


def test_seeded_rng_other_seed_kinds_are_not_cached():
    seq = np.random.SeedSequence(7)
    assert plane_mod._seeded_rng(seq).random() == np.random.default_rng(np.random.SeedSequence(7)).random()
    assert plane_mod._seeded_rng(np.int64(3)).random() == np.random.default_rng(3).random()
    with pytest.raises(ValueError):
        plane_mod._seeded_rng(-1)


def test_seeded_rng_is_per_thread():
    got = {}

    def run(name):
        got[name] = plane_mod._seeded_rng(5)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got["a"] is not got["b"]
    assert plane_mod._seeded_rng(5) is not got["a"]


def test_plane_fit_repeats_exactly():
    rng = np.random.default_rng(3)
    pts = np.column_stack([rng.uniform(0.2, 0.8, 3000), rng.uniform(-0.3, 0.3, 3000), rng.normal(0.01, 0.001, 3000)])
    first, second = fit_table_plane(pts, seed=4), fit_table_plane(pts, seed=4)
    assert _same_bits(first.normal, second.normal) and first.offset == second.offset and first.rms == second.rms


# --------------------------------------------------------------------------- exact numpy equivalents


def test_cross_and_column_means_are_numpy_bit_for_bit():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 100, 2049):
        a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 3)) * 1e3
        assert _same_bits(plane_mod._cross(a, b), np.cross(a, b))
        pts = rng.normal(size=(n, 3)) * [0.3, 0.5, 0.01] + [0.5, 0.0, 0.02]
        assert _same_bits(plane_mod._column_means(pts), pts.mean(axis=0))
    view = rng.normal(size=(50, 6))[:, ::2]  # not C-contiguous: falls back to mean
    assert _same_bits(plane_mod._column_means(view), view.mean(axis=0))


def test_medians_are_numpy_medians():
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 4, 5, 10, 11, 255, 256, 4097):
        pixels = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
        assert _same_bits(prop._median_rgb(pixels), np.median(pixels, axis=0))
        assert prop._median_u8(pixels[:, 0]) == float(np.median(pixels[:, 0]))
        values = np.round(rng.normal(size=n), 2)
        assert _same_bits(prop._nanmedian(values), float(np.nanmedian(values)))
    few = rng.integers(250, 256, size=(9, 3), dtype=np.uint8)  # near the top bin
    assert _same_bits(prop._median_rgb(few), np.median(few, axis=0))
    with_nan = np.array([0.3, np.nan, 0.1, 0.2])
    assert prop._nanmedian(with_nan) == float(np.nanmedian(with_nan))
    zeros = np.array([-0.0, -0.0])
    assert _same_bits(prop._nanmedian(zeros), float(np.nanmedian(zeros)))
    assert _same_bits(prop._nanmedian(np.array([-0.0])), float(np.nanmedian(np.array([-0.0]))))


def test_percentiles_are_numpy_percentiles():
    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 4, 5, 19, 20, 21, 100, 1001):
        for values in (rng.normal(size=n), np.round(rng.normal(size=n), 1), np.full(n, -0.0)):
            for q in (0, 30, 50, 95, 100):
                assert _same_bits(prop._percentile(values, q), float(np.percentile(values, q))), (n, q)
    with_nan = np.array([0.1, np.nan, 0.3])
    assert math.isnan(prop._percentile(with_nan, 95))


def test_clip_float_is_np_clip():
    values = [-0.0, 0.0, -1.0, 5.0, 127.0, 127.5, 1e9, float("inf"), -float("inf"), float("nan"), 5e-324, -5e-324]
    for x in values + list(np.random.default_rng(4).normal(scale=100, size=200)):
        for high in (127.0, 0.0, 63.0):
            assert _same_bits(prop._clip_float(float(x), 0.0, high), float(np.clip(float(x), 0.0, high)))


def test_color_name_memo_is_nearest_color():
    rng = np.random.default_rng(5)
    for rgb in rng.integers(0, 256, size=(50, 3)):
        assert prop._color_name(*rgb.tolist()) == nearest_color(rgb.astype(np.uint8))[0]


def test_lift_and_plane_hits_are_geometry_bit_for_bit():
    K, T = _camera()
    h, w = 48, 64
    rng = np.random.default_rng(6)
    depth = rng.uniform(0.5, 1.5, size=h * w)
    idx = np.flatnonzero(rng.random(h * w) < 0.7)
    vv, uu = np.divmod(idx, w)
    uv = np.stack([uu, vv], axis=-1).astype(np.float64)
    assert _same_bits(prop._lift(prop._pixel_rays(K, h, w), idx, depth[idx], T), unproject(uv, depth[idx], K, T))
    scene = prop._Scene(np.zeros((h, w, 3), np.uint8), K, T, None, 0.08, ProposalConfig())
    normal = np.array([0.01, -0.02, 1.0]) / np.linalg.norm([0.01, -0.02, 1.0])
    expected = ray_plane_intersection(uv, K, T, normal, -0.013)
    assert _same_bits(scene._plane_hits(idx, normal, -0.013), expected[np.all(np.isfinite(expected), axis=1)])
    with pytest.raises(InvalidInputError):
        scene._plane_hits(idx, normal, float("nan"))


def test_colour_groups_and_table_distance_are_the_colour_functions():
    rgb = np.random.default_rng(7).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    K, T = _camera()
    scene = prop._Scene(rgb, K, T, None, 0.08, ProposalConfig())
    assert np.array_equal(scene.groups, hue_group(color_index(rgb)))
    table = np.array([148, 131, 111], dtype=np.uint8)
    where = np.flatnonzero(np.random.default_rng(8).random(40 * 50) < 0.5)
    expected = color_distance(rgb, table).reshape(-1)[where] > 0.2
    assert np.array_equal(scene._color_differs(where, table, 0.2), expected)
    tiny = prop._Scene(rgb[:4, :4], K, T, None, 0.08, ProposalConfig())  # below the lookup-table size
    assert tiny.keys is None
    assert np.array_equal(tiny.groups, hue_group(color_index(rgb[:4, :4])))


# --------------------------------------------------------------------------- whole proposals


def test_proposals_do_not_depend_on_cache_state():
    obs = _scene()
    prop._RAYS.clear()
    prop._VALID_CALIBRATIONS.clear()
    prop._color_name.cache_clear()
    cold = _summary(propose_marks(obs, ProposalConfig()))
    warm = _summary(propose_marks(obs, ProposalConfig()))
    assert cold == warm
    labels = {i[3] for i in cold[1]}
    assert {"gripper", "red block", "green flat"} <= labels
    # Another camera (same pixels, other size) after this one gets its own rays.
    small = {**obs, "rgb": obs["rgb"][:, :96], "depth": obs["depth"][:, :96]}
    assert _summary(propose_marks(small)) != cold
    assert _summary(propose_marks(obs)) == cold

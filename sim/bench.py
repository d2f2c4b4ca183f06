"""How fast the tabletop simulation runs: control steps per second with and without images, render cost."""
from __future__ import annotations

import time

import numpy as np

from magma_sim.camera import render
from magma_sim.env import PHYSICS_HZ, TabletopEnv
from magma_sim.experts import make_expert


def step_rate(task: str, steps: int, render_images: bool, image_size: int = 128, control_hz: int = 10,
              progress=None) -> float:
    """Expert-driven control steps per second (resets excluded from the timing)."""
    env = TabletopEnv(task, image_size=image_size, render=render_images, control="waypoint", control_hz=control_hz)
    try:
        expert = make_expert(task, control="waypoint", control_hz=control_hz)
        seed = 0
        obs, info = env.reset(seed=seed)
        elapsed = 0.0
        for _ in range(steps):
            action = expert.act(obs, info)
            start = time.perf_counter()
            obs, _, terminated, truncated, info = env.step(action)
            elapsed += time.perf_counter() - start
            if progress is not None:
                progress.update(1)
            if terminated or truncated:
                seed += 1
                expert.reset()
                obs, info = env.reset(seed=seed)
        return steps / elapsed
    finally:
        env.close()


def render_ms(task: str, image_size: int, frames: int, progress=None) -> float:
    """Milliseconds to render one RGB + depth frame of `task`'s scene at image_size x image_size."""
    env = TabletopEnv(task, image_size=image_size, render=False)
    try:
        env.reset(seed=0)
        cam = env.camera
        times = []
        for _ in range(frames):
            start = time.perf_counter()
            render(env.client, image_size, image_size, cam.fov_deg, cam.near, cam.far, env.camera_params.extrinsics)
            times.append(time.perf_counter() - start)
            if progress is not None:
                progress.update(1)
        return 1000.0 * float(np.median(times))
    finally:
        env.close()


def run_benchmark(task: str = "pick_place", steps: int = 200, frames: int = 20, progress=None) -> dict:
    """All figures of `magma bench sim` as one dict."""
    no_render = step_rate(task, steps, render_images=False, progress=progress)
    with_render = step_rate(task, steps, render_images=True, image_size=128, progress=progress)
    return {
        "task": task,
        "steps": steps,
        "physics_hz": PHYSICS_HZ,
        "control_hz": 10,
        "steps_per_s_no_render": no_render,
        "steps_per_s_render_128": with_render,
        "physics_steps_per_s_no_render": no_render * PHYSICS_HZ / 10,
        "render_ms_128": render_ms(task, 128, frames, progress),
        "render_ms_256": render_ms(task, 256, frames, progress),
    }

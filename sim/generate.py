"""Expert datasets: roll scripted experts out over fixed seeds and write a LeRobot v3 dataset.

Workers roll episodes out (each with its own simulator); the main process writes them in
(task, seed) order, so the dataset is the same whatever the number of workers. Each episode
carries the instruction, RGB and depth, proprioception, both action formats, the ground-truth
Trace-of-Mark and the camera parameters (see ``magma_sim.rollout.rollout_expert``).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from magma_core.data.lerobot_writer import LeRobotV3Writer
from magma_core.errors import InvalidInputError
from magma_sim.tasks import resolve_tasks
from magma_sim.workers import ordered_process_map


@dataclass(frozen=True)
class GenerateConfig:
    """How each expert episode is recorded."""

    image_size: int = 128
    n_future: int = 16
    control_hz: int = 10
    max_steps: int | None = None  # default: the task's horizon
    keep_failures: bool = False
    vcodec: str = "libx264"
    # Recovery data: a policy (checkpoint folder or name) drives each episode for a number of steps drawn per seed
    # from takeover_steps (inclusive), then the expert takes over; only the expert's part is recorded.
    takeover_policy: str | None = None
    takeover_steps: tuple[int, int] = (5, 60)


@dataclass
class GenerateSummary:
    """What a generation run produced."""

    out: str
    tasks: list[str]
    attempted: int
    kept: int
    frames: int
    expert_successes: dict[str, list[int]]  # task -> [successes, attempts]
    seconds: float
    bytes_on_disk: int
    tracker_comparison: dict | None = None
    config: dict = field(default_factory=dict)
    # Takeover runs: episodes the policy finished (or ran out of steps) before the expert's turn; not counted in
    # expert_successes.
    finished_before_takeover: int = 0

    @property
    def expert_success_rate(self) -> float:
        wins = sum(s for s, _ in self.expert_successes.values())
        tries = sum(n for _, n in self.expert_successes.values())
        return wins / tries if tries else 0.0

    @property
    def episodes_per_minute(self) -> float:
        return 60.0 * self.attempted / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(expert_success_rate=self.expert_success_rate, episodes_per_minute=self.episodes_per_minute,
                   seconds=round(self.seconds, 3))
        return out


# ------------------------------------------------------------------------------------------ workers
_ENVS: dict = {}
_CONFIG: GenerateConfig | None = None


def _init_worker(config: GenerateConfig) -> None:
    global _CONFIG
    _CONFIG = config


_POLICY: list = []


def takeover_step_for(seed: int, steps: tuple[int, int]) -> int:
    """The step at which the expert takes over in episode `seed` (the same whatever the worker)."""
    low, high = int(steps[0]), int(steps[1])
    return int(np.random.default_rng([int(seed), 7919]).integers(low, high + 1))


def _rollout(item: tuple[str, int]):
    """One expert episode, in whatever process runs it (one cached simulator per task); with a takeover policy,
    the expert's part of a policy-then-expert episode, or (task, seed) when there was nothing to take over."""
    from magma_sim.env import TabletopEnv  # noqa: PLC0415 - pybullet only where episodes run
    from magma_sim.rollout import rollout_expert, rollout_takeover  # noqa: PLC0415

    task, seed = item
    config = _CONFIG
    if task not in _ENVS:
        _ENVS[task] = TabletopEnv(task, image_size=config.image_size, control="waypoint", control_hz=config.control_hz,
                                  max_steps=config.max_steps, render=True, terminate_on_success=False)
    if config.takeover_policy is None:
        return rollout_expert(task, seed, n_future=config.n_future, env=_ENVS[task])
    if not _POLICY:
        import torch  # noqa: PLC0415

        from magma_sim.policies import load_policy  # noqa: PLC0415

        torch.set_num_threads(1)  # one core per worker
        _POLICY.append(load_policy(config.takeover_policy, control_hz=config.control_hz))
    episode = rollout_takeover(task, seed, _POLICY[0], takeover_step_for(seed, config.takeover_steps),
                               env=_ENVS[task], n_future=config.n_future)
    return episode if episode is not None else (task, seed)


def _close_envs() -> None:
    for env in _ENVS.values():
        env.close()
    _ENVS.clear()


def _episodes(items: list[tuple[str, int]], config: GenerateConfig, workers: int):
    """Yield episodes in the order of `items`."""
    global _CONFIG
    if workers == 1:
        _CONFIG = config
        try:
            for item in items:
                yield _rollout(item)
        finally:
            _close_envs()
        return
    # In order, with workers running ahead while the main process encodes videos.
    yield from ordered_process_map(_rollout, items, workers, _init_worker, (config,))


# ------------------------------------------------------------------------------------------ the run
def _check_args(episodes: int, seed_start: int, workers: int, config: GenerateConfig, compare: int) -> None:
    def is_int(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    checks = [(episodes, 1, "episodes"), (seed_start, 0, "seed start"), (workers, 1, "workers"),
              (config.n_future, 1, "n_future"), (config.image_size, 16, "image size"), (compare, 0, "compare_tracker")]
    for value, low, name in checks:
        if not is_int(value) or value < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    if config.max_steps is not None and (not is_int(config.max_steps) or config.max_steps < 1):
        raise InvalidInputError(f"max_steps must be a positive integer, got {config.max_steps!r}")
    steps = config.takeover_steps
    if config.takeover_policy is not None and not (len(steps) == 2 and all(is_int(v) for v in steps) and 0 <= steps[0] <= steps[1]):
        raise InvalidInputError(f"takeover steps must be two integers 0 <= low <= high, got {steps!r}")
    if config.image_size > 1024:
        raise InvalidInputError(f"image size must be at most 1024, got {config.image_size}")


def generate_dataset(out: str | os.PathLike, tasks: str | list[str] = "all", episodes: int = 10, seed_start: int = 0,
                     config: GenerateConfig = GenerateConfig(), workers: int = 1, overwrite: bool = False,
                     compare_tracker: int = 0, progress: bool = False) -> GenerateSummary:
    """Roll the expert out on seeds seed_start..seed_start+episodes-1 of each task and write `out`.

    Only successful episodes are kept unless ``config.keep_failures``. The first `compare_tracker`
    kept episodes are also run through the LK tracker and compared with their GT traces.
    """
    task_list = resolve_tasks(tasks)
    _check_args(episodes, seed_start, workers, config, compare_tracker)
    start = time.perf_counter()
    # The writer checks the destination before any episode is rolled out.
    writer = LeRobotV3Writer(out, fps=float(config.control_hz), overwrite=overwrite, vcodec=config.vcodec)
    items = [(task, seed_start + i) for task in task_list for i in range(episodes)]
    counts = {task: [0, 0] for task in task_list}
    frames = kept = skipped = 0
    compared = []
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(items), desc="dataset generate", unit="episode", file=sys.stderr)
    try:
        for episode in _episodes(items, config, workers):
            if isinstance(episode, tuple):  # takeover: the policy finished before the expert's turn
                skipped += 1
                if bar is not None:
                    bar.update(1)
                continue
            counts[episode.task][1] += 1
            counts[episode.task][0] += int(bool(episode.success))
            if episode.success or config.keep_failures:
                writer.add_episode(episode)
                kept += 1
                frames += len(episode)
                if len(compared) < compare_tracker:
                    compared.append(episode)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(kept=kept)
        if kept == 0:
            raise InvalidInputError(f"the expert succeeded in none of the {len(items)} episodes; nothing was written "
                                    "(pass keep_failures / --keep-failures to keep failed episodes)")
        root = writer.finalize()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start  # generation only, not the optional tracker comparison
    comparison = None
    if compared:
        from magma_sim.trace_compare import compare_episodes  # noqa: PLC0415 - OpenCV tracking only when asked

        comparison = compare_episodes(compared)
    size = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())
    return GenerateSummary(out=str(root), tasks=task_list, attempted=len(items), kept=kept, frames=frames,
                           expert_successes=counts, seconds=seconds, bytes_on_disk=size,
                           tracker_comparison=comparison, config=asdict(config), finished_before_takeover=skipped)

"""The evaluation harness: run a policy on tabletop tasks over fixed seeds, in worker processes.

Each episode is one (task, seed): ``env.reset(seed)``, then ``policy.infer`` on every observation
until the task succeeds or the horizon ends. A learned policy is handed the env's observation
and nothing else; only a policy marked ``privileged = True`` (the scripted expert) also gets
``info``. Actions may come as ee_delta, waypoint or a trace (lifted by
``magma_sim.trace_follow``); the env runs in waypoint mode and ee_delta actions are converted
with the env's own clipping, so every output format drives the same controller.

Results depend only on (task, seed, policy), never on how many workers ran them: each worker
builds its own env and policy, seeds the policy per episode and results are sorted by (task, seed).
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from magma_core.errors import InvalidInputError
from magma_sim.policies import load_policy, parse_policy_spec
from magma_sim.stats import wilson_interval
from magma_sim.tasks import resolve_tasks
from magma_sim.trace_follow import TraceFollower, as_traces
from magma_sim.workers import ordered_process_map

@dataclass(frozen=True)
class EvalConfig:
    """Settings shared by every episode of one evaluation."""

    image_size: int = 128
    control_hz: int = 10
    max_steps: int | None = None  # default: the task's horizon
    video_dir: str | None = None
    video_episodes: int = 3  # per task: the first K seeds get a video
    lookahead: int = 1  # trace mode: which future trace step becomes the target


@dataclass
class EpisodeResult:
    task: str
    seed: int
    success: bool
    length: int
    invalid_steps: int = 0  # steps whose output could not be turned into a command (the arm held still)
    video: str | None = None


@dataclass
class EvalReport:
    """Per-episode results (sorted by task, seed) and their per-task / overall summary."""

    policy: str
    episodes: list[EpisodeResult]
    tasks: list[str]
    config: EvalConfig
    workers: int
    seconds: float
    summary: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary = summarize(self.episodes, self.tasks)

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "tasks": self.summary["tasks"],
            "overall": self.summary["overall"],
            "episodes": [asdict(e) for e in self.episodes],
            "config": asdict(self.config),
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
        }


def summarize(episodes: list[EpisodeResult], tasks: list[str]) -> dict:
    """Per task and overall: n, successes, rate, 95 % Wilson ci_low/ci_high, mean_length."""

    def block(results: list[EpisodeResult]) -> dict:
        n = len(results)
        wins = sum(r.success for r in results)
        low, high = wilson_interval(wins, n)
        return {"n": n, "successes": wins, "rate": wins / n if n else 0.0, "ci_low": low, "ci_high": high,
                "mean_length": float(np.mean([r.length for r in results])) if n else 0.0,
                "invalid_steps": sum(r.invalid_steps for r in results)}

    return {"tasks": {t: block([e for e in episodes if e.task == t]) for t in tasks}, "overall": block(episodes)}


# ---------------------------------------------------------------------------------------- one episode
def command_from_output(output: Any, obs: dict, follower: TraceFollower) -> np.ndarray:
    """A policy's output as the waypoint (8) the env runs; InvalidInputError naming what is wrong."""
    from magma_sim.control import delta_to_waypoint, validate_action  # noqa: PLC0415 - pybullet-free but sim-only

    if not isinstance(output, dict):
        raise InvalidInputError(f"policy output must be a dict, got {type(output).__name__}")
    if output.get("actions") is not None:
        actions = np.asarray(output["actions"], dtype=np.float64)
        if actions.ndim == 2:  # an action chunk: the harness executes its first step
            actions = actions[0] if len(actions) else actions.reshape(-1)
        space = output.get("action_space") or {7: "ee_delta", 8: "waypoint"}.get(actions.shape[-1] if actions.ndim else 0)
        if space not in ("ee_delta", "waypoint"):
            raise InvalidInputError(f"cannot tell the action space of actions shaped {actions.shape} "
                                    f"(action_space {output.get('action_space')!r})")
        action = validate_action(actions, space)
        return delta_to_waypoint(action, np.asarray(obs["ee_pose"])) if space == "ee_delta" else action
    if output.get("trace") is not None:
        return validate_action(follower.waypoint(output, obs), "waypoint")
    raise InvalidInputError(f"policy output has neither 'actions' nor 'trace' (keys: {sorted(output)})")


def reset_policy(policy: Any, seed: int) -> None:
    """Start a new episode for `policy` (with the seed when its reset takes one)."""
    try:
        takes_seed = "seed" in inspect.signature(policy.reset).parameters
    except (TypeError, ValueError):
        takes_seed = False
    if takes_seed:
        policy.reset(seed=seed)
    else:
        policy.reset()


def _hold_still(obs: dict, info: dict) -> np.ndarray:
    """Stay at the measured pose with the gripper command already in effect."""
    return np.concatenate([np.asarray(obs["ee_pose"], dtype=np.float64), [info["gripper_command"]]])


def _drawable(output: Any) -> list | None:
    """The output's trace as Trace objects for the video (mark ids made 1-based), or None."""
    if not isinstance(output, dict) or output.get("trace") is None:
        return None
    try:
        traces = as_traces(output["trace"], output.get("trace_gripper"))
    except InvalidInputError:
        return None
    if min(t.mark_id for t in traces) < 1:
        from magma_core.tom.types import Trace  # noqa: PLC0415

        shift = 1 - min(t.mark_id for t in traces)
        traces = [Trace(t.mark_id + shift, t.points, t.visible, t.moving, t.depth, t.gripper) for t in traces]
    return traces


def policy_command(policy: Any, obs: dict, info: dict, follower: TraceFollower) -> tuple[np.ndarray, Any, bool]:
    """(waypoint the env runs, the policy's output or None, whether it was usable) for one step. As on the robot,
    an unparsable model output or an unusable command makes the arm hold still."""
    output = None
    try:
        output = policy.infer(obs, info) if getattr(policy, "privileged", False) else policy.infer(obs)
        return command_from_output(output, obs, follower), output, True
    except InvalidInputError:
        return _hold_still(obs, info), output, False


def run_episode(env, policy: Any, seed: int, follower: TraceFollower, record: bool = False):
    """Run one episode; return (EpisodeResult, frames, per-frame predicted traces) (frames only if `record`)."""
    obs, info = env.reset(seed=seed)
    reset_policy(policy, seed)
    follower.reset()
    frames, drawn = [], []
    invalid = 0
    while True:
        command, output, usable = policy_command(policy, obs, info, follower)
        invalid += not usable
        if record:
            frames.append(obs["rgb"])
            drawn.append(_drawable(output) or [])
        obs, _, terminated, truncated, info = env.step(command)
        if terminated or truncated:
            break
    if record:
        frames.append(obs["rgb"])
        drawn.append([])
    result = EpisodeResult(task=env.task_name, seed=int(seed), success=bool(info["success"]), length=int(info["step"]),
                           invalid_steps=invalid)
    return result, frames, drawn


# ---------------------------------------------------------------------------------------- a worker
class _Worker:
    """What one process holds: its policy, one env per task, the trace follower."""

    def __init__(self, policy_source: Any, config: EvalConfig) -> None:
        self.config = config
        self.policy = _build_policy(policy_source, config)
        self.follower = TraceFollower(config.lookahead)
        self.needs_images = bool(getattr(self.policy, "needs_images", True))
        self.envs: dict[str, Any] = {}

    def env(self, task: str):
        if task not in self.envs:
            from magma_sim.env import TabletopEnv  # noqa: PLC0415 - pybullet only where episodes run

            c = self.config
            self.envs[task] = TabletopEnv(task, image_size=c.image_size, control="waypoint", control_hz=c.control_hz,
                                          max_steps=c.max_steps, render=self.needs_images, terminate_on_success=True)
        return self.envs[task]

    def run(self, task: str, seed: int, record: bool) -> EpisodeResult:
        env = self.env(task)
        env.render_images = self.needs_images or record
        result, frames, drawn = run_episode(env, self.policy, seed, self.follower, record=record)
        if record:
            from magma_core.tom.draw import write_overlay_video  # noqa: PLC0415 - OpenCV drawing only for videos

            path = Path(self.config.video_dir) / f"{task}_seed{seed:06d}.mp4"
            result.video = str(write_overlay_video(frames, drawn, path, fps=float(self.config.control_hz)))
        return result

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()


def _build_policy(source: Any, config: EvalConfig):
    if isinstance(source, str):
        return load_policy(source, control_hz=config.control_hz)
    if isinstance(source, type) or (callable(source) and not hasattr(source, "infer")):
        return source()
    return source


_WORKER: _Worker | None = None


def _init_worker(policy_source: Any, config: EvalConfig) -> None:
    global _WORKER
    _WORKER = _Worker(policy_source, config)


def _run_item(item: tuple[str, int, bool]) -> EpisodeResult:
    return _WORKER.run(*item)


# ---------------------------------------------------------------------------------------- the harness
def check_output_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove it writable now, before any episode runs."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"output path {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InvalidInputError(f"output folder {folder} is not writable: {exc.strerror or exc}") from exc
    return folder


def _check_counts(episodes: int, seed_start: int, workers: int, config: EvalConfig) -> None:
    def is_int(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(episodes) or episodes < 1:
        raise InvalidInputError(f"episodes must be a positive integer, got {episodes!r}")
    if not is_int(seed_start) or seed_start < 0:
        raise InvalidInputError(f"seed start must be a non-negative integer, got {seed_start!r}")
    if not is_int(workers) or workers < 1:
        raise InvalidInputError(f"workers must be a positive integer, got {workers!r}")
    if config.max_steps is not None and (not is_int(config.max_steps) or config.max_steps < 1):
        raise InvalidInputError(f"max_steps must be a positive integer, got {config.max_steps!r}")
    if not is_int(config.video_episodes) or config.video_episodes < 0:
        raise InvalidInputError(f"video_episodes must be a non-negative integer, got {config.video_episodes!r}")


def evaluate(policy: Any, tasks: str | list[str] = "all", episodes: int = 10, seed_start: int = 0,
             workers: int = 1, config: EvalConfig = EvalConfig(), progress: bool = False) -> EvalReport:
    """Run `episodes` episodes per task on seeds seed_start.. and return the report.

    `policy` is a --policy string ("scripted", "random[:SEED]", a checkpoint folder), a zero-argument
    factory (a class or picklable function; each worker calls it) or, with workers=1, a policy object.
    With ``config.video_dir`` the first ``config.video_episodes`` seeds of each task are recorded,
    and a success plot and results.json are written there at the end.
    """
    task_list = resolve_tasks(tasks)
    _check_counts(episodes, seed_start, workers, config)
    label = policy if isinstance(policy, str) else getattr(policy, "__name__", type(policy).__name__)
    if isinstance(policy, str):
        parse_policy_spec(policy)  # a missing or malformed checkpoint fails here, not in every worker
    elif workers > 1 and not isinstance(policy, type) and hasattr(policy, "infer"):
        raise InvalidInputError("a policy object can only run with workers=1; pass its class or a factory instead")
    if config.video_dir is not None:
        if importlib.util.find_spec("matplotlib") is None:
            raise InvalidInputError("--video writes a success plot and needs matplotlib: pip install -e '.[plots]'")
        check_output_dir(config.video_dir)
    items = [(task, seed_start + i, config.video_dir is not None and i < config.video_episodes)
             for task in task_list for i in range(episodes)]
    start = time.perf_counter()
    bar = _progress_bar(len(items), progress)
    try:
        results = _run_items(items, policy, config, workers, bar)
    finally:
        if bar is not None:
            bar.close()
    results.sort(key=lambda r: (task_list.index(r.task), r.seed))
    report = EvalReport(policy=str(label), episodes=results, tasks=task_list, config=config, workers=workers,
                        seconds=time.perf_counter() - start)
    if config.video_dir is not None:
        folder = Path(config.video_dir)
        (folder / "results.json").write_text(json.dumps(report.to_dict(), indent=1))
        write_success_plot(report.summary, folder / "success.png", title=f"{label}: success rate (95% Wilson interval)")
    return report


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, desc="eval", unit="episode", file=sys.stderr)


def _run_items(items, policy, config: EvalConfig, workers: int, bar) -> list[EpisodeResult]:
    results: list[EpisodeResult] = []

    def done(result: EpisodeResult) -> None:
        results.append(result)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")

    if workers == 1:
        worker = _Worker(policy, config)
        try:
            for item in items:
                done(worker.run(*item))
        finally:
            worker.close()
        return results
    for result in ordered_process_map(_run_item, items, workers, _init_worker, (policy, config)):
        done(result)
    return results


# ---------------------------------------------------------------------------------------- pictures
def write_success_plot(summary: dict, path: str | os.PathLike, title: str = "success rate") -> Path:
    """Bar chart of each task's success rate (and overall) with Wilson intervals as error bars."""
    import matplotlib  # noqa: PLC0415 - plotting is optional and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(summary["tasks"]) + ["overall"]
    blocks = [summary["tasks"][n] for n in names[:-1]] + [summary["overall"]]
    rates = np.array([b["rate"] for b in blocks])
    errors = np.array([[b["rate"] - b["ci_low"] for b in blocks], [b["ci_high"] - b["rate"] for b in blocks]])
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6), dpi=100)
    colours = ["#4C72B0"] * (len(names) - 1) + ["#555555"]
    ax.bar(names, rates, yerr=errors, capsize=5, color=colours)
    for i, b in enumerate(blocks):
        inside = b["rate"] >= 0.12  # a low bar has no room for its label: write it above, in black
        ax.text(i, 0.02 if inside else b["rate"] + 0.02, f"{b['successes']}/{b['n']}", ha="center", va="bottom",
                color="white" if inside else "black", fontsize=9,
                bbox=None if inside else {"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path

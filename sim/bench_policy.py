"""Latency of one ``Policy.infer`` step on real simulated observations (``magma bench policy``).

Observations come from a scripted-expert rollout in the tabletop env, so the timed set spans
an episode (approach, grasp, carry) rather than one frozen frame. The policy under test sees
only the observations, never the simulator's ``info``. Warm-up calls run before the timing
(lazy imports, allocator and kernel caches), and the policy is reset before the timed pass and
at every episode boundary so a stateful policy sees a coherent sequence.
"""
from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from magma_core.codecs.trace_text import DEFAULT_N_DEPTH_BINS, parse_traces
from magma_core.errors import InvalidInputError

# The latency budget a checkpointed Magma model is held to (magma-tiny, trace mode, one CPU thread).
TARGET_MEDIAN_MS = 50.0
TARGET_TEXT = "magma-tiny, trace mode, 1 CPU thread: median <= 50 ms"


@dataclass
class ObservationSet:
    """Recorded observations; ``episode_starts`` holds the indices where a new episode begins."""

    observations: list[dict[str, Any]] = field(default_factory=list)
    episode_starts: list[int] = field(default_factory=list)


def set_threads(threads: int) -> dict[str, int | None]:
    """Limit torch (when installed) and OpenCV to `threads` intra-op threads; returns what was set."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidInputError(f"threads must be a positive integer, got {threads!r}")
    applied: dict[str, int | None] = {"torch": None, "cv2": None}
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(threads)
        applied["torch"] = torch.get_num_threads()
    if importlib.util.find_spec("cv2") is not None:
        import cv2

        cv2.setNumThreads(threads)
        applied["cv2"] = cv2.getNumThreads()
    return applied


def collect_observations(task: str, count: int, image_size: int = 128, seed: int = 0,
                         progress=None) -> ObservationSet:
    """`count` consecutive observations of `task` driven by its scripted expert, starting at `seed`.

    A finished (or truncated) episode continues with the next seed.
    """
    from magma_sim.env import TabletopEnv
    from magma_sim.experts import make_expert

    if count < 1:
        raise InvalidInputError(f"need at least one observation, got {count}")
    recorded = ObservationSet()
    env = TabletopEnv(task, image_size=image_size, render=True, control="waypoint", control_hz=10)
    try:
        expert = make_expert(task, control="waypoint", control_hz=10)
        episode_seed = seed
        obs, info = env.reset(seed=episode_seed)
        recorded.episode_starts.append(0)
        while True:
            recorded.observations.append(obs)
            if progress is not None:
                progress.update(1)
            if len(recorded.observations) >= count:
                return recorded
            obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
            if terminated or truncated:
                episode_seed += 1
                expert.reset()
                obs, info = env.reset(seed=episode_seed)
                recorded.episode_starts.append(len(recorded.observations))
    finally:
        env.close()


def output_mode(output: dict[str, Any]) -> str | None:
    """"trace" or "action" for an infer() result, None when it holds neither."""
    if "trace_text" in output or "trace" in output:
        return "trace"
    if "actions" in output:
        return "action"
    return None


def output_parses(output: dict[str, Any], n_depth_bins: int = DEFAULT_N_DEPTH_BINS) -> bool:
    """True when the output is usable: its trace_text parses, or its actions are all finite."""
    if isinstance(output.get("trace_text"), str):
        return parse_traces(output["trace_text"], n_depth_bins=n_depth_bins).ok
    if "trace" in output:  # a trace without its text: at least it must be non-empty
        return bool(output["trace"])
    if "actions" in output:
        try:
            actions = np.asarray(output["actions"], dtype=np.float64)
        except (TypeError, ValueError):
            return False
        return actions.size > 0 and bool(np.all(np.isfinite(actions)))
    return False


def _depth_bins(policy: Any) -> int:
    """The depth-bin count the policy encodes trace_text with (its config or itself)."""
    for owner in (policy, getattr(policy, "config", None)):
        binning = getattr(owner, "depth_binning", None)
        if binning is not None and hasattr(binning, "n_bins"):
            return int(binning.n_bins)
    return DEFAULT_N_DEPTH_BINS


def _reset(policy: Any) -> None:
    if callable(getattr(policy, "reset", None)):
        policy.reset()


def _is_magma_checkpoint(policy: Any) -> bool:
    # Only look for the class when its module is already loaded: a built-in policy must not pull torch in.
    module = sys.modules.get("magma_core.training.policy")
    return module is not None and isinstance(policy, getattr(module, "MagmaPolicy"))


def time_policy(policy: Any, recorded: ObservationSet, warmup: int = 5, progress=None) -> dict[str, Any]:
    """Time `policy.infer` on every recorded observation after `warmup` untimed calls.

    An infer that raises InvalidInputError (e.g. a model output that did not parse) counts as an
    unparsed output; its time still counts, since a robot waits for it all the same.
    """
    if warmup < 0:
        raise InvalidInputError(f"warmup must be >= 0, got {warmup}")
    observations = recorded.observations
    _reset(policy)
    for i in range(warmup):
        try:
            policy.infer(observations[i % len(observations)])
        except InvalidInputError:
            pass
        if progress is not None:
            progress.update(1)
    starts = set(recorded.episode_starts)
    bins = _depth_bins(policy)
    times, modes, parsed, first_error = [], [], 0, None
    for i, obs in enumerate(observations):
        if i in starts:
            _reset(policy)
        start = time.perf_counter()
        try:
            output = policy.infer(obs)
        except InvalidInputError as exc:
            output = None
            first_error = first_error or f"step {i}: {exc}"
        times.append(time.perf_counter() - start)
        if output is not None:
            modes.append(output_mode(output))
            parsed += output_parses(output, bins)
        if progress is not None:
            progress.update(1)
    ms = 1000.0 * np.asarray(times)
    seen_modes = sorted({m for m in modes if m is not None})
    return {
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
        "min_ms": float(ms.min()),
        "infers_per_s": float(1000.0 / ms.mean()),
        "mode": "+".join(seen_modes) if seen_modes else None,
        "parse_fraction": parsed / len(observations),
        "errors": len(observations) - len(modes),
        "first_error": first_error,
    }


def run_policy_benchmark(policy_spec: str = "heuristic", task: str = "pick_place", steps: int = 50,
                         warmup: int = 5, image_size: int = 128, threads: int = 1, seed: int = 0,
                         progress=None) -> dict[str, Any]:
    """All figures of `magma bench policy` as one dict.

    Raises InvalidInputError for bad settings and for a policy spec that names no built-in policy
    or loadable checkpoint folder.
    """
    from magma_sim.policies import load_policy, parse_policy_spec
    from magma_sim.tasks import check_task

    check_task(task)
    for name, value, low in (("steps", steps, 1), ("warmup", warmup, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 32 <= image_size <= 1024:
        raise InvalidInputError(f"image_size must be an integer between 32 and 1024, got {image_size!r}")
    kind, _ = parse_policy_spec(policy_spec)
    if kind == "scripted":
        raise InvalidInputError("the scripted policy reads simulator state (info); benchmark a policy that sees only observations")
    applied = set_threads(threads)  # before loading, so a model's first allocations see the limit
    policy = load_policy(policy_spec)
    recorded = collect_observations(task, steps, image_size=image_size, seed=seed, progress=progress)
    figures = time_policy(policy, recorded, warmup=warmup, progress=progress)
    is_magma = _is_magma_checkpoint(policy)
    result = {
        "policy": policy_spec,
        "policy_class": f"{type(policy).__module__}:{type(policy).__qualname__}",
        "task": task,
        "image_size": image_size,
        "steps": steps,
        "warmup": warmup,
        "seed": seed,
        "episodes": len(recorded.episode_starts),
        "threads": threads,
        "threads_applied": applied,
        **figures,
        "target": TARGET_TEXT if is_magma else None,
        "target_median_ms": TARGET_MEDIAN_MS if is_magma else None,
        "passed": bool(figures["median_ms"] <= TARGET_MEDIAN_MS) if is_magma else None,
    }
    return result

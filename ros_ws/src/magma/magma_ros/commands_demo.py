"""`magma demo`: the ROS graph in simulation, headless, scored over N episodes.

Launches sim_bridge (auto reset over seeds seed_start..seed_start+N-1) + policy + controller with the
pip-only launcher, listens in this process to sim/episode, sim/success and magma/overlay, and counts
episodes (one that does not end within --episode-timeout is a failure, and sim/reset moves on).
Prints the success rate with a 95% Wilson interval and writes demo.mp4 (the overlays) and
summary.json to --out. The interval comes from magma_sim.stats, imported only when the demo runs:
the demo is the simulated bringup, so it depends on the simulation room anyway.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from magma_core.errors import InvalidInputError

STARTUP_TIMEOUT_S = 60.0  # first episode record: process start, imports and DDS discovery on a busy machine
AUTO_RESET_DELAY_S = 0.5


@dataclass
class EpisodeResult:
    episode: int
    seed: int
    success: bool
    steps: int
    wall_s: float
    timed_out: bool
    # Where the controller's ticks went ("following", "dwelling", "finished", or a hold code such as "stale")
    # and how old the policy's plans were when published: why an episode was slow or failed.
    controller: dict = field(default_factory=dict)
    plans: int = 0
    plan_age_ms: dict = field(default_factory=dict)


def controller_phase(code: str, message: str) -> str:
    """One word for a controller state message: its hold code, else what it is doing with the plan."""
    from magma_ros.follower import PHASE_MESSAGES

    if code not in ("ok", "clipped"):
        return code
    for phase, text in PHASE_MESSAGES.items():
        if message == text:
            return phase
    return "clipped" if code == "clipped" else "following"


def summarize_ages(ages_ms: list[float]) -> dict:
    """Median and 95th percentile (ms) of plan ages; empty without plans."""
    if not ages_ms:
        return {}
    ordered = sorted(ages_ms)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank
    return {"median": round(statistics.median(ordered), 1), "p95": round(p95, 1)}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the ROS graph in simulation over N episodes and report the success rate",
        description="sim_bridge + policy + controller as ROS nodes (localhost DDS), N auto-reset episodes; "
        "success rate with a 95% Wilson interval, overlay video and summary JSON.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="pick_place", help="simulated task (default pick_place)")
    parser.add_argument("--episodes", type=int, default=5, help="episodes to run (default 5)")
    # Held-out seeds, the same default as `magma eval`: `magma dataset generate` starts at 0.
    parser.add_argument("--seed-start", type=int, default=10_000,
                        help="seed of the first episode; then +1 each (default 10000, outside the training seeds)")
    parser.add_argument("--policy", default="embedded",
                        help="'embedded' (default: the trained magma-tiny), 'heuristic' or 'package.module:ClassName'")
    parser.add_argument("--checkpoint", default="", help="local checkpoint directory for the policy")
    parser.add_argument("--episode-timeout", type=float, default=60.0, help="seconds before an episode counts as failed")
    parser.add_argument("--image-size", type=int, default=128, help="simulated camera size in pixels")
    parser.add_argument("--out", default="magma_demo_ros", help="output folder (default magma_demo_ros)")
    parser.add_argument("--show-logs", action="store_true", help="print the nodes' logs (default: only in the log file)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")


class EpisodeWatch:
    """What the listener heard, grouped by the sim bridge's episode index."""

    def __init__(self) -> None:
        self.records: dict[int, dict] = {}  # newest record per episode
        self.first_seen: dict[int, float] = {}
        self.success_seen: dict[int, bool] = {}
        self.frames: list = []
        self.phases: dict[int, Counter] = {}  # controller ticks per phase, per episode
        self.plan_ages: dict[int, list[float]] = {}  # frame-to-publish ms of each plan, per episode

    def _current(self) -> int | None:
        return max(self.records) if self.records else None

    def on_controller(self, _now: float, msg) -> None:
        from magma_ros.converters import status_values

        episode = self._current()
        if episode is None:
            return
        code = status_values(msg).get("code", "unknown")
        self.phases.setdefault(episode, Counter())[controller_phase(code, msg.message)] += 1

    def on_latency(self, _now: float, msg) -> None:
        from magma_ros.converters import MessageConversionError, msg_to_latency

        episode = self._current()
        if episode is None:
            return
        try:
            report = msg_to_latency(msg)
        except MessageConversionError:
            return
        self.plan_ages.setdefault(episode, []).append(report.frame_to_publish_ms)

    def diagnostics(self, episode: int) -> dict:
        """The controller phases, plan count and plan ages heard during `episode`."""
        ages = self.plan_ages.get(episode, [])
        return {"controller": dict(sorted(self.phases.get(episode, Counter()).items())), "plans": len(ages),
                "plan_age_ms": summarize_ages(ages)}

    def on_episode(self, now: float, msg) -> None:
        record = json.loads(msg.data)
        index = int(record["episode"])
        self.first_seen.setdefault(index, now)
        self.records[index] = record

    def on_success(self, _now: float, msg) -> None:
        if msg.data and self.records:
            self.success_seen[max(self.records)] = True

    def on_overlay(self, _now: float, msg) -> None:
        from magma_ros.converters import image_to_rgb

        self.frames.append(image_to_rgb(msg))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from magma_ros.graph import build_graph
    from magma_ros.launcher import Launcher, NodeDied, forward_signals, launch_environment
    from magma_ros.env import random_domain_id
    from magma_sim.stats import wilson_interval

    if args.episodes < 1:
        raise InvalidInputError(f"--episodes must be at least 1, got {args.episodes}")
    if not args.episode_timeout > 0:
        raise InvalidInputError(f"--episode-timeout must be positive, got {args.episode_timeout}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seed_start, args.seed_start + args.episodes))
    specs = build_graph(use_sim=True, policy=args.policy, checkpoint=args.checkpoint, task=args.task, seeds=seeds,
                        seed=seeds[0], auto_reset=True, image_size=args.image_size,
                        extrinsics=str(out / "extrinsics.yaml"),
                        extra={"sim_bridge": {"auto_reset_delay_s": AUTO_RESET_DELAY_S}})
    env = launch_environment(domain_id=random_domain_id(), log_dir=tempfile.mkdtemp(prefix="magma-demo-roslog-"))
    log_path = out / "nodes.log"
    started = time.monotonic()
    results: list[EpisodeResult] = []
    watch = EpisodeWatch()
    with open(log_path, "w") as log_file:
        launcher = Launcher(specs, env=env, output=sys.stderr if args.show_logs else log_file)
        with forward_signals(launcher):
            listener = _listen(env, watch)
            launcher.start()
            try:
                with tqdm(total=args.episodes, desc="episodes", unit="ep", file=sys.stderr) as bar:
                    for index, seed in enumerate(seeds):
                        result = _run_episode(index, seed, watch, listener, launcher, args.episode_timeout,
                                              STARTUP_TIMEOUT_S if index == 0 else 0.0)
                        if result is None:  # stopped by the user
                            break
                        results.append(result)
                        bar.update(1)
                        bar.set_postfix(success=sum(r.success for r in results))
            except NodeDied as exc:
                raise InvalidInputError(f"{exc} (node logs: {log_path})") from None
            finally:
                listener.close()
                launcher.stop()
    successes = sum(r.success for r in results)
    low, high = wilson_interval(successes, len(results))
    video = None
    if watch.frames:
        from magma_core.tom.draw import write_video

        h, w = watch.frames[0].shape[:2]
        frames = [f for f in watch.frames if f.shape[:2] == (h, w)]
        video = str(write_video(frames, out / "demo.mp4", fps=float(specs[1].parameters["rate_hz"]), size=(w, h)))
    summary = {"task": args.task, "policy": args.policy, "episodes": len(results), "successes": successes,
               "success_rate": successes / len(results) if results else 0.0, "wilson_95": [low, high],
               "wall_s": round(time.monotonic() - started, 2), "video": video, "overlay_frames": len(watch.frames),
               "node_log": str(log_path), "per_episode": [asdict(r) for r in results]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.task} with {args.policy}: {successes}/{len(results)} succeeded "
              f"({summary['success_rate']:.0%}, 95% CI {low:.0%}..{high:.0%}) in {summary['wall_s']:.0f} s")
        print(f"wrote {out / 'summary.json'}" + (f" and {video}" if video else ""))
    return 0 if len(results) == args.episodes else 130


def _listen(env: dict[str, str], watch: EpisodeWatch):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool, String

    from magma_ros import qos
    from magma_ros.listener import Listener, join_environment

    join_environment(env)
    listener = Listener("magma_demo")
    listener.subscribe(String, "sim/episode", qos.LATCHED, watch.on_episode)
    listener.subscribe(Bool, "sim/success", qos.LATCHED, watch.on_success)
    listener.subscribe(Image, "magma/overlay", qos.SENSOR, watch.on_overlay)
    listener.subscribe(DiagnosticStatus, "magma/controller_state", qos.EVENTS, watch.on_controller)
    listener.subscribe(DiagnosticArray, "magma/latency", qos.EVENTS, watch.on_latency)
    return listener


def _run_episode(index: int, seed: int, watch: EpisodeWatch, listener, launcher, timeout: float,
                 startup: float) -> EpisodeResult | None:
    """Wait for episode ``index`` to start and end; None when a stop was requested."""
    wait_start = time.monotonic()
    while True:
        launcher.check()
        if launcher.stop_requested:
            return None
        with listener.lock:
            record = watch.records.get(index)
            done = bool(record and record["done"])
            begun = watch.first_seen.get(index)
        if done:
            with listener.lock:
                success = bool(record["success"] or watch.success_seen.get(index))
                diagnostics = watch.diagnostics(index)
            return EpisodeResult(index, int(record["seed"]), success, int(record["step"]),
                                 round(time.time() - begun, 2), False, **diagnostics)
        if time.monotonic() - wait_start > timeout + startup:
            listener.call_trigger("sim/reset")  # give up on this seed: the next episode starts at once
            steps = int(record["step"]) if record else 0
            with listener.lock:
                diagnostics = watch.diagnostics(index)
            return EpisodeResult(index, seed, False, steps, round(time.monotonic() - wait_start, 2), True, **diagnostics)
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    """``python -m magma_ros.commands_demo ...`` (the same as ``magma demo``)."""
    from magma_core.errors import MagmaError

    parser = argparse.ArgumentParser(prog="magma demo")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MagmaError as exc:
        print(f"magma demo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

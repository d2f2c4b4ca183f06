"""`magma bench ros`: what the ROS plumbing costs, measured between real processes on this host.

1. Image transport: a publisher subprocess sends 640x480 rgb8 images (sensor-data QoS), stamping each
   header with its clock just before publishing; a subscriber in this process takes receipt time minus
   stamp. Median, p95 and received messages per second (target: median <= 5 ms).
2. Camera frame to target: sim_bridge + heuristic policy + controller. For each inference the policy's
   magma/latency gives the camera frame stamp F and when the plan was published (F + frame_to_publish_ms);
   the first magma/target_pose the controller stamps at or after that moment is the first target derived
   from the plan, and F to its header stamp is reported. It includes the policy's wait for its timer and
   inference, two DDS hops and up to one controller period (1/control_hz).
3. Control rate: magma/controller_state messages per second (one per control step, held or not) and
   magma/target_pose messages per second, against control_hz.
All clocks are this host's system clock, so stamps from different processes compare directly.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

from magma_core.errors import InvalidInputError, MagmaError

IMAGE_TARGET_MEDIAN_MS = 5.0
WIDTH, HEIGHT = 640, 480
DISCOVERY_TIMEOUT_S = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ros", help="ROS latency: image transport, camera frame to target, control rate",
        description="Image latency between two processes (640x480 rgb8), camera-frame-to-target latency and "
        "the achieved control rate of the simulated graph (localhost DDS, its own domain).")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=150, help="images to send (default 150)")
    parser.add_argument("--rate", type=float, default=30.0, help="images per second (default 30)")
    parser.add_argument("--loop-seconds", type=float, default=15.0, help="closed-loop measurement window (default 15)")
    parser.add_argument("--control-hz", type=float, default=20.0, help="controller rate (default 20)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def stats_ms(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"count": 0, "median_ms": None, "p95_ms": None}
    values = np.asarray(values_ms, float)
    return {"count": int(values.size), "median_ms": round(float(np.median(values)), 3),
            "p95_ms": round(float(np.percentile(values, 95)), 3), "max_ms": round(float(values.max()), 3)}


def first_targets_after_plans(plans: list[tuple[int, int]], target_stamps_ns: list[int]) -> list[float]:
    """For each plan (frame stamp F, publish time P), F -> the first target stamped at or after P, in ms.

    Plans with no later target (the controller held) are left out.
    """
    stamps = np.sort(np.asarray(target_stamps_ns, dtype=np.int64))
    out = []
    for frame_ns, published_ns in plans:
        i = int(np.searchsorted(stamps, published_ns, side="left"))
        if i < stamps.size:
            out.append((int(stamps[i]) - frame_ns) / 1e6)
    return out


def run(args: argparse.Namespace) -> int:
    from magma_ros.env import random_domain_id
    from magma_ros.launcher import launch_environment
    from magma_ros.listener import Listener, join_environment

    if args.frames < 10:
        raise InvalidInputError(f"--frames must be at least 10, got {args.frames}")
    if not args.rate > 0 or not args.loop_seconds > 0 or not args.control_hz > 0:
        raise InvalidInputError("--rate, --loop-seconds and --control-hz must be positive")
    env = launch_environment(domain_id=random_domain_id(), log_dir=tempfile.mkdtemp(prefix="magma-bench-roslog-"))
    join_environment(env)
    listener = Listener("magma_bench_ros")
    try:
        transport = bench_image_transport(listener, env, args.frames, args.rate)
        loop = bench_closed_loop(listener, env, args.loop_seconds, args.control_hz)
    finally:
        listener.close()
    result = {"image_transport": transport, **loop, "ros_domain_id": env["ROS_DOMAIN_ID"]}
    if args.json:
        print(json.dumps(result))
    else:
        t = transport
        print(f"image {WIDTH}x{HEIGHT} rgb8, 2 processes: median {t['median_ms']} ms, p95 {t['p95_ms']} ms, "
              f"{t['msg_per_s']} msg/s, {t['count']}/{t['sent']} received "
              f"(target median <= {IMAGE_TARGET_MEDIAN_MS} ms: {'met' if t['meets_target'] else 'NOT met'})")
        f = loop["frame_to_target"]
        print(f"camera frame -> target: median {f['median_ms']} ms, p95 {f['p95_ms']} ms over {f['count']} plans "
              f"(policy frame -> publish median {f['policy_frame_to_publish_median_ms']} ms)")
        c = loop["control"]
        print(f"control: {c['steps_per_s']} steps/s, {c['targets_per_s']} targets/s at control_hz {c['control_hz']}")
    return 0


def bench_image_transport(listener, env: dict[str, str], frames: int, rate: float) -> dict:
    from sensor_msgs.msg import Image

    from magma_ros import qos
    from magma_ros.converters import stamp_to_ns

    latencies: list[float] = []
    receipts: list[float] = []

    def on_image(now: float, msg) -> None:
        latencies.append((now * 1e9 - stamp_to_ns(msg.header.stamp)) / 1e6)
        receipts.append(now)

    listener.subscribe(Image, "bench/image", qos.SENSOR, on_image)
    command = [sys.executable, "-m", "magma_ros.commands_bench_ros", "--publish-images", str(frames), "--rate", str(rate)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=DISCOVERY_TIMEOUT_S + frames / rate + 30)
    if proc.returncode != 0:
        raise MagmaError(f"the image publisher failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    time.sleep(0.3)
    with listener.lock:
        values, times = list(latencies), list(receipts)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    result = stats_ms(values)
    result.update({"sent": frames, "requested_rate": rate, "msg_per_s": round((len(times) - 1) / span, 1) if span else None,
                   "target_median_ms": IMAGE_TARGET_MEDIAN_MS,
                   "meets_target": bool(values) and result["median_ms"] <= IMAGE_TARGET_MEDIAN_MS})
    return result


def bench_closed_loop(listener, env: dict[str, str], seconds: float, control_hz: float) -> dict:
    import io

    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from geometry_msgs.msg import PoseStamped

    from magma_ros import qos
    from magma_ros.converters import msg_to_latency, stamp_to_ns
    from magma_ros.graph import build_graph
    from magma_ros.launcher import Launcher

    latencies = listener.record(DiagnosticArray, "magma/latency", qos.EVENTS)
    targets = listener.record(PoseStamped, "magma/target_pose", qos.LATEST)
    states = listener.record(DiagnosticStatus, "magma/controller_state", qos.EVENTS)
    extrinsics = tempfile.mktemp(prefix="magma-bench-extrinsics-", suffix=".yaml")
    specs = build_graph(use_sim=True, policy="heuristic", auto_reset=True, control_hz=control_hz, extrinsics=extrinsics,
                        extra={"sim_bridge": {"auto_reset_delay_s": 0.2}})
    logs = io.StringIO()
    with Launcher(specs, env=env, output=logs) as launcher:
        deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
        while not targets:  # warm-up: imports, discovery, the first plan
            launcher.check()
            if time.monotonic() > deadline:
                raise MagmaError("no target from the simulated graph within "
                                 f"{DISCOVERY_TIMEOUT_S:g} s; node logs:\n{logs.getvalue()[-2000:]}")
            time.sleep(0.1)
        start = time.time()
        end_at = time.monotonic() + seconds
        while time.monotonic() < end_at:
            launcher.check()
            time.sleep(0.1)
        end = time.time()
    with listener.lock:
        reports = [msg_to_latency(m) for t, m in latencies if start <= t <= end]
        target_stamps = [stamp_to_ns(m.header.stamp) for _, m in targets]
        window_targets = sum(1 for t, _ in targets if start <= t <= end)
        window_states = sum(1 for t, _ in states if start <= t <= end)
    plans = [(r.frame_stamp_ns, r.frame_stamp_ns + int(r.frame_to_publish_ms * 1e6)) for r in reports]
    frame_to_target = stats_ms(first_targets_after_plans(plans, target_stamps))
    frame_to_target["policy_frame_to_publish_median_ms"] = (
        round(float(np.median([r.frame_to_publish_ms for r in reports])), 3) if reports else None)
    frame_to_target["policy_infer_median_ms"] = round(float(np.median([r.infer_ms for r in reports])), 3) if reports else None
    span = end - start
    control = {"control_hz": control_hz, "steps_per_s": round(window_states / span, 2),
               "targets_per_s": round(window_targets / span, 2), "window_s": round(span, 2)}
    return {"frame_to_target": frame_to_target, "control": control}


def publish_images(frames: int, rate: float) -> int:
    """The publisher subprocess: wait for a subscriber, then send ``frames`` images at ``rate``."""
    from magma_ros.env import apply_process_defaults

    apply_process_defaults()
    import rclpy
    from sensor_msgs.msg import Image

    from magma_ros import qos
    from magma_ros.converters import rgb_to_image

    rclpy.init()
    node = rclpy.create_node("magma_bench_image_publisher")
    try:
        pub = node.create_publisher(Image, "bench/image", qos.SENSOR)
        deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
        while pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                print("no subscriber appeared", file=sys.stderr)
                return 1
            time.sleep(0.05)
        time.sleep(0.5)  # let the match settle both ways before the first image
        msg = rgb_to_image(np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8),
                           frame_id="camera_optical")
        period = 1.0 / rate
        next_at = time.monotonic()
        for _ in range(frames):
            msg.header.stamp = node.get_clock().now().to_msg()
            pub.publish(msg)
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
        time.sleep(0.3)
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    """``python -m magma_ros.commands_bench_ros`` (as ``magma bench ros``; ``--publish-images N`` is the helper)."""
    parser = argparse.ArgumentParser(prog="magma bench ros")
    add_arguments(parser)
    parser.add_argument("--publish-images", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publish_images:
        return publish_images(args.publish_images, args.rate)
    try:
        return run(args)
    except MagmaError as exc:
        print(f"magma bench ros: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

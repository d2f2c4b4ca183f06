"""`magma bringup`: start the magma ROS graph without the ROS `launch` package (pip installs).

The same graph as ``ros2 launch magma bringup.launch.py`` (both come from magma_ros.graph). Runs in the
foreground until Ctrl-C, SIGTERM or ``--duration``; exits 1 when a node dies.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from magma_ros.graph import ARGUMENT_DEFAULTS, build_graph


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bringup", help="start the ROS graph (simulation or camera) with a policy and the controller",
        description="Start sim_bridge (or camera) + policy + controller as subprocesses with localhost-only DDS "
        "(prefixed logs; Ctrl-C stops them cleanly). Same graph as `ros2 launch magma bringup.launch.py`.")
    sim = parser.add_mutually_exclusive_group()
    sim.add_argument("--use-sim", dest="use_sim", action="store_true", default=True,
                     help="simulated arm and camera (default)")
    sim.add_argument("--no-sim", dest="use_sim", action="store_false", help="camera node; the arm driver runs elsewhere")
    d = ARGUMENT_DEFAULTS
    parser.add_argument("--policy", default=d["policy"], help="'embedded' (default), 'heuristic' or 'package.module:ClassName'")
    parser.add_argument("--checkpoint", default=d["checkpoint"], help="local checkpoint directory for the policy")
    parser.add_argument("--mode", default=d["mode"], choices=("trace", "action"), help="policy output / controller input")
    parser.add_argument("--instruction", default=d["instruction"], help="instruction (simulation: default per episode)")
    parser.add_argument("--camera-source", default=d["camera_source"], help="--no-sim: device index, video or folder")
    parser.add_argument("--camera-info", default=d["camera_info"], help="--no-sim: camera_info YAML")
    parser.add_argument("--extrinsics", default=d["extrinsics"], help="camera extrinsics YAML (required with --no-sim)")
    parser.add_argument("--task", default=d["task"], help="simulated task (default pick_place)")
    parser.add_argument("--seed", type=int, default=int(d["seed"]), help="seed of the first simulated episode")
    parser.add_argument("--seeds", default=d["seeds"], help="comma-separated episode seeds")
    parser.add_argument("--auto-reset", action="store_true", help="start the next episode when one ends")
    parser.add_argument("--image-size", type=int, default=int(d["image_size"]), help="simulated image size, pixels")
    parser.add_argument("--sim-hz", type=int, default=int(d["sim_hz"]), help="simulation steps per second")
    parser.add_argument("--policy-hz", type=float, default=float(d["policy_hz"]), help="most inferences per second")
    parser.add_argument("--control-hz", type=float, default=float(d["control_hz"]), help="controller steps per second")
    parser.add_argument("--teleop", default=d["teleop"], choices=("", "joy", "scripted", "external"),
                        help="drive the arm by teleop instead of the policy (keyboard: 'external' + magma_teleop in a terminal)")
    parser.add_argument("--record-dir", default=d["record_dir"], help="record one MCAP bag per episode into this folder")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--network", action="store_true",
                        help="let DDS reach other hosts (default: this host only, as MAGMA_ROS_NETWORK=1 does)")
    parser.add_argument("--dry-run", action="store_true", help="print the node command lines and exit")
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    parser.set_defaults(func=run)


def graph_from_args(args: argparse.Namespace):
    return build_graph(use_sim=args.use_sim, policy=args.policy, checkpoint=args.checkpoint, mode=args.mode,
                       instruction=args.instruction, camera_source=args.camera_source, camera_info=args.camera_info,
                       extrinsics=args.extrinsics, task=args.task, seed=args.seed, seeds=args.seeds,
                       auto_reset=args.auto_reset, image_size=args.image_size,
                       sim_hz=args.sim_hz, policy_hz=args.policy_hz, control_hz=args.control_hz,
                       teleop=args.teleop, record_dir=args.record_dir)


def run(args: argparse.Namespace) -> int:
    from magma_core.errors import InvalidInputError
    from magma_ros.launcher import Launcher, forward_signals, launch_environment

    if args.duration is not None and not args.duration > 0:
        raise InvalidInputError(f"--duration must be positive, got {args.duration}")
    specs = graph_from_args(args)
    launcher = Launcher(specs, env=launch_environment(network=args.network),
                        output=sys.stderr if args.json else sys.stdout)
    if args.dry_run:
        commands = {s.name: launcher.command(s) for s in specs}
        print(json.dumps(commands, indent=2) if args.json else "\n".join(" ".join(c) for c in commands.values()))
        return 0
    with forward_signals(launcher):
        launcher.start()
        code = launcher.wait(args.duration)
    if args.use_sim and not args.extrinsics:  # the temporary file the sim bridge wrote for this run
        Path(specs[0].parameters["extrinsics_path"]).unlink(missing_ok=True)
    summary = {"nodes": [s.name for s in specs], "exit_code": code, "failure": launcher.failed,
               "ros_domain_id": launcher.env.get("ROS_DOMAIN_ID")}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"bringup ended: {'failed: ' + launcher.failed if launcher.failed else 'clean shutdown'}")
    return code

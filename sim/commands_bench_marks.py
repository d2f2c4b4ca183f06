"""`magma bench marks`: how well run-time Set-of-Mark proposal finds each task's object and target.

For each task and seed the scene is reset (and, with ``--rollout-every``, followed along the
scripted expert's episode); `magma_core.som.propose.propose_marks` runs on the observation
alone and is scored against the simulator's privileged mark points: recall (a proposed
non-gripper mark within ``--radius`` px of the object's / target's projected marked point),
the gripper mark's pixel error, the table plane's height error, stray marks (proposed marks
farther than twice the radius from every object's centre: in practice pads half hidden by the
arm, whose visible part's centre moved) and latency.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("marks", help="Set-of-Mark proposal from RGB-D: recall of task objects, latency")
    parser.add_argument("--tasks", default="all", help="comma-separated tasks or 'all' (default)")
    parser.add_argument("--seeds", type=int, default=20, help="scenes per task (default 20)")
    parser.add_argument("--image-size", type=int, default=128, help="camera image size in pixels (default 128)")
    parser.add_argument("--radius", type=float, default=None,
                        help="recall radius in pixels (default 3 px per 128 px of image width)")
    parser.add_argument("--rollout-every", type=int, default=0,
                        help="also score every k-th step of the expert's episode (0: first frame only)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from magma_core.errors import InvalidInputError
    from magma_sim.tasks import resolve_tasks

    tasks = resolve_tasks(args.tasks)
    if args.seeds <= 0 or args.image_size < 32 or args.rollout_every < 0:
        raise InvalidInputError("--seeds must be positive, --image-size at least 32, --rollout-every non-negative")
    radius = args.radius if args.radius is not None else 3.0 * args.image_size / 128.0
    if radius <= 0:
        raise InvalidInputError(f"--radius must be positive, got {radius}")
    results = {}
    with tqdm(total=len(tasks) * args.seeds, desc="bench marks", file=sys.stderr, leave=False) as bar:
        for task in tasks:
            results[task] = _bench_task(task, args.seeds, args.image_size, radius, args.rollout_every, bar)
    summary = {"image_size": args.image_size, "radius_px": radius, "seeds": args.seeds,
               "rollout_every": args.rollout_every, "tasks": results}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"Set-of-Mark proposal from RGB-D ({args.image_size} px, recall radius {radius:.1f} px, "
          f"{args.seeds} seeds per task{', along expert episodes' if args.rollout_every else ', first frames'})")
    print(f"  {'task':<12} {'frames':>6} {'object':>7} {'target':>7} {'gripper px':>10} {'plane mm':>8} "
          f"{'stray/frame':>11} {'ms':>6}")
    for task, r in results.items():
        print(f"  {task:<12} {r['frames']:>6} {r['object_recall']:>7.3f} {r['target_recall']:>7.3f} "
              f"{r['gripper_error_px']:>10.2f} {r['plane_error_mm']:>8.2f} {r['stray_marks_per_frame']:>11.3f} "
              f"{r['propose_ms']:>6.1f}")
    return 0


def _bench_task(task: str, seeds: int, image_size: int, radius: float, every: int, bar) -> dict:
    import numpy as np

    from magma_core.som.propose import mark_recall, propose_marks
    from magma_sim.camera import project_points
    from magma_sim.env import make_env
    from magma_sim.experts import make_expert

    env = make_env(task, image_size=image_size, control="waypoint", terminate_on_success=False)
    expert = make_expert(task, control="waypoint", control_hz=env.control_hz)
    rows = {"object": [], "target": [], "gripper": [], "plane": [], "stray": [], "ms": []}
    try:
        for seed in range(seeds):
            obs, info = env.reset(seed=seed)
            expert.reset()
            step = 0
            while True:
                if step == 0 or (every and step % every == 0):
                    _score(obs, info["privileged"], radius, rows, propose_marks, mark_recall, project_points, np)
                if not every:
                    break
                obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
                step += 1
                if terminated or truncated or info["success"]:
                    break
            bar.update(1)
    finally:
        env.close()
    return {
        "frames": len(rows["ms"]),
        "object_recall": float(np.mean(rows["object"])),
        "target_recall": float(np.mean(rows["target"])),
        "gripper_error_px": float(np.mean(rows["gripper"])),
        "plane_error_mm": float(np.mean(rows["plane"])),
        "stray_marks_per_frame": float(np.mean(rows["stray"])),
        "propose_ms": float(np.median(rows["ms"])),
    }


def _score(obs, priv, radius, rows, propose_marks, mark_recall, project_points, np) -> None:
    start = time.perf_counter()
    proposal = propose_marks(obs)
    rows["ms"].append(1000.0 * (time.perf_counter() - start))
    K, T = obs["intrinsics"], obs["extrinsics"]
    truth = project_points(priv["mark_points"], K, T)[:, :2]  # gripper, object, target
    rows["object"].append(mark_recall(proposal, truth[1:2], radius))
    rows["target"].append(mark_recall(proposal, truth[2:3], radius))
    gripper = proposal.marks[proposal.gripper_id].center
    rows["gripper"].append(float(np.linalg.norm(np.subtract(gripper, truth[0]))))
    rows["plane"].append(1000.0 * abs(proposal.plane.z_at(0.5, 0.0)))  # the table top is the base frame's z = 0
    anchors = [truth[1], truth[2]]
    for obj in priv["objects"].values():
        for dz in (obj["half_extents"][2], 0.0):
            anchors.append(project_points(np.asarray(obj["position"]) + [0.0, 0.0, dz], K, T)[:2])
    anchors = np.array(anchors)
    stray = 0
    for mark in proposal.marks:
        if mark.kind != "gripper" and np.min(np.linalg.norm(anchors - np.asarray(mark.center), axis=1)) > 2 * radius:
            stray += 1
    rows["stray"].append(stray)

"""Roll a scripted expert out in the tabletop scene and record it as a ``magma_core`` Episode."""
from __future__ import annotations

import numpy as np

from magma_core.data.episode import Episode
from magma_sim.camera import CameraConfig
from magma_sim.control import delta_to_waypoint, waypoint_to_delta
from magma_sim.env import TabletopEnv
from magma_sim.experts import make_expert
from magma_sim.gt_traces import compute_gt_traces

DEFAULT_N_FUTURE = 16


def rollout_expert(task: str, seed: int, *, image_size=128, camera: CameraConfig = CameraConfig(),
                   control: str = "waypoint", control_hz: int = 10, max_steps: int | None = None,
                   n_future: int = DEFAULT_N_FUTURE, post_success_steps: int = 0,
                   env: TabletopEnv | None = None) -> Episode:
    """One expert episode with images, depth, proprioception, both action formats and ground-truth traces.

    The episode has one row per control step: the observation before the action and the action
    taken from it. It ends ``post_success_steps`` after the success predicate first holds (the
    expert keeps acting, e.g. retracting) or at ``max_steps``; ``success`` is the predicate at the end.
    ``control`` picks the format the expert drives the env with; both formats are recorded.
    Pass ``env`` to reuse a simulator across episodes (its settings then win over the keywords).
    """
    own_env = env is None
    if own_env:
        env = TabletopEnv(task, image_size=image_size, camera=camera, control=control, control_hz=control_hz,
                          max_steps=max_steps, render=True, terminate_on_success=False)
    try:
        return _record(env, task, seed, n_future, post_success_steps)
    finally:
        if own_env:
            env.close()


def _record(env: TabletopEnv, task: str, seed: int, n_future: int, post_success_steps: int) -> Episode:
    expert = make_expert(task, control=env.control, control_hz=env.control_hz)
    obs, info = env.reset(seed=seed)
    return _record_from(env, expert, obs, info, task, seed, n_future, post_success_steps, {})


def rollout_takeover(task: str, seed: int, policy, takeover_step: int, *, env: TabletopEnv,
                     n_future: int = DEFAULT_N_FUTURE, lookahead: int = 1) -> Episode | None:
    """Recovery data (DAgger-style): `policy` drives the arm for `takeover_step` steps, then the scripted expert
    takes over from wherever the arm, the hand and the block ended up and the episode is recorded from there on,
    so the data shows how to go on from the states the policy itself reaches. None when the episode ended or
    succeeded before the takeover (nothing to recover from). The recorded steps count from the takeover."""
    from magma_core.errors import InvalidInputError  # noqa: PLC0415
    from magma_sim.evaluate import policy_command, reset_policy  # noqa: PLC0415
    from magma_sim.trace_follow import TraceFollower  # noqa: PLC0415

    obs, info = env.reset(seed=seed)
    reset_policy(policy, seed)
    follower = TraceFollower(lookahead)
    for _ in range(int(takeover_step)):
        command, _, _ = policy_command(policy, obs, info, follower)
        obs, _, terminated, truncated, info = env.step(command)
        if info["success"] or terminated or truncated:
            return None
    expert = make_expert(task, control=env.control, control_hz=env.control_hz)
    if not hasattr(expert, "take_over"):
        raise InvalidInputError(f"the {task} expert cannot take over from another controller")
    phase = expert.take_over(obs, info)
    return _record_from(env, expert, obs, info, task, seed, n_future, 0,
                        {"takeover_step": int(takeover_step), "takeover_phase": phase})


def _record_from(env: TabletopEnv, expert, obs: dict, info: dict, task: str, seed: int, n_future: int,
                 post_success_steps: int, extra_metadata: dict) -> Episode:
    rows: dict[str, list] = {k: [] for k in ("rgb", "depth", "ee_pose", "gripper", "joints", "actions", "waypoints")}
    marks = [info["privileged"]["mark_points"]]
    grip_state = [info["gripper_command"]]
    success_at = None
    while True:
        action = expert.act(obs, info)
        tcp = obs["ee_pose"]
        if env.control == "waypoint":
            waypoint, delta = action, waypoint_to_delta(action, tcp)
        else:
            waypoint, delta = delta_to_waypoint(action, tcp), action
        for key in ("rgb", "depth", "ee_pose", "gripper", "joints"):
            rows[key].append(obs[key])
        rows["actions"].append(delta)
        rows["waypoints"].append(waypoint)
        obs, _, terminated, truncated, info = env.step(action)
        marks.append(info["privileged"]["mark_points"])
        grip_state.append(info["gripper_command"])
        if info["success"] and success_at is None:
            success_at = info["step"]
        if (success_at is not None and info["step"] >= success_at + post_success_steps) or terminated or truncated:
            break
    T = len(rows["actions"])
    # The state after the last action is known too, so traces use it before repeating the end.
    traces, trace_grip = compute_gt_traces(np.asarray(marks), np.asarray(grip_state), env.camera_params, n_future)
    episode = Episode(
        instruction=env.task.instruction, task=task,
        rgb=np.stack(rows["rgb"]), depth=np.stack(rows["depth"]).astype(np.float32),
        ee_pose=np.stack(rows["ee_pose"]), gripper=np.stack(rows["gripper"]), joints=np.stack(rows["joints"]),
        actions=np.stack(rows["actions"]), waypoints=np.stack(rows["waypoints"]),
        camera=env.camera_params, fps=float(env.control_hz),
        gt_traces=traces[:T], gt_trace_gripper=trace_grip[:T],
        success=bool(info["success"]), seed=int(seed),
        metadata={
            "source": "magma_sim",
            "control": env.control,
            "n_future": int(n_future),
            "mark_names": info["privileged"]["mark_names"],
            "roles": info["privileged"]["roles"],
            "success_step": success_at,
            "gripper_state": "command in effect at each step (the previous action's gripper value; 0 at reset)",
            **extra_metadata,
        },
    )
    return episode.validate()

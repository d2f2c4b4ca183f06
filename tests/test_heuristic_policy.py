"""The non-learned baseline: instruction grounding, trace planning, lifting, and closing the loop in the simulator."""
from __future__ import annotations

import numpy as np
import pytest

from magma_core.codecs.trace_text import parse_traces
from magma_core.errors import InvalidInputError
from magma_core.geometry import lift_trace, project, yaw_down_quat
from magma_core.policies import HeuristicConfig, HeuristicPolicy
from magma_core.policies.instruction import parse_instruction
from magma_core.policies.trace_plan import Keyframe, object_path, sample_plan, to_trace
from magma_core.policy import Policy
from magma_core.tom.types import Trace


@pytest.mark.parametrize("text, skill, obj, place", [
    ("put the red small cube on the purple pad", "pick_place", ("red", "block", "small"), ("purple", "flat")),
    ("pick up the blue block and put it on the green mat", "pick_place", ("blue", "block", None), ("green", "flat")),
    ("stack the cyan small block on the white block", "stack", ("cyan", "block", "small"), ("white", "block")),
    ("put the yellow cube on top of the red cube", "stack", ("yellow", "block", None), ("red", "block")),
    ("slide the red cube over to the purple area", "push", ("red", "block", None), ("purple", "flat")),
    ("push the orange block into the pink zone", "push", ("orange", "block", None), ("pink", "flat")),
    ("drop the green small cube in the tray", "put_in", ("green", "block", "small"), (None, "container")),
    ("put the red one on the blue pad", "pick_place", ("red", "block", None), ("blue", "flat")),
    ("pick up the grey cube", "pick", ("grey", "block", None), None),
])
def test_instructions_split_into_skill_object_and_place(text, skill, obj, place):
    parsed = parse_instruction(text)
    assert parsed.skill == skill
    assert (parsed.object.color, parsed.object.shape, parsed.object.size) == obj
    if place is None:
        assert parsed.place is None
    else:
        assert (parsed.place.color, parsed.place.shape) == place


def test_every_simulator_template_parses_to_its_task_skill():
    pytest.importorskip("pybullet")
    from magma_sim.tasks import make_task

    skills = {"pick_place": "pick_place", "stack": "stack", "push": "push", "put_in_tray": "put_in"}
    targets = {"pick_place": "green pad", "stack": "white cube", "push": "green zone", "put_in_tray": "tray"}
    for task, skill in skills.items():
        for template in make_task(task).templates:
            parsed = parse_instruction(template.format(object="red small block", target=targets[task]))
            assert parsed.skill == skill, template
            assert parsed.object.color == "red"


def test_an_instruction_naming_nothing_is_refused():
    with pytest.raises(InvalidInputError, match="names no object"):
        parse_instruction("do a little dance")


def test_sampled_plan_respects_speed_dwell_and_gripper():
    frames = [Keyframe([0.1, 0.0, 0.0], 0.0, speed=0.5), Keyframe([0.1, 0.0, 0.0], 1.0, speed=0.5, dwell=2),
              Keyframe([0.1, 0.0, 0.2], 1.0, speed=1.0, carry="held")]
    plan = sample_plan(np.zeros(3), 0.0, frames, n_steps=8, dt=0.1)
    assert plan.positions.shape == (9, 3) and plan.gripper.shape == (9,)
    steps = np.linalg.norm(np.diff(plan.positions, axis=0), axis=1)
    assert np.all(steps <= 0.1 + 1e-9)
    np.testing.assert_allclose(plan.positions[2], [0.1, 0.0, 0.0])  # 0.05 m per step
    assert plan.gripper.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    np.testing.assert_allclose(plan.positions[-1], [0.1, 0.0, 0.2])
    # A held object rides along with the TCP once it is carried.
    path = object_path(plan, np.array([0.1, 0.0, 0.03]), grasp_offset=np.array([0.0, 0.0, 0.03]), push_offset=None)
    np.testing.assert_allclose(path[:4], [[0.1, 0.0, 0.03]] * 4)
    np.testing.assert_allclose(path[-1], [0.1, 0.0, 0.23])


def test_lift_trace_recovers_planned_base_points():
    K = np.array([[137.0, 0.0, 64.0], [0.0, 137.0, 63.0], [0.0, 0.0, 1.0]])
    # A camera in front of the table looking back at the robot and down (OpenCV axes, camera to base).
    z = np.array([-0.6, 0.0, -0.8])
    x = np.array([0.0, -1.0, 0.0])
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = [1.05, 0.0, 0.75]
    points = np.array([[0.4, 0.1, 0.2], [0.45, 0.05, 0.1], [0.5, 0.0, 0.02]])
    trace = to_trace(1, points, np.array([0.0, 0.0, 1.0]), K, T)
    lifted, grip = lift_trace(trace, K, T)
    np.testing.assert_allclose(lifted, points, atol=1e-9)
    assert grip.tolist() == [0.0, 0.0, 1.0]
    np.testing.assert_allclose(trace.points, project(points, K, T)[:, :2])
    with pytest.raises(InvalidInputError, match="2.5D"):
        lift_trace(Trace(1, trace.points, np.ones(3, bool)), K, T)


def test_config_and_observation_errors():
    with pytest.raises(InvalidInputError):
        HeuristicConfig(n_steps=0)
    policy = HeuristicPolicy()
    assert isinstance(policy, Policy)
    with pytest.raises(InvalidInputError, match="ee_pose"):
        policy.infer({"rgb": np.zeros((8, 8, 3), np.uint8), "intrinsics": np.eye(3), "extrinsics": np.eye(4),
                      "gripper": [0.08], "instruction": "put the red cube on the green pad"})


# --------------------------------------------------------------------------- in the PyBullet tabletop

pytest.importorskip("pybullet")


@pytest.fixture(scope="module")
def pick_env():
    from magma_sim.env import make_env

    env = make_env("pick_place", image_size=128, control="waypoint")
    yield env
    env.close()


def test_infer_output_is_a_model_style_2_5d_trace_grounded_on_the_right_marks(pick_env):
    obs, info = pick_env.reset(seed=3)
    policy = HeuristicPolicy(HeuristicConfig(n_steps=8))
    out = policy.infer(obs)
    assert out["phase"] == "approach"
    marks, proposal = out["marks"], out["proposal"]
    priv = info["privileged"]
    obj = priv["objects"][priv["roles"]["object"]]
    target = priv["objects"][priv["roles"]["target"]]
    assert proposal.info[out["target_object"]].color_name == obj["color"]
    assert proposal.info[out["target_place"]].color_name == target["color"]
    traces = out["trace"]
    assert [t.mark_id for t in traces] == [1, out["target_object"], out["target_place"]]
    for t in traces:
        assert t.length == 9 and t.depth is not None and t.gripper is not None
        np.testing.assert_allclose(t.points[0], marks[t.mark_id].center, atol=1e-6)
    # The gripper heads for the object: its lifted path ends nearer the object than it started.
    path, grip = lift_trace(traces[0], obs["intrinsics"], obs["extrinsics"])
    np.testing.assert_allclose(path[0], obs["ee_pose"][:3], atol=1e-9)
    goal = np.asarray(obj["position"][:2])
    assert np.linalg.norm(path[-1, :2] - goal) < np.linalg.norm(path[0, :2] - goal) - 0.1
    assert np.all(np.linalg.norm(np.diff(path, axis=0), axis=1) <= 0.35 / 10 + 1e-6)
    assert np.all(grip == 0)
    parsed = parse_traces(out["trace_text"], expect_25d=True)
    assert parsed.ok and [g.mark_id for g in parsed.traces] == [1, out["target_object"], out["target_place"]]


def test_an_object_that_is_not_there_makes_the_robot_hold_still(pick_env):
    obs, _ = pick_env.reset(seed=0)
    obs = dict(obs, instruction="put the black cube on the brown pad")
    out = HeuristicPolicy().infer(obs)
    assert out["phase"] == "search" and out["target_object"] is None
    path, grip = lift_trace(out["trace"][0], obs["intrinsics"], obs["extrinsics"])
    np.testing.assert_allclose(path, np.repeat(obs["ee_pose"][None, :3], len(path), axis=0), atol=1e-9)


def test_a_new_instruction_starts_a_new_plan(pick_env):
    obs, _ = pick_env.reset(seed=0)
    policy = HeuristicPolicy()
    policy.infer(obs)
    policy.memory.phase = "transport"
    out = policy.infer(dict(obs, instruction=obs["instruction"].replace("put", "place", 1) + " "))
    assert out["phase"] == "approach"


@pytest.mark.slow
def test_closes_the_loop_on_pick_place(pick_env):
    """Drive the arm with the lifted next trace step (waypoint control) until the task succeeds."""
    successes = 0
    for seed in range(5):
        obs, info = pick_env.reset(seed=seed)
        policy = HeuristicPolicy()
        for _ in range(pick_env.max_steps):
            out = policy.infer(obs)
            points, grip = lift_trace(out["trace"][0], obs["intrinsics"], obs["extrinsics"])
            obs, _, terminated, truncated, info = pick_env.step(np.concatenate([points[1], yaw_down_quat(0.0), grip[1:2]]))
            if terminated or truncated:
                break
        successes += bool(info["success"])
    assert successes >= 4

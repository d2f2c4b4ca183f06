"""Recovery data: a policy drives first, the scripted expert takes over from wherever it left the arm."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pybullet")
pytest.importorskip("pyarrow")
pytest.importorskip("av")

from magma_core.data.lerobot_v3 import LeRobotV3Dataset  # noqa: E402
from magma_core.errors import InvalidInputError  # noqa: E402
from magma_core.policies.heuristic import HeuristicPolicy  # noqa: E402
from magma_sim.env import TabletopEnv  # noqa: E402
from magma_sim.experts import make_expert  # noqa: E402
from magma_sim.generate import GenerateConfig, generate_dataset, takeover_step_for  # noqa: E402
from magma_sim.rollout import rollout_takeover  # noqa: E402


@pytest.fixture(scope="module")
def env():
    e = TabletopEnv("pick_place", image_size=64, control="waypoint", control_hz=10, render=True, terminate_on_success=False)
    yield e
    e.close()


class _StepCounting(HeuristicPolicy):
    """The heuristic, remembering where the arm was at each call (to check where the recording starts)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def infer(self, obs):
        self.seen.append(np.asarray(obs["ee_pose"], dtype=np.float64).copy())
        return super().infer(obs)


def test_the_recording_starts_where_the_policy_left_the_arm_and_the_expert_finishes(env):
    policy = _StepCounting()
    episode = rollout_takeover("pick_place", 4, policy, 12, env=env, n_future=8)
    assert episode is not None and episode.success
    assert len(policy.seen) == 12
    # The first recorded frame is the state after the policy's 12 steps, not the reset pose it started from.
    assert np.linalg.norm(episode.ee_pose[0][:3] - policy.seen[0][:3]) > 0.02
    assert episode.metadata["takeover_step"] == 12 and episode.metadata["takeover_phase"] in ("approach", "lift", "lower", "recover")
    # Ground-truth traces start at the recorded gripper: the labels are the expert's future from that state.
    assert episode.gt_traces.shape[0] == len(episode)


def test_the_expert_picks_its_phase_from_the_state_it_is_handed(env):
    expert = make_expert("pick_place")
    obs, info = env.reset(seed=5)
    assert expert.take_over(obs, info) == "approach"
    # Fingers closed on nothing, high above the table: open and start over.
    closed = np.concatenate([obs["ee_pose"], [1.0]])
    for _ in range(8):
        obs, _, _, _, info = env.step(closed)
    assert expert.take_over(obs, info) == "recover"
    # Holding the block (the scripted expert got it there): carry it on.
    scripted = make_expert("pick_place")
    obs, info = env.reset(seed=5)
    while scripted.phase != "lift":
        obs, _, _, _, info = env.step(scripted.act(obs, info))
    assert make_expert("pick_place").take_over(obs, info) == "lift"
    # Holding it over the place: lower and let go from there.
    while scripted.phase != "lower":
        obs, _, _, _, info = env.step(scripted.act(obs, info))
    assert make_expert("pick_place").take_over(obs, info) == "lower"


def test_generate_with_a_takeover_policy(tmp_path):
    config = GenerateConfig(image_size=64, n_future=8, takeover_policy="heuristic", takeover_steps=(6, 20))
    summary = generate_dataset(tmp_path / "takeover", "pick_place", episodes=2, seed_start=30, config=config)
    assert summary.kept >= 1 and summary.config["takeover_policy"] == "heuristic"
    assert summary.kept + summary.finished_before_takeover <= summary.attempted == 2
    assert sum(n for _, n in summary.expert_successes.values()) == summary.attempted - summary.finished_before_takeover
    data = LeRobotV3Dataset(tmp_path / "takeover")
    assert len(data) == summary.kept and data.num_frames == summary.frames
    assert all(6 <= takeover_step_for(30 + i, (6, 20)) <= 20 for i in range(2))
    assert takeover_step_for(30, (6, 20)) == takeover_step_for(30, (6, 20))
    with pytest.raises(InvalidInputError, match="takeover steps"):
        generate_dataset(tmp_path / "bad", "pick_place", 1, config=GenerateConfig(takeover_policy="heuristic", takeover_steps=(9, 3)))

"""The work-in-progress magma-tiny kept in checkpoints/magma-tiny-wip: a half-precision policy folder (no optimizer
state) that loads as a goal-line policy, plans from a simulated observation, and is not the shipped default."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_fixtures import one_torch_thread  # noqa: E402,F401

WIP = Path(__file__).resolve().parents[1] / "checkpoints" / "magma-tiny-wip"
pytestmark = pytest.mark.skipif(not (WIP / "model.safetensors").is_file(), reason="no work-in-progress checkpoint here")


def test_wip_checkpoint_is_a_small_half_precision_policy_folder_with_a_card():
    from safetensors import safe_open

    names = {p.name for p in WIP.iterdir()}
    assert "optimizer.safetensors" not in names and "trainer_state.json" not in names and "README.md" in names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    assert (WIP / "model.safetensors").stat().st_size < 10 * 1024 * 1024
    with safe_open(str(WIP / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    card = (WIP / "README.md").read_text()
    assert "not the shipped model" in card and "held-out" in card and "--init-from checkpoints/magma-tiny-wip" in card
    policy = json.loads((WIP / "magma_policy.json").read_text())
    assert policy["goal_header"] and policy["trace_order"] == "target_first" and policy["marks"] == "proposed"


@pytest.mark.slow
def test_wip_policy_ranks_goal_lines_and_plans_a_goal_then_the_gripper(one_torch_thread):
    from magma_core.training.policy import MagmaPolicy
    from magma_sim.env import make_env

    policy = MagmaPolicy.from_pretrained(WIP)
    assert policy.goal_header and next(policy.model.parameters()).dtype == torch.float32
    env = make_env("pick_place", image_size=128)
    obs, _ = env.reset(seed=10000)
    env.close()
    out = policy.infer(obs)
    assert out["goal_scores"] and out["target_object"] == max(out["goal_scores"], key=out["goal_scores"].get)
    assert [t.mark_id for t in out["trace"]] == [1, out["target_object"]]
    assert all(t.length == 3 and np.all(np.isfinite(t.points)) for t in out["trace"])

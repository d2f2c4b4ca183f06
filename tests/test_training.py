"""magma train: samples for the three objectives, the mixture, the trainer (loss, resume), MagmaPolicy, the CLI."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pybullet")

from magma_core.codecs.action_tokenizer import ActionTokenizer  # noqa: E402
from magma_core.codecs.trace_text import DepthBinning, parse_traces, parse_traces_strict, traces_from_grid_traces  # noqa: E402
from magma_core.errors import InvalidInputError  # noqa: E402
from magma_core.grid import pixels_to_grid  # noqa: E402
from magma_core.som.draw import draw_marks  # noqa: E402
from magma_core.training.config import TrainConfig, load_config  # noqa: E402
from magma_core.training.mixture import TrainingMixture, augment, load_source  # noqa: E402
from magma_core.training.samples_builder import (  # noqa: E402
    build_action,
    build_grounding,
    build_trace,
    gt_marks,
    mark_ids_for,
    trace_indices,
)
from model_fixtures import SMALL, one_torch_thread  # noqa: E402,F401


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from magma_sim.generate import GenerateConfig, generate_dataset

    out = tmp_path_factory.mktemp("train_data") / "pick_place"
    generate_dataset(out, "pick_place", episodes=2, seed_start=0, config=GenerateConfig(image_size=64))
    return out


@pytest.fixture(scope="module")
def source(dataset_dir):
    return load_source(str(dataset_dir))


def _config(dataset_dir, out, **changes) -> TrainConfig:
    base = dict(datasets=[str(dataset_dir)], out=str(out), model_overrides=SMALL, steps=6, batch_size=2, lr=3e-3,
                warmup_steps=2, save_every=100, log_every=2)
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(dataset_dir, tmp_path_factory):
    """A run of 30 steps (the loss test reads it; the policy tests load its checkpoint)."""
    from magma_core.training.trainer import Trainer

    out = tmp_path_factory.mktemp("run")
    config = _config(dataset_dir, out, steps=30, batch_size=4, warmup_steps=3)
    result = Trainer(config, progress=False).train()
    return config, result


# ------------------------------------------------------------------ config


def test_config_reads_yaml_resolves_paths_and_applies_overrides(tmp_path):
    (tmp_path / "cfg.yaml").write_text("datasets:\n  - path: data/a\n    weight: 2\nsteps: 10\nobjectives: {trace: 1}\n")
    config = load_config(tmp_path / "cfg.yaml", steps=3, out=None)
    assert config.steps == 3 and config.datasets[0].path == str(tmp_path / "data/a") and config.datasets[0].weight == 2
    assert config.objective_weights == {"grounding": 0.0, "trace": 1.0, "action": 0.0, "locate": 0.0, "refer": 0.0, "goal": 0.0}
    (tmp_path / "cfg.json").write_text(json.dumps({"datasets": ["/x"], "stepz": 3}))
    with pytest.raises(InvalidInputError, match="unknown config key"):
        load_config(tmp_path / "cfg.json")


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"objectives": {"dance": 1.0}}, "unknown objective"),
    ({"objectives": {"trace": 0}}, "must not all be zero"),
    ({"datasets": []}, "non-empty list"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"mode": "joints"}, "mode must be"),
    ({"batch_workers": -1}, "batch_workers must be an integer >= 0"),
])
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        TrainConfig(**dict({"datasets": ["/x"]}, **changes))


def test_shipped_config_is_valid():
    config = load_config("configs/train_tiny.yaml")
    assert config.model == "magma_tiny" and config.mode == "trace" and config.datasets[0].path.endswith("data/pick_place")
    stage2 = load_config("configs/train_tiny_finetune.yaml")
    assert stage2.init_from.endswith("runs/magma-tiny/checkpoint") and stage2.objective_weights == config.objective_weights
    assert stage2.objective_weights["locate"] > 0 and stage2.trace_order == config.trace_order == "target_first"
    goal = load_config("configs/train_tiny_goal.yaml")
    assert goal.goal_header and not config.goal_header and goal.init_from.endswith("runs/magma-tiny/checkpoint")
    assert goal.objective_weights["trace"] > config.objective_weights["trace"] and goal.marks == "proposed"
    student = load_config("configs/train_tiny_two_layers.yaml")
    assert student.init_text_layers == (0, 1) and student.init_from.endswith("checkpoints/magma-tiny-4layer")
    distilled = load_config("configs/train_tiny_two_layers_distill.yaml")
    assert distilled.init_from.endswith("runs/magma-tiny-two-layers/checkpoint") and distilled.init_text_layers is None
    assert distilled.distill_from == student.init_from and distilled.distill_weight == 0.5
    assert distilled.datasets == student.datasets and distilled.objective_weights == student.objective_weights
    # The recovery rounds (session 10): each starts from the round before, keeps the teacher, adds its new data.
    previous = "runs/magma-tiny-two-layers-distill2/checkpoint"
    for index, name in enumerate(("dagger", "dagger2", "dagger3")):
        round_ = load_config(f"configs/train_tiny_two_layers_{name}.yaml")
        assert round_.init_from.endswith(previous) and round_.distill_from == student.init_from
        assert [s.path.rsplit("/", 1)[-1] for s in round_.datasets][-(index + 1):] == [
            f"pick_place_dagger{5 + i}" for i in range(index + 1)]
        assert round_.objective_weights == student.objective_weights
        previous = f"runs/{round_.out.rsplit('/', 1)[-1]}/checkpoint"
    # The GPU stages (session 11) that made the embedded model: all six datasets, the same teacher and objectives.
    for name in ("gpu", "gpu2"):
        stage = load_config(f"configs/train_tiny_two_layers_{name}.yaml")
        assert stage.init_from.endswith(previous) and stage.distill_from == student.init_from
        assert stage.datasets == round_.datasets and stage.objective_weights == student.objective_weights
        assert stage.batch_size == 32 and stage.batch_workers == 4 and stage.goal_header and stage.marks == "proposed"
        previous = f"runs/{stage.out.rsplit('/', 1)[-1]}/checkpoint"


# ------------------------------------------------------------------ samples


def _frame(source, index=5):
    return source.samples[index]


def test_grounding_image_has_marks_drawn_where_the_gt_objects_are(source):
    sample = _frame(source)
    ids = mark_ids_for(sample, np.random.default_rng(1), 6)
    assert ids[0] == 1 and len(set(ids)) == len(ids) and all(2 <= i <= 7 for i in ids[1:])
    item = build_grounding(sample, ids)
    assert item.answer == f"Mark {ids[1]}"  # trace 1 is the task's object
    changed = np.any(item.image != sample.rgb, axis=-1)
    points = sample.gt_trace[:, 0, :2]
    ys, xs = np.nonzero(changed)
    for mark_id, (u, v) in zip(ids, points):
        near = np.hypot(xs - u, ys - v) < 8
        assert near.sum() >= 10, f"nothing drawn at mark {mark_id}"
        assert abs(xs[near].mean() - u) < 2.5 and abs(ys[near].mean() - v) < 2.5
        cell = pixels_to_grid(np.array([u, v]), 64, 64).reshape(-1)
        assert f"Mark {mark_id} at [{cell[0]},{cell[1]}]" in item.prompt
    far = np.min(np.hypot(xs[:, None] - points[:, 0], ys[:, None] - points[:, 1]), axis=1)
    assert far.max() < 12  # nothing drawn elsewhere
    assert sample.instruction in item.prompt


def test_trace_answer_parses_back_to_the_gt_trace(source):
    binning = DepthBinning()
    sample = _frame(source, 3)
    ids = [1, 4, 6]
    item = build_trace(sample, ids, trace_steps=4, trace_stride=3, depth_binning=binning)
    grid = parse_traces_strict(item.answer, expect_25d=True, expect_steps=5)
    assert [g.mark_id for g in grid] == [1, 4]  # gripper, then the object
    traces = traces_from_grid_traces(grid, 64, 64, binning)
    idx = trace_indices(sample.gt_trace.shape[1], 4, 3)
    np.testing.assert_array_equal(idx, [0, 3, 6, 9, 12])
    for trace, gt_index in zip(traces, (0, 1)):
        gt = sample.gt_trace[gt_index][idx]
        assert np.abs(trace.points - gt[:, :2]).max() <= 64 / 256  # within one grid cell
        edges = binning.bin_edges()
        assert np.all(np.abs(np.log(trace.depth) - np.log(gt[:, 2])) <= np.log(edges[1] / edges[0]))  # within a bin
        np.testing.assert_array_equal(trace.gripper, sample.gt_trace_gripper[idx] >= 0.5)
    assert "next 4 positions as (x,y,depth,gripper)" in item.prompt


def test_action_answer_is_the_recorded_action_in_tokens(source):
    sample = _frame(source)
    codec = ActionTokenizer(1280, source.action_stats)
    item = build_action(sample, codec)
    assert item.answer is None and item.answer_ids.shape == (7,) and codec.is_action_token(item.answer_ids).all()
    decoded = codec.decode(item.answer_ids.reshape(1, 7))[0]
    inside = (sample.action >= source.action_stats.q01) & (sample.action <= source.action_stats.q99)
    span = source.action_stats.q99 - source.action_stats.q01
    assert np.all(np.abs(decoded - sample.action)[inside] <= span[inside] / 256 + 1e-9)
    np.testing.assert_array_equal(item.image, sample.rgb)  # no marks for the action head


def test_shift_moves_image_and_trace_together(source):
    sample = _frame(source)
    rng = np.random.default_rng(0)
    moved = augment(sample, rng, color_jitter=0.0, max_shift_px=3)
    shift = moved.gt_trace[0, 0, :2] - sample.gt_trace[0, 0, :2]
    dx, dy = (int(round(s)) for s in shift)
    assert (dx, dy) != (0, 0) and np.allclose(moved.gt_trace[..., :2] - sample.gt_trace[..., :2], [dx, dy])
    np.testing.assert_array_equal(moved.gt_trace[..., 2], sample.gt_trace[..., 2])
    inner = moved.rgb[8:-8, 8:-8]
    np.testing.assert_array_equal(inner, sample.rgb[8 - dy:64 - 8 - dy, 8 - dx:64 - 8 - dx])
    assert sample.rgb is not moved.rgb and np.array_equal(sample.rgb, _frame(source).rgb)


def test_mixture_is_deterministic_and_respects_objective_weights(dataset_dir, tmp_path):
    config = _config(dataset_dir, tmp_path, objectives={"grounding": 1.0, "trace": 3.0})
    mixture = TrainingMixture.from_config(config, 1280)
    a, b = mixture.item(17), mixture.item(17)
    assert a.prompt == b.prompt and a.answer == b.answer and np.array_equal(a.image, b.image)
    kinds = [mixture.item(i).objective for i in range(200)]
    assert set(kinds) == {"grounding", "trace"} and 0.6 < kinds.count("trace") / 200 < 0.9
    other = TrainingMixture.from_config(config.replace(seed=1), 1280)
    assert any(other.item(i).prompt != mixture.item(i).prompt for i in range(5))


# ------------------------------------------------------------------ trainer


def test_training_lowers_the_loss_and_writes_metrics(trained):
    from magma_core.training.trainer import read_metrics

    config, result = trained
    assert result.step == 30 and len(result.losses) == 30
    assert np.mean(result.losses[-5:]) < 0.6 * np.mean(result.losses[:5]), result.losses
    rows = read_metrics(config.out)
    assert [r["step"] for r in rows] == list(range(2, 31, 2)) and rows[-1]["examples"] == 120
    names = {p.name for p in Path(result.checkpoint).iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "policy.json", "optimizer.safetensors", "trainer_state.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]


def test_periodic_evaluation_in_simulation_logs_success_per_checkpoint(dataset_dir, tmp_path):
    """eval_every runs the saved checkpoint in simulation on held-out seeds and logs the result to eval.csv."""
    pytest.importorskip("pybullet")
    import csv

    from magma_core.training.trainer import Trainer
    from magma_sim.stats import wilson_interval

    config = _config(dataset_dir, tmp_path / "run", steps=4, save_every=2, eval_every=4, eval_episodes=1,
                     eval_seed_start=10_003, objectives={"trace": 1.0})
    Trainer(config, progress=False).train()
    with (tmp_path / "run" / "eval.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["step"] == "4" and rows[0]["task"] == "pick_place" and rows[0]["episodes"] == "1"
    successes = int(rows[0]["successes"])
    assert float(rows[0]["success_rate"]) == successes
    assert float(rows[0]["wilson_low"]) == pytest.approx(wilson_interval(successes, 1)[0], abs=1e-4)
    with pytest.raises(InvalidInputError, match="multiple of save_every"):
        _config(dataset_dir, tmp_path / "bad", save_every=4, eval_every=6)


def test_learning_rate_warms_up_then_decays_to_the_floor(tmp_path):
    from magma_core.training.trainer import learning_rate

    config = TrainConfig(datasets=["/x"], steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and learning_rate(100, config) == pytest.approx(1e-4)


def test_resume_continues_the_same_run(dataset_dir, tmp_path):
    from magma_core.training.trainer import Trainer, read_metrics

    straight = Trainer(_config(dataset_dir, tmp_path / "a", grad_accum=2), progress=False)
    straight.train()
    first = Trainer(_config(dataset_dir, tmp_path / "b", grad_accum=2), progress=False)
    assert first.train(until=3).step == 3
    resumed = Trainer(_config(dataset_dir, tmp_path / "b", grad_accum=2), resume=True, progress=False)
    assert resumed.step == 3
    assert resumed.train().step == 6
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == [2, 3, 4, 6]
    with pytest.raises(InvalidInputError, match="already holds a run"):
        Trainer(_config(dataset_dir, tmp_path / "b"), progress=False)


@pytest.mark.parametrize("builder", [dict(prefetch=True), dict(batch_workers=2)], ids=["thread", "forked_workers"])
def test_batches_built_ahead_train_exactly_the_same_run(dataset_dir, tmp_path, builder):
    import cv2

    from magma_core.training.trainer import Trainer

    # The parent has used OpenCV's and torch's thread pools before any worker forks: they must not hang on them.
    cv2.resize(np.zeros((256, 256, 3), np.uint8), (1024, 1024))
    torch.ones(256, 256) @ torch.ones(256, 256)
    workers = builder.get("batch_workers", 0)
    plain = Trainer(_config(dataset_dir, tmp_path / "plain", grad_accum=2, steps=3), progress=False, prefetch=False)
    ahead = Trainer(_config(dataset_dir, tmp_path / "ahead", grad_accum=2, steps=3, batch_workers=workers),
                    progress=False, prefetch=builder.get("prefetch", False))
    assert not plain.prefetch and ahead.prefetch == builder.get("prefetch", False)
    plain_losses, ahead_losses = plain.train().losses, ahead.train().losses
    assert len(ahead_losses) == 3
    assert ahead_losses == pytest.approx(plain_losses, rel=1e-6)
    a, b = plain.model.state_dict(), ahead.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_refuses_a_pickled_optimizer_state(dataset_dir, tmp_path):
    from magma_core.model import CheckpointError
    from magma_core.training.trainer import Trainer

    with pytest.raises(InvalidInputError, match="nothing to resume"):
        Trainer(_config(dataset_dir, tmp_path / "none"), resume=True, progress=False)
    Trainer(_config(dataset_dir, tmp_path, steps=1), progress=False).train()
    torch.save({"state": {}}, tmp_path / "checkpoint" / "optimizer.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        Trainer(_config(dataset_dir, tmp_path, steps=2), resume=True, progress=False)


# ------------------------------------------------------------------ policy


@pytest.fixture(scope="module")
def sim_obs():
    from magma_sim.env import make_env

    env = make_env("pick_place", image_size=64)
    obs, _ = env.reset(seed=5)
    env.close()
    return obs


def test_policy_from_checkpoint_returns_a_parseable_trace(trained, sim_obs):
    from magma_core.policy import Policy
    from magma_core.training.policy import MagmaPolicy
    from magma_sim.policies import load_policy

    _, result = trained
    policy = load_policy(result.checkpoint)  # what `magma eval --policy DIR` does
    assert isinstance(policy, MagmaPolicy) and isinstance(policy, Policy)
    policy.reset()
    out = policy.infer(sim_obs)
    assert parse_traces(out["trace_text"], expect_25d=True, expect_steps=5).ok
    assert out["trace"][0].mark_id == 1 and out["gripper_mark"] == 1
    assert {t.mark_id for t in out["trace"]} <= set(out["marks"].ids)
    for trace in out["trace"]:
        assert trace.length == 5 and trace.depth is not None and np.all((trace.depth > 0.2) & (trace.depth < 2.0))
        assert np.all((trace.points >= 0) & (trace.points < 64)) and set(np.unique(trace.gripper)) <= {0.0, 1.0}
    assert out["marks"][1].kind == "gripper"


def test_policy_action_mode_returns_one_action_in_the_data_range(trained, sim_obs):
    from magma_core.training.policy import MagmaPolicy

    _, result = trained
    policy = MagmaPolicy.from_pretrained(result.checkpoint, mode="action")
    out = policy.infer(sim_obs)
    stats = policy.action_tokenizer.stats
    assert out["action_space"] == "ee_delta" and out["actions"].shape == (1, 7)
    assert np.all(out["actions"] >= stats.q01 - 1e-9) and np.all(out["actions"] <= stats.q99 + 1e-9)
    with pytest.raises(InvalidInputError, match="instruction"):
        policy.infer({"rgb": sim_obs["rgb"]})


def test_policy_refuses_missing_files_and_pickled_weights(trained, tmp_path):
    from magma_core.model import CheckpointError
    from magma_core.training.policy import MagmaPolicy

    _, result = trained
    with pytest.raises(CheckpointError, match="not found"):
        MagmaPolicy.from_pretrained(tmp_path / "nowhere")
    copy = tmp_path / "ckpt"
    shutil.copytree(result.checkpoint, copy)
    (copy / "magma_policy.json").unlink()
    with pytest.raises(CheckpointError, match="magma_policy.json"):
        MagmaPolicy.from_pretrained(copy)
    shutil.copy(f"{result.checkpoint}/magma_policy.json", copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        MagmaPolicy.from_pretrained(copy)
    torch.save({"w": torch.zeros(2)}, copy / "model.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        MagmaPolicy.from_pretrained(copy)


# ------------------------------------------------------------------ CLI


def test_cli_trains_and_resumes_with_overrides(dataset_dir, tmp_path, capsys):
    from magma_core.commands import train as command
    from magma_core.training.trainer import learning_rate, read_metrics

    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(_config(dataset_dir, tmp_path / "run").to_dict()))  # JSON is valid YAML
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", str(config), "--steps", "2", "--json"])
    assert args.func(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["step"] == 2 and first["started_at_step"] == 0 and len(first["losses"]) == 2
    args = parser.parse_args(["train", "--config", str(config), "--steps", "3", "--resume"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "trained steps 2 -> 3 of 3" in text and "magma eval --policy" in text
    # --stop-at ends a run early on the schedule of the whole run; --resume goes on from there.
    args = parser.parse_args(["train", "--config", str(config), "--steps", "6", "--stop-at", "4", "--resume", "--json"])
    assert args.func(args) == 0
    stopped = json.loads(capsys.readouterr().out)
    assert stopped["step"] == 4 and stopped["started_at_step"] == 3
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["step"] == 4 and rows[-1]["lr"] == pytest.approx(learning_rate(3, load_config(config, steps=6)), rel=1e-4)
    args = parser.parse_args(["train", "--config", str(config), "--steps", "4", "--stop-at", "0", "--resume"])
    with pytest.raises(InvalidInputError, match="--stop-at must be a step >= 1"):
        args.func(args)
    # --init-from starts a new run (stage 2) from the first run's weights.
    checkpoint = tmp_path / "run" / "checkpoint"
    stage2 = tmp_path / "stage2.yaml"  # the checkpoint decides the shapes: no model_overrides
    stage2.write_text(json.dumps(dict(_config(dataset_dir, tmp_path / "run").to_dict(), model_overrides={})))
    args = parser.parse_args(["train", "--config", str(stage2), "--steps", "1", "--out", str(tmp_path / "stage2"),
                              "--init-from", str(checkpoint), "--json"])
    assert args.func(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["started_at_step"] == 0 and second["step"] == 1
    state = json.loads((tmp_path / "stage2" / "checkpoint" / "trainer_state.json").read_text())
    assert state["config"]["init_from"] == str(checkpoint)


def test_init_text_layers_trains_a_shallower_student_that_resumes(trained, dataset_dir, tmp_path):
    """init_text_layers keeps some of init_from's decoder layers: the student starts from their weights, its
    checkpoint holds only them, and a resume continues that student (not the full model)."""
    from magma_core.training.trainer import Trainer

    teacher_config, result = trained
    base = dict(model_overrides={}, init_from=result.checkpoint, init_text_layers=[1], steps=4)
    student = Trainer(_config(dataset_dir, tmp_path / "student", **base), progress=False)
    assert student.core.config.text_config.num_hidden_layers == 1
    teacher = Trainer(_config(dataset_dir, tmp_path / "teacher", model_overrides={}, init_from=result.checkpoint),
                      progress=False).core
    torch.testing.assert_close(student.core.language_model.model.layers[0].mlp.down_proj.weight,
                               teacher.language_model.model.layers[1].mlp.down_proj.weight)
    student.train(until=2)
    resumed = Trainer(_config(dataset_dir, tmp_path / "student", **base), resume=True, progress=False)
    assert resumed.step == 2 and resumed.core.config.text_config.num_hidden_layers == 1
    assert resumed.train().step == 4
    with pytest.raises(InvalidInputError, match="distinct, increasing indices in \\[0, 2\\)"):
        Trainer(_config(dataset_dir, tmp_path / "bad", **dict(base, init_text_layers=[2])), progress=False)


def test_distillation_pulls_a_student_towards_its_teacher(trained, dataset_dir, tmp_path):
    """With distill_weight 0 the run is the plain run (same losses); with weight 1 the student's KL to the
    teacher on held batches falls as it trains."""
    from magma_core.training.distill import distillation_loss
    from magma_core.training.trainer import Trainer

    _, result = trained
    # Batches of 4 and 8 held batches: with 2 and 3 the KL's fall drowned in batch noise when the test data changed.
    base = dict(model_overrides={}, init_from=result.checkpoint, init_text_layers=[0], steps=12, lr=1e-3, batch_size=4)
    plain = Trainer(_config(dataset_dir, tmp_path / "plain", **base), progress=False).train(until=3)
    weightless = Trainer(_config(dataset_dir, tmp_path / "w0", **base, distill_from=result.checkpoint, distill_weight=0.0),
                         progress=False)
    assert weightless.train(until=3).losses == pytest.approx(plain.losses, rel=1e-5)

    student = Trainer(_config(dataset_dir, tmp_path / "kd", **base, distill_from=result.checkpoint, distill_weight=1.0,
                              distill_temperature=2.0), progress=False)
    held = [student.batch(100 + i, 0) for i in range(8)]

    def kl_to_teacher() -> float:
        student.model.eval()
        with torch.no_grad():
            total = 0.0
            for batch in held:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                total += float(distillation_loss(student.model(**inputs).logits, student.teacher(**inputs).logits,
                                                 batch["labels"]))
        student.model.train()
        return total / len(held)

    before = kl_to_teacher()
    student.train()
    assert kl_to_teacher() < 0.5 * before  # measured: 0.19 -> 0.02
    assert not any(p.requires_grad for p in student.teacher.parameters())


def test_a_teacher_that_reads_other_inputs_is_refused(trained, dataset_dir, tmp_path):
    from magma_core.training.trainer import Trainer

    _, result = trained
    teacher = tmp_path / "teacher"
    shutil.copytree(result.checkpoint, teacher)
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps(dict(config, image_size=96)))
    with pytest.raises(InvalidInputError, match="teacher .* cannot read the student's inputs: .*crop size"):
        Trainer(_config(dataset_dir, tmp_path / "kd", model_overrides={}, init_from=result.checkpoint,
                        distill_from=str(teacher)), progress=False)


@pytest.mark.parametrize("changes, message", [
    ({"init_text_layers": [0]}, "set init_from too"),
    ({"init_from": "/base", "init_text_layers": [1, 0]}, "distinct and increasing"),
    ({"init_from": "/base", "init_text_layers": []}, "non-empty list"),
    ({"init_from": "/base", "init_text_layers": "0,1"}, "list of layer indices"),
    ({"init_from": "/base", "init_text_layers": [0], "lora": {"r": 4}}, "LoRA keeps frozen"),
    ({"distill_from": ""}, "teacher checkpoint folder"),
    ({"distill_from": "/t", "distill_weight": 1.5}, "distill_weight must be >= 0.0 and <= 1.0"),
    ({"distill_from": "/t", "distill_temperature": 0}, "distill_temperature must be > 0"),
])
def test_init_text_layers_config_is_checked(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        TrainConfig(**dict({"datasets": ["/x"]}, **changes))


def test_export_writes_a_half_precision_policy_folder_that_runs_like_the_checkpoint(trained, sim_obs, tmp_path, capsys):
    import torch
    from safetensors import safe_open

    from magma_core.cli import main as cli_main
    from magma_core.model.export import export_checkpoint
    from magma_core.model.safe_loading import CheckpointError
    from magma_core.training.policy import MagmaPolicy

    _, result = trained
    out = tmp_path / "exported"
    assert cli_main(["export", str(result.checkpoint), str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dtype"] == "float16" and "optimizer.safetensors" not in summary["files"]
    assert not (out / "optimizer.safetensors").exists() and not (out / "trainer_state.json").exists()
    full = (Path(result.checkpoint) / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.55 * full
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    original, exported = MagmaPolicy.from_pretrained(result.checkpoint), MagmaPolicy.from_pretrained(out)
    assert next(exported.model.parameters()).dtype == torch.float32  # CPU inference runs in float32
    for a, b in zip(original.model.parameters(), exported.model.parameters()):
        assert torch.allclose(a, b, atol=2e-3, rtol=1e-3)
    assert exported.infer(sim_obs)["trace"][0].mark_id == 1
    assert cli_main(["export", str(result.checkpoint), str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="lacks"):
        export_checkpoint(tmp_path, tmp_path / "again")

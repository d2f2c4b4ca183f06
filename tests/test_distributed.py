"""Scale-out: two processes (gloo, CPU) train like one over the same global batch; LoRA trains adapters only.

The multi-process part starts this file under torchrun (``python -m torch.distributed.run
--standalone --nproc_per_node=2 tests/test_distributed.py SPEC.json``): each rank runs `_worker`,
which trains with the CLI (DDP), with the Trainer API and a resume (DDP), and with FSDP and a
resume, and writes what the test compares. The single-process reference runs in pytest itself.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from magma_core.errors import InvalidInputError  # noqa: E402
from magma_core.training.config import TrainConfig  # noqa: E402
from magma_core.training.distributed import DistributedContext, torchrun_env  # noqa: E402

from model_fixtures import SMALL, one_torch_thread  # noqa: E402,F401

STEPS = 4
WORKER_TIMEOUT_S = 180


def _config(dataset_dir, out, **changes) -> dict:
    # batch_size is the global micro-batch: 2 examples per rank with two ranks; grad_accum 2 runs DDP's no_sync path.
    base = dict(datasets=[str(dataset_dir)], out=str(out), model_overrides=SMALL, steps=STEPS, batch_size=4, grad_accum=2,
                lr=3e-3, warmup_steps=2, save_every=2, log_every=2, device="cpu", seed=3)
    base.update(changes)
    return base


def _weights(directory) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def _assert_same(a: dict, b: dict, atol: float, what: str) -> None:
    assert a.keys() == b.keys(), what
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m: f"{what}: {name}: {m}")


# ------------------------------------------------------------------ the worker (one per rank, under torchrun)


def _worker(spec_path: str) -> None:
    from safetensors.torch import save_file

    from magma_core.cli import main as cli_main
    from magma_core.training.distributed import full_state_dict, session
    from magma_core.training.trainer import Trainer

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    # One process group for the whole worker: the CLI's own session reuses it (torch cannot reliably
    # create a second group in a process after destroying the first).
    with session("cpu") as context:
        # 1. The CLI as users start it under torchrun (DDP, the default strategy).
        assert cli_main(["train", "--config", spec["cli_config"], "--json"]) == 0
        # 2. The Trainer API: half the run, then a resume to the end; each rank keeps its own final weights.
        ddp = TrainConfig.from_dict(spec["ddp"])
        assert Trainer(ddp, progress=False, context=context).train(until=STEPS // 2).step == STEPS // 2
        resumed = Trainer(ddp, resume=True, progress=False, context=context)
        assert resumed.step == STEPS // 2 and resumed.train().step == STEPS
        replica = {k: v.detach().clone().contiguous() for k, v in resumed.core.state_dict().items()}
        save_file(replica, str(Path(ddp.out) / f"rank{context.rank}.safetensors"))
        # 3. FSDP: sharded parameters and AdamW state, gathered to rank 0 for the checkpoint; then a resume.
        fsdp = TrainConfig.from_dict(spec["fsdp"])
        sharded = Trainer(fsdp, progress=False, context=context)
        shard_sizes = [p.to_local().numel() for p in sharded.model.parameters()]
        sharded.train(until=STEPS // 2)
        resumed = Trainer(fsdp, resume=True, progress=False, context=context)
        resumed.train()
        gathered = full_state_dict(resumed.model, context)
        if context.is_main:
            save_file({k: v.contiguous() for k, v in gathered.items()}, str(Path(fsdp.out) / "gathered.safetensors"))
        Path(fsdp.out, f"shards{context.rank}.json").write_text(json.dumps(sum(shard_sizes)))


if __name__ == "__main__":
    _worker(sys.argv[1])
    sys.exit(0)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    pytest.importorskip("pybullet")
    from magma_sim.generate import GenerateConfig, generate_dataset

    out = tmp_path_factory.mktemp("dist_data") / "pick_place"
    generate_dataset(out, "pick_place", episodes=2, seed_start=0, config=GenerateConfig(image_size=64))
    return out


@pytest.fixture(scope="module")
def single(dataset_dir, tmp_path_factory):
    """The reference: one process over the same global batches."""
    from magma_core.training.trainer import Trainer

    out = tmp_path_factory.mktemp("single")
    config = TrainConfig.from_dict(_config(dataset_dir, out))
    result = Trainer(config, progress=False).train()
    return {k: v.detach().clone() for k, v in _weights(out / "checkpoint").items()}, result


@pytest.fixture(scope="module")
def two_ranks(dataset_dir, tmp_path_factory):
    """Run `_worker` on two ranks with the gloo backend; returns the folders it wrote."""
    pytest.importorskip("torch.distributed")
    root = tmp_path_factory.mktemp("two_ranks")
    (root / "cli").mkdir()
    (root / "cli" / "cfg.json").write_text(json.dumps(_config(dataset_dir, root / "cli")))
    spec = {"cli_config": str(root / "cli" / "cfg.json"), "ddp": _config(dataset_dir, root / "ddp"),
            "fsdp": _config(dataset_dir, root / "fsdp", distributed={"strategy": "fsdp"})}
    (root / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__).resolve()), str(root / "spec.json")]
    # Its own process group, so a hang kills the launcher and both ranks, not the launcher alone.
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
                                start_new_session=True)
    try:
        stdout, stderr = launcher.communicate(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        stdout, stderr = launcher.communicate()
        pytest.fail(f"torchrun hung for {WORKER_TIMEOUT_S} s:\n{stdout[-4000:]}\n{stderr[-6000:]}")
    assert launcher.returncode == 0, f"torchrun failed ({launcher.returncode}):\n{stdout[-4000:]}\n{stderr[-6000:]}"
    return root, stdout


# ------------------------------------------------------------------ two processes


def test_two_ranks_end_identical_and_match_one_process(two_ranks, single):
    root, _ = two_ranks
    reference, _ = single
    rank0 = _weights_file(root / "ddp" / "rank0.safetensors")
    rank1 = _weights_file(root / "ddp" / "rank1.safetensors")
    _assert_same(rank0, rank1, atol=0.0, what="DDP replicas")  # DDP keeps replicas bit-identical
    _assert_same(rank0, reference, atol=2e-5, what="DDP (half, then resumed) vs one process")
    _assert_same(_weights(root / "ddp" / "checkpoint"), rank0, atol=0.0, what="checkpoint vs rank 0")
    _assert_same(_weights(root / "cli" / "checkpoint"), reference, atol=2e-5, what="CLI under torchrun vs one process")


def test_fsdp_shards_the_model_and_trains_like_one_process(two_ranks, single):
    root, _ = two_ranks
    reference, _ = single
    total = sum(v.numel() for v in reference.values() if v.is_floating_point())
    shards = [json.loads((root / "fsdp" / f"shards{r}.json").read_text()) for r in (0, 1)]
    assert all(s < 0.6 * total for s in shards) and sum(shards) >= total  # each rank holds about half
    _assert_same(_weights(root / "fsdp" / "checkpoint"), reference, atol=2e-5, what="FSDP checkpoint vs one process")
    _assert_same(_weights_file(root / "fsdp" / "gathered.safetensors"), reference, atol=2e-5, what="FSDP gathered")


def test_only_rank0_writes_one_checkpoint_and_one_log(two_ranks, single):
    root, stdout = two_ranks
    _, reference = single
    written = sorted(p.name for p in (root / "cli").iterdir() if p.name != "tensorboard")  # tensorboard: optional
    assert written == ["cfg.json", "checkpoint", "metrics.csv"]
    rows = (root / "cli" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    summaries = [json.loads(s) for s in _json_blocks(stdout)]
    assert len(summaries) == 1, "only rank 0 prints the summary"
    summary = summaries[0]
    assert summary["processes"] == 2 and summary["step"] == STEPS
    # The logged loss is the global batch's loss, as one process computes it.
    assert summary["losses"] == pytest.approx(reference.losses, abs=2e-4)
    state = json.loads((root / "ddp" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == STEPS
    from safetensors import safe_open

    with safe_open(str(root / "ddp" / "checkpoint" / "optimizer.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert {"rng/cpu", "rng/rank0/cpu", "rng/rank1/cpu"} <= keys


def _weights_file(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _json_blocks(text: str) -> list[str]:
    """The JSON objects printed (pretty, one after another) in `text`."""
    blocks, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                blocks.append(text[start : i + 1])
    return blocks


# ------------------------------------------------------------------ batch split and launch checks


def test_batch_slices_are_disjoint_and_cover_the_global_batch():
    slices = [DistributedContext(rank=r, world_size=4).shard(8) for r in range(4)]
    assert slices == [(0, 2), (2, 2), (4, 2), (6, 2)]
    assert DistributedContext().shard(5) == (0, 5)
    with pytest.raises(InvalidInputError, match="batch_size 6 .* 4 processes"):
        DistributedContext(rank=1, world_size=4).shard(6)


def test_torchrun_environment_is_read_and_checked():
    assert torchrun_env({}) is None
    assert torchrun_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None  # one process: no group
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert torchrun_env(env) == (3, 4, 1)
    with pytest.raises(InvalidInputError, match="MASTER_PORT"):
        torchrun_env({k: v for k, v in env.items() if k != "MASTER_PORT"})
    with pytest.raises(InvalidInputError, match="inconsistent"):
        torchrun_env(dict(env, RANK="4"))
    with pytest.raises(InvalidInputError, match="RANK must be an integer"):
        torchrun_env(dict(env, RANK="x"))


@pytest.mark.parametrize("changes, message", [
    ({"distributed": {"strategy": "zero3"}}, "distributed.strategy must be one of"),
    ({"distributed": {"stratgy": "ddp"}}, "unknown distributed key"),
    ({"lora": {"r": 8}}, "set init_from"),
    ({"init_from": "/base", "lora": {"target_modules": ["pwconv1"]}}, "not decoder projections"),
    ({"init_from": "/base", "lora": {"r": 0}}, "lora.r must be an integer >= 1"),
    ({"init_from": "/base", "lora": {"save": "both"}}, "lora.save must be one of"),
    ({"init_from": "/base", "lora": {"rank": 8}}, "unknown lora key"),
    ({"init_from": "/base", "model_overrides": {"image_size": 64}}, "model_overrides cannot change"),
    ({"model": "magma_8b"}, "set init_from"),
    ({"gradient_checkpointing": "yes"}, "gradient_checkpointing must be"),
])
def test_scale_out_config_is_validated(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        TrainConfig(**dict({"datasets": ["/x"]}, **changes))


def test_scale_out_config_defaults_and_round_trip(tmp_path):
    from magma_core.training.config import load_config

    plain = TrainConfig(datasets=["/x"])
    assert plain.distributed.strategy == "ddp" and plain.lora is None and plain.init_from is None
    (tmp_path / "cfg.yaml").write_text("datasets: [data]\ninit_from: base\nlora: {r: 4, target_modules: [v_proj, q_proj]}\n")
    config = load_config(tmp_path / "cfg.yaml")
    assert config.init_from == str(tmp_path / "base")  # an input: read from the config's folder
    assert config.lora.r == 4 and config.lora.target_modules == ("q_proj", "v_proj") and config.lora.alpha == 32.0
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("name", ["train_8b_lora.yaml", "train_8b_fsdp.yaml"])
def test_shipped_scale_out_configs_are_valid(name):
    from magma_core.training.config import load_config

    config = load_config(Path(__file__).parents[1] / "configs" / name)
    assert config.model == "magma_8b" and config.init_from
    if "lora" in name:
        assert config.lora is not None and config.lora.base_dtype == "bfloat16"
    else:
        assert config.distributed.strategy == "fsdp" and config.lora is None and config.gradient_checkpointing


def test_gradient_checkpointing_gives_the_same_gradients(dataset_dir, tmp_path):
    from magma_core.training.trainer import Trainer

    grads = []
    for checkpointing in (False, True):
        config = TrainConfig.from_dict(_config(dataset_dir, tmp_path / str(checkpointing), gradient_checkpointing=checkpointing))
        trainer = Trainer(config, progress=False)
        trainer.model.train()
        trainer.model(**trainer.batch(0, 0)).loss.backward()
        grads.append({n: p.grad for n, p in trainer.model.named_parameters()})
    assert all(g is not None for g in grads[1].values())
    _assert_same(grads[0], grads[1], atol=1e-6, what="gradients with and without checkpointing")


# ------------------------------------------------------------------ LoRA (one process)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    """A small trained-looking base: a SMALL magma-tiny with its processor, saved like a checkpoint."""
    from magma_core.model import MagmaConfig, MagmaForConditionalGeneration, MagmaProcessor, train_tiny_tokenizer

    torch.manual_seed(0)
    config = MagmaConfig.magma_tiny(**SMALL)
    directory = tmp_path_factory.mktemp("base")
    model = MagmaForConditionalGeneration(config)
    with torch.no_grad():
        # A freshly initialised head caps every logit near |w| * |h| ~ 2.6, so no adapter could fit a batch
        # through it; a trained base's head is confident. Scaling it stands in for training one.
        model.language_model.lm_head.weight.mul_(20)
    model.save_pretrained(directory)
    MagmaProcessor.for_config(train_tiny_tokenizer(), config).save_pretrained(directory)
    return directory


def _lora_config(dataset_dir, base, out, **lora) -> TrainConfig:
    spec = dict(r=4, alpha=8, dropout=0.0, **lora)
    return TrainConfig.from_dict(dict(_config(dataset_dir, out, lr=3e-3, grad_accum=1, save_every=100),
                                      model_overrides={}, init_from=str(base), lora=spec))


def test_lora_trains_adapters_only_and_overfits_a_batch(dataset_dir, base_checkpoint, tmp_path):
    pytest.importorskip("peft")
    from magma_core.training.trainer import Trainer

    trainer = Trainer(_lora_config(dataset_dir, base_checkpoint, tmp_path), progress=False)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    adapters = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    assert all(".language_model.model.layers." in n for n in adapters)  # decoder only, never the vision tower
    batch = trainer.batch(0, 0)
    trainer.model.train()
    losses = []
    for step in range(12):
        loss = trainer.model(**batch).loss
        loss.backward()
        if step == 0:
            with_grad = [n for n, p in trainer.model.named_parameters() if p.grad is not None]
            assert sorted(with_grad) == sorted(adapters)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    after = dict(trainer.model.named_parameters())
    for name, value in frozen.items():
        assert torch.equal(after[name], value), f"frozen {name} changed"
    assert losses[-1] < 0.5 * losses[0], losses


def test_lora_checkpoint_reloads_exactly_merges_and_resumes(dataset_dir, base_checkpoint, tmp_path):
    pytest.importorskip("peft")
    from magma_core.model import MagmaForConditionalGeneration
    from magma_core.training import lora
    from magma_core.training.trainer import Trainer

    straight = Trainer(_lora_config(dataset_dir, base_checkpoint, tmp_path / "a", save="merged", train_vision=True), progress=False)
    straight.train(until=3)
    first = Trainer(_lora_config(dataset_dir, base_checkpoint, tmp_path / "b", save="adapter", train_vision=True), progress=False)
    first.train(until=2)
    resumed = Trainer(_lora_config(dataset_dir, base_checkpoint, tmp_path / "b", save="adapter", train_vision=True),
                      resume=True, progress=False)
    assert resumed.step == 2 and resumed.train(until=3).step == 3
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)

    checkpoint = tmp_path / "a" / "checkpoint"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "model.safetensors", "optimizer.safetensors"} <= names
    assert json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_checkpoint)
    assert "model.safetensors" not in {p.name for p in (tmp_path / "b" / "checkpoint").iterdir()}
    batch = straight.batch(5, 0)
    straight.model.eval()
    with torch.no_grad():
        expected = straight.model(**batch).logits
        reloaded = lora.load_adapter(MagmaForConditionalGeneration.from_pretrained(base_checkpoint), checkpoint).eval()
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=1e-6)
        merged = MagmaForConditionalGeneration.from_pretrained(checkpoint)  # no peft needed: a plain checkpoint
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-3)
        base = MagmaForConditionalGeneration.from_pretrained(base_checkpoint)
        assert (base(**batch).logits - expected).abs().max() > 1e-3  # the adapter did change the model
        # An adapter-only checkpoint becomes a complete model folder (weights + processor) by merging.
        out = lora.merge_adapter(base_checkpoint, tmp_path / "b" / "checkpoint", tmp_path / "merged")
        assert {"model.safetensors", "tokenizer.json", "processor_config.json"} <= {p.name for p in out.iterdir()}
        torch.testing.assert_close(MagmaForConditionalGeneration.from_pretrained(out)(**batch).logits, expected,
                                   rtol=1e-4, atol=1e-3)


def test_lora_refuses_pickles_and_explains_missing_peft(base_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    from magma_core.model import CheckpointError, MagmaForConditionalGeneration
    from magma_core.training import lora
    from magma_core.training.config import LoraSpec

    model = lora.apply_lora(MagmaForConditionalGeneration.from_pretrained(base_checkpoint), LoraSpec(r=2, dropout=0.0))
    lora.save_adapter(model, tmp_path)
    torch.save({"w": torch.zeros(1)}, tmp_path / lora.ADAPTER_WEIGHTS)
    with pytest.raises(CheckpointError, match="pickle"):
        lora.load_adapter(MagmaForConditionalGeneration.from_pretrained(base_checkpoint), tmp_path)
    monkeypatch.setitem(sys.modules, "peft", None)  # as if it were not installed
    with pytest.raises(lora.PeftMissingError, match="pip install peft"):
        lora.apply_lora(MagmaForConditionalGeneration.from_pretrained(base_checkpoint), LoraSpec())

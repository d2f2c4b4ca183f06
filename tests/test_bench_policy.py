"""`magma bench policy`: infer latency on simulated observations, parse fraction, clear errors."""
from __future__ import annotations

import argparse
import json
from importlib.metadata import entry_points

import numpy as np
import pytest

from magma_core.errors import InvalidInputError

pytest.importorskip("pybullet")

from magma_sim.bench_policy import output_mode, output_parses  # noqa: E402
from magma_sim.commands_bench_policy import register  # noqa: E402

BENCH_KEYS = {"median_ms", "p95_ms", "mean_ms", "max_ms", "infers_per_s", "mode", "parse_fraction", "target", "passed"}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["policy", *argv])


def test_heuristic_prints_json_with_sane_latency_figures(capsys):
    args = _parse(["--steps", "5", "--warmup", "1", "--image-size", "64", "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert BENCH_KEYS <= result.keys()
    assert result["policy_class"] == "magma_core.policies.heuristic:HeuristicPolicy"
    assert result["steps"] == 5 and result["image_size"] == 64 and result["threads"] == 1
    assert 0 < result["median_ms"] <= result["p95_ms"] <= result["max_ms"]
    assert result["infers_per_s"] == pytest.approx(1000.0 / result["mean_ms"])
    assert result["mode"] == "trace"
    assert result["parse_fraction"] == 1.0 and result["errors"] == 0
    # The latency target is for Magma checkpoints only.
    assert result["target"] is None and result["passed"] is None
    assert result["threads_applied"]["cv2"] == 1


def test_human_summary_names_the_figures(capsys):
    args = _parse(["--policy", "random:3", "--steps", "3", "--warmup", "0", "--image-size", "64"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "mode action" in out and "median" in out and "p95" in out
    assert "outputs that parse: 100%" in out


def test_missing_checkpoint_is_invalid_input(tmp_path):
    args = _parse(["--policy", str(tmp_path / "no_such_checkpoint"), "--json"])
    with pytest.raises(InvalidInputError, match="no such checkpoint folder"):
        args.func(args)


def test_folder_without_policy_json_is_invalid_input(tmp_path):
    args = _parse(["--policy", str(tmp_path), "--json"])
    with pytest.raises(InvalidInputError, match="policy.json"):
        args.func(args)


@pytest.mark.parametrize("argv, problem", [
    (["--steps", "0"], "steps"), (["--warmup", "-1"], "warmup"), (["--threads", "0"], "threads"),
    (["--image-size", "8"], "image_size"), (["--policy", "scripted"], "scripted"), (["--task", "juggle"], "juggle"),
])
def test_bad_settings_are_named(argv, problem):
    args = _parse([*argv, "--json"])
    with pytest.raises(InvalidInputError, match=problem):
        args.func(args)


def test_cli_exits_2_on_missing_checkpoint(tmp_path, capsys):
    if not any(ep.name == "bench.policy" for ep in entry_points(group="magma.commands")):
        pytest.skip("bench.policy entry point not installed yet")
    from magma_core.cli import main

    assert main(["bench", "policy", "--policy", str(tmp_path / "missing")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err


def test_output_checks_tell_usable_outputs_from_broken_ones():
    assert output_mode({"trace_text": "x"}) == "trace"
    assert output_mode({"actions": np.zeros(7)}) == "action"
    assert output_mode({}) is None
    assert output_parses({"actions": np.zeros(7)})
    assert not output_parses({"actions": np.array([0.0, np.nan, 0.0])})
    assert not output_parses({"actions": np.zeros(0)})
    assert not output_parses({"trace_text": "<trace_start> not a trace"})
    assert not output_parses({})

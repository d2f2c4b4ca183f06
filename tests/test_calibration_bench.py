"""`magma bench calibration` on a small budget: the figures it prints and what they mean."""
import argparse
import json

import pytest

pytest.importorskip("pybullet")

from magma_sim import commands_bench_calibration  # noqa: E402


def test_bench_prints_every_figure_against_its_target(capsys):
    parser = argparse.ArgumentParser()
    commands_bench_calibration.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["calibration", "--views", "6", "--samples", "6", "--supersample", "2", "--json"])
    code = args.func(args)
    figures = json.loads(capsys.readouterr().out)
    targets = figures["targets"]
    assert set(targets) == set(commands_bench_calibration.TARGETS)
    assert code == (0 if all(t["pass"] for t in targets.values()) else 1)
    assert figures["intrinsics"]["views"] >= 5 and figures["intrinsics"]["true_f"] == pytest.approx(514.682, abs=1e-3)  # 240 px / tan(25 deg)
    # Even this small run lands near the truth; the numeric round trip of the projection is exact.
    assert targets["focal_error_pct"]["value"] < 1.0 and targets["reprojection_rms_px"]["value"] < 0.3
    for mode in ("eye_to_hand", "eye_in_hand"):
        assert figures["handeye"][mode]["translation_error_mm"] < 10.0
        assert figures["roundtrip"][mode]["numeric_max_mm"] < 1e-6

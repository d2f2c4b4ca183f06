"""`magma tom extract` and `magma tom-demo`: files written, their content, summaries and errors."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from magma_core.codecs.trace_text import parse_traces
from magma_core.commands import demo, tom
from magma_core.commands.demo import write_clip_video
from magma_core.errors import TrackerUnavailableError
from magma_core.imageio import load_image
from magma_core.synthetic import make_clip

TRACES_KEYS = {"format", "source", "image_size", "grid", "n_frames", "camera_moving", "homographies", "marks", "traces", "trace_text", "marks_text", "stats"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magma")
    subparsers = parser.add_subparsers(dest="command")
    tom.register(subparsers)
    demo.register(subparsers)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def pan_clip():
    return make_clip("pan", seed=0)


def test_tom_extract_on_an_mp4_writes_traces_and_overlays(tmp_path, pan_clip, capsys):
    video = write_clip_video(pan_clip.frames, tmp_path / "clip.mp4", 10.0)
    out = tmp_path / "labels"
    assert _run(["tom", "extract", str(video), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "moving" in summary and "camera motion: yes" in summary and str(out / "traces.json") in summary

    document = json.loads((out / "traces.json").read_text())
    assert TRACES_KEYS <= set(document)
    assert document["image_size"] == [256, 256] and document["n_frames"] == 17 and document["grid"] == 256
    assert document["camera_moving"] is True and len(document["homographies"]) == 17
    moving = [t for t in document["traces"] if t["moving"]]
    assert 2 <= len(moving) <= 4 and len(document["traces"]) - len(moving) == 6
    for trace, mark in zip(document["traces"], document["marks"]):
        assert trace["mark_id"] == mark["id"] and len(trace["points"]) == len(trace["cells"]) == len(trace["visible"]) == 17
        assert all(0 <= c < 256 for cell in trace["cells"] for c in cell)
        assert mark["cell"] == trace["cells"][0]
    # The trace text is Magma's format and decodes back to the moving marks' cells.
    parsed = parse_traces(document["trace_text"])
    assert parsed.ok and [g.mark_id for g in parsed.traces] == [t["mark_id"] for t in moving]
    np.testing.assert_array_equal(parsed.traces[0].cells, moving[0]["cells"])
    assert document["marks_text"].startswith("Mark 1 at [")

    overlay = load_image(out / "overlay.png")
    assert overlay.shape == (256, 256, 3)
    assert np.abs(overlay.astype(int) - pan_clip.frames[0]).max() > 100  # something was drawn
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 17
    capture.release()


def test_tom_extract_on_a_frame_folder_with_options_and_json_summary(tmp_path, capsys):
    clip = make_clip("objects", seed=2, frames=12)
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(clip.frames):
        cv2.imwrite(str(folder / f"{index}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    code = _run(["tom", "extract", str(folder), "--out", str(out), "--grid", "8", "--frames", "6", "--start", "2", "--no-video", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_frames"] == 7 and summary["n_tracked"] + summary["n_dropped"] == 64
    assert summary["camera_moving"] is False and set(summary["outputs"]) == {"traces", "overlay_png"}
    document = json.loads((out / "traces.json").read_text())
    assert document["source"]["start"] == 2 and document["stats"]["n_grid"] == 64
    assert all(len(t["points"]) == 7 for t in document["traces"])
    assert not (out / "overlay.mp4").exists() and (out / "overlay.png").exists()


def test_tom_extract_defaults_its_output_folder_to_the_video_name(tmp_path, pan_clip, monkeypatch, capsys):
    video = write_clip_video(pan_clip.frames[:5], tmp_path / "kitchen.mp4", 10.0)
    monkeypatch.chdir(tmp_path)
    assert _run(["tom", "extract", str(video), "--no-video"]) == 0
    assert (tmp_path / "kitchen_tom" / "traces.json").exists()
    capsys.readouterr()


def test_tom_extract_with_cotracker_but_no_checkpoint_fails_before_reading_the_video(tmp_path):
    with pytest.raises(TrackerUnavailableError, match="no checkpoint given"):
        _run(["tom", "extract", str(tmp_path / "not-read.mp4"), "--tracker", "cotracker"])


def test_tom_extract_through_the_magma_cli_reports_errors(tmp_path, capsys):
    from magma_core.cli import main

    code = main(["tom", "extract", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")])
    assert code == 2 and "clip not found" in capsys.readouterr().err


def test_demo_writes_everything_and_scores_against_ground_truth(tmp_path, capsys):
    out = tmp_path / "demo"
    assert _run(["tom-demo", "--out", str(out), "--seed", "0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for name in ("clip", "traces", "overlay_png", "overlay_video"):
        assert Path(summary["outputs"][name]).exists()
    error = summary["tracking_error"]
    assert error["median_px"] < 0.5 and error["median_moving_px"] < 1.0 and error["delta_avg"] > 0.9
    assert error["mark_trace_median_px"] < 1.0
    assert summary["camera_moving"] is True and summary["n_moving_marks"] >= 2
    assert error["moving_marks_on_moving_objects"] == summary["n_moving_marks"]
    document = json.loads((out / "traces.json").read_text())
    assert document["source"]["synthetic_seed"] == 0


def test_demo_human_summary_mentions_the_error(tmp_path, capsys):
    assert _run(["tom-demo", "--out", str(tmp_path / "d"), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "tracking error vs ground truth: median" in out and "moving marks lie on moving objects" in out

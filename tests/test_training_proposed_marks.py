"""Training on run-time mark proposals: described marks, GT traces attached to proposals, the policy's prompt."""
from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pybullet")

from magma_core.codecs.trace_text import DepthBinning, parse_mark_ids, parse_traces_strict  # noqa: E402
from magma_core.errors import InvalidInputError  # noqa: E402
from magma_core.grid import pixels_to_grid  # noqa: E402
from magma_core.prompts import trace_prompt  # noqa: E402
from magma_core.som.describe import DescribedMark, describe_proposal, marks_text, nearest_mark  # noqa: E402
from magma_core.som.propose import propose_marks  # noqa: E402
from magma_core.training.config import TrainConfig  # noqa: E402
from magma_core.training.mixture import TrainingMixture, load_source  # noqa: E402
from magma_core.training.samples_builder import (  # noqa: E402
    build_grounding_proposed,
    build_locate_proposed,
    build_refer_proposed,
    build_trace_proposed,
    match_trace_marks,
    propose_for_sample,
    proposal_observation,
)
from model_fixtures import SMALL, one_torch_thread  # noqa: E402,F401

LINE = re.compile(r"^Mark (\d+): \[\((\d+),(\d+),(\d+)\)\] (.+)$")
BINNING = DepthBinning()


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from magma_sim.generate import GenerateConfig, generate_dataset

    out = tmp_path_factory.mktemp("proposed_data") / "pick_place"
    generate_dataset(out, "pick_place", episodes=2, seed_start=3, config=GenerateConfig(image_size=128))
    return out


@pytest.fixture(scope="module")
def source(dataset_dir):
    return load_source(str(dataset_dir))


def _lines(text: str) -> list[tuple[int, int, int, int, str]]:
    out = []
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            out.append((int(match[1]), int(match[2]), int(match[3]), int(match[4]), match[5]))
    return out


def test_described_marks_list_every_proposal_with_cell_depth_and_label(source):
    sample = source.samples[0]
    obs = proposal_observation(sample)
    proposal = propose_marks(obs)
    marks = describe_proposal(proposal, gripper_opening_m=0.08)
    assert [m.mark_id for m in marks][0] == 1 and sorted(m.mark_id for m in marks) == sorted(proposal.marks.ids)
    lines = _lines(marks_text(marks, 128, 128, BINNING))
    assert len(lines) == len(marks)
    assert lines[0][0] == 1 and lines[0][4] == "gripper 80mm"
    for (mark_id, x, y, depth_bin, text), mark in zip(lines, marks):
        cell = pixels_to_grid(np.array([mark.point]), 128, 128)[0]
        assert (x, y) == (int(cell[0]), int(cell[1]))
        assert depth_bin == BINNING.encode(proposal.info[mark_id].depth)
        if mark_id != 1:  # "<colour> <shape> <size>cm", e.g. "pink block 4cm"
            assert re.fullmatch(r"[a-z]+ [a-z]+ \d+cm", text), text


def test_gt_traces_attach_to_the_nearest_proposed_marks(source):
    sample = source.samples[0]
    marks = propose_for_sample(sample)
    ids = match_trace_marks(sample, marks)
    assert ids[0] == 1
    by_id = {m.mark_id: m for m in marks}
    for index, mark_id in enumerate(ids[1:], start=1):
        assert mark_id is not None, "the pick_place object and pad are proposed on the first frame"
        assert np.hypot(*(np.array(by_id[mark_id].point) - sample.gt_trace[index, 0, :2])) <= 6.0


def test_trace_sample_on_proposals_starts_where_the_prompt_says(source):
    sample = source.samples[4]
    marks = propose_for_sample(sample)
    item = build_trace_proposed(sample, marks, trace_steps=2, trace_stride=4, depth_binning=BINNING)
    listed = {m[0]: m for m in _lines(item.prompt)}
    assert len(listed) == len(marks), "distractors and spurious proposals are all listed, as at run time"
    parsed = parse_traces_strict(item.answer, expect_25d=True, expect_steps=3)
    assert parsed[0].mark_id == 1
    ids = match_trace_marks(sample, marks)
    assert [t.mark_id for t in parsed] == [1, ids[1]]
    gripper = parsed[0]
    _, x, y, depth_bin, _ = listed[1]
    assert abs(int(gripper.cells[0][0]) - x) <= 1 and abs(int(gripper.cells[0][1]) - y) <= 1
    assert abs(int(gripper.depth_bins[0]) - depth_bin) <= 1
    assert not np.array_equal(item.image, sample.rgb), "the marks are drawn on the image"


def test_target_first_answer_traces_the_goal_then_the_gripper(source):
    """target_first: before the grasp the answer traces the object, while the hand holds it the place; the
    gripper's trace comes second and starts at the gripper's mark."""
    binning = BINNING
    seen = set()
    for sample in source.samples[::3]:
        marks = propose_for_sample(sample)
        if marks is None:
            continue
        ids = match_trace_marks(sample, marks)
        item = build_trace_proposed(sample, marks, trace_steps=2, trace_stride=5, depth_binning=binning, order="target_first")
        parsed = parse_traces_strict(item.answer, expect_25d=True, expect_steps=3)
        holding = float(sample.gt_trace_gripper[0]) >= 0.5
        target = ids[2] if holding and len(ids) > 2 else ids[1]
        if target is None:
            assert [t.mark_id for t in parsed] == [1]
            continue
        assert [t.mark_id for t in parsed] == [target, 1]
        listed = {m[0]: m for m in _lines(item.prompt)}
        # Both traces start exactly where the prompt lists their marks (an exact copy of the mark's line).
        for trace in parsed:
            assert tuple(int(v) for v in trace.cells[0]) == listed[trace.mark_id][1:3]
            assert int(trace.depth_bins[0]) == listed[trace.mark_id][3]
        seen.add("place" if holding else "object")
    assert seen == {"object", "place"}, "pick_place frames cover both phases"


def test_config_ties_target_first_to_two_traces_at_run_time():
    with pytest.raises(InvalidInputError, match="inference_marks to 2"):
        TrainConfig(datasets=["x"], trace_order="target_first", inference_marks=1)
    with pytest.raises(InvalidInputError, match="trace_order must be"):
        TrainConfig(datasets=["x"], trace_order="random")
    assert TrainConfig(datasets=["x"], trace_order="target_first", inference_marks=2).trace_order == "target_first"


def test_grounding_sample_on_proposals_names_the_instruction_object(source):
    sample = source.samples[0]
    marks = propose_for_sample(sample)
    item = build_grounding_proposed(sample, marks, BINNING)
    assert parse_mark_ids(item.answer) == [match_trace_marks(sample, marks)[1]]
    unmatched = [m for m in marks if m.mark_id == 1]  # only the gripper: the object was not proposed
    assert build_grounding_proposed(sample, unmatched, BINNING) is None


def test_mixture_with_proposed_marks_shifts_marks_with_the_image(dataset_dir):
    config = TrainConfig(datasets=[str(dataset_dir)], out="unused", model_overrides=SMALL, marks="proposed",
                         trace_steps=2, objectives={"trace": 1.0}, max_shift_px=4, color_jitter=0.0)
    mixture = TrainingMixture.from_config(config, vocab_size=1280)
    for index in range(6):
        item = mixture.item(index)
        gripper_line = _lines(item.prompt)[0]
        first = parse_traces_strict(item.answer, expect_25d=True, expect_steps=3)[0]
        # The shifted gripper mark and the shifted GT trace agree on the current cell.
        assert abs(int(first.cells[0][0]) - gripper_line[1]) <= 1 and abs(int(first.cells[0][1]) - gripper_line[2]) <= 1
    assert mixture.item(3).prompt == mixture.item(3).prompt  # cached proposals keep the stream deterministic


def test_marks_text_rejects_reserved_characters_and_empty_lists():
    mark = DescribedMark(2, (10.0, 10.0), 0.9, "red [block]")
    with pytest.raises(InvalidInputError, match="reserved"):
        marks_text([mark], 64, 64, BINNING)
    with pytest.raises(InvalidInputError, match="no marks"):
        marks_text([], 64, 64, BINNING)
    with pytest.raises(InvalidInputError, match="special token"):
        trace_prompt("pick the cube", "Mark 1 at [1,2,3] <image>", 2)
    assert nearest_mark([mark], (12.0, 11.0), radius_px=3.0) == 2
    assert nearest_mark([mark], (20.0, 10.0), radius_px=3.0) is None


def test_depth_binning_from_the_config_reaches_prompt_and_answer(dataset_dir):
    config = TrainConfig(datasets=[str(dataset_dir)], out="unused", marks="proposed", trace_steps=2, objectives={"trace": 1.0},
                         max_shift_px=0, color_jitter=0.0, depth_binning={"near": 0.3, "far": 1.5, "n_bins": 256})
    mixture = TrainingMixture.from_config(config, vocab_size=1280)
    assert mixture.depth_binning == DepthBinning(near=0.3, far=1.5, n_bins=256)
    item = mixture.item(0)
    gripper_line = _lines(item.prompt)[0]
    first = parse_traces_strict(item.answer, expect_25d=True, expect_steps=3, n_depth_bins=256)[0]
    assert abs(int(first.depth_bins[0]) - gripper_line[3]) <= 1 and gripper_line[3] >= 100  # finer than the 100 default
    with pytest.raises(InvalidInputError, match="depth_binning"):
        TrainConfig(datasets=["x"], depth_binning={"bins": 3})


def test_locate_sample_answers_the_asked_marks_with_their_listed_positions(source):
    """locate: the prompt asks for a few marks in random order; each answer line is that mark's listed position
    and the hand's state, written the way a trace starts."""
    rng = np.random.default_rng(0)
    orders = set()
    for sample in source.samples[::4]:
        marks = propose_for_sample(sample)
        if marks is None:
            continue
        item = build_locate_proposed(sample, marks, BINNING, rng, max_marks=3)
        assert item.objective == "locate"
        listed = {m[0]: m for m in _lines(item.prompt)}
        asked = [int(v) for v in re.findall(r"\d+", item.prompt.splitlines()[-1])]
        parsed = parse_traces_strict(item.answer, expect_25d=True, expect_steps=1)
        assert [t.mark_id for t in parsed] == asked and 1 <= len(asked) <= 3 and len(set(asked)) == len(asked)
        closed = int(float(sample.gt_trace_gripper[0]) >= 0.5)
        for trace in parsed:
            assert (int(trace.cells[0][0]), int(trace.cells[0][1]), int(trace.depth_bins[0])) == listed[trace.mark_id][1:4]
            assert int(trace.gripper[0]) == closed
        orders.add(tuple(asked))
    assert len(orders) > 1, "different frames ask different marks"
    with pytest.raises(InvalidInputError, match="at least one"):
        build_locate_proposed(source.samples[0], [], BINNING, rng)


def test_refer_sample_asks_for_named_marks_and_answers_their_ids_in_order(source):
    rng = np.random.default_rng(1)
    asked_any = False
    for sample in source.samples[::4]:
        marks = propose_for_sample(sample)
        if marks is None:
            continue
        item = build_refer_proposed(sample, marks, BINNING, rng, max_marks=3)
        if item is None:
            continue
        listed = {m[0]: m[4] for m in _lines(item.prompt)}
        ids = parse_mark_ids(item.answer)
        question = item.prompt.splitlines()[-1]
        assert 1 not in ids and 1 <= len(ids) <= 3
        # Each asked name is its mark's description without the size, and the answer follows the asked order.
        names = [" ".join(listed[i].split()[:2]) for i in ids]
        positions = [question.index(name) for name in names]
        assert positions == sorted(positions), (question, item.answer)
        for i, name in zip(ids, names):
            assert sum(" ".join(text.split()[:2]) == name for text in listed.values()) == 1, "only names one mark has"
        asked_any = True
    assert asked_any


def test_mixture_mixes_locate_samples_and_the_config_ties_them_to_proposed_marks(dataset_dir):
    config = TrainConfig(datasets=[str(dataset_dir)], out="unused", marks="proposed", trace_steps=2,
                         objectives={"trace": 0.5, "locate": 0.5}, trace_order="target_first", inference_marks=2)
    mixture = TrainingMixture.from_config(config, vocab_size=1280)
    kinds = [mixture.item(i).objective for i in range(24)]
    assert set(kinds) == {"trace", "locate"}
    with pytest.raises(InvalidInputError, match="marks: proposed"):
        TrainConfig(datasets=["x"], marks="ground_truth", objectives={"locate": 1.0})
    with pytest.raises(InvalidInputError, match="refer objective"):
        TrainConfig(datasets=["x"], marks="ground_truth", objectives={"refer": 1.0})


def test_config_checks_the_marks_option():
    with pytest.raises(InvalidInputError, match="marks must be"):
        TrainConfig(datasets=["x"], marks="random")
    with pytest.raises(InvalidInputError, match="inference_marks"):
        TrainConfig(datasets=["x"], inference_marks=0)


def _trained_policy_and_obs(dataset_dir, tmp_path, **changes):
    """A 2-step magma-tiny run on proposed marks, its policy, and a held-out pick_place observation."""
    from magma_core.training.policy import MagmaPolicy
    from magma_core.training.trainer import Trainer
    from magma_sim.env import make_env

    config = TrainConfig(datasets=[str(dataset_dir)], out=str(tmp_path / "run"), model_overrides={**SMALL, "image_size": 128},
                         marks="proposed", trace_steps=2, steps=2, batch_size=2, warmup_steps=1, save_every=100, **changes)
    policy = MagmaPolicy.from_pretrained(Trainer(config, progress=False).train().checkpoint)
    env = make_env("pick_place", image_size=128)
    obs, _ = env.reset(seed=10001)
    env.close()
    return policy, obs


def test_policy_trained_on_proposals_reads_described_marks_and_writes_the_gripper_trace(dataset_dir, tmp_path):
    policy, obs = _trained_policy_and_obs(dataset_dir, tmp_path)
    assert policy.marks_format == "proposed" and policy.max_marks == 1
    out = policy.infer(obs)
    assert [t.mark_id for t in out["trace"]] == [1] and out["trace"][0].length == 3


def test_target_first_policy_writes_a_goal_and_the_gripper_trace(dataset_dir, tmp_path):
    policy, obs = _trained_policy_and_obs(dataset_dir, tmp_path, trace_stride=5, trace_order="target_first", inference_marks=2)
    assert policy.trace_order == "target_first" and policy.max_marks == 2
    for seed_shift in range(3):  # even an untrained model writes one goal, then the gripper (the grammar's final mark)
        obs = dict(obs, rgb=np.roll(obs["rgb"], seed_shift, axis=1))
        out = policy.infer(obs)
        assert [t.mark_id for t in out["trace"]][0] == 1 and len(out["trace"]) == 2
        assert all(t.length == 3 for t in out["trace"]) and out["target_object"] not in (None, 1)
        # Decoding pins each trace's start at its mark's listed position, as training anchors them.
        marks = {m.id: m for m in out["marks"]}
        for trace in out["trace"]:
            assert np.linalg.norm(trace.points[0] - np.array(marks[trace.mark_id].center)) <= 1.0


def test_answer_classes_name_mark_numbers_first_and_later_steps_and_gripper_flags():
    from magma_core.bench.answers import _classify

    pieces = ["<trace_start>", "Mark", " ", "4", ":", " [(", "12", ",", "130", ",", "77", ",", "0", "),(", "13", ",", "131", ",",
              "78", ",", "1", ")]", "\n", "Mark", " ", "1", ":", " [(", "9", ",", "8", ",", "7", ",", "0", ")]", "<trace_end>"]
    numbers = [p for p in pieces if p.strip().isdigit()]
    correct = [p.strip() != "131" for p in pieces]  # one wrong token: the goal's second y
    groups = list(_classify("trace", pieces, correct))
    assert len(groups) == len(numbers)
    assert [g for g, _ in groups] == (["goal mark"] + ["goal first"] * 3 + ["goal gripper"] + ["goal later"] * 3
                                      + ["goal gripper", "hand mark"] + ["hand first"] * 3 + ["hand gripper"])
    assert [g for g, ok in groups if not ok] == ["goal later"]
    assert [g for g, _ in _classify("refer", ["Marks", " ", "3", ",", " ", "5", " and", " ", "2"], [True] * 9)] == ["mark"] * 3


def test_bench_answers_reports_teacher_forced_accuracy_per_objective(dataset_dir, tmp_path):
    import json

    from magma_core.bench.answers import answer_accuracy, format_report
    from magma_core.training.trainer import Trainer

    config = TrainConfig(datasets=[str(dataset_dir)], out=str(tmp_path / "run"), model_overrides={**SMALL, "image_size": 128},
                         marks="proposed", trace_steps=2, steps=1, batch_size=2, warmup_steps=1, save_every=100,
                         trace_order="target_first", inference_marks=2)
    checkpoint = Trainer(config, progress=False).train().checkpoint
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    report = answer_accuracy(str(checkpoint), str(path), ("trace", "refer"), examples=3)
    trace, refer = report["trace"], report["refer"]
    assert trace["examples"] == 3 and {"goal mark", "goal first", "hand later", "hand gripper"} <= set(trace["groups"])
    assert "goal ranked" not in trace["groups"] and "goal header" not in trace["groups"]  # no goal lines in this config
    path.write_text(json.dumps(config.replace(goal_header=True).to_dict()))
    headed = answer_accuracy(str(checkpoint), str(path), ("trace",), examples=3)["trace"]
    right, total = headed["counts"]["goal ranked"]
    assert total >= 1 and 0 <= right <= total and headed["counts"]["goal header"][1] >= 4 * total
    for name, (right, total) in trace["counts"].items():
        assert 0 <= right <= total and trace["groups"][name] == round(right / total, 4)
    assert trace["counts"]["hand first"][1] == 3 * 3  # x, y and depth of the hand's first step, per example
    assert set(refer["groups"]) == {"mark"} and 0.0 <= refer["exact"] <= 1.0
    assert "trace" in format_report(report) and "refer" in format_report(report)
    with pytest.raises(InvalidInputError, match="objectives"):
        answer_accuracy(str(checkpoint), str(path), ("poetry",))


def test_goal_header_opens_a_goal_first_answer_with_the_goal_marks_listed_description(source):
    from magma_core.prompts import goal_header

    binning = BINNING
    checked = 0
    for sample in source.samples[::3]:
        marks = propose_for_sample(sample)
        if marks is None:
            continue
        plain = build_trace_proposed(sample, marks, trace_steps=2, trace_stride=5, depth_binning=binning, order="target_first")
        item = build_trace_proposed(sample, marks, trace_steps=2, trace_stride=5, depth_binning=binning, order="target_first",
                                    with_goal_header=True)
        parsed = parse_traces_strict(plain.answer, expect_25d=True, expect_steps=3)
        if parsed[0].mark_id == 1:  # no goal was proposed: no goal line either
            assert item.answer == plain.answer
            continue
        text = {m.mark_id: m.text for m in marks}[parsed[0].mark_id]
        assert item.answer == goal_header(text) + plain.answer and item.prompt == plain.prompt
        line = [ln for ln in item.prompt.splitlines() if ln.startswith(f"Mark {parsed[0].mark_id}:")]
        assert line and line[0].endswith(text), "the goal line repeats the mark's own description from the prompt"
        checked += 1
    assert checked >= 3
    assert goal_header(" red  block 4cm ") == "Goal: red block 4cm\n"
    for bad in ("", "a [b]", "<image> x"):
        with pytest.raises(InvalidInputError, match="goal description"):
            goal_header(bad)
    with pytest.raises(InvalidInputError, match="goal_header"):
        TrainConfig(datasets=["x"], goal_header=True, trace_order="gripper_first", marks="proposed")
    with pytest.raises(InvalidInputError, match="goal_header"):
        TrainConfig(datasets=["x"], goal_header=True, trace_order="target_first", inference_marks=2)


def test_goal_header_policy_ranks_listed_descriptions_and_traces_the_best(dataset_dir, tmp_path):
    import torch

    from magma_core.model.fast_decode import score_continuations

    policy, obs = _trained_policy_and_obs(dataset_dir, tmp_path, trace_stride=5, trace_order="target_first",
                                          inference_marks=2, goal_header=True, objectives={"trace": 1.0})
    assert policy.goal_header
    out = policy.infer(obs)
    scores = out["goal_scores"]
    assert scores and 1 not in scores and set(scores) <= set(out["marks"].ids) - {1}
    assert out["target_object"] == max(scores, key=scores.get)  # the best-ranked description fixes the goal mark
    assert [t.mark_id for t in out["trace"]] == [1, out["target_object"]]
    # The shared-prefix scoring equals scoring each continuation with a full forward pass.
    batch = policy.processor([obs["rgb"]], ["<image>\nWhich mark?"])
    tokenizer = policy.processor.tokenizer
    conts = [tokenizer.encode(t, add_special_tokens=False) for t in ("Goal: red block 4cm\n", "Goal: blue flat 9cm\n")]
    fast = score_continuations(policy.model, batch, conts)
    for cont, got in zip(conts, fast):
        ids = torch.cat([batch["input_ids"], torch.tensor([cont])], dim=1)
        with torch.inference_mode():
            logits = policy.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=batch["pixel_values"],
                                  image_grids=batch.get("image_grids")).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        n = batch["input_ids"].shape[1]
        full = sum(float(logp[n - 1 + i, t]) for i, t in enumerate(cont))
        assert got == pytest.approx(full, abs=1e-3)
    with pytest.raises(InvalidInputError, match="non-empty"):
        score_continuations(policy.model, batch, [[]])


def test_answer_classes_count_a_goal_line_apart_from_the_numbers():
    from magma_core.bench.answers import _classify

    pieces = ["Goal", ":", " red", " block", " ", "4", "cm", "\n", "<trace_start>", "Mark", " ", "4", ":", " [(", "12", ",",
              "130", ",", "77", ",", "0", ")]", "\n", "Mark", " ", "1", ":", " [(", "9", ",", "8", ",", "7", ",", "0", ")]"]
    groups = [g for g, _ in _classify("trace", [p if p != "<trace_start>" else "" for p in pieces], [True] * len(pieces))]
    assert groups[:6] == ["goal header"] * 6 and groups[6] == "goal mark" and "goal first" in groups


def test_goal_objective_names_a_random_block_or_the_place_in_a_made_up_instruction(source):
    from magma_core.training.samples_builder import build_goal_proposed

    binning = BINNING
    phases, not_true_object = set(), 0
    for sample in source.samples[::2]:
        marks = propose_for_sample(sample)
        if marks is None:
            continue
        for seed in range(3):
            item = build_goal_proposed(sample, marks, 2, binning, np.random.default_rng(seed))
            if item is None:
                continue
            assert item.objective == "goal" and item.answer.startswith("Goal: ") and item.answer.endswith("\n")
            goal = item.answer[len("Goal: "):-1]
            listed = [ln for ln in item.prompt.splitlines() if ln.startswith("Mark ") and ln.endswith("] " + goal)]
            assert len(listed) == 1, "the goal line repeats one listed mark's description"
            colour, shape = goal.split()[:2]
            instruction = next(ln for ln in item.prompt.splitlines() if colour in ln and not ln.startswith("Mark "))
            holding = float(sample.gt_trace_gripper[0]) >= 0.5
            assert shape == ("flat" if holding else "block")  # the place once the hand holds its object
            phases.add("holding" if holding else "open")
            ids = match_trace_marks(sample, marks)
            if not holding and int(listed[0].split(":")[0][5:]) != ids[1]:
                not_true_object += 1
            assert instruction
    assert phases == {"open", "holding"} and not_true_object > 0, "made-up instructions also name other blocks"
    with pytest.raises(InvalidInputError, match="goal_header"):
        TrainConfig(datasets=["x"], objectives={"goal": 1.0}, marks="proposed", trace_order="target_first", inference_marks=2)
    config = TrainConfig(datasets=["x"], objectives={"goal": 0.3, "trace": 0.7}, marks="proposed", trace_order="target_first",
                         inference_marks=2, goal_header=True)
    assert config.objective_weights["goal"] == 0.3

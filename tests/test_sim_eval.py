"""Evaluation harness: determinism across workers, intervals, policies, trace mode, outputs, bad input."""
from __future__ import annotations

import argparse
import json
import sys
import types
from dataclasses import asdict

import numpy as np
import pytest

pytest.importorskip("pybullet")

from magma_core.errors import InvalidInputError, MagmaError  # noqa: E402
from magma_sim import commands_eval  # noqa: E402
from magma_sim.env import OBS_KEYS  # noqa: E402
from magma_sim.evaluate import EvalConfig, command_from_output, evaluate  # noqa: E402
from magma_sim.policies import RandomPolicy, ScriptedPolicy, load_policy  # noqa: E402
from magma_sim.stats import wilson_interval  # noqa: E402
from magma_sim.tasks import TASKS  # noqa: E402
from magma_sim.trace_follow import TraceFollower, as_traces, gripper_trace, project, ray_plane_point, unproject  # noqa: E402
from magma_sim.workers import WorkerCrashedError  # noqa: E402

K = np.array([[70.0, 0, 32], [0, 70.0, 31], [0, 0, 1]])
E = np.eye(4)
E[:3, :3] = [[0, -1, 0], [-0.5, 0, -0.866], [0.866, 0, -0.5]]  # looking down at the table from the front
E[:3, 3] = [1.0, 0.0, 0.7]
TCP = np.array([0.45, 0.05, 0.30, 1.0, 0.0, 0.0, 0.0])


# ------------------------------------------------------------------------------------ statistics
def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=5e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-4)
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(InvalidInputError):
        wilson_interval(11, 10)


# ------------------------------------------------------------------------------------ trace lifting
def test_unproject_inverts_project_and_ray_meets_plane():
    points = np.array([[0.5, 0.1, 0.02], [0.3, -0.2, 0.25]])
    uvd = project(points, K, E)
    np.testing.assert_allclose(unproject(uvd, K, E), points, atol=1e-9)
    on_plane = ray_plane_point(uvd[1, :2], K, E, plane_z=0.25)
    np.testing.assert_allclose(on_plane, points[1], atol=1e-9)


def test_follower_picks_the_trace_starting_at_the_gripper_and_lifts_its_next_point():
    target = np.array([0.50, 0.10, 0.20])
    gripper_now, gripper_next = project(TCP[:3], K, E), project(target, K, E)
    block = project(np.array([0.6, -0.1, 0.02]), K, E)
    trace = np.stack([np.stack([block, block]), np.stack([gripper_now, gripper_next])])  # gripper is mark 2
    obs = {"intrinsics": K, "extrinsics": E, "ee_pose": TCP}
    follower = TraceFollower(settle_steps=0)
    waypoint = follower.waypoint({"trace": trace, "trace_gripper": [0, 1]}, obs)
    np.testing.assert_allclose(waypoint[:3], target, atol=1e-9)
    np.testing.assert_allclose(waypoint[3:7], TCP[3:7])  # traces carry no orientation: it is held
    assert waypoint[7] == 0.0, "the hand closes where the trace closes it, not before it gets there"
    there = {**obs, "ee_pose": np.concatenate([target, TCP[3:7]])}
    assert follower.waypoint({"trace": trace, "trace_gripper": [0, 1]}, there)[7] == 1.0
    # A 2D trace (no depth) keeps the TCP's height: the ray meets the plane through the TCP.
    flat = follower.waypoint({"trace": trace[:, :, :2]}, obs)
    assert flat[2] == pytest.approx(TCP[2]) and flat[7] == 1.0  # gripper state kept from the last trace


def test_follower_ties_gripper_events_to_their_place_on_a_sparse_trace():
    """A trace sampled 5 steps apart closes the hand at its second point: the follower stops there (not at the
    lookahead point beyond it), closes only once the TCP is there, then holds while the fingers close."""
    grasp, lift = np.array([0.50, 0.10, 0.05]), np.array([0.50, 0.10, 0.25])
    points = np.stack([project(p, K, E) for p in (TCP[:3], grasp, lift)])
    output = {"trace": points[None], "trace_gripper": [0, 1, 1]}
    follower = TraceFollower(lookahead=2, gripper_tolerance=0.01, settle_steps=2)
    obs = {"intrinsics": K, "extrinsics": E, "ee_pose": TCP}
    first = follower.waypoint(output, obs)
    np.testing.assert_allclose(first[:3], grasp, atol=1e-9)
    assert first[7] == 0.0
    near = {**obs, "ee_pose": np.concatenate([grasp + [0.0, 0.0, 0.008], TCP[3:7]])}
    closing = follower.waypoint(output, near)
    np.testing.assert_allclose(closing[:3], grasp, atol=1e-9)
    assert closing[7] == 1.0
    # Settling: the hand stays at the grasp point for 2 steps whatever the trace says, then follows it.
    later = {"trace": np.stack([project(p, K, E) for p in (grasp, lift, lift)])[None], "trace_gripper": [1, 1, 1]}
    for _ in range(2):
        np.testing.assert_allclose(follower.waypoint(later, near)[:3], grasp, atol=1e-9)
    moved = follower.waypoint(later, near)
    np.testing.assert_allclose(moved[:3], lift, atol=1e-9)
    assert moved[7] == 1.0
    with pytest.raises(InvalidInputError, match="gripper_tolerance"):
        TraceFollower(gripper_tolerance=0.0)


def test_follower_walks_past_steps_the_hand_already_stands_at():
    """A trace that keeps saying "stay here a moment" from where the hand is (the model cannot see how long it has
    waited) must not hold the arm forever: reached steps count as done, as in the ROS follower."""
    here, lift = TCP[:3].copy(), np.array([0.45, 0.05, 0.40])
    obs = {"intrinsics": K, "extrinsics": E, "ee_pose": TCP}
    follower = TraceFollower(settle_steps=0)
    follower._grip = 1.0  # holding: the trace says stay closed here, then lift
    dwell = {"trace": np.stack([project(p, K, E) for p in (here, here, lift)])[None], "trace_gripper": [1, 1, 1]}
    np.testing.assert_allclose(follower.waypoint(dwell, obs)[:3], lift, atol=1e-9)
    # Release: the hand is at the place and the trace opens the hand one step later than the lookahead.
    release = {"trace": np.stack([project(p, K, E) for p in (here, here, here)])[None], "trace_gripper": [1, 1, 0]}
    assert follower.waypoint(release, obs)[7] == 0.0
    # Far from step 1, nothing changes: the follower aims at it.
    follower = TraceFollower(settle_steps=0)
    far = {"trace": np.stack([project(p, K, E) for p in (here, lift, lift)])[None], "trace_gripper": [0, 0, 1]}
    out = follower.waypoint(far, obs)
    np.testing.assert_allclose(out[:3], lift, atol=1e-9)
    assert out[7] == 0.0
    with pytest.raises(InvalidInputError, match="reach_tolerance"):
        TraceFollower(reach_tolerance=0.0)


def test_trace_inputs_are_checked():
    assert [t.mark_id for t in as_traces(np.zeros((3, 4, 3)))] == [1, 2, 3]
    with pytest.raises(InvalidInputError, match="trace array"):
        as_traces(np.zeros((4, 3)))
    with pytest.raises(InvalidInputError, match="gripper_mark"):
        gripper_trace(as_traces(np.zeros((2, 2, 3))), np.zeros(2), gripper_mark=7)
    obs = {"intrinsics": K, "extrinsics": E, "ee_pose": TCP}
    with pytest.raises(InvalidInputError, match="depth"):
        TraceFollower().waypoint({"trace": np.array([[[32, 31, 1.0], [33, 31, -1.0]]])}, obs)


def test_outputs_become_waypoints():
    follower = TraceFollower()
    obs = {"ee_pose": TCP}
    delta = command_from_output({"actions": [0.01, 0, -0.02, 0, 0, 0, 1.0]}, obs, follower)
    np.testing.assert_allclose(delta[:3], TCP[:3] + [0.01, 0, -0.02])
    assert delta[7] == 1.0
    chunk = command_from_output({"actions": np.tile([0.6, 0, 0.2, 1, 0, 0, 0, 0], (4, 1))}, obs, follower)
    np.testing.assert_allclose(chunk[:3], [0.6, 0, 0.2])  # the first step of an action chunk runs
    for bad in ({}, {"actions": [1, 2, 3]}, {"actions": [np.nan] * 7}, "go left"):
        with pytest.raises(InvalidInputError):
            command_from_output(bad, obs, follower)


# ------------------------------------------------------------------------------------ policies in the harness
class RecordingPolicy:
    """A learned policy stand-in: fails the episode loudly if it sees anything but the observation."""

    def __init__(self):
        self.calls = 0

    def reset(self):
        pass

    def infer(self, *args, **kwargs):
        assert len(args) == 1 and not kwargs, "a learned policy must get the observation only"
        obs = args[0]
        assert set(obs) == set(OBS_KEYS), sorted(obs)
        assert "privileged" not in obs and obs["rgb"].shape == (64, 64, 3)
        self.calls += 1
        return {"actions": np.zeros(7), "action_space": "ee_delta"}


class GTTraceOracle:
    """Trace mode from ground truth: the expert's next TCP target, projected into the image as a trace.

    Privileged on purpose (only tests may do this). Object marks come first so the follower has to
    find the gripper's trace by where it starts.
    """

    privileged = True

    def __init__(self, needs_images: bool = False):
        self.needs_images = needs_images
        self.expert = ScriptedPolicy(control="waypoint")

    def reset(self):
        self.expert.reset()

    def infer(self, obs, info):
        waypoint = self.expert.infer(obs, info)["actions"]
        now = project(info["privileged"]["mark_points"], obs["intrinsics"], obs["extrinsics"])
        nxt = now.copy()
        nxt[0] = project(waypoint[:3], obs["intrinsics"], obs["extrinsics"])
        trace = np.stack([now, nxt], axis=1)[[1, 2, 0]]
        return {"trace": trace, "trace_gripper": [info["gripper_command"], waypoint[7]]}


def test_learned_policy_gets_exactly_the_observation_keys():
    policy = RecordingPolicy()
    report = evaluate(policy, "push", episodes=1, seed_start=3, config=EvalConfig(image_size=64, max_steps=3))
    assert policy.calls == 3 and report.episodes[0].length == 3 and not report.episodes[0].success
    table = commands_eval.format_report(report)
    assert "push" in table and "0.0%" in table and "[0.0, 79.3]" in table  # Wilson 0/1


def test_scripted_succeeds_random_fails_and_workers_do_not_change_results():
    config = EvalConfig(max_steps=40)  # short enough that pick-and-place fails and push mostly succeeds
    one = evaluate("scripted", "push,pick_place", episodes=2, seed_start=0, workers=1, config=config)
    two = evaluate("scripted", "push,pick_place", episodes=2, seed_start=0, workers=2, config=config)
    assert [asdict(e) for e in one.episodes] == [asdict(e) for e in two.episodes]
    assert [(e.task, e.seed) for e in one.episodes] == [(t, s) for t in ("push", "pick_place") for s in range(2)]
    push = one.summary["tasks"]["push"]
    assert push["successes"] == 2 and push["mean_length"] < 40
    assert one.summary["tasks"]["pick_place"]["successes"] == 0  # it needs ~45 steps
    rand = evaluate("random:5", "pick_place", episodes=1, seed_start=1, config=EvalConfig(max_steps=80))
    assert rand.episodes[0].success is False and rand.episodes[0].length == 80


def test_random_policy_is_seeded_per_episode():
    a, b = RandomPolicy(seed=1), RandomPolicy(seed=1)
    a.reset(seed=7)
    b.reset(seed=7)
    first = a.infer({})["actions"]
    np.testing.assert_array_equal(first, b.infer({})["actions"])
    b.reset(seed=8)
    assert not np.array_equal(first, b.infer({})["actions"])
    assert np.all(np.abs(first[:3]) <= 0.05)


def test_a_gt_trace_drives_the_arm_to_success_on_every_task():
    report = evaluate(GTTraceOracle, "all", episodes=1, seed_start=2)
    assert [e.success for e in report.episodes] == [True] * len(TASKS)
    assert report.summary["overall"]["invalid_steps"] == 0


def test_unusable_outputs_hold_the_arm_still():
    class Mute:
        needs_images = False

        def reset(self):
            pass

        def infer(self, obs):
            self.last = obs["ee_pose"]
            return {"text": "no idea"}

    policy = Mute()
    report = evaluate(policy, "stack", episodes=1, config=EvalConfig(max_steps=6))
    assert report.episodes[0].invalid_steps == 6
    assert np.linalg.norm(policy.last[:3] - [0.43, 0.0, 0.40]) < 0.01  # still at home

    class Unparsable(Mute):
        def infer(self, obs):
            from magma_core.model import UnparsableOutputError

            self.last = obs["ee_pose"]
            raise UnparsableOutputError("the model traced marks [2] but not the gripper (mark 1)")

    policy = Unparsable()  # a model output that does not parse: the episode goes on with the arm held
    report = evaluate(policy, "stack", episodes=1, config=EvalConfig(max_steps=5))
    assert report.episodes[0].invalid_steps == 5 and report.episodes[0].length == 5
    assert np.linalg.norm(policy.last[:3] - [0.43, 0.0, 0.40]) < 0.01


def test_video_plot_and_json_via_the_cli(tmp_path, capsys):
    import cv2

    parser = argparse.ArgumentParser()
    commands_eval.register(parser.add_subparsers())
    out = tmp_path / "eval"
    args = parser.parse_args(["eval", "--policy", "scripted", "--task", "push", "--episodes", "2", "--seed-start", "0",
                              "--image-size", "64", "--video", str(out), "--video-episodes", "1", "--json"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tasks"]["push"]["n"] == 2 and printed["tasks"]["push"]["successes"] == 2
    assert [e["seed"] for e in printed["episodes"]] == [0, 1]
    assert printed["tasks"]["push"]["ci_low"] == pytest.approx(wilson_interval(2, 2)[0])
    assert json.loads((out / "results.json").read_text())["tasks"] == printed["tasks"]
    videos = sorted(p.name for p in out.glob("*.mp4"))
    assert videos == ["push_seed000000.mp4"]  # only the first seed of the task is recorded
    capture = cv2.VideoCapture(str(out / videos[0]))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert frames == printed["episodes"][0]["length"] + 1
    plot = cv2.imread(str(out / "success.png"))
    assert plot is not None and plot.shape[1] > 200


def test_video_shows_predicted_traces(tmp_path):
    import cv2

    config = EvalConfig(image_size=64, max_steps=4, video_dir=str(tmp_path), video_episodes=1)
    evaluate(lambda: GTTraceOracle(needs_images=True), "push", episodes=1, seed_start=0, config=config)
    plain = evaluate("scripted", "push", episodes=1, seed_start=0,
                     config=EvalConfig(image_size=64, max_steps=4, video_dir=str(tmp_path / "plain"), video_episodes=1))
    first = []
    for path in (tmp_path / "push_seed000000.mp4", plain.episodes[0].video):
        capture = cv2.VideoCapture(str(path))
        ok, frame = capture.read()
        capture.release()
        assert ok
        first.append(frame.astype(int))
    # The same scene, once with the trace drawn: the overlay changes a visible patch of pixels.
    assert (np.abs(first[0] - first[1]).max(axis=2) > 60).sum() > 20


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, message", [
    ({"tasks": "fold_laundry"}, "valid tasks: " + ", ".join(TASKS)),
    ({"seed_start": -1}, "seed start"),
    ({"episodes": 0}, "episodes"),
    ({"workers": 0}, "workers"),
    ({"policy": "/no/such/checkpoint"}, "no such checkpoint folder"),
    ({"policy": "random:x"}, "seed must be an integer"),
])
def test_bad_arguments_fail_before_any_episode(kwargs, message):
    call = {"policy": "scripted", "tasks": "push", "episodes": 1, "seed_start": 0, **kwargs}
    with pytest.raises(InvalidInputError, match=message):
        evaluate(call.pop("policy"), **call)


def test_unwritable_video_folder_is_refused_up_front(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        evaluate("scripted", "push", 1, config=EvalConfig(video_dir=str(blocker)))
    with pytest.raises(InvalidInputError, match="not writable"):
        evaluate("scripted", "push", 1, config=EvalConfig(video_dir=str(blocker / "videos")))


def _broken_policy_factory():
    raise RuntimeError("this policy cannot be built")


def test_a_dying_worker_fails_loudly_instead_of_hanging():
    with pytest.raises(WorkerCrashedError, match="worker process died"):
        evaluate(_broken_policy_factory, "push", episodes=1, workers=2)


def test_cli_errors_are_magma_errors(tmp_path):
    parser = argparse.ArgumentParser()
    commands_eval.register(parser.add_subparsers())
    args = parser.parse_args(["eval", "--policy", str(tmp_path / "missing"), "--episodes", "1"])
    with pytest.raises(MagmaError):  # magma's main() turns these into exit code 2
        args.func(args)


def test_checkpoint_folders(tmp_path, monkeypatch):
    class Loaded(RandomPolicy):
        @classmethod
        def from_pretrained(cls, folder):
            cfg = json.loads((tmp_path / "ckpt" / "policy.json").read_text())
            policy = cls(seed=cfg["seed"])
            policy.folder = folder
            return policy

    module = types.ModuleType("magma_sim._test_checkpoint_policy")
    module.Loaded = Loaded
    monkeypatch.setitem(sys.modules, module.__name__, module)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "policy.json").write_text(json.dumps({"policy_class": f"{module.__name__}:Loaded", "seed": 4}))
    policy = load_policy(str(folder))
    assert isinstance(policy, Loaded) and policy.seed == 4 and policy.folder == str(folder)

    (folder / "policy.json").write_text(json.dumps({"policy_class": "os:system"}))
    with pytest.raises(InvalidInputError, match="magma_core or magma_sim"):
        load_policy(str(folder))
    (folder / "policy.json").write_text(json.dumps({"policy_class": "magma_sim.policies:RandomPolicy"}))
    with pytest.raises(InvalidInputError, match="from_pretrained"):
        load_policy(str(folder))
    (folder / "policy.json").unlink()
    (folder / "config.json").write_text(json.dumps({"model_type": "magma"}))
    with pytest.raises(InvalidInputError, match="policy.json"):
        load_policy(str(folder))


def test_heuristic_policy_sees_only_observations_and_succeeds():
    """The built-in non-privileged baseline runs through the harness (it never gets info)."""
    from magma_sim.evaluate import EvalConfig, evaluate
    from magma_sim.policies import load_policy

    policy = load_policy("heuristic")
    assert not getattr(policy, "privileged", False)
    report = evaluate(policy, tasks="pick_place", episodes=2, seed_start=10000, workers=1, config=EvalConfig(image_size=128))
    summary = report.to_dict()
    assert [e["success"] for e in summary["episodes"]] == [True, True]

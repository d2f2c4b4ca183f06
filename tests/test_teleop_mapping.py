"""Teleop without DDS: key and Joy mappings, the terminal reader, episode events, the scripted session, the servo."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from magma_calibration.transforms import matrix_to_rotvec, quat_to_matrix
from magma_core.errors import InvalidInputError
from magma_ros.teleop.events import EpisodeEvent, EpisodeTracker, new_episode_id
from magma_ros.teleop.joy import PRESETS, JoyMapping, JoyTeleop, apply_deadzone, joy_mapping
from magma_ros.teleop.keyboard import KeyboardTeleop, key_help, split_keys
from magma_ros.teleop.scripted import DONE, RESETTING, RUNNING, WAITING, ScriptedSession, SimEpisode, parse_sim_episode
from magma_ros.teleop.servo import ServoHold, ServoTarget, TeleopServo, integrate_twist

DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # TCP pointing down (180 deg about x), quaternion xyzw


# --------------------------------------------------------------------------- keyboard


def test_split_keys_reads_letters_arrows_and_page_keys():
    assert split_keys("wA \x1b[A\x1b[D\x1bOB\x1b[5~\x1b[6~") == ["w", "a", " ", "up", "left", "down", "pageup", "pagedown"]
    assert split_keys("\x1b") == ["esc"]
    assert split_keys("\x1b[15~g") == ["g"]  # F5: unmapped sequence dropped whole, the next key kept
    assert split_keys("") == []


def test_motion_keys_set_velocity_on_their_axis_and_expire():
    kb = KeyboardTeleop(linear_speed=0.1, angular_speed=0.5, key_timeout_s=0.6)
    kb.press("w", 0.0)
    kb.press("a", 0.1)
    kb.press("j", 0.2)
    cmd = kb.command(0.3)
    np.testing.assert_allclose(cmd.linear, [0.1, 0.1, 0.0])
    np.testing.assert_allclose(cmd.angular, [0.0, 0.0, 0.5])
    # "w" pressed at 0.0 expires after 0.6 s; "a" and "j" are still held.
    cmd = kb.command(0.65)
    np.testing.assert_allclose(cmd.linear, [0.0, 0.1, 0.0])
    kb.press("d", 0.7)  # the opposite key on the same axis replaces the direction
    np.testing.assert_allclose(kb.command(0.7).linear, [0.0, -0.1, 0.0])
    assert kb.press(" ", 0.71) == "stop"
    cmd = kb.command(0.72)
    assert not cmd.moving


def test_gripper_toggle_speed_keys_and_episode_keys():
    kb = KeyboardTeleop(linear_speed=0.1, angular_speed=0.5, speed_scale_step=2.0)
    assert kb.command(0.0).gripper == 0.0
    assert kb.press("g", 0.0) == "gripper closed" and kb.command(0.0).gripper == 1.0
    assert kb.press("g", 0.1) == "gripper open" and kb.command(0.1).gripper == 0.0
    assert kb.press("+", 0.2).startswith("speed x2.00")
    kb.press("r", 0.3)
    np.testing.assert_allclose(kb.command(0.3).linear, [0.0, 0.0, 0.2])
    for _ in range(10):
        kb.press("-", 0.4)
    assert kb.scale.value == pytest.approx(0.1)  # bounded below
    kb.press("n", 0.5)
    kb.press("y", 0.5)
    assert kb.command(0.5).episode == ("start", "success")
    assert kb.command(0.6).episode == ()  # handed out once
    assert "toggle the gripper" in key_help() and "space" in key_help()


def test_keyboard_rejects_bad_settings():
    with pytest.raises(InvalidInputError, match="linear_speed"):
        KeyboardTeleop(linear_speed=0.0)
    with pytest.raises(InvalidInputError, match="key_timeout_s"):
        KeyboardTeleop(key_timeout_s=-1)
    with pytest.raises(InvalidInputError, match="speed_scale_step"):
        KeyboardTeleop(speed_scale_step=1.0)


def test_raw_terminal_reads_keys_without_enter_and_restores_the_settings():
    termios = pytest.importorskip("termios")
    from magma_ros.teleop.terminal import RawTerminal

    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ICANON
        with RawTerminal(slave) as term:
            raw = termios.tcgetattr(slave)
            assert not raw[3] & (termios.ICANON | termios.ECHO) and raw[3] & termios.ISIG
            assert term.read_keys() == []
            os.write(master, b"w\x1b[Ag")  # no newline: canonical mode would hold these back
            assert term.read_keys(timeout_s=1.0) == ["w", "up", "g"]
        assert termios.tcgetattr(slave) == before
        term.close()  # idempotent
        with pytest.raises(InvalidInputError, match="before open"):
            term.read_keys()
    finally:
        os.close(master)
        os.close(slave)


def test_raw_terminal_refuses_a_non_terminal(tmp_path):
    from magma_ros.teleop.terminal import RawTerminal

    with open(tmp_path / "f", "w") as f, pytest.raises(InvalidInputError, match="not one"):
        RawTerminal(f)


# --------------------------------------------------------------------------- joy


def test_deadzone_zeroes_drift_and_rescales_the_rest():
    out = apply_deadzone([0.05, -0.05, 0.1, 0.55, -1.0, 2.0], 0.1)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.0, 0.5, -1.0, 1.0])


def test_gamepad_preset_maps_sticks_with_the_dead_man_button():
    joy = JoyTeleop(joy_mapping("gamepad"), linear_speed=0.2, angular_speed=1.0)
    axes = [0.0] * 6
    axes[1], axes[0], axes[3], axes[2] = 1.0, -0.55, 0.05, 0.55  # forward, right, z in the deadzone, yaw
    buttons = [0] * 15
    joy.update(axes, buttons)
    assert not joy.command().moving  # LB (9) not held
    buttons[9] = 1
    joy.update(axes, buttons)
    cmd = joy.command()
    np.testing.assert_allclose(cmd.linear, [0.2, -0.1, 0.0])
    np.testing.assert_allclose(cmd.angular, [0.0, 0.0, 0.5])
    joy.stop()
    assert not joy.command().moving


def test_joy_buttons_act_on_the_press_only():
    joy = JoyTeleop(joy_mapping("gamepad"))
    pressed = [0] * 15
    pressed[10] = pressed[6] = 1  # RB: gripper, start: episode toggle
    assert joy.update([0.0] * 6, pressed) == ["gripper closed"]
    assert joy.command().episode == ("toggle",)
    joy.update([0.0] * 6, pressed)  # still held: nothing new
    cmd = joy.command()
    assert cmd.gripper == 1.0 and cmd.episode == ()
    joy.update([0.0] * 6, [0] * 15)
    failure_and_faster = [0] * 15
    failure_and_faster[4] = failure_and_faster[11] = failure_and_faster[10] = 1
    assert joy.update([0.0] * 6, failure_and_faster) == ["gripper open", "speed x1.25"]
    assert joy.command().episode == ("failure",)


def test_spacemouse_preset_and_overrides():
    joy = JoyTeleop(joy_mapping("spacemouse"), linear_speed=0.1, angular_speed=0.5)
    joy.update([1.0, 0.0, -1.0, 0.0, 0.0, 1.0], [0, 0])
    cmd = joy.command()  # no dead-man button on a space mouse
    np.testing.assert_allclose(cmd.linear, [0.1, 0.0, -0.1])
    np.testing.assert_allclose(cmd.angular, [0.0, 0.0, 0.5])
    flipped = PRESETS["spacemouse"].with_overrides(linear_axes=[1, 0, 2], axis_scales=[-1, 1, 1, 1, 1, 1])
    joy = JoyTeleop(flipped, linear_speed=0.1)
    joy.update([0.2, 1.0, 0.0, 0.0, 0.0, 0.0], [0, 0])
    np.testing.assert_allclose(joy.command().linear, [-0.1, (0.2 - 0.1) / 0.9 * 0.1, 0.0])


def test_joy_errors_name_the_problem():
    with pytest.raises(InvalidInputError, match="unknown joy preset 'xbox'"):
        joy_mapping("xbox")
    with pytest.raises(InvalidInputError, match="three indices"):
        JoyMapping(linear_axes=(0, 1), angular_axes=(-1, -1, -1))
    with pytest.raises(InvalidInputError, match=">= -1"):
        JoyMapping(linear_axes=(0, 1, -2), angular_axes=(-1, -1, -1))
    with pytest.raises(InvalidInputError, match="joy_buttons needs 6"):
        PRESETS["gamepad"].with_overrides(buttons=[1, 2])
    with pytest.raises(InvalidInputError, match="joy_deadzone"):
        PRESETS["gamepad"].with_overrides(deadzone=1.0)
    joy = JoyTeleop(joy_mapping("gamepad"))
    with pytest.raises(InvalidInputError, match="2 axes and 15 buttons"):
        joy.update([0.1, 0.2], [0] * 15)
    with pytest.raises(InvalidInputError, match="NaN"):
        joy.update([float("nan")] * 6, [0] * 15)


# --------------------------------------------------------------------------- episode events


def test_episode_event_json_round_trip_and_validation():
    event = EpisodeEvent("stop", "20250102T030405-3fa9c1", "put the red cube on the green pad", "success", 123)
    data = json.loads(event.to_json())
    assert data == {"event": "stop", "episode_id": "20250102T030405-3fa9c1",
                    "instruction": "put the red cube on the green pad", "outcome": "success", "stamp_ns": 123}
    assert EpisodeEvent.from_json(event.to_json()) == event
    for text, message in [("{", "not JSON"), ("[]", "JSON object"), ('{"event": "start"}', "lacks episode_id"),
                          (json.dumps({**data, "event": "pause"}), "one of"),
                          (json.dumps({**data, "episode_id": "../x"}), "episode_id"),
                          (json.dumps({**data, "episode_id": "-rf"}), "starting with a letter"),
                          (json.dumps({**data, "outcome": None}), "needs an outcome"),
                          (json.dumps({**data, "event": "start"}), "no outcome"),
                          (json.dumps({**data, "stamp_ns": -1}), "stamp_ns")]:
        with pytest.raises(InvalidInputError, match=message):
            EpisodeEvent.from_json(text)


def test_episode_ids_are_folder_safe_sorted_by_time_and_unique():
    a, b = new_episode_id(1_700_000_000 * 10**9), new_episode_id(1_700_000_000 * 10**9)
    assert a.startswith("20231114T221320-") and a != b
    assert new_episode_id(1_800_000_000 * 10**9) > a


def test_episode_tracker_starts_stops_and_refuses_nonsense():
    tracker = EpisodeTracker()
    with pytest.raises(InvalidInputError, match="no episode is running"):
        tracker.apply("success", "", 1)
    start = tracker.apply("toggle", "stack", 10)
    assert (start.event, start.instruction, start.outcome) == ("start", "stack", None)
    with pytest.raises(InvalidInputError, match="still running"):
        tracker.apply("start", "stack", 11)
    stop = tracker.apply("toggle", "ignored", 20)
    assert (stop.event, stop.episode_id, stop.instruction, stop.outcome, stop.stamp_ns) == \
        ("stop", start.episode_id, "stack", "success", 20)
    tracker.apply("start", "push", 30)
    assert tracker.apply("abort", "", 40).outcome == "aborted"
    tracker.apply("start", "push", 50)
    assert tracker.apply("failure", "", 60).outcome == "failure" and not tracker.running
    with pytest.raises(InvalidInputError, match="unknown episode action"):
        tracker.apply("pause", "", 70)


# --------------------------------------------------------------------------- scripted session


def _sim(index, success=False, done=False):
    return SimEpisode(index, f"task {index}", success, done)


def test_scripted_session_runs_episodes_with_resets_between():
    session = ScriptedSession(episodes=2, episode_timeout_s=10.0)
    assert session.tick(0.0) == []  # nothing from the simulation yet
    session.on_sim_episode(_sim(0))
    assert session.tick(0.1) == []  # no expert target for this episode yet
    session.on_expert_target()
    [start] = session.tick(0.2)
    assert (start.kind, start.instruction, session.state) == ("start", "task 0", RUNNING)
    assert session.tick(0.3) == []
    session.on_success(True)
    stop, reset = session.tick(0.4)[0], session.tick(0.5)[0]
    assert (stop.kind, stop.outcome, reset.kind) == ("stop", "success", "reset")
    assert session.tick(0.6) == []  # still the old episode (and success still latched)
    session.on_success(False)
    session.on_sim_episode(_sim(1))
    assert session.tick(0.7) == []  # waits for the expert of the new episode
    session.on_expert_target()
    [start] = session.tick(0.8)
    assert start.instruction == "task 1"
    # Timeout: failure, then done.
    stop, done = session.tick(11.0)
    assert (stop.outcome, done.kind, session.state) == ("failure", "done", DONE)
    assert session.outcomes == ["success", "failure"] and session.tick(12.0) == []


def test_scripted_session_fails_when_the_sim_ends_the_episode_and_resets_first():
    session = ScriptedSession(episodes=1, reset_first=True)
    assert session.state == RESETTING and session.tick(0.0) == []  # must know the running episode first
    session.on_sim_episode(_sim(4))
    session.on_expert_target()
    assert [a.kind for a in session.tick(0.1)] == ["reset"]
    assert session.tick(0.2) == []  # episode 4 is not ours
    session.on_sim_episode(_sim(5))
    session.on_expert_target()
    [start] = session.tick(0.3)
    assert start.kind == "start" and session.state == RUNNING
    session.on_sim_episode(_sim(5, done=True))
    stop, _ = session.tick(0.4)
    assert stop.outcome == "failure" and "without success" in stop.reason


def test_scripted_session_reset_refused_or_unanswered_ends_it():
    session = ScriptedSession(episodes=3)
    session.on_sim_episode(_sim(0))
    session.on_expert_target()
    session.tick(0.0)
    session.on_success(True)
    session.tick(0.1)
    session.tick(0.2)  # asks for the reset
    done = session.on_reset_result(False, "the seed schedule is used up")
    assert done.kind == "done" and "used up" in done.reason and session.state == DONE
    late = ScriptedSession(episodes=2, reset_timeout_s=1.0)
    late.on_sim_episode(_sim(0))
    late.on_expert_target()
    late.tick(0.0)
    late.on_success(True)
    late.tick(0.1)
    late.tick(0.2)
    assert late.tick(5.0)[0].kind == "done" and late.state == DONE
    with pytest.raises(InvalidInputError, match="episodes"):
        ScriptedSession(episodes=0)


def test_parse_sim_episode():
    record = parse_sim_episode(json.dumps({"task": "stack", "episode": 3, "instruction": "stack", "success": False,
                                           "done": True, "step": 9}))
    assert record == SimEpisode(3, "stack", False, True)
    with pytest.raises(InvalidInputError, match="lacks done"):
        parse_sim_episode(json.dumps({"episode": 1, "instruction": "", "success": False}))
    with pytest.raises(InvalidInputError, match="not JSON"):
        parse_sim_episode("nope")
    assert WAITING != RUNNING


# --------------------------------------------------------------------------- controller servo

LOW, HIGH = (0.15, -0.5, 0.005), (0.85, 0.5, 0.65)
MS = 1_000_000


def _servo():
    return TeleopServo(control_hz=20.0, twist_timeout_s=0.3, workspace_low=LOW, workspace_high=HIGH)


def test_integrate_twist_moves_by_velocity_times_dt():
    pose = np.concatenate([[0.5, 0.0, 0.3], DOWN])
    out = integrate_twist(pose, [0.1, -0.2, 0.0], [0.0, 0.0, 1.0], 0.05)
    np.testing.assert_allclose(out[:3], [0.505, -0.01, 0.3])
    turn = matrix_to_rotvec(quat_to_matrix(out[3:7]) @ quat_to_matrix(DOWN).T)
    np.testing.assert_allclose(turn, [0.0, 0.0, 0.05], atol=1e-12)


def test_servo_integrates_from_the_setpoint_and_stops_on_an_old_twist():
    servo = _servo()
    measured = np.concatenate([[0.5, 0.0, 0.3], DOWN])
    assert isinstance(servo.step(measured, 0), ServoHold) and servo.step(measured, 0).code == "waiting"
    servo.on_twist([0.2, 0.0, 0.0], [0.0, 0.0, 0.0], stamp_ns=1000 * MS)
    first = servo.step(measured, 1000 * MS)
    assert isinstance(first, ServoTarget) and first.source == "twist" and first.stamp_ns == 1000 * MS
    np.testing.assert_allclose(first.target[:3], [0.51, 0.0, 0.3])
    servo.accepted(first.target)
    lagging = measured.copy()  # the arm has not moved yet: integration goes on from the setpoint
    second = servo.step(lagging, 1050 * MS)
    np.testing.assert_allclose(second.target[:3], [0.52, 0.0, 0.3])
    servo.accepted(second.target)
    # The teleop went quiet: after twist_timeout_s the velocity counts as zero; the setpoint is held.
    held = servo.step(lagging, 1400 * MS)
    np.testing.assert_allclose(held.target, second.target)
    servo.held()  # the controller held (e.g. stale): restart from the measured pose
    np.testing.assert_allclose(servo.step(lagging, 1400 * MS).target[:3], measured[:3])


def test_servo_keeps_twist_targets_inside_the_workspace_box():
    servo = _servo()
    at_wall = np.concatenate([[0.5, 0.0, 0.645], DOWN])
    servo.on_twist([0.0, 0.2, 0.2], [0.0, 0.0, 0.0], stamp_ns=0)
    target = servo.step(at_wall, 0).target
    np.testing.assert_allclose(target[:3], [0.5, 0.01, 0.65])  # slides along the ceiling


def test_servo_follows_the_newest_of_pose_and_twist_and_keeps_the_gripper():
    servo = _servo()
    measured = np.concatenate([[0.5, 0.0, 0.3], DOWN])
    goal = np.concatenate([[0.55, 0.05, 0.2], DOWN])
    servo.on_twist([0.1, 0.0, 0.0], [0.0, 0.0, 0.0], stamp_ns=100)
    servo.on_pose(goal, stamp_ns=200)
    servo.on_gripper(1.7, now_ns=150)
    out = servo.step(measured, 250)
    assert out.source == "pose" and out.gripper == 1.0 and out.stamp_ns == 200
    np.testing.assert_allclose(out.target, goal)
    servo.on_twist([0.1, 0.0, 0.0], [0.0, 0.0, 0.0], stamp_ns=300)
    assert servo.step(measured, 300).source == "twist"
    only_gripper = _servo()
    only_gripper.on_gripper(0.0, now_ns=5)
    out = only_gripper.step(measured, 10)
    assert out.source == "gripper" and out.stamp_ns == 5
    np.testing.assert_allclose(out.target, measured)


def test_servo_rejects_bad_commands_and_forgets_on_clear():
    servo = _servo()
    with pytest.raises(InvalidInputError, match="NaN"):
        servo.on_twist([float("nan"), 0, 0], [0, 0, 0], 0)
    with pytest.raises(InvalidInputError, match="zero quaternion"):
        servo.on_pose([0.5, 0, 0.3, 0, 0, 0, 0], 0)
    with pytest.raises(InvalidInputError, match="gripper contains NaN"):
        servo.on_gripper(float("inf"), 0)
    servo.on_twist([0.1, 0, 0], [0, 0, 0], 0)
    servo.clear()
    assert servo.step(np.concatenate([[0.5, 0.0, 0.3], DOWN]), 0).code == "waiting"

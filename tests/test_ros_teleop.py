"""Teleop over DDS: the teleop node and the controller's teleop input as real processes on this host.

One sim bridge + controller (source: teleop) serve the module: twists are integrated within the
speed limits, the e-stop blocks teleop targets, and the scripted teleop (the simulation's expert
relayed through the controller's safety gate) runs a successful pick_place episode, marked by
start/stop events.
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from ros_helpers import REPO, ROS_AVAILABLE, NodeGroup, _die_with_parent, launch_node, probe, ros_env, wait_for  # noqa: F401

pytestmark = [pytest.mark.ros, pytest.mark.skipif(not ROS_AVAILABLE, reason="rclpy is not installed")]

CONFIG = REPO / "ros_ws" / "src" / "magma" / "config" / "magma.yaml"
CONTROL_HZ = 20.0
MAX_LINEAR_SPEED = 0.25
STALE_AFTER_S = 1.0

if ROS_AVAILABLE:
    from diagnostic_msgs.msg import DiagnosticStatus
    from geometry_msgs.msg import PoseStamped, TwistStamped
    from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from sensor_msgs.msg import Joy
    from std_msgs.msg import Bool, Float32, String

    from magma_ros import converters as cv
    from magma_ros import qos
    from magma_ros.nodes.teleop import EPISODE_EVENT_QOS
    from magma_ros.teleop.events import EPISODE_EVENT_TOPIC, EpisodeEvent


# --------------------------------------------------------------------------- without DDS


def test_config_file_lists_every_teleop_parameter_with_its_default():
    text = CONFIG.read_text()
    listed = yaml.safe_load(text)["/**/teleop"]["ros__parameters"]
    params = {p.name: p.default for p in importlib.import_module("magma_ros.nodes.teleop").PARAMETERS}
    unset = {p for p, default in params.items() if default is None}
    assert set(listed) == set(params) - unset
    assert all(f"# {p}:" in text for p in unset)
    assert all(listed[k] == params[k] for k in listed)


def test_teleop_node_never_imports_torch_and_needs_a_terminal_for_the_keyboard(ros_env):
    code = "import sys, magma_ros.nodes.teleop; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60).returncode == 0
    # stdin is not a terminal here: a clear message and exit code 2, not a traceback or a hang.
    done = subprocess.run([sys.executable, "-m", "magma_ros.nodes.teleop", "--ros-args", "-p", "input:=keyboard"],
                          cwd=REPO, env=ros_env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "needs a terminal" in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- over DDS


@pytest.fixture(scope="module")
def teleop_sim(ros_env, tmp_path_factory):
    """Sim bridge publishing its expert + controller following teleop, for the whole module."""
    group = NodeGroup(tmp_path_factory.mktemp("teleop_sim"), ros_env)
    # A long horizon: the twist and e-stop tests must not see the episode end under them.
    group.launch("sim_bridge", params_file=CONFIG, task="pick_place", seed=1, image_size=128, control_hz=10,
                 max_steps=3000, publish_expert=True)
    group.launch("controller", params_file=CONFIG, source="teleop", control_hz=CONTROL_HZ,
                 max_linear_speed=MAX_LINEAR_SPEED, stale_after_s=STALE_AFTER_S)
    yield group
    group.stop_all()


def _xyz(msg) -> np.ndarray:
    return cv.pose_to_numpy(msg)[:3]


def _code(states) -> str:
    return cv.status_values(states[-1][1])["code"] if states else ""


def _twist(probe, publisher, linear) -> None:
    msg = TwistStamped(header=cv.make_header(probe.now_ns(), "base"))
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in linear)
    publisher.publish(msg)


def _drive(probe, publisher, linear, seconds: float) -> None:
    """Publish a twist at 20 Hz for `seconds`, as a teleop node would."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _twist(probe, publisher, linear)
        time.sleep(0.05)


def _set_bool_parameter(probe, node: str, name: str, value: bool) -> None:
    client = probe.node.create_client(SetParameters, f"/{node}/set_parameters")
    assert client.wait_for_service(timeout_sec=10.0)
    request = SetParameters.Request(parameters=[ParameterMsg(
        name=name, value=ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value))])
    future = client.call_async(request)
    wait_for(future.done, 10.0, what=f"setting {node}.{name}")
    assert future.result().results[0].successful


def test_twist_is_integrated_within_the_speed_limit_and_stops_when_the_teleop_does(teleop_sim, probe):
    ee = probe.listen(PoseStamped, "magma/ee_pose", qos.LATEST)
    targets = probe.listen(PoseStamped, "magma/target_pose", qos.LATEST)
    states = probe.listen(DiagnosticStatus, "magma/controller_state", qos.EVENTS)
    wait_for(lambda: ee and states, 30.0, what="the sim bridge and the controller")
    twist = probe.publisher(TwistStamped, "magma/teleop/twist", qos.LATEST)
    wait_for(lambda: twist.get_subscription_count() > 0, 10.0, what="the controller's teleop subscription")
    start = _xyz(ee[-1][1])

    # Slow: 4 cm/s along x, below the limit: each control step moves the target v / control_hz.
    t0 = time.monotonic()
    _drive(probe, twist, [0.04, 0.0, 0.0], 1.5)
    slow = np.array([_xyz(m) for t, m in targets if t >= t0])
    steps = np.diff(slow, axis=0)
    assert len(slow) >= 15
    assert np.median(steps[:, 0]) == pytest.approx(0.04 / CONTROL_HZ, abs=1e-5)
    assert np.abs(steps[:, 1:]).max() < 1e-6

    # Fast: 1 m/s along y, four times the limit: targets move max_linear_speed / control_hz per step, no more.
    t1 = time.monotonic()
    _drive(probe, twist, [0.0, -1.0, 0.0], 0.6)
    fast = np.array([_xyz(m) for t, m in targets if t >= t1])
    step_lengths = np.linalg.norm(np.diff(fast, axis=0), axis=1)
    step_limit = MAX_LINEAR_SPEED / CONTROL_HZ
    assert step_lengths.max() <= step_limit + 1e-6
    assert np.median(step_lengths) == pytest.approx(step_limit, rel=1e-3)

    # The teleop stops publishing: the target stops at once (stale twist = zero velocity) and, after
    # stale_after_s without any teleop command, no more targets go out; the arm settles where it was sent.
    t2 = time.monotonic()
    wait_for(lambda: _code(states) == "stale", STALE_AFTER_S + 2.0, what="the controller to hold on stale teleop")
    after = [_xyz(m) for t, m in targets if t >= t2 + 0.5]
    assert after and np.ptp(np.array(after), axis=0).max() < 1e-9
    count = len(targets)
    time.sleep(0.5)
    assert len(targets) == count
    moved = _xyz(ee[-1][1]) - start
    assert moved[0] == pytest.approx(0.04 * 1.5, abs=0.02) and moved[1] < -0.05


def test_estop_blocks_teleop_targets_until_released(teleop_sim, probe):
    targets = probe.listen(PoseStamped, "magma/target_pose", qos.LATEST)
    states = probe.listen(DiagnosticStatus, "magma/controller_state", qos.EVENTS)
    twist = probe.publisher(TwistStamped, "magma/teleop/twist", qos.LATEST)
    wait_for(lambda: twist.get_subscription_count() > 0 and states, 30.0, what="the controller")
    _drive(probe, twist, [0.0, 0.03, 0.0], 0.5)
    wait_for(lambda: len(targets) > 3, 3.0, what="targets from teleop twists")

    estop = probe.publisher(Bool, "magma/estop", qos.LATCHED)
    estop.publish(Bool(data=True))
    wait_for(lambda: _code(states) == "estop", 3.0, what="the controller to report the e-stop")
    count = len(targets)
    _drive(probe, twist, [0.0, 0.03, 0.0], 1.0)
    assert len(targets) == count and _code(states) == "estop"

    _set_bool_parameter(probe, "controller", "estop_reset", True)
    estop.publish(Bool(data=False))
    wait_for(lambda: _code(states) != "estop", 3.0, what="the e-stop release")
    _drive(probe, twist, [0.0, 0.03, 0.0], 0.5)
    wait_for(lambda: len(targets) > count, 3.0, what="targets after the release")


def test_scripted_teleop_runs_a_successful_pick_place_episode(teleop_sim, launch_node, probe):
    events = probe.listen(String, EPISODE_EVENT_TOPIC, EPISODE_EVENT_QOS)
    success = probe.listen(Bool, "sim/success", qos.LATCHED)
    episodes = probe.listen(String, "sim/episode", qos.LATCHED)
    states = probe.listen(DiagnosticStatus, "magma/controller_state", qos.EVENTS)
    started = time.monotonic()
    teleop = launch_node("teleop", params_file=CONFIG, input="scripted", episodes=1, reset_first=True,
                         episode_timeout_s=40.0)
    wait_for(lambda: len(events) >= 2 or not teleop.alive, 50.0, what="the scripted episode to start and stop")
    parsed = [EpisodeEvent.from_json(m.data) for _, m in events]
    assert [e.event for e in parsed] == ["start", "stop"], teleop.output()[-2000:]
    start, stop = parsed
    record = json.loads(episodes[-1][1].data)
    assert stop.outcome == "success" and stop.episode_id == start.episode_id
    assert start.instruction == stop.instruction == record["instruction"] != ""
    assert start.stamp_ns < stop.stamp_ns
    assert record["success"] and record["done"] and record["step"] < record["max_steps"]
    assert any(m.data for _, m in success)
    # The arm followed the expert through the controller's gate (teleop pose input).
    assert any(cv.status_values(m).get("input") == "pose" for _, m in states)
    teleop.proc.wait(timeout=10)  # exit_when_done
    assert teleop.proc.returncode == 0
    sys.stderr.write(f"scripted teleop: success after {record['step']} steps, "
                     f"{time.monotonic() - started:.1f} s wall\n")


# --------------------------------------------------------------------------- people's inputs, without the sim


def _newest_twist(box) -> np.ndarray:
    twist = box[-1][1].twist
    return np.array([twist.linear.x, twist.linear.y, twist.linear.z, twist.angular.x, twist.angular.y, twist.angular.z])


def test_keyboard_teleop_in_a_terminal_drives_marks_episodes_and_restores_the_terminal(ros_env, probe, tmp_path):
    """The keyboard node on a pseudo-terminal: keys -> twists, gripper, episode events; Ctrl-C restores the tty."""
    import os
    import pty
    import signal
    import termios

    twists = probe.listen(TwistStamped, "magma/teleop/twist", qos.LATEST)
    grippers = probe.listen(Float32, "magma/teleop/gripper", qos.LATEST)
    events = probe.listen(String, EPISODE_EVENT_TOPIC, EPISODE_EVENT_QOS)
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    log = open(tmp_path / "teleop.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "magma_ros.nodes.teleop", "--ros-args", "-p", "input:=keyboard",
                             "-p", "instruction:=\"wave hello\"", "-p", "linear_speed:=0.08"],
                            stdin=slave, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=ros_env,
                            start_new_session=True, preexec_fn=_die_with_parent)
    try:
        wait_for(lambda: twists, 30.0, what="the keyboard teleop's heartbeat twist")
        assert not _newest_twist(twists).any()  # no key: hold still
        os.write(master, b"n")
        wait_for(lambda: events, 5.0, what="the start event")
        os.write(master, b"wg")
        wait_for(lambda: _newest_twist(twists)[0] > 0 and grippers[-1][1].data == 1.0, 5.0, what="w and g")
        np.testing.assert_allclose(_newest_twist(twists), [0.08, 0, 0, 0, 0, 0])
        wait_for(lambda: not _newest_twist(twists).any(), 3.0, what="the motion to stop after key_timeout_s")
        os.write(master, b"y")
        wait_for(lambda: len(events) >= 2, 15.0, what="the stop event")
        start, stop = (EpisodeEvent.from_json(m.data) for _, m in events[:2])
        assert (start.event, start.instruction, stop.event, stop.outcome) == ("start", "wave hello", "stop", "success")
        assert stop.episode_id == start.episode_id
        assert termios.tcgetattr(slave)[3] & termios.ICANON == 0  # raw while running
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert termios.tcgetattr(slave) == before  # given back as it was
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        os.close(master)
        os.close(slave)


def test_joy_teleop_maps_a_space_mouse_and_stops_when_it_goes_quiet(launch_node, probe):
    twists = probe.listen(TwistStamped, "magma/teleop/twist", qos.LATEST)
    grippers = probe.listen(Float32, "magma/teleop/gripper", qos.LATEST)
    events = probe.listen(String, EPISODE_EVENT_TOPIC, EPISODE_EVENT_QOS)
    launch_node("teleop", input="joy", joy_preset="spacemouse", linear_speed=0.1, angular_speed=0.5,
                joy_deadzone=0.1, joy_timeout_s=0.5, instruction="stack the blocks")
    joy = probe.publisher(Joy, "joy", qos.EVENTS)
    wait_for(lambda: twists and joy.get_subscription_count() > 0, 30.0, what="the joy teleop")
    pressed = Joy(axes=[1.0, 0.0, -0.55, 0.0, 0.0, 1.0], buttons=[1, 1])  # gripper + episode buttons down
    released = Joy(axes=pressed.axes, buttons=[0, 0])
    joy.publish(pressed)
    # Generous waits: on a busy 2-core CI machine the first reply once took over 5 s.
    wait_for(lambda: _newest_twist(twists)[0] > 0 and events, 15.0, what="motion and the episode start")
    np.testing.assert_allclose(_newest_twist(twists), [0.1, 0.0, -0.05, 0.0, 0.0, 0.5], atol=1e-6)
    assert grippers[-1][1].data == 1.0
    for _ in range(5):  # held down: no new presses
        joy.publish(pressed)
        time.sleep(0.05)
    joy.publish(released)
    joy.publish(pressed)  # pressed again: the episode button now stops it with success, the gripper opens
    wait_for(lambda: len(events) >= 2, 15.0, what="the stop event")
    outcomes = [EpisodeEvent.from_json(m.data) for _, m in events]
    assert [(e.event, e.outcome, e.instruction) for e in outcomes] == [("start", None, "stack the blocks"),
                                                                       ("stop", "success", "stack the blocks")]
    wait_for(lambda: grippers[-1][1].data == 0.0, 3.0, what="the gripper to open")
    # The device goes quiet: after joy_timeout_s the teleop asks for no motion.
    wait_for(lambda: not _newest_twist(twists).any(), 3.0, what="zero twists once Joy messages stop")

"""The demo's per-episode diagnostics: controller phases and plan ages, from the messages the graph publishes."""
import pytest

pytest.importorskip("rclpy")

from magma_ros.commands_demo import EpisodeWatch, controller_phase, summarize_ages  # noqa: E402
from magma_ros.converters import LatencyReport, latency_to_msg, make_status  # noqa: E402
from std_msgs.msg import String  # noqa: E402


@pytest.mark.parametrize("code, message, phase", [
    ("ok", "following", "following"),
    ("ok", "dwelling for the gripper", "dwelling"),
    ("ok", "confirming the gripper switch from close by", "confirming"),
    ("ok", "plan finished, holding the last waypoint", "finished"),
    ("clipped", "target [0.5, 0.1, 0.001] clipped to the workspace box", "clipped"),
    ("stale", "trace frame is 1.2 s old", "stale"),
    ("waiting", "waiting for a plan", "waiting"),
])
def test_controller_phase_names_what_the_controller_did(code, message, phase):
    assert controller_phase(code, message) == phase


def test_plan_ages_summarize_to_median_and_p95():
    assert summarize_ages([]) == {}
    ages = [float(v) for v in range(1, 101)]
    assert summarize_ages(ages) == {"median": 50.5, "p95": 95.0}


def test_watch_counts_ticks_and_plan_ages_per_episode():
    watch = EpisodeWatch()
    watch.on_controller(0.0, make_status("magma/controller", "OK", "following", {"code": "ok"}))  # before any episode
    watch.on_episode(0.0, String(data='{"episode": 0, "seed": 7, "step": 0, "done": false, "success": false}'))
    for _ in range(3):
        watch.on_controller(0.0, make_status("magma/controller", "OK", "following", {"code": "ok"}))
    watch.on_controller(0.0, make_status("magma/controller", "WARN", "old frame", {"code": "stale"}))
    watch.on_latency(0.0, latency_to_msg(LatencyReport(1, 100.0, 180.0, "trace")))
    watch.on_latency(0.0, latency_to_msg(LatencyReport(2, 100.0, 220.0, "trace")))
    watch.on_episode(0.0, String(data='{"episode": 1, "seed": 8, "step": 0, "done": false, "success": false}'))
    watch.on_controller(0.0, make_status("magma/controller", "OK", "dwelling for the gripper", {"code": "ok"}))
    first, second = watch.diagnostics(0), watch.diagnostics(1)
    assert first == {"controller": {"following": 3, "stale": 1}, "plans": 2,
                     "plan_age_ms": {"median": 200.0, "p95": 220.0}}
    assert second == {"controller": {"dwelling": 1}, "plans": 0, "plan_age_ms": {}}

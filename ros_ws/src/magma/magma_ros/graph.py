"""The magma ROS graph as data: which nodes run, with which parameters and remaps.

One description serves both starters: ``launch/bringup.launch.py`` (a full ROS 2 install, ``ros2 launch``)
turns each :class:`NodeSpec` into a ``launch_ros.actions.Node``, and :mod:`magma_ros.launcher` (pip only,
no ``launch`` package) starts each as a subprocess. This module imports no ROS package, so it can be
tested and used anywhere.

Simulation (``use_sim``): sim_bridge -> policy -> controller -> sim_bridge. With ``teleop`` a teleop node
(or one started elsewhere) replaces the policy and drives the controller's teleop input; with ``record_dir``
a recorder writes one MCAP bag per episode. The sim bridge writes the true
camera extrinsics to a file that the policy and the controller read. Hardware: camera -> policy ->
controller, with the calibrated extrinsics from ``extrinsics``; the arm driver is not part of this graph
(it subscribes to ``magma/target_pose`` and ``magma/gripper_command``, publishes ``magma/ee_pose``).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from magma_core.errors import InvalidInputError

PACKAGE = "magma"
POLICY_MODES = ("trace", "action")

# (name, default as launch text, description): the launch arguments of bringup.launch.py and the
# options of `magma bringup` (their defaults are the same, checked by tests/test_bringup.py).
ARGUMENTS: tuple[tuple[str, str, str], ...] = (
    ("use_sim", "true", "Run the simulated arm and camera (sim_bridge) instead of a camera node and a real arm."),
    ("policy", "embedded", "Policy of the policy node: 'embedded' (the trained magma-tiny), 'heuristic' or 'package.module:ClassName'."),
    ("checkpoint", "", "Local checkpoint directory for ClassName.from_pretrained (empty: no weights)."),
    ("mode", "trace", "Policy output and controller input: 'trace' (Trace-of-Mark) or 'action' (7-D deltas)."),
    ("instruction", "", "Instruction to follow; empty in simulation: each episode's own task instruction."),
    ("camera_source", "0", "Without simulation: camera device index, video file or folder of frames."),
    ("camera_info", "", "Without simulation: camera_info YAML of the camera (empty: nominal intrinsics, with a warning)."),
    ("extrinsics", "", "Camera extrinsics YAML; in simulation where the sim bridge writes it (empty: a temporary file)."),
    ("task", "pick_place", "Simulated task (pick_place, stack, push, put_in_tray)."),
    ("seed", "0", "Seed of the first simulated episode."),
    ("seeds", "", "Comma-separated seeds of successive simulated episodes (empty: count up from seed)."),
    ("auto_reset", "false", "Start the next simulated episode by itself when one ends."),
    ("image_size", "128", "Simulated camera image size in pixels (square)."),
    ("sim_hz", "10", "Simulation steps per second (must divide 240)."),
    ("policy_hz", "5.0", "Most policy inferences per second."),
    ("control_hz", "20.0", "Controller steps per second."),
    ("teleop", "", "Drive the arm by teleoperation instead of the policy: 'joy', 'scripted' (simulation expert) or "
                   "'external' (a teleop node started elsewhere, e.g. the keyboard in its own terminal); empty: the policy."),
    ("record_dir", "", "Record each episode (one MCAP bag + episode.json) into this folder; empty: no recorder."),
)
TELEOP_INPUTS = ("joy", "scripted", "external")
ARGUMENT_DEFAULTS = {name: default for name, default, _ in ARGUMENTS}


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph: what to run and how to configure it.

    ``parameters`` override ``params_file`` (config/magma.yaml); ``remaps`` are (from, to) topic pairs;
    ``env`` holds extra environment variables for this node only; ``finite``: the node has a job that ends
    (scripted teleop), and its clean exit ends the whole run instead of counting as a failure.
    """

    name: str
    module: str
    executable: str
    parameters: dict[str, Any] = field(default_factory=dict)
    params_file: str = ""
    remaps: tuple[tuple[str, str], ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    finite: bool = False

    def ros_args(self) -> list[str]:
        """The ``--ros-args ...`` part of this node's command line."""
        args = ["--ros-args"]
        if self.params_file:
            args += ["--params-file", self.params_file]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={ros_value(value)}"]
        for source, target in self.remaps:
            args += ["-r", f"{source}:={target}"]
        return args


def ros_value(value: Any) -> str:
    """A parameter value as ``-p name:=VALUE`` parses it (YAML): strings quoted, lists as flow sequences."""
    import json

    if isinstance(value, (str, bool, list, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    if isinstance(value, (int, float)):
        return repr(value)
    raise InvalidInputError(f"cannot pass a {type(value).__name__} as a ROS parameter: {value!r}")


def config_file(name: str) -> str:
    """Path of a file of the package's config/ folder: beside the sources (pip/editable) or in the package
    share folder (colcon); empty when neither has it."""
    beside = Path(__file__).resolve().parent.parent / "config" / name
    if beside.is_file():
        return str(beside)
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(PACKAGE)) / "config" / name
        if installed.is_file():
            return str(installed)
    except Exception:  # ament_index is absent or does not know the package
        pass
    return ""


def default_params_file() -> str:
    """config/magma.yaml, wherever the package is installed."""
    found = config_file("magma.yaml")
    if not found:
        raise InvalidInputError(f"cannot find config/magma.yaml (beside {Path(__file__).parent} or in the "
                                f"'{PACKAGE}' share folder)")
    return found


def parse_bool(value: bool | str, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise InvalidInputError(f"{name} must be true or false, got {value!r}")


def parse_seeds(value: str | Sequence[int] | None) -> list[int] | None:
    """'3,7,11' or [3, 7, 11] -> [3, 7, 11]; empty -> None (the sim bridge counts up from its seed)."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        try:
            seeds = [int(p) for p in parts]
        except ValueError:
            raise InvalidInputError(f"seeds must be comma-separated integers, got {value!r}") from None
    else:
        seeds = list(value)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise InvalidInputError(f"seeds must be non-negative integers, got {value!r}")
    return seeds or None


def _number(value: Any, name: str, kind: type, low: float) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a {kind.__name__}, got {value!r}") from None
    if not number > low:
        raise InvalidInputError(f"{name} must be more than {low}, got {value!r}")
    return number


def build_graph(use_sim: bool | str = True, policy: str = "embedded", checkpoint: str = "", mode: str = "trace",
                instruction: str = "", camera_source: str = "0", camera_info: str = "", extrinsics: str = "",
                task: str = "pick_place", seed: int | str = 0, seeds: str | Sequence[int] | None = None,
                auto_reset: bool | str = False, image_size: int | str = 128, sim_hz: int | str = 10,
                policy_hz: float | str = 5.0, control_hz: float | str = 20.0, teleop: str = "", record_dir: str = "",
                params_file: str = "",
                extra: dict[str, dict[str, Any]] | None = None) -> list[NodeSpec]:
    """The nodes of one bringup, in start order (producers first).

    Values may be launch-argument text ('true', '10') or Python values. ``extra`` adds or overrides
    parameters per node name (e.g. ``{"sim_bridge": {"auto_reset_delay_s": 0.2}}``). Bad values raise
    InvalidInputError naming the argument.
    """
    use_sim = parse_bool(use_sim, "use_sim")
    auto_reset = parse_bool(auto_reset, "auto_reset")
    if mode not in POLICY_MODES:
        raise InvalidInputError(f"mode must be one of {', '.join(POLICY_MODES)}, got {mode!r}")
    if not str(policy).strip():
        raise InvalidInputError("policy must not be empty ('embedded', 'heuristic' or 'package.module:ClassName')")
    sim_hz = _number(sim_hz, "sim_hz", int, 0)
    if 240 % sim_hz:
        raise InvalidInputError(f"sim_hz must divide 240 (the physics rate), got {sim_hz}")
    policy_hz = _number(policy_hz, "policy_hz", float, 0.0)
    control_hz = _number(control_hz, "control_hz", float, 0.0)
    teleop = str(teleop).strip()
    if teleop == "keyboard":
        raise InvalidInputError("the keyboard teleop needs its own terminal: bring up with teleop:=external and run "
                                "`magma_teleop --ros-args -p input:=keyboard` (or `python -m magma_ros.nodes.teleop ...`) there")
    if teleop and teleop not in TELEOP_INPUTS:
        raise InvalidInputError(f"teleop must be one of {', '.join(TELEOP_INPUTS)} or empty, got {teleop!r}")
    if teleop == "scripted" and not use_sim:
        raise InvalidInputError("teleop:=scripted follows the simulation's expert: it needs use_sim:=true")
    params_file = params_file or default_params_file()

    nodes: list[NodeSpec] = []
    seed_list = parse_seeds(seeds)
    if use_sim:
        extrinsics = extrinsics or os.path.join(tempfile.gettempdir(), f"magma-sim-extrinsics-{os.getpid()}.yaml")
        sim_params: dict[str, Any] = {
            "task": str(task), "seed": _number(seed, "seed", int, -1), "auto_reset": auto_reset,
            "image_size": _number(image_size, "image_size", int, 0), "control_hz": sim_hz,
            "extrinsics_path": extrinsics,
            # An explicit instruction wins over each episode's own (the latched topic would replace it).
            "publish_instruction": not instruction,
            # Episodes start at the first command, as `magma eval` waits for each step: a policy that takes
            # seconds to load (a slow machine) would otherwise lose most of episode 0.
            "start_on_command": True,
        }
        if seed_list is not None:
            sim_params["seeds"] = seed_list
        if teleop == "scripted":
            sim_params["publish_expert"] = True
        nodes.append(_spec("sim_bridge", sim_params, params_file))
    else:
        if not extrinsics:
            raise InvalidInputError("without simulation the camera extrinsics are needed: pass extrinsics:=PATH "
                                    "(from `magma calibrate handeye`)")
        nodes.append(_spec("camera", {"source": str(camera_source), "camera_info_path": str(camera_info)}, params_file))
    controller_params: dict[str, Any] = {"mode": mode, "control_hz": control_hz, "extrinsics_path": extrinsics}
    if use_sim:
        # The controller's box is the simulated table's, so a target moved into it is always safe there; `magma eval`
        # clips the same way. Holding instead can deadlock: the arm stays still, the frame stays the same, and the
        # policy answers the same out-of-box target again. Hardware keeps the config's 'reject'.
        controller_params["workspace_mode"] = "clip"
    if teleop:
        controller_params["source"] = "teleop"
        if teleop != "external":
            teleop_params: dict[str, Any] = {"input": teleop, "instruction": str(instruction)}
            if teleop == "scripted":  # one expert episode per seed (default one), then the run ends
                teleop_params["episodes"] = len(seed_list) if seed_list else 1
            spec = _spec("teleop", teleop_params, params_file)
            nodes.append(NodeSpec(spec.name, spec.module, spec.executable, spec.parameters, spec.params_file,
                                  finite=teleop == "scripted"))
    else:
        nodes.append(_spec("policy", {"policy": str(policy), "policy_path": str(checkpoint), "mode": mode,
                                      "rate_hz": policy_hz, "instruction": str(instruction),
                                      "extrinsics_path": extrinsics}, params_file))
    nodes.append(_spec("controller", controller_params, params_file))
    if str(record_dir).strip():
        nodes.append(_spec("recorder", {"record_dir": str(record_dir), "extrinsics_path": extrinsics}, params_file))

    extra = extra or {}
    unknown = set(extra) - {n.name for n in nodes}
    if unknown:
        raise InvalidInputError(f"extra parameters for nodes not in this graph: {', '.join(sorted(unknown))}")
    return [NodeSpec(n.name, n.module, n.executable, {**n.parameters, **extra.get(n.name, {})}, n.params_file,
                     n.remaps, n.env, n.finite) for n in nodes]


def _spec(name: str, parameters: dict[str, Any], params_file: str) -> NodeSpec:
    return NodeSpec(name=name, module=f"magma_ros.nodes.{name}", executable=f"magma_{name}", parameters=parameters,
                    params_file=params_file)

"""`ros2 launch magma bringup.launch.py [use_sim:=true] [policy:=embedded] ...`: the magma graph.

The nodes and their parameters come from magma_ros.graph.build_graph, the same description the pip-only
launcher (`magma bringup`) starts, so both bring up the same graph. `ros2 launch magma bringup.launch.py
--show-args` lists the arguments with their descriptions.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from magma_ros.graph import ARGUMENTS, PACKAGE, build_graph


def _nodes(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    return [
        Node(package=PACKAGE, executable=spec.executable, name=spec.name, output="screen",
             parameters=[spec.params_file, spec.parameters], remappings=list(spec.remaps),
             additional_env=spec.env or None,
             # A node with a finite job (scripted teleop) ends the launch when it is done.
             on_exit=[Shutdown(reason=f"{spec.name} finished")] if spec.finite else None)
        for spec in build_graph(**values)
    ]


def generate_launch_description() -> LaunchDescription:
    arguments = [DeclareLaunchArgument(name, default_value=default, description=description)
                 for name, default, description in ARGUMENTS]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])

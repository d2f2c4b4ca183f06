"""colcon (ament_python) build of the ROS package `magma`; with pip, the root setup.py maps magma_ros instead."""
from setuptools import setup

PACKAGE = "magma"
NODES = ("camera", "sim_bridge", "policy", "controller", "recorder", "teleop")

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=["magma_ros", "magma_ros.nodes", "magma_ros.recording", "magma_ros.teleop"],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", ["config/magma.yaml", "config/fastdds_localhost.xml"]),
        (f"share/{PACKAGE}/launch", ["launch/bringup.launch.py"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    description="Thin ROS 2 nodes around a Magma vision-language-action policy",
    license="MIT",
    entry_points={"console_scripts": [f"magma_{name} = magma_ros.nodes.{name}:main" for name in NODES]},
)

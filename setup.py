"""Maps each room (top-level folder) to its distinctive import name; metadata lives in pyproject.toml."""
from setuptools import find_packages, setup

ROOMS = {
    "magma_core": "magma_core",
    "magma_sim": "sim",
    "magma_calibration": "calibration",
    "magma_ros": "ros_ws/src/magma/magma_ros",
}

packages: list[str] = []
package_dir: dict[str, str] = {}
for name, folder in ROOMS.items():
    package_dir[name] = folder
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir, include_package_data=True)

"""Simulation: PyBullet tabletop tasks, experts, datasets, evaluation (import name magma_sim)."""

# The public simulation API, imported lazily so `import magma_sim` (e.g. by the CLI) stays free of pybullet.
_LAZY = {
    "TabletopEnv": "magma_sim.env",
    "make_env": "magma_sim.env",
    "CameraConfig": "magma_sim.camera",
    "WristCameraConfig": "magma_sim.camera",
    "TASKS": "magma_sim.tasks",
    "make_expert": "magma_sim.experts",
    "rollout_expert": "magma_sim.rollout",
    "compute_gt_traces": "magma_sim.gt_traces",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'magma_sim' has no attribute {name!r}")

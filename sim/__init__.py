"""Simulation: PyBullet tabletop tasks, experts, datasets, evaluation (import name magma_sim)."""

"""Policies that implement `magma_core.policy.Policy`; `HeuristicPolicy` is the non-learned baseline."""
from magma_core.policies.heuristic import HeuristicConfig, HeuristicPolicy

__all__ = ["HeuristicConfig", "HeuristicPolicy"]

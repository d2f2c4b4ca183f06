"""The whole contract between the model and the world (nodes, simulators, evaluation)."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

Observation = dict[str, "np.ndarray | str"]


@runtime_checkable
class Policy(Protocol):
    """A policy maps one observation dict to a dict with marks and a trace, or actions.

    Observation keys (only what a real robot has): ``rgb`` (HxWx3 uint8), optional ``depth``
    (HxW float32 metres), ``intrinsics`` (3x3), ``extrinsics`` (4x4 camera-to-base),
    ``ee_pose`` (7: xyz + quaternion xyzw), ``gripper`` (1), ``joints`` (N), ``instruction`` (str).
    """

    def reset(self) -> None: ...

    def infer(self, obs: Observation) -> dict[str, Any]: ...

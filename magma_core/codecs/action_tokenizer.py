"""Magma's robot head: 7-D actions <-> the last `n_bins` token ids of the language model's vocabulary.

An action is 7 numbers: end-effector translation delta (x, y, z), rotation delta (3, in the
dataset's own convention, e.g. roll/pitch/yaw) and the gripper. Each dimension is normalised
to [-1, 1] with the dataset's 1st and 99th percentiles (values beyond are clipped), cut into
`n_bins` uniform bins over [-1, 1], and bin ``i`` becomes token id ``vocab_size - n_bins + i``.
Decoding returns bin centres, so a value inside [q01, q99] comes back within half a bin
(``1 / n_bins`` in normalised units).

Gripper convention (index 6, `GRIPPER_INDEX`): an absolute command in [0, 1], 0 = open,
1 = closed, the same as `Trace.gripper`. Dataset loaders convert other conventions (inverted,
{-1, 1}, widths in metres) before computing stats. `ActionNormStats.from_actions` fixes the
gripper's range to [0, 1] instead of taking percentiles, so the command maps to -1 (open) and
+1 (closed) even in a dataset where the gripper rarely closes (its percentiles would collapse).
A decoded gripper value is continuous; threshold it at 0.5.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from magma_core.errors import InvalidInputError

ACTION_DIM = 7
GRIPPER_INDEX = 6
DEFAULT_N_BINS = 256


@dataclass(eq=False)
class ActionNormStats:
    """Per-dataset 1st/99th percentiles of each action dimension, shape (7,) each.

    A dimension with q99 == q01 (constant in the data) normalises to 0 and decodes to q01.
    """

    q01: np.ndarray
    q99: np.ndarray

    def __post_init__(self) -> None:
        self.q01 = _stat_array(self.q01, "q01")
        self.q99 = _stat_array(self.q99, "q99")
        bad = np.flatnonzero(self.q99 < self.q01)
        if bad.size:
            raise InvalidInputError(f"action stats: q99 < q01 in dimension(s) {bad.tolist()}")

    @classmethod
    def from_actions(cls, actions: np.ndarray, gripper_fixed_range: bool = True) -> "ActionNormStats":
        """Percentiles of an (N, 7) action array; the gripper's range is [0, 1] unless told otherwise."""
        actions = _action_array(actions, "actions")
        actions = actions.reshape(-1, ACTION_DIM)
        if actions.shape[0] == 0:
            raise InvalidInputError("no actions to compute stats from")
        q01, q99 = np.quantile(actions, [0.01, 0.99], axis=0)
        if gripper_fixed_range:
            gripper = actions[:, GRIPPER_INDEX]
            if gripper.min() < 0 or gripper.max() > 1:
                raise InvalidInputError(
                    f"gripper values span {gripper.min():g}..{gripper.max():g}; convert them to [0, 1] (0 open, 1 closed) first"
                )
            q01[GRIPPER_INDEX], q99[GRIPPER_INDEX] = 0.0, 1.0
        return cls(q01, q99)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {"q01": self.q01.tolist(), "q99": self.q99.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "ActionNormStats":
        """Inverse of `to_dict`, validated (shapes, finite, q99 >= q01); extra keys are ignored."""
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"action stats must be a mapping with q01 and q99, got {type(data).__name__}")
        missing = [key for key in ("q01", "q99") if key not in data]
        if missing:
            raise InvalidInputError(f"action stats lack {', '.join(missing)}")
        return cls(data["q01"], data["q99"])

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Actions (..., 7) -> [-1, 1], clipped."""
        actions = _action_array(actions, "actions")
        span = self.q99 - self.q01
        scaled = np.divide(actions - self.q01, span, out=np.full(actions.shape, 0.5), where=span > 0)
        return np.clip(2.0 * scaled - 1.0, -1.0, 1.0)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """[-1, 1] (..., 7) -> actions in dataset units."""
        normalized = _action_array(normalized, "normalized actions")
        return self.q01 + (np.clip(normalized, -1.0, 1.0) + 1.0) * 0.5 * (self.q99 - self.q01)


class ActionTokenizer:
    """Actions (..., 7) <-> token ids (..., 7): normalised with the dataset's stats, then binned by a convention.

    The default convention is magma-tiny's: the action ids overlay the last `n_bins` ids of the text
    vocabulary, in order (as in OpenVLA and Magma, the model's tokenizer keeps rarely used or reserved
    tokens there). `convention` (`action_conventions.ActionTokenConvention`) selects another model's
    layout, e.g. Magma-8B's reversed ids below Llama-3's special tokens.
    """

    def __init__(self, vocab_size: int, stats: ActionNormStats, n_bins: int = DEFAULT_N_BINS, convention=None):
        from magma_core.codecs.action_conventions import magma_tiny_convention

        if not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
            raise InvalidInputError(f"n_bins must be an integer >= 2, got {n_bins!r}")
        if not isinstance(vocab_size, (int, np.integer)) or vocab_size <= n_bins:
            raise InvalidInputError(f"vocab_size must be an integer > n_bins ({n_bins}), got {vocab_size!r}")
        if convention is None and not isinstance(stats, ActionNormStats):
            raise InvalidInputError(f"stats must be ActionNormStats, got {type(stats).__name__}")
        if convention is not None and not (callable(getattr(stats, "normalize", None)) and callable(getattr(stats, "unnormalize", None))):
            raise InvalidInputError(f"stats must normalize/unnormalize actions, got {type(stats).__name__}")
        self.vocab_size = int(vocab_size)
        self.n_bins = int(n_bins)
        self.stats = stats
        self.convention = convention if convention is not None else magma_tiny_convention(self.vocab_size, self.n_bins)
        self.first_id = int(self.convention.first_id)
        self.bin_width = float(self.convention.bin_width)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Actions (..., 7) -> int64 token ids (..., 7). NaN/inf actions are an error."""
        return self.convention.encode(self.stats.normalize(actions))

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Token ids (..., 7) -> actions (..., 7) at bin centres. Ids outside the action range are an error."""
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise InvalidInputError(f"action token ids must be integers, got dtype {ids.dtype}")
        if ids.ndim == 0 or ids.shape[-1] != ACTION_DIM:
            raise InvalidInputError(f"action token ids must have shape (..., {ACTION_DIM}), got {ids.shape}")
        outside = ~np.asarray(self.is_action_token(ids), dtype=bool)
        if outside.any():
            first, end = self.action_id_range
            raise InvalidInputError(f"{int(outside.sum())} id(s) are not action tokens (e.g. {int(ids[outside].flat[0])}); "
                                    f"action ids are [{first}, {end})")
        return self.stats.unnormalize(self.convention.decode(ids))

    def is_action_token(self, ids) -> np.ndarray | bool:
        """True where an id lies in the action range; a scalar in, a bool out."""
        return self.convention.is_action_token(ids)

    @property
    def action_id_range(self) -> tuple[int, int]:
        """[first, end) of the action token ids."""
        return tuple(int(v) for v in self.convention.id_range)


def _stat_array(value, name: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"action stats {name} must be {ACTION_DIM} numbers ({exc})") from exc
    if array.shape != (ACTION_DIM,):
        raise InvalidInputError(f"action stats {name} must have shape ({ACTION_DIM},), got {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidInputError(f"action stats {name} contain NaN or inf")
    array = array.copy()
    array.setflags(write=False)  # stats are shared by tokenizers; an in-place edit would corrupt them all
    return array


def _action_array(value, what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be numeric ({exc})") from exc
    if array.ndim == 0 or array.shape[-1] != ACTION_DIM:
        raise InvalidInputError(f"{what} must have shape (..., {ACTION_DIM}), got {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{what} contain NaN or inf")
    return array

"""How a model writes a normalised action value (in [-1, 1]) as a token id, and reads it back.

Two conventions exist, and a checkpoint only works with the one it was trained with:

``magma-tiny`` (this project's own models, what `ActionTokenizer` does)
    256 equal bins over [-1, 1] (``floor((x + 1) / (2 / 256))``, clipped to 0..255); bin ``i`` is
    id ``V - 256 + i`` where ``V`` is the whole vocabulary, added tokens included
    (``len(tokenizer)``, the model's embedding rows). Decoding returns the bin centre.

``magma-8b`` (microsoft/Magma-8B, OpenVLA's rule, which Magma's training and evaluation code reuse)
    256 *edges* ``np.linspace(-1, 1, 256)`` (so 255 intervals of width 2/255); the value, clipped
    to [-1, 1], is digitised to ``d`` in 1..256 (``np.digitize``: ``edges[d-1] <= x < edges[d]``,
    ``d = 256`` only for x == 1.0) and written as id ``B - d``, where ``B`` is the tokenizer's
    ``vocab_size`` *without* added tokens: 128000 for Llama-3 (not 128256, not Magma's 128261).
    So the ids are [127744, 128000), ordinary byte-pair tokens, and a larger value gets a
    *smaller* id. Decoding maps ``d = B - id`` to the centre of interval ``min(d - 1, 254)``: ids
    127744 and 127745 both read back as 1 - 1/255. Sources: microsoft/Magma
    ``tools/simplerenv-magma/simpler_env/policies/magma/magma_model.py`` and
    ``agents/libero/libero_magma_utils.py`` (decoding), ``data/openx/datasets/datasets.py`` and
    ``data/openx_magma/data_utils.py`` (training builds OpenVLA's ``ActionTokenizer(tokenizer)``
    with its defaults), openvla/openvla ``prismatic/vla/action_tokenizer.py`` (the rule), and the
    ids Magma-8B actually generated in microsoft/Magma issue #36 (127857 ... 127744).

Normalisation differs too: Magma-8B normalises with `MaskedQ99Stats` (dataset_statistics.json:
q01/q99 with a per-dimension mask that leaves the gripper raw, 1 = open), not `ActionNormStats`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from magma_core.errors import InvalidInputError

MAGMA_TINY = "magma-tiny"
MAGMA_8B = "magma-8b"
PRESETS = (MAGMA_TINY, MAGMA_8B)

# Bin rules: how a value in [-1, 1] becomes a slot 0..n_bins-1 and a slot becomes a value.
UNIFORM_BINS = "uniform-bins"  # n_bins equal intervals, floor, centres
LINSPACE_DIGITIZE = "linspace-digitize"  # n_bins edges, np.digitize, n_bins - 1 centres (OpenVLA)
BIN_RULES = (UNIFORM_BINS, LINSPACE_DIGITIZE)

# Id rules: which vocabulary size ends the action block.
WHOLE_VOCAB_END = "whole-vocab-end"  # len(tokenizer): every token, added ones included
BASE_VOCAB_END = "base-vocab-end"  # tokenizer.vocab_size: the BPE vocabulary without added tokens
ID_RULES = (WHOLE_VOCAB_END, BASE_VOCAB_END)

LLAMA3_BASE_VOCAB_SIZE = 128000  # Llama-3's tokenizer.vocab_size; its 256 special tokens are added tokens
DEFAULT_N_BINS = 256


@dataclass(frozen=True)
class ActionTokenConvention:
    """One action-token convention bound to a vocabulary: normalised values <-> ids, element-wise.

    name:     preset name ("magma-tiny", "magma-8b") or a label of your own.
    n_bins:   how many ids the block has (256 in both presets).
    id_rule:  WHOLE_VOCAB_END or BASE_VOCAB_END: what `end_id` counts (documentation of where it came from).
    end_id:   one past the last action id; the block is [end_id - n_bins, end_id).
    reversed: False: slot s is id ``first_id + s``; True: slot s is id ``end_id - 1 - s``.
    bin_rule: UNIFORM_BINS or LINSPACE_DIGITIZE (see the module docstring).
    """

    name: str
    n_bins: int
    id_rule: str
    end_id: int
    reversed: bool
    bin_rule: str
    _edges: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.n_bins, (int, np.integer)) or isinstance(self.n_bins, bool) or self.n_bins < 2:
            raise InvalidInputError(f"n_bins must be an integer >= 2, got {self.n_bins!r}")
        if not isinstance(self.end_id, (int, np.integer)) or isinstance(self.end_id, bool) or self.end_id < self.n_bins:
            raise InvalidInputError(f"end_id must be an integer >= n_bins ({self.n_bins}), got {self.end_id!r}")
        if self.id_rule not in ID_RULES:
            raise InvalidInputError(f"id_rule must be one of {ID_RULES}, got {self.id_rule!r}")
        if self.bin_rule not in BIN_RULES:
            raise InvalidInputError(f"bin_rule must be one of {BIN_RULES}, got {self.bin_rule!r}")
        object.__setattr__(self, "n_bins", int(self.n_bins))
        object.__setattr__(self, "end_id", int(self.end_id))
        object.__setattr__(self, "reversed", bool(self.reversed))
        edges = np.linspace(-1.0, 1.0, self.n_bins)  # only the linspace rule reads these
        edges.setflags(write=False)
        object.__setattr__(self, "_edges", edges)

    # ------------------------------------------------------------------ ids

    @property
    def first_id(self) -> int:
        return self.end_id - self.n_bins

    @property
    def id_range(self) -> tuple[int, int]:
        """[first, end) of the action ids."""
        return self.first_id, self.end_id

    @property
    def bin_width(self) -> float:
        """Width of one bin in normalised units; decoding errs by at most half of it inside [-1, 1]."""
        return 2.0 / (self.n_bins if self.bin_rule == UNIFORM_BINS else self.n_bins - 1)

    def is_action_token(self, ids) -> np.ndarray | bool:
        """True where an id lies in the action block; a scalar in, a bool out."""
        ids = np.asarray(ids)
        inside = (ids >= self.first_id) & (ids < self.end_id)
        return bool(inside) if inside.ndim == 0 else inside

    # ------------------------------------------------------------------ codec

    def encode(self, actions_normalised) -> np.ndarray:
        """Normalised values (any shape) -> int64 ids of the same shape; values beyond [-1, 1] are clipped."""
        values = _finite_array(actions_normalised)
        if self.bin_rule == UNIFORM_BINS:
            # magma-tiny: n_bins equal bins over [-1, 1], lowest value first.
            slots = np.clip(np.floor((values + 1.0) / (2.0 / self.n_bins)), 0, self.n_bins - 1).astype(np.int64)
        else:
            # digitize gives 1..n_bins for values clipped to [-1, 1]; slot = digitized - 1.
            slots = np.digitize(np.clip(values, -1.0, 1.0), self._edges).astype(np.int64) - 1
        return self._slot_to_id(slots)

    def decode(self, ids) -> np.ndarray:
        """Ids (any shape, integers inside `id_range`) -> normalised values (float64) at bin centres."""
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise InvalidInputError(f"action token ids must be integers, got dtype {ids.dtype}")
        outside = ~np.asarray(self.is_action_token(ids))
        if outside.any():
            first_bad = int(ids[outside].flat[0])
            raise InvalidInputError(
                f"{int(outside.sum())} id(s) are not {self.name} action tokens (e.g. {first_bad}); "
                f"action ids are [{self.first_id}, {self.end_id})"
            )
        ids = ids.astype(np.int64)
        slots = self.end_id - 1 - ids if self.reversed else ids - self.first_id
        if self.bin_rule == UNIFORM_BINS:
            return -1.0 + (slots + 0.5) * (2.0 / self.n_bins)
        centres = (self._edges[:-1] + self._edges[1:]) / 2.0
        # n_bins slots but n_bins - 1 intervals: the top slot (only x == 1.0) shares the last centre.
        return centres[np.minimum(slots, self.n_bins - 2)]

    def _slot_to_id(self, slots: np.ndarray) -> np.ndarray:
        return self.end_id - 1 - slots if self.reversed else self.first_id + slots


# ---------------------------------------------------------------------- presets


def magma_tiny_convention(vocab_size: int, n_bins: int = DEFAULT_N_BINS) -> ActionTokenConvention:
    """This project's convention: the last `n_bins` ids of the whole vocabulary (``len(tokenizer)``)."""
    return ActionTokenConvention(MAGMA_TINY, n_bins, WHOLE_VOCAB_END, vocab_size, reversed=False, bin_rule=UNIFORM_BINS)


def magma_8b_convention(base_vocab_size: int = LLAMA3_BASE_VOCAB_SIZE) -> ActionTokenConvention:
    """Magma-8B's (OpenVLA's) convention; `base_vocab_size` is ``tokenizer.vocab_size`` (128000 for Llama-3)."""
    return ActionTokenConvention(MAGMA_8B, DEFAULT_N_BINS, BASE_VOCAB_END, base_vocab_size, reversed=True, bin_rule=LINSPACE_DIGITIZE)


def convention_by_name(name: str, vocab_size: int | None = None) -> ActionTokenConvention:
    """A preset by name; `vocab_size` is ``len(tokenizer)`` for magma-tiny, ``tokenizer.vocab_size`` for magma-8b."""
    if name == MAGMA_TINY:
        if vocab_size is None:
            raise InvalidInputError("the magma-tiny convention needs the vocabulary size (len(tokenizer))")
        return magma_tiny_convention(vocab_size)
    if name == MAGMA_8B:
        return magma_8b_convention(LLAMA3_BASE_VOCAB_SIZE if vocab_size is None else vocab_size)
    raise InvalidInputError(f"unknown action token convention {name!r}; known: {PRESETS}")


def convention_for_config(model_config, tokenizer=None) -> ActionTokenConvention:
    """The convention a model was trained with: magma-8b for Magma-8B, magma-tiny otherwise.

    `model_config` is a MagmaConfig (or anything with ``vision_backbone`` and ``text_config.vocab_size``),
    its ``to_dict()``, or an official Magma-8B config.json as a dict. Magma-8B is recognised by an
    official config.json (`checkpoint_mapping.is_official_config`) or by a backbone of the official
    checkpoints (``MagmaConfig.magma_8b()`` and configs converted from config.json). With a
    `tokenizer`, magma-8b's block ends at ``tokenizer.vocab_size`` and magma-tiny's at
    ``len(tokenizer)`` (which must equal the model's vocabulary); without one, at 128000 and at
    the model's vocabulary.
    """
    from magma_core.model.checkpoint_mapping import BACKBONES, is_official_config  # lazy: imports torch

    if isinstance(model_config, Mapping):
        official = is_official_config(dict(model_config))
        backbone = model_config.get("vision_backbone")
        text = model_config.get("text_config")
        model_vocab = (text.get("vocab_size") if isinstance(text, Mapping) else None) or model_config.get("vocab_size")
    else:
        official = False
        backbone = getattr(model_config, "vision_backbone", None)
        model_vocab = getattr(getattr(model_config, "text_config", None), "vocab_size", None)
    if model_vocab is None:
        raise InvalidInputError("the model config has no vocab_size (text_config.vocab_size or vocab_size)")
    model_vocab = int(model_vocab)

    if official or backbone in BACKBONES:
        base = LLAMA3_BASE_VOCAB_SIZE if tokenizer is None else int(tokenizer.vocab_size)
        if base > model_vocab:
            raise InvalidInputError(
                f"Magma-8B action ids end at the tokenizer's base vocabulary ({base}), beyond the model's {model_vocab} ids; "
                "pass the checkpoint's own tokenizer"
            )
        return magma_8b_convention(base)
    if tokenizer is not None and len(tokenizer) != model_vocab:
        raise InvalidInputError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {model_vocab}")
    return magma_tiny_convention(model_vocab)


# ---------------------------------------------------------------------- Magma-8B's normalisation


@dataclass(eq=False)
class MaskedQ99Stats:
    """One dataset's action statistics as Magma-8B uses them (an entry of its dataset_statistics.json).

    Normalise (training, OpenVLA's BOUNDS_Q99): where ``mask`` is True,
    ``clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)``; elsewhere (the gripper in Open-X: an
    absolute command, 1 = open, 0 = closed) the raw value; dimensions with min == max become 0.
    Unnormalise (Magma's SimplerEnv/LIBERO agents): where ``mask``, ``(x + 1) / 2 (q99 - q01) + q01``;
    elsewhere the value as decoded. Note this project's own gripper is 0 = open, 1 = closed.
    """

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.q01 = _finite_array(self.q01, "q01", ndim=1)
        self.q99 = _finite_array(self.q99, "q99", ndim=1)
        dim = self.q01.shape[0]
        if self.q99.shape != (dim,):
            raise InvalidInputError(f"q01 has {dim} values but q99 has shape {self.q99.shape}")
        if self.mask is None:
            self.mask = np.ones(dim, dtype=bool)  # Magma's default: normalise every dimension
        else:
            mask = np.asarray(self.mask)
            if mask.shape != (dim,) or mask.dtype != bool:
                raise InvalidInputError(f"mask must be {dim} booleans, got {mask.tolist()!r}")
            self.mask = mask
        for name in ("min", "max"):
            if getattr(self, name) is not None:
                array = _finite_array(getattr(self, name), name, ndim=1)
                if array.shape != (dim,):
                    raise InvalidInputError(f"{name} must have {dim} values, got shape {array.shape}")
                setattr(self, name, array)

    @classmethod
    def from_dict(cls, data: Mapping) -> "MaskedQ99Stats":
        """From ``stats[dataset]`` or ``stats[dataset]["action"]`` of a dataset_statistics.json."""
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"dataset statistics must be a mapping, got {type(data).__name__}")
        if isinstance(data.get("action"), Mapping):
            data = data["action"]
        missing = [key for key in ("q01", "q99") if key not in data]
        if missing:
            raise InvalidInputError(f"dataset statistics lack {', '.join(missing)}")
        return cls(data["q01"], data["q99"], data.get("mask"), data.get("min"), data.get("max"))

    def normalize(self, actions) -> np.ndarray:
        """Raw actions (..., dim) -> values for `ActionTokenConvention.encode`."""
        actions = self._actions(actions, "actions")
        scaled = np.clip(2.0 * (actions - self.q01) / (self.q99 - self.q01 + 1e-8) - 1.0, -1.0, 1.0)
        out = np.where(self.mask, scaled, actions)
        if self.min is not None and self.max is not None:
            out = np.where(self.min == self.max, 0.0, out)
        return out

    def unnormalize(self, normalised) -> np.ndarray:
        """Decoded values (..., dim) -> actions in the dataset's units."""
        normalised = self._actions(normalised, "normalised actions")
        return np.where(self.mask, 0.5 * (normalised + 1.0) * (self.q99 - self.q01) + self.q01, normalised)

    def _actions(self, value, what: str) -> np.ndarray:
        array = _finite_array(value, what)
        if array.ndim == 0 or array.shape[-1] != self.q01.shape[0]:
            raise InvalidInputError(f"{what} must have shape (..., {self.q01.shape[0]}), got {array.shape}")
        return array


def _finite_array(value, what: str = "normalised actions", ndim: int | None = None) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be numeric ({exc})") from exc
    if ndim is not None and array.ndim != ndim:
        raise InvalidInputError(f"{what} must be a {ndim}-D array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{what} contain NaN or inf")
    return array


__all__ = [
    "ActionTokenConvention",
    "MaskedQ99Stats",
    "convention_for_config",
    "convention_by_name",
    "magma_tiny_convention",
    "magma_8b_convention",
    "MAGMA_TINY",
    "MAGMA_8B",
    "PRESETS",
    "UNIFORM_BINS",
    "LINSPACE_DIGITIZE",
    "WHOLE_VOCAB_END",
    "BASE_VOCAB_END",
    "LLAMA3_BASE_VOCAB_SIZE",
]

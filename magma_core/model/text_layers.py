"""A shallower copy of a Magma model: some of its text decoder layers kept, in order (a student to fine-tune)."""
from __future__ import annotations

import copy
import re
from collections.abc import Sequence

from magma_core.errors import InvalidInputError

_LAYER_KEY = re.compile(r"^(language_model\.model\.layers\.)(\d+)(\..+)$")


def keep_text_layers(model, indices: Sequence[int]):
    """A new `MagmaForConditionalGeneration` holding `model`'s text layers `indices` (distinct, increasing) as its
    layers 0..len-1 and every other weight (vision tower, projector, embeddings, final norm, lm_head) as it is.

    A transformer's residual stream lets a subset of its layers still compute something close to the whole; a short
    fine-tune then recovers most of the rest. Decoding cost scales with the layers kept.
    """
    from magma_core.model.modeling_magma import MagmaForConditionalGeneration

    total = int(model.config.text_config.num_hidden_layers)
    wanted = [int(i) for i in indices]
    if not wanted or wanted != sorted(set(wanted)) or wanted[0] < 0 or wanted[-1] >= total:
        raise InvalidInputError(f"text layers to keep must be distinct, increasing indices in [0, {total}), got {list(indices)}")
    config = copy.deepcopy(model.config)
    config.text_config.num_hidden_layers = len(wanted)
    layer_types = getattr(config.text_config, "layer_types", None)
    if layer_types is not None:
        config.text_config.layer_types = [layer_types[i] for i in wanted]
    new_index = {old: new for new, old in enumerate(wanted)}
    state = {}
    for key, tensor in model.state_dict().items():
        match = _LAYER_KEY.match(key)
        if match is None:
            state[key] = tensor
        elif int(match.group(2)) in new_index:
            state[f"{match.group(1)}{new_index[int(match.group(2))]}{match.group(3)}"] = tensor
    student = MagmaForConditionalGeneration(config).to(next(model.parameters()).dtype)
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:  # a layout this function does not know: refuse rather than train random weights
        raise InvalidInputError(f"could not map the kept layers' weights: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return student.to(next(model.parameters()).device).train(model.training)


__all__ = ["keep_text_layers"]

"""Number-aware initialisation of the token embeddings and the output head of a freshly built model.

Traces are numbers (grid cells 0..255, depth bins) and every number is one token of the tiny
vocabulary. Randomly initialised, "117" and "118" are as unrelated as "117" and "cube": the model
must discover the order of 256 values from data before it can interpolate between a gripper mark
and an object mark. Here the rows of number tokens start as Fourier features of their value
(sin/cos of value * frequency, a few octaves), scaled to the layer's own init std, so nearby values
start with nearby embeddings and moving a point along a line is close to linear in embedding space
(as in numeric embeddings such as xVal or Fourier number embeddings). Training updates them freely.
"""
from __future__ import annotations

import math
import re

import torch

from magma_core.errors import InvalidInputError

_NUMBER = re.compile(r"^[ ]?(0|[1-9][0-9]{0,2})$")


def number_token_values(tokenizer, max_value: int = 255) -> dict[int, int]:
    """{token id: value} for tokens whose text is a decimal integer 0..max_value (with an optional leading space)."""
    values = {}
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
        match = _NUMBER.match(text)
        if match and int(match[1]) <= max_value and token_id not in set(getattr(tokenizer, "all_special_ids", [])):
            values[token_id] = int(match[1])
    return values


def fourier_number_features(values: torch.Tensor, dim: int, max_value: int = 255) -> torch.Tensor:
    """(N,) integer values -> (N, dim) unit-variance sin/cos features over octaves from 1 to max_value + 1 periods."""
    if dim < 2:
        raise InvalidInputError(f"embedding dim must be >= 2, got {dim}")
    n_freq = dim // 2
    # Periods from 2 (finest) to 4 * (max_value + 1) (coarsest, monotone over the range), log-spaced.
    periods = torch.logspace(math.log10(2.0), math.log10(4.0 * (max_value + 1)), n_freq, dtype=torch.float64)
    angles = values.to(torch.float64)[:, None] * (2 * math.pi / periods)[None, :]
    features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if features.shape[1] < dim:
        features = torch.cat([features, torch.zeros(len(values), dim - features.shape[1], dtype=torch.float64)], dim=1)
    return features * math.sqrt(2.0)  # sin^2 + cos^2 = 1 per pair: unit variance per coordinate


@torch.no_grad()
def init_number_embeddings(model, tokenizer, max_value: int = 255) -> int:
    """Give the number tokens' input embeddings and output-head rows Fourier features; returns how many tokens.

    The scale matches each matrix's current rows (their standard deviation), so the rest of the
    initialisation keeps its balance.
    """
    values = number_token_values(tokenizer, max_value)
    if not values:
        raise InvalidInputError("the tokenizer has no number tokens 0..255; nothing to initialise")
    ids = torch.tensor(sorted(values), dtype=torch.long)
    numbers = torch.tensor([values[i] for i in ids.tolist()], dtype=torch.long)
    for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = layer.weight
        if weight.shape[0] <= int(ids.max()):
            raise InvalidInputError(f"the model's vocabulary ({weight.shape[0]}) is smaller than the tokenizer's number ids")
        std = float(weight.float().std())
        features = fourier_number_features(numbers, weight.shape[1], max_value) * std
        weight[ids] = features.to(weight.dtype).to(weight.device)
    return len(ids)


__all__ = ["number_token_values", "fourier_number_features", "init_number_embeddings"]

"""The Magma model in Hugging Face conventions: config, modeling, processor, tiny tokenizer, constrained decoding.

Imports are lazy so ``import magma_core.model`` stays cheap for code that never builds a model:

    from magma_core.model import MagmaConfig, MagmaForConditionalGeneration, MagmaProcessor
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "MagmaConfig": "configuration_magma",
    "MagmaForConditionalGeneration": "modeling_magma",
    "MagmaImageProcessor": "image_processing_magma",
    "MagmaProcessor": "processing_magma",
    "Example": "processing_magma",
    "UnparsableOutputError": "processing_magma",
    "train_tiny_tokenizer": "tokenizer_tiny",
    "TraceGrammar": "trace_grammar",
    "TraceLogitsProcessor": "constrained",
    "ActionLogitsProcessor": "constrained",
    "TraceVocabulary": "constrained",
    "generate_trace": "generation",
    "generate_actions": "generation",
    "greedy_trace": "generation",
    "CheckpointError": "safe_loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'magma_core.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"magma_core.model.{module}"), name)
    globals()[name] = value
    return value

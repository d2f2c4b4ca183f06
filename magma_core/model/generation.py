"""One call from a processed batch to traces or actions, with the matching constrained decoding."""
from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessorList

from magma_core.codecs.action_tokenizer import ACTION_DIM, ActionTokenizer
from magma_core.codecs.trace_text import ParseResult
from magma_core.model.constrained import ActionLogitsProcessor, TraceLogitsProcessor
from magma_core.model.fast_decode import PromptCache, greedy_trace_ids, score_continuations_cached
from magma_core.model.trace_grammar import TraceGrammar


def generate_ids(model, batch: dict, logits_processor, max_new_tokens: int, **generate_kwargs) -> torch.Tensor:
    """Only the new token ids (batch, <= max_new_tokens) of `model.generate` on a processor batch."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            logits_processor=LogitsProcessorList(logits_processor),
            **generate_kwargs,
        )
    return out[:, batch["input_ids"].shape[1] :]


def generate_trace(
    model, processor, batch: dict, grammar: TraceGrammar | None = None, max_new_tokens: int = 256, **generate_kwargs
) -> tuple[list[ParseResult], torch.Tensor]:
    """Trace-of-Mark plans under the trace grammar: (one ParseResult per row, the new ids)."""
    grammar = grammar or TraceGrammar()
    processor_ = TraceLogitsProcessor(processor.trace_vocabulary, grammar, batch["input_ids"].shape[1], max_new_tokens)
    ids = generate_ids(model, batch, [processor_], max_new_tokens, **generate_kwargs)
    options = _parse_options(grammar)
    return [processor.decode_trace(row, **options) for row in ids], ids


def greedy_trace(
    model, processor, batch: dict, grammar: TraceGrammar | None = None, max_new_tokens: int = 256, forced_prefix: str = "",
    mark_positions: dict[int, tuple[int, ...]] | None = None, moving_mark: int | None = None,
    prompt_cache: PromptCache | None = None, gripper_flag: int | None = None,
    step_hints: dict[int, list[tuple[int, ...]]] | None = None,
) -> tuple[list[ParseResult], torch.Tensor]:
    """Greedy trace of ONE prompt, the model run only where the grammar branches (see `fast_decode`).

    Same tokens as ``generate_trace(..., do_sample=False)`` with an empty `forced_prefix`, in far
    fewer forward calls. `forced_prefix` is answer text the caller already knows (e.g.
    ``"<trace_start>Mark 1: [(114,74,59,"``): it is written after the prompt, must be accepted by
    the grammar (else InvalidInputError) and counts against `max_new_tokens`. Returns
    ([ParseResult], ids (1, n)): the answer's ids, prefix included, ending with end-of-sequence.
    `mark_positions` (mark id -> listed (x, y[, depth])) and `moving_mark` draft listed positions for
    verification: fewer calls, the same tokens. `prompt_cache` (from `goal_line_scores(..., room=...)`): go on
    from the model state after the start of this prompt instead of running it again. `gripper_flag` (the hand's
    state, 0 open / 1 closed) drafts the steps' gripper flags, and `step_hints` (mark id -> each step's values, e.g.
    the previous frame's plan) the numbers of the steps no listed position covers: fewer calls, the same tokens.
    """
    grammar = grammar or TraceGrammar()
    ids = greedy_trace_ids(model, processor, batch, grammar, max_new_tokens, forced_prefix,
                           mark_positions=mark_positions, moving_mark=moving_mark, prompt_cache=prompt_cache,
                           gripper_flag=gripper_flag, step_hints=step_hints)
    return [processor.decode_trace(ids[0], **_parse_options(grammar))], ids


def goal_line_scores(model, processor, batch: dict, descriptions, room: int = 0,
                     lookahead: tuple[int, list[int]] | None = None) -> tuple[list[float], list[list[int]], PromptCache]:
    """Log-likelihood of each description's goal line ("Goal: red block 4cm\n", `prompts.goal_header`) after ONE
    prompt, the prompt run once; returns (scores, each line's token ids, a `PromptCache` with `room` tokens to
    spare, for `greedy_trace` to decode on from without running the prompt again). `lookahead` (index, tokens):
    the tokens expected after that description's line, computed in the same call (see
    `score_continuations_cached`)."""
    from magma_core.prompts import goal_header

    lines = [processor.tokenizer.encode(goal_header(text), add_special_tokens=False) for text in descriptions]
    scores, cache = score_continuations_cached(model, batch, lines, room=room, lookahead=lookahead)
    return scores, lines, cache


def generate_actions(
    model, processor, batch: dict, action_tokenizer: ActionTokenizer, n_actions: int = 1, **generate_kwargs
) -> np.ndarray:
    """Actions (batch, n_actions, 7) in dataset units, written as exactly 7 * n_actions action tokens each."""
    prompt_length = batch["input_ids"].shape[1]
    constraint = ActionLogitsProcessor(processor.action_id_range, processor.eos_token_id, prompt_length, n_actions)
    ids = generate_ids(model, batch, [constraint], ACTION_DIM * n_actions + 1, **generate_kwargs)
    return np.stack([processor.decode_actions(row, action_tokenizer, n_actions) for row in ids])


def _parse_options(grammar: TraceGrammar) -> dict:
    """The `parse_traces` options that check decoded text against the rules `grammar` decoded it under."""
    return {"expect_25d": grammar.expect_25d, "expect_steps": grammar.expect_steps, "grid": grammar.grid,
            "n_depth_bins": grammar.n_depth_bins, "max_marks": grammar.max_marks, "max_steps": grammar.max_steps}


__all__ = ["generate_ids", "generate_trace", "greedy_trace", "goal_line_scores", "generate_actions"]

"""Constrained decoding: logits processors so a model can only write a parsable trace or exactly one action.

- `ActionLogitsProcessor`: the first ``7 * n_actions`` new tokens come from the 256 action ids,
  then end-of-sequence.
- `TraceLogitsProcessor`: only text the `TraceGrammar` accepts, then the end marker, then
  end-of-sequence, closed within the token budget (``max_new_tokens``) so a trace is never cut.

Byte-level BPE merges characters, so each vocabulary entry's text is computed once
(`token_texts`) and a token is allowed only if the grammar accepts all its characters from the
current state. Tokens are walked through a character trie restricted to the grammar's alphabet,
so the work per step follows the few valid continuations, not the vocabulary size; results are
cached per grammar state. Both processors support greedy search and sampling (num_beams=1).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace
from functools import lru_cache

import torch
from transformers import LogitsProcessor

from magma_core.codecs.action_tokenizer import ACTION_DIM
from magma_core.codecs.trace_text import TRACE_END, TRACE_START
from magma_core.errors import InvalidInputError
from magma_core.model.trace_grammar import MARK_PREFIX, AFTER_ID, Phase, TraceGrammar, TraceState

_GRAMMAR_CHARS = frozenset("0123456789(),[]:\n " + MARK_PREFIX + AFTER_ID)
_CACHE_SIZE = 16384  # grammar states kept with their allowed tokens, shared by every generation
_DONE = TraceState(Phase.DONE)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of byte-level BPE's byte -> printable character table (GPT-2's convention)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


def token_texts(tokenizer) -> list[str | None]:
    """Text of every id as it would appear in decoded output; None for special/added tokens and non-text bytes."""
    size = len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", [])) | set(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    byte_level = type(decoder).__name__ == "ByteLevel"
    table = _byte_decoder()
    texts: list[str | None] = []
    for token_id, piece in enumerate(pieces):
        if token_id in special or piece is None:
            texts.append(None)
            continue
        if byte_level:
            try:
                raw = bytes(table[ch] for ch in piece)
                texts.append(raw.decode("utf-8"))
            except (KeyError, UnicodeDecodeError):
                texts.append(None)  # part of a multi-byte character: never valid trace text
        else:
            texts.append(tokenizer.decode([token_id], clean_up_tokenization_spaces=False))
    return texts


class _Trie:
    """Character trie over the tokens whose text uses only the grammar's characters."""

    def __init__(self, texts: list[str | None], alphabet: frozenset):
        self.children: list[dict[str, int]] = [{}]
        self.ends: list[list[int]] = [[]]
        for token_id, text in enumerate(texts):
            if not text or not set(text) <= alphabet:
                continue
            node = 0
            for char in text:
                nxt = self.children[node].get(char)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][char] = nxt
                    self.children.append({})
                    self.ends.append([])
                node = nxt
            self.ends[node].append(token_id)

    def walk(self, grammar: TraceGrammar, state: TraceState) -> list[tuple[int, TraceState]]:
        """Every (token id, state after it) the grammar accepts from `state`."""
        found: list[tuple[int, TraceState]] = []
        stack = [(0, state)]
        while stack:
            node, node_state = stack.pop()
            for char, child in self.children[node].items():
                nxt = grammar.step(node_state, char)
                if nxt is None:
                    continue
                found.extend((token_id, nxt) for token_id in self.ends[child])
                stack.append((child, nxt))
        return found


class TraceVocabulary:
    """What a `TraceLogitsProcessor` needs of a tokenizer, computed once and shared between generations."""

    def __init__(self, tokenizer, eos_token_id: int | None = None, markers_as_text: bool | None = None):
        """`markers_as_text`: spell <trace_start>/<trace_end> out; by default only when they are not single tokens."""
        self.size = len(tokenizer)
        self.eos_token_id = int(eos_token_id if eos_token_id is not None else tokenizer.eos_token_id)
        self.trace_start_id = _single_token_id(tokenizer, TRACE_START)
        self.trace_end_id = _single_token_id(tokenizer, TRACE_END)
        if markers_as_text is None:
            markers_as_text = self.trace_start_id is None or self.trace_end_id is None
        self.markers_as_text = bool(markers_as_text)
        texts = token_texts(tokenizer)
        alphabet = _GRAMMAR_CHARS | (frozenset(TRACE_START + TRACE_END) if self.markers_as_text else frozenset())
        singles = {text for text in texts if text is not None and len(text) == 1}
        missing = sorted(alphabet - singles)
        if missing:
            raise InvalidInputError(f"the tokenizer has no single-character token for {missing!r}; constrained decoding needs them")
        self.trie = _Trie(texts, alphabet)
        self._cache: OrderedDict[tuple[TraceGrammar, TraceState], tuple] = OrderedDict()
        # Anchors act only on the digits of a mark's first step. Unless one token can open a step and write a digit
        # ("(1"), the tokens allowed from a state that is not in such a step are the same with or without anchors.
        self._anchors_stay_local = not any(text and re.search(r"\(\d", text) for text in texts)

    def cache_grammar(self, grammar: TraceGrammar, state: TraceState) -> TraceGrammar:
        """The grammar that gives `state` the same options as `grammar` and is shared by most frames: without its
        anchors (they change with every frame's listed positions) where they cannot act from `state`, and with
        only the anchor of the mark being written where they can (no token reaches another mark's first step)."""
        if grammar.anchors and self._anchors_stay_local:
            if not grammar.anchors_act_on(state):
                return grammar.without_anchors()
            return grammar.only_anchor(state.mark_id)
        return grammar

    def options(self, grammar: TraceGrammar, state: TraceState) -> tuple[torch.Tensor, torch.Tensor, dict[int, TraceState]]:
        """Tokens the grammar accepts from `state`: (ids, tokens each leaves to finish, id -> next state); cached."""
        grammar = self.cache_grammar(grammar, state)
        key = (grammar, grammar.cache_state(state))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        if state.phase in (Phase.DONE, Phase.END):
            options = [(self.eos_token_id, _DONE)]
        elif state.phase == Phase.START:
            options = [(self.trace_start_id, grammar.after_start_marker(state))]
        else:
            options = self.trie.walk(grammar, state)
            closed = grammar.after_end_marker(state) if state.phase == Phase.AFTER_MARK else None
            if closed is not None and not grammar.markers_as_text:  # None: the grammar wants another mark first
                options.append((self.trace_end_id, closed))
        ids = torch.tensor([token for token, _ in options], dtype=torch.long)
        costs = torch.tensor(_finishing_costs(grammar, [nxt for _, nxt in options]), dtype=torch.long)
        entry = (ids, costs, dict(options))
        self._cache[key] = entry
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return entry


def _finishing_costs(grammar: TraceGrammar, states: list[TraceState]) -> list[int]:
    """`grammar.min_tokens_to_finish` of each state. Inside a number field the cost does not depend on the digits'
    value (one character per field is counted, whatever is pinned), so the hundreds of number tokens a field
    allows share a handful of computations."""
    known: dict[TraceState, int] = {}
    costs = []
    for state in states:
        key = state._replace(value=0) if state.phase == Phase.FIELD else state
        cost = known.get(key)
        if cost is None:
            cost = known[key] = grammar.min_tokens_to_finish(state)
        costs.append(cost)
    return costs


class TraceLogitsProcessor(LogitsProcessor):
    """Masks every token that would break the trace grammar or not leave room to close the trace in time.

    Build one per `generate()` call with the call's `max_new_tokens` and prompt length.
    """

    def __init__(self, vocab: TraceVocabulary, grammar: TraceGrammar, prompt_length: int, max_new_tokens: int):
        if grammar.markers_as_text != vocab.markers_as_text:
            grammar = replace(grammar, markers_as_text=vocab.markers_as_text)
        self.vocab, self.grammar = vocab, grammar
        self.prompt_length = int(prompt_length)
        self.max_new_tokens = int(max_new_tokens)
        self._states: list[TraceState] | None = None
        self._next: list[dict[int, TraceState]] = []
        fewest = grammar.min_tokens_to_finish(grammar.initial_state())
        if self.max_new_tokens < fewest:
            raise InvalidInputError(f"max_new_tokens={max_new_tokens} is too small for a trace; it needs at least {fewest}")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids.shape[1] - self.prompt_length
        if generated < 0:
            raise InvalidInputError(f"prompt_length {self.prompt_length} is longer than the sequence ({input_ids.shape[1]})")
        if self._states is None:
            self._start(input_ids)
        elif len(self._states) != input_ids.shape[0]:
            raise InvalidInputError("the batch changed size during generation; constrained decoding supports num_beams=1 only")
        else:
            self._advance(input_ids[:, -1].tolist())
        budget = self.max_new_tokens - generated - 1  # tokens left after this one
        rows, cols = [], []
        self._next = []
        for row, state in enumerate(self._states):
            ids, next_states = self._allowed(state, budget)
            self._next.append(next_states)
            rows.append(torch.full_like(ids, row))
            cols.append(ids)
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.cat(rows), torch.cat(cols)] = True
        return scores.masked_fill(~keep, float("-inf"))

    # ------------------------------------------------------------------ per row

    def _start(self, input_ids: torch.LongTensor) -> None:
        last = input_ids[:, -1].tolist()
        start_id = self.vocab.trace_start_id
        self._states = [self.grammar.initial_state(start_marker_done=start_id is not None and tok == start_id) for tok in last]

    def _advance(self, last_tokens: list[int]) -> None:
        for row, token in enumerate(last_tokens):
            if self._states[row].phase == Phase.DONE:
                continue
            # A token we did not allow (another processor forced it) ends this row; its output will not parse.
            self._states[row] = self._next[row].get(token, _DONE)

    def _allowed(self, state: TraceState, budget: int) -> tuple[torch.Tensor, dict[int, TraceState]]:
        """Allowed ids (tensor) and the state each leads to, for tokens that leave `budget` enough to finish."""
        ids, costs, next_states = self.vocab.options(self.grammar, state)
        if costs.numel() and int(costs.max()) > budget:
            keep = costs <= budget
            ids = ids[keep]
            if ids.numel() == 0:  # cannot happen while the budget check holds; never leave a row without a token
                return torch.tensor([self.vocab.eos_token_id]), {self.vocab.eos_token_id: _DONE}
        return ids, next_states


class ActionLogitsProcessor(LogitsProcessor):
    """Exactly ``7 * n_actions`` action tokens (ids [first_id, end_id)), then end-of-sequence only."""

    def __init__(self, action_id_range: tuple[int, int], eos_token_id: int, prompt_length: int, n_actions: int = 1):
        first, end = (int(v) for v in action_id_range)
        if not 0 <= first < end:
            raise InvalidInputError(f"action id range must be [first, end) with 0 <= first < end, got {action_id_range}")
        if not isinstance(n_actions, int) or n_actions < 1:
            raise InvalidInputError(f"n_actions must be a positive int, got {n_actions!r}")
        self.first, self.end = first, end
        self.eos_token_id = int(eos_token_id)
        self.prompt_length = int(prompt_length)
        self.n_tokens = ACTION_DIM * n_actions

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids.shape[1] - self.prompt_length
        mask = torch.ones_like(scores, dtype=torch.bool)
        if generated < self.n_tokens:
            mask[:, self.first : self.end] = False
        else:
            mask[:, self.eos_token_id] = False
        return scores.masked_fill(mask, float("-inf"))


def _single_token_id(tokenizer, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


__all__ = ["TraceLogitsProcessor", "ActionLogitsProcessor", "TraceVocabulary", "token_texts"]

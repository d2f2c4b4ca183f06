"""Greedy Trace-of-Mark decoding that runs the model only where the trace grammar leaves a choice.

`generate_trace` (transformers' ``generate`` + `TraceLogitsProcessor`) runs one forward call per
token: about 32 for a one-mark, three-step 2.5D trace. Most of those tokens are fixed by the
grammar: the punctuation between numbers, ``Mark 1: [(`` when one mark id is allowed, ``]`` and
the end marker once the step count is reached. `greedy_trace` writes such text itself
("jump-forward") and asks the model only at the branching points (the numbers):

- The characters the grammar forces from a state, plus the ``,`` / ``)`` / ``:`` that would end a
  number just written (a guess), are tokenized with the processor's tokenizer as training
  tokenized answers. Its pre-tokenizer isolates runs of digits, so numbers and punctuation
  never share a token and the run's tokens are the ones the whole answer holds in context.
- That draft is fed in ONE forward call together with the token chosen last; the logits at every
  drafted position verify it: a drafted token stays only if it is the grammar-masked argmax
  there, exactly what greedy ``generate`` picks. At the first mismatch the model's own choice
  replaces the rest of the draft and the KV cache is cropped back. So the output is
  token-for-token the greedy one whatever the weights (up to floating-point ties), and a model
  trained on canonical answers accepts nearly every draft.
- A token that is the only one the grammar (and the token budget) allows needs no logits: it is
  appended without verification, and a draft that ends with end-of-sequence after such tokens
  needs no further call at all.

- Position lookups (`mark_positions`: mark id -> the (x, y, depth) its prompt line lists): where a
  mark's step begins, its listed position is drafted too (for every step of a mark other than
  `moving_mark`, for the first step of that one), verified like any draft. A goal that does not
  move, or a trace that starts where its mark is, then costs one call per step instead of four.
- Step hints (`step_hints`: mark id -> the values of each of its steps, e.g. the previous frame's plan): where
  no listed position applies, a step's numbers are drafted from the hint for that step. One hinted number is
  probed first; once one is right the rest are drafted whole, once one is wrong no more are (a moving plan's
  long wrong drafts cost more than they save). A still plan then costs a call or two instead of one per number.

Each forward call after the prefill therefore starts from a token the model chose among several
(a branching token), so calls <= branching tokens + 1; for a 3-step 2.5D trace of one forced
mark id that is 13 calls instead of ~32, and fewer with a `forced_prefix` (text the caller
already knows, e.g. the gripper's current cell and depth bin).

Who runs the model (`backend`): on the CPU a call through transformers costs milliseconds of
Python for a small decoder, so an eval-mode Llama text model is run by `LeanLlamaDecoder` (the
same arithmetic over the same weights, its own KV cache); anything else, or a model whose
forward is wrapped or hooked, goes through the model's forward as before. Both sit behind the
same small runner interface (feed tokens, get logits rows, crop), so the loop is one.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.modules.module as nn_hooks

from magma_core.codecs.trace_text import TRACE_START
from magma_core.errors import InvalidInputError
from magma_core.model.lean_decoder import LeanLlamaDecoder, merged_input_embeddings
from magma_core.model.trace_grammar import Phase, TraceGrammar, TraceState

_CACHE_SIZE = 16384  # grammar states kept with their options and forced runs, per vocabulary
BACKENDS = ("auto", "lean", "transformers")  # who runs the model: see greedy_trace_ids
_DONE = TraceState(Phase.DONE)
_NUMBER_PHASES = (Phase.FIELD, Phase.MARK_ID)
_FLAG_FIELD = 3  # x, y, depth bin, gripper flag: the fourth field of a 2.5D step

# Per-vocabulary caches (the vocabulary lives as long as its processor): (grammar, state) -> work.
_CACHES: "weakref.WeakKeyDictionary[object, dict[str, OrderedDict]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Options:
    """Tokens the grammar accepts from one state, sorted by id (argmax ties break like a full-vocabulary argmax)."""

    ids: torch.Tensor
    costs: dict[int, int]  # tokens each leaves to finish the trace
    max_cost: int
    next_states: dict[int, TraceState]


@dataclass
class _Draft:
    """Tokens written without the model: `certain` ones are the only choice, the others need verifying."""

    tokens: list[int] = field(default_factory=list)
    states: list[TraceState] = field(default_factory=list)  # the state before each token
    certain: list[bool] = field(default_factory=list)
    hinted: list[bool] = field(default_factory=list)  # drafted from a step hint
    end_state: TraceState = _DONE

    def add(self, token: int, state: TraceState, certain: bool, hinted: bool = False) -> None:
        self.tokens.append(token)
        self.states.append(state)
        self.certain.append(certain)
        self.hinted.append(hinted)


class _TraceDecoder:
    """Grammar bookkeeping for one greedy decode: allowed tokens under the budget and the drafts."""

    def __init__(self, processor, grammar: TraceGrammar, max_new_tokens: int,
                 mark_positions: dict[int, tuple[int, ...]] | None = None, moving_mark: int | None = None,
                 gripper_flag: int | None = None, step_hints: dict[int, list[tuple[int, ...]]] | None = None):
        self.mark_positions = {int(k): tuple(int(v) for v in pos) for k, pos in (mark_positions or {}).items()}
        self.step_hints = _checked_hints(step_hints)
        # How far hints are drafted: one number first ("probe"); all of them once one was right ("trusted"); none
        # once one was wrong ("off": the plan moved, and long drafts that fail cost more than they save).
        self.hint_mode = "probe"
        self.moving_mark = moving_mark
        if gripper_flag not in (None, 0, 1):
            raise InvalidInputError(f"gripper_flag must be 0, 1 or None, got {gripper_flag!r}")
        # The gripper flag drafted at each step (verified): the last one written, at first the hand's state.
        self.flag_guess = gripper_flag
        self.vocab = processor.trace_vocabulary
        self.tokenizer = processor.tokenizer
        if grammar.markers_as_text != self.vocab.markers_as_text:
            grammar = replace(grammar, markers_as_text=self.vocab.markers_as_text)
        self.grammar = grammar
        self.max_new_tokens = int(max_new_tokens)
        self.eos = self.vocab.eos_token_id
        # Every character some grammar-text token starts with: the grammar's whole alphabet.
        self.alphabet = tuple(self.vocab.trie.children[0].keys())
        caches = _CACHES.get(self.vocab)
        if caches is None:
            caches = {"options": OrderedDict(), "forced": OrderedDict(), "encode": OrderedDict()}
            _CACHES[self.vocab] = caches
        self._options_cache, self._forced_cache = caches["options"], caches["forced"]
        self._encode_cache = caches["encode"]

    # ------------------------------------------------------------------ allowed tokens

    def options(self, state: TraceState) -> _Options:
        # Shared across frames where anchors cannot act, and across the values of a finished number.
        key = (self.vocab.cache_grammar(self.grammar, state), self.grammar.cache_state(state))
        found = self._options_cache.get(key)
        if found is not None:
            self._options_cache.move_to_end(key)
            return found
        ids, costs, next_states = self.vocab.options(self.grammar, state)
        order = torch.argsort(ids)
        ids, costs = ids[order], costs[order]
        found = _Options(ids, dict(zip(ids.tolist(), costs.tolist())), int(costs.max()) if costs.numel() else 0, next_states)
        _remember(self._options_cache, key, found)
        return found

    def allowed(self, state: TraceState, generated: int) -> tuple[torch.Tensor, dict[int, TraceState]]:
        """Ids the masked argmax may pick after `generated` answer tokens (as `TraceLogitsProcessor`), and their states."""
        opts = self.options(state)
        budget = self.max_new_tokens - generated - 1
        if opts.max_cost <= budget:
            return opts.ids, opts.next_states
        ids = torch.tensor([t for t in opts.ids.tolist() if opts.costs[t] <= budget], dtype=torch.long)
        if ids.numel() == 0:  # unreachable while the budget checks hold; never leave the decode without a token
            return torch.tensor([self.eos]), {self.eos: _DONE}
        return ids, opts.next_states

    def admits(self, state: TraceState, generated: int, token: int) -> bool:
        opts = self.options(state)
        cost = opts.costs.get(token)
        return cost is not None and cost <= self.max_new_tokens - generated - 1

    def encode(self, text: str) -> tuple[int, ...]:
        """Canonical tokens of answer text; markers stay text where the vocabulary spells them out. Cached: drafts
        spell the same few numbers again and again."""
        found = self._encode_cache.get(text)
        if found is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=self.vocab.markers_as_text)
            found = tuple(int(i) for i in ids)
            _remember(self._encode_cache, text, found)
        return found

    # ------------------------------------------------------------------ drafts

    def forced_tokens(self, state: TraceState) -> tuple[int, ...]:
        """Canonical tokens of the text the grammar forces from `state` (number ends guessed); cached.

        A walk no anchor acted on is the same for every grammar that differs only in its anchors' values (where
        anchors can act depends on which marks have them and how many fields): it is cached under that
        anchor-free key, so frames share it. A walk through anchored fields depends on those marks' anchors
        alone: the anchor-free key then names them, and the text is cached under their values too."""
        grammar = self.grammar
        shared_key = (grammar.without_anchors(), grammar.anchor_shape, state)
        found = self._forced_cache.get(shared_key)
        if isinstance(found, frozenset):  # the walk depends on these marks' anchors: key by their values too
            anchors = dict(grammar.anchors)
            shared_key = (*shared_key, tuple((m, anchors.get(m)) for m in sorted(found)))
            found = self._forced_cache.get(shared_key)
        if found is not None:
            self._forced_cache.move_to_end(shared_key)
            return found
        text, acted = self._forced_text(state)
        found = self.encode(text) if text else ()
        if acted:
            _remember(self._forced_cache, shared_key[:3], frozenset(acted))
            anchors = dict(grammar.anchors)
            shared_key = (*shared_key[:3], tuple((m, anchors.get(m)) for m in sorted(acted)))
        _remember(self._forced_cache, shared_key, found)
        return found

    def _forced_text(self, state: TraceState) -> tuple[str, set[int]]:
        """(the forced text from `state`, the marks whose anchors acted on a state of the walk)."""
        chars: list[str] = []
        acted: set[int] = set()
        while state.phase not in (Phase.START, Phase.END, Phase.DONE):
            if self.grammar.anchors_act_on(state):
                acted.add(state.mark_id)
            if state.phase == Phase.AFTER_MARK and not self.grammar.markers_as_text:
                break  # "\n" (another mark) or the end marker token: a real choice
            steps = [(char, nxt) for char in self.alphabet if (nxt := self.grammar.step(state, char)) is not None]
            if len(steps) != 1 and state.phase in _NUMBER_PHASES and state.digits:
                # Guess that the number just written is complete: its one terminator, verified by the model.
                steps = [(char, nxt) for char, nxt in steps if not char.isdigit()]
            if len(steps) != 1:
                break
            char, state = steps[0]
            chars.append(char)
        return "".join(chars), acted

    def draft(self, state: TraceState, generated: int) -> _Draft:
        """Tokens from `state` up to the next real choice: forced ones (certain) and the canonical run (to verify)."""
        draft = _Draft()
        while generated + len(draft.tokens) < self.max_new_tokens and state.phase != Phase.DONE:
            ids, next_states = self.allowed(state, generated + len(draft.tokens))
            if ids.numel() == 1:
                token = int(ids[0])
                draft.add(token, state, True)
                state = next_states.get(token, _DONE)
                if token == self.eos:
                    break
                continue
            progressed = False
            looked_up, hinted = self.lookup_tokens(state)
            if hinted and self.hint_mode == "probe" and any(draft.hinted):
                break  # one hinted number per draft until a hint has proved right
            for token in looked_up or self.forced_tokens(state):
                if not self.admits(state, generated + len(draft.tokens), token):
                    break  # the canonical split is not writable here (budget): let the model choose
                ids, next_states = self.allowed(state, generated + len(draft.tokens))
                draft.add(token, state, ids.numel() == 1, hinted)
                state = next_states[token]
                progressed = True
            if not progressed:
                break
        draft.end_state = state
        return draft

    def lookup_tokens(self, state: TraceState) -> tuple[tuple[int, ...], bool]:
        """(tokens to verify, whether they come from a step hint): at the start of a step, the mark's listed position
        ("x,y,d,"); elsewhere in a step's numbers, the step hint's numbers from there on ("y,d," after x; one number
        while `hint_mode` is "probe"); at a 2.5D step's gripper flag, the flag guessed (`flag_guess`); else ()."""
        if state.phase == Phase.FIELD and state.field == _FLAG_FIELD and not state.digits and self.flag_guess is not None:
            return self.encode(str(self.flag_guess)), False
        if state.phase != Phase.FIELD or state.digits:
            return (), False
        position = self.mark_positions.get(state.mark_id)
        if position is not None and not (state.mark_id == self.moving_mark and state.steps > 0):
            return (self.encode("".join(f"{v}," for v in position)) if state.field == 0 else ()), False
        hint = self.step_hints.get(state.mark_id)
        if hint is None or state.steps >= len(hint) or self.hint_mode == "off":
            return (), False
        # The hinted step's numbers from this field on, up to (not including) a 2.5D step's gripper flag.
        numbers = hint[state.steps][: 3 if state.arity != 2 and len(hint[state.steps]) == 4 else 2][state.field:]
        if self.hint_mode == "probe":
            numbers = numbers[:1]
        return self.encode("".join(f"{v}," for v in numbers)), bool(numbers)

    def rows_to_verify(self, draft: _Draft, generated: int) -> list[int]:
        """Rows of logits a draft needs: after each drafted token to verify, and after the draft unless it ends the
        answer (end-of-sequence or the budget); none when all of it is forced."""
        rows = [i for i, sure in enumerate(draft.certain) if not sure]
        ends = bool(draft.tokens) and draft.tokens[-1] == self.eos
        if not ends and generated + len(draft.tokens) < self.max_new_tokens:
            rows.append(len(draft.tokens))
        return rows

    # ------------------------------------------------------------------ forced prefix

    def start(self, start_marker_done: bool, forced_prefix: str) -> tuple[TraceState, list[int]]:
        """The state after the start marker (if the prompt ends with it) and `forced_prefix`, and the prefix's ids."""
        prefix_ids = list(self.encode(forced_prefix)) if forced_prefix else []
        state = self.grammar.initial_state(start_marker_done=start_marker_done)
        return self.walk_prefix(state, prefix_ids, forced_prefix), prefix_ids

    def walk_prefix(self, state: TraceState, prefix_ids: list[int], prefix: str) -> TraceState:
        for index, token in enumerate(prefix_ids):
            if not self.admits(state, index, token):
                done = self.tokenizer.decode(prefix_ids[:index], skip_special_tokens=False)
                piece = self.tokenizer.decode([token], skip_special_tokens=False)
                raise InvalidInputError(
                    f"forced_prefix {prefix!r} is not a trace start the grammar accepts within {self.max_new_tokens} "
                    f"tokens: {piece!r} cannot follow {done!r}"
                )
            state = self.options(state).next_states[token]
        return state


def greedy_trace_ids(model, processor, batch: dict, grammar: TraceGrammar, max_new_tokens: int = 256,
                     forced_prefix: str = "", stats: dict | None = None,
                     mark_positions: dict[int, tuple[int, ...]] | None = None, moving_mark: int | None = None,
                     backend: str = "auto", prompt_cache: "PromptCache | None" = None,
                     gripper_flag: int | None = None,
                     step_hints: dict[int, list[tuple[int, ...]]] | None = None) -> torch.Tensor:
    """Answer ids (1, n): `forced_prefix`'s tokens then greedy, grammar-constrained tokens up to end-of-sequence.

    `max_new_tokens` bounds the whole answer, forced prefix included. `stats`, if given, receives
    ``forward_calls`` and ``drafted`` / ``accepted`` token counts and the ``backend`` that ran the model.
    `mark_positions` / `moving_mark`: drafts of listed positions (see the module docstring); they change
    the number of calls, never the tokens. `backend`: "lean" (`LeanLlamaDecoder`: the same Llama
    arithmetic without transformers' per-call overhead; InvalidInputError if the model does not suit
    it), "transformers" (the model's own forward and KV cache) or "auto" (lean where it applies: see
    `_model_runner`). `prompt_cache` (from `score_continuations_cached` on the start of this prompt): decoding goes
    on from the model state it holds instead of running the prompt again; it is used up. `gripper_flag` (0 open,
    1 closed: the hand's state now) is drafted as each step's gripper flag, then the last flag written is; like the
    other drafts it changes the number of calls, never the tokens. `step_hints` (mark id -> each step's values,
    e.g. the previous frame's plan) drafts the numbers of steps no listed position covers; the same again.
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(grammar, TraceGrammar):
        raise InvalidInputError(f"grammar must be a TraceGrammar, got {type(grammar).__name__}")
    if not isinstance(forced_prefix, str):
        raise InvalidInputError(f"forced_prefix must be a str, got {type(forced_prefix).__name__}")
    prompt = _single_prompt(batch)
    decoder = _TraceDecoder(processor, grammar, max_new_tokens, mark_positions, moving_mark, gripper_flag, step_hints)
    fewest = decoder.grammar.min_tokens_to_finish(decoder.grammar.initial_state())
    if decoder.max_new_tokens < fewest:
        raise InvalidInputError(f"max_new_tokens={max_new_tokens} is too small for a trace; it needs at least {fewest}")
    start_id = decoder.vocab.trace_start_id
    state, prefix_ids = decoder.start(start_id is not None and int(prompt[-1]) == start_id, forced_prefix)

    answer = list(prefix_ids)
    counts = {"forward_calls": 0, "drafted": 0, "accepted": 0}
    pending = prompt + prefix_ids  # tokens not yet in the KV cache
    if prompt_cache is not None:
        runner, seen = prompt_cache.take(prompt, extra=len(prefix_ids) + decoder.max_new_tokens)
        pending = pending[seen:]
    else:
        runner = _model_runner(model, batch, backend, capacity=len(pending) + decoder.max_new_tokens)
    with torch.inference_mode():
        while len(answer) < decoder.max_new_tokens and state.phase != Phase.DONE:
            draft = decoder.draft(state, len(answer))
            counts["drafted"] += draft.certain.count(False)
            rows = decoder.rows_to_verify(draft, len(answer))
            if not rows:  # the rest is forced: nothing left for the model to decide
                answer.extend(draft.tokens)
                break
            last = rows[-1]
            logits = runner.feed(pending + draft.tokens[:last], logits_to_keep=last + 1)
            counts["forward_calls"] += not runner.last_feed_reused  # a feed the lookahead had computed runs nothing
            choice, kept, state = _verify(decoder, draft, logits, answer, counts)
            if choice is None:
                break  # the draft ran to end-of-sequence (or the budget) and the model agreed
            # The cache holds the draft up to row `last`; keep what precedes the chosen token, which is fed next.
            if last > kept:
                runner.crop_last(last - kept)
            if choice == decoder.eos:
                break
            pending = [choice]
    if stats is not None:
        stats.update(counts, backend=runner.name)
    return torch.tensor([answer], dtype=torch.long)


class PromptCache:
    """A model state (KV cache) holding the first tokens of a prompt, to go on from instead of prefilling again.

    `score_continuations_cached` leaves one behind after scoring; `greedy_trace_ids(prompt_cache=...)` decodes on
    from it when its prompt starts with those tokens. Used once: the decoder's cache grows as it decodes."""

    def __init__(self, runner, tokens: list[int], room: int) -> None:
        self.runner, self.tokens, self.room = runner, list(tokens), int(room)
        self.used = False

    def take(self, prompt: list[int], extra: int):
        """(runner, how many of `prompt`'s tokens it has seen), checking the prompt continues the cached tokens and
        the cache has room for `extra` more tokens after the prompt."""
        if self.used:
            raise InvalidInputError("this prompt cache was used already; score again for a fresh one")
        n = len(self.tokens)
        if prompt[:n] != self.tokens:
            raise InvalidInputError("the prompt does not start with the cached tokens: the cache belongs to another prompt")
        if len(prompt) - n + extra > self.room:
            raise InvalidInputError(f"the prompt cache has room for {self.room} more tokens, {len(prompt) - n + extra} needed")
        self.used = True
        return self.runner, n


def score_continuations(model, batch: dict, continuations: list[list[int]], backend: str = "auto") -> list[float]:
    """Log-likelihood (summed over tokens) of each continuation of ONE prompt, the prompt run once.

    The prompt and the continuations' common prefix are fed once; the continuations' own tokens then go on the
    shared KV cache: with the lean decoder all of them in one call as sibling branches (tree attention), else one
    call each, cropped away again. N short candidates cost one prefill and one (or N) small calls."""
    return score_continuations_cached(model, batch, continuations, backend)[0]


def score_continuations_cached(model, batch: dict, continuations: list[list[int]], backend: str = "auto",
                               room: int = 0, lookahead: tuple[int, list[int]] | None = None,
                               ) -> tuple[list[float], PromptCache]:
    """`score_continuations`, also returning the model state after the prompt and the continuations' common
    prefix (a `PromptCache` with `room` tokens to spare after the longest continuation) so that a decode that
    follows one of them need not run the prompt again.

    `lookahead` (index j, tokens): the caller expects to go on after continuation j with these tokens (e.g. the
    start of a trace `trace_lookahead` predicts). With the lean decoder they ride along in continuation j's
    branch of the same call, and a decode from the cache that does follow continuation j finds them fed, with
    their logits: one forward call fewer. Any other path costs only the wasted rows."""
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not continuations or any(not list(c) for c in continuations):
        raise InvalidInputError("score_continuations needs one or more non-empty continuations")
    conts = [[int(t) for t in c] for c in continuations]
    prompt = _single_prompt(batch)
    common = 0
    while all(len(c) > common + 1 and c[common] == conts[0][common] for c in conts):
        common += 1  # every continuation keeps at least one token of its own
    longest, room = max(len(c) for c in conts), max(int(room), 0)
    ahead_index, ahead = _checked_lookahead(lookahead, len(conts))
    runner = _model_runner(model, batch, backend, capacity=len(prompt) + longest + room + len(ahead))
    with torch.inference_mode():
        rows = torch.log_softmax(runner.feed(prompt + conts[0][:common], logits_to_keep=common + 1).float(), dim=-1)
        shared = float(sum(rows[i, conts[0][i]] for i in range(common)))
        scores = [shared + float(rows[common, cont[common]]) for cont in conts]
        longer = [j for j, cont in enumerate(conts) if len(cont) - common > 1]
        if isinstance(runner, _LeanRunner) and (longer or ahead):
            if ahead:  # that continuation's branch goes first, whole and with the lookahead: it is kept in place
                longer = [ahead_index] + [j for j in longer if j != ahead_index]
            branches = [conts[j][common:] + ahead if ahead and j == ahead_index else conts[j][common:-1] for j in longer]
            # One call for every candidate: side by side as sibling branches of the shared prefix.
            branch_logits = runner.decoder.score_branches(branches, keep_first=bool(ahead))
            for j, logits in zip(longer, branch_logits):
                rest = conts[j][common:]
                own = torch.log_softmax(logits[: len(rest) - 1].float(), dim=-1)
                scores[j] += float(sum(own[i, rest[i + 1]] for i in range(len(rest) - 1)))
            if ahead:
                runner.adopt(branches[0], branch_logits[0])
        else:
            for j in longer:
                rest = conts[j][common:]
                own = torch.log_softmax(runner.feed(rest[:-1], logits_to_keep=len(rest) - 1).float(), dim=-1)
                scores[j] += float(sum(own[i, rest[i + 1]] for i in range(len(rest) - 1)))
                runner.crop_last(len(rest) - 1)
    return scores, PromptCache(runner, prompt + conts[0][:common], room=longest - common + room)


# ---------------------------------------------------------------------- model runners
# Both feed tokens to the model after what it has seen, return the logits rows after the last
# `logits_to_keep` of them, and forget the last k tokens. The first feed holds the prompt (images).


class _TransformersRunner:
    """The model's own forward and transformers' KV cache: any model, device and dtype."""

    name = "transformers"
    last_feed_reused = False

    def __init__(self, model, batch: dict):
        self.model = model
        self.images = {k: batch[k] for k in ("pixel_values", "image_grids") if batch.get(k) is not None}
        self.device = torch.as_tensor(batch["input_ids"]).device
        self.cache, self.seen = None, 0

    def feed(self, tokens: list[int], logits_to_keep: int) -> torch.Tensor:
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=torch.ones(1, self.seen + ids.shape[1], dtype=torch.long, device=self.device),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **(self.images if self.cache is None else {}),
        )
        self.cache, self.seen = out.cache, self.seen + ids.shape[1]
        return out.logits[0]

    def crop_last(self, k: int) -> None:
        self.cache.crop(-k)
        self.seen -= k


class _LeanRunner:
    """`LeanLlamaDecoder` over the model's weights; the prompt's embeddings (images merged) come from the model's code.

    It may hold a speculation (`adopt`): tokens already in the decoder's cache past what was fed, with their logits.
    The next feed reuses the part of it that matches the tokens asked for and drops the rest."""

    name = "lean"

    def __init__(self, model, batch: dict, capacity: int):
        self.decoder = LeanLlamaDecoder(model, capacity)  # InvalidInputError where it does not suit the model
        self.model = model
        self.pixel_values, self.image_grids = batch.get("pixel_values"), batch.get("image_grids")
        self.started = False
        self.speculated: tuple[list[int], torch.Tensor] | None = None
        self.last_feed_reused = False  # the last feed was answered from the speculation alone

    def adopt(self, tokens: list[int], logits: torch.Tensor) -> None:
        """Take the last len(tokens) tokens in the decoder's cache as a speculation; logits row i follows tokens[i]."""
        if not self.started or len(tokens) != logits.shape[0] or len(tokens) > self.decoder.length:
            raise InvalidInputError("a speculation needs its tokens in the started decoder's cache and one logits row each")
        self.speculated = (list(tokens), logits)

    def feed(self, tokens: list[int], logits_to_keep: int) -> torch.Tensor:
        self.last_feed_reused = False
        if self.speculated is not None:
            return self._feed_over_speculation(list(tokens), logits_to_keep)
        if self.started:
            return self.decoder.step(tokens, logits_to_keep)
        ids = torch.tensor([tokens], dtype=torch.long, device=self.decoder.device)
        embeds = merged_input_embeddings(self.model, ids, self.pixel_values, self.image_grids)
        self.started = True
        return self.decoder.prefill(embeds, logits_to_keep)

    def _feed_over_speculation(self, tokens: list[int], logits_to_keep: int) -> torch.Tensor:
        held, rows = self.speculated
        self.speculated = None
        match = 0
        while match < min(len(held), len(tokens)) and held[match] == tokens[match]:
            match += 1
        self.decoder.crop_last(len(held) - match)  # the part that was not asked for
        if not 1 <= logits_to_keep <= len(tokens):
            raise InvalidInputError(f"logits_to_keep must be in [1, {len(tokens)}], got {logits_to_keep!r}")
        rest = tokens[match:]
        if not rest:
            self.last_feed_reused = True
            return rows[match - logits_to_keep: match]
        new = self.decoder.step(rest, min(logits_to_keep, len(rest)))
        if logits_to_keep <= len(rest):
            return new
        return torch.cat([rows[match - (logits_to_keep - len(rest)): match], new])

    def crop_last(self, k: int) -> None:
        if self.speculated is not None:
            self.decoder.crop_last(len(self.speculated[0]))
            self.speculated = None
        self.decoder.crop_last(k)


def _model_runner(model, batch: dict, backend: str, capacity: int):
    """The lean runner where `backend` and the model allow it (see `_lean_unwelcome`), else the transformers one."""
    if backend == "transformers" or (backend == "auto" and _lean_unwelcome(model, batch)):
        return _TransformersRunner(model, batch)
    try:
        return _LeanRunner(model, batch, capacity)
    except InvalidInputError as exc:
        if backend == "lean":
            raise InvalidInputError(f"backend='lean' cannot run this model: {exc}") from exc
        return _TransformersRunner(model, batch)


def _lean_unwelcome(model, batch: dict) -> bool:
    """True where "auto" keeps the model's own forward although the lean decoder could run it.

    Off the CPU (transformers' per-call overhead matters less there), and when something wraps or
    hooks the model's forward: such instrumentation expects to see every call.
    """
    weight = next(model.parameters(), None)
    if weight is None or weight.device.type != "cpu" or torch.as_tensor(batch["input_ids"]).device.type != "cpu":
        return True
    if "forward" in vars(model) or model._forward_hooks or model._forward_pre_hooks:
        return True
    if getattr(nn_hooks, "_global_forward_hooks", None) or getattr(nn_hooks, "_global_forward_pre_hooks", None):
        return True
    text_model = getattr(model, "language_model", None)
    return text_model is not None and any(m._forward_hooks or m._forward_pre_hooks for m in text_model.modules())


def _verify(decoder: _TraceDecoder, draft: _Draft, logits: torch.Tensor, answer: list[int], counts: dict):
    """Append the draft's tokens greedy decoding keeps and the model's choice after them.

    Row i of `logits` follows the context and draft[:i]. Returns (the model's chosen token, or
    None when the draft ran to its end; the row it was chosen at; the state after it).
    """
    state = draft.states[0] if draft.tokens else draft.end_state
    for row in range(len(draft.tokens) + 1):
        drafted = draft.tokens[row] if row < len(draft.tokens) else None
        if drafted is not None and draft.certain[row]:
            answer.append(drafted)
            state = decoder.options(state).next_states.get(drafted, _DONE)
            continue
        if row >= logits.shape[0]:
            return None, row, state
        ids, next_states = decoder.allowed(state, len(answer))
        # Greedy over the grammar's tokens only, in id order: the same pick as argmax of the masked full row.
        scores = logits[row].float()[ids.to(logits.device)]
        choice = int(ids[int(torch.argmax(scores))])
        answer.append(choice)
        if decoder.flag_guess is not None and state.phase == Phase.FIELD and state.field == _FLAG_FIELD and not state.digits:
            decoder.flag_guess = int(decoder.tokenizer.decode([choice]).lstrip().startswith("1"))  # the next steps' guess
        state = next_states.get(choice, _DONE)
        if drafted is not None and draft.hinted[row] and decoder.hint_mode != "off":
            decoder.hint_mode = "trusted" if choice == drafted else "off"
        if drafted is None or choice != drafted:
            return choice, row, state
        counts["accepted"] += 1
    return None, len(draft.tokens), state


def trace_start_prefix(mark_id: int, cell, depth_bin: int | None = None) -> str:
    """Text that opens a trace at a known first step, for `greedy_trace`'s `forced_prefix`.

    ``trace_start_prefix(1, (114, 74), 59)`` -> ``<trace_start>Mark 1: [(114,74,59,`` (2.5D: the model
    writes the gripper bit on); without `depth_bin` -> ``<trace_start>Mark 1: [(114,74,``. `cell` is
    the mark's current (x, y) grid cell. Written as `encode_traces` writes a trace.
    """
    values = [mark_id, *_pair(cell)] + ([] if depth_bin is None else [depth_bin])
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InvalidInputError(
                f"trace_start_prefix needs non-negative ints, got mark {mark_id!r}, cell {cell!r}, depth bin {depth_bin!r}"
            )
    mark, x, y = (int(v) for v in values[:3])
    head = f"{TRACE_START}Mark {mark}: [({x},{y},"
    return head if depth_bin is None else head + f"{int(depth_bin)},"


def _pair(cell) -> list:
    items = list(cell) if isinstance(cell, (tuple, list)) else np.asarray(cell).reshape(-1).tolist()
    if len(items) != 2:
        raise InvalidInputError(f"cell must be an (x, y) pair, got {cell!r}")
    return items


def _single_prompt(batch: dict) -> list[int]:
    """The one prompt's ids, left padding removed; refuses batches of several prompts."""
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise InvalidInputError("batch must be a processor batch (a dict with input_ids)")
    ids = torch.as_tensor(batch["input_ids"])
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise InvalidInputError(
            f"greedy_trace decodes one prompt at a time; got input_ids of shape {tuple(ids.shape)} "
            "(use generate_trace for batches)"
        )
    mask = batch.get("attention_mask")
    row = ids[0]
    if mask is not None:
        row = row[torch.as_tensor(mask)[0].bool()]
    if row.numel() == 0:
        raise InvalidInputError("the prompt is empty")
    return [int(t) for t in row.tolist()]


def trace_lookahead(processor, grammar: TraceGrammar, max_new_tokens: int = 256, forced_prefix: str = "",
                    mark_positions: dict[int, tuple[int, ...]] | None = None, moving_mark: int | None = None,
                    gripper_flag: int | None = None,
                    step_hints: dict[int, list[tuple[int, ...]]] | None = None) -> list[int]:
    """The answer tokens `greedy_trace_ids` (same arguments, a prompt ending with the trace start marker) feeds in
    its first forward call: the forced prefix and the first draft. For `score_continuations_cached(lookahead=...)`."""
    decoder = _TraceDecoder(processor, grammar, max_new_tokens, mark_positions, moving_mark, gripper_flag, step_hints)
    state, prefix_ids = decoder.start(decoder.vocab.trace_start_id is not None, forced_prefix)
    if len(prefix_ids) >= decoder.max_new_tokens or state.phase == Phase.DONE:
        return prefix_ids
    draft = decoder.draft(state, len(prefix_ids))
    rows = decoder.rows_to_verify(draft, len(prefix_ids))
    return prefix_ids + (draft.tokens[: rows[-1]] if rows else [])


def _checked_lookahead(lookahead, n_continuations: int) -> tuple[int, list[int]]:
    if lookahead is None:
        return -1, []
    try:
        index, tokens = lookahead
        index, tokens = int(index), [int(t) for t in tokens]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"lookahead must be (continuation index, token ids), got {lookahead!r}") from exc
    if not 0 <= index < n_continuations:
        raise InvalidInputError(f"lookahead index {index} names no continuation (there are {n_continuations})")
    return index, tokens


def _checked_hints(step_hints) -> dict[int, list[tuple[int, ...]]]:
    """Step hints as {mark id: [step values]}, each step 2 (x, y) or 4 (x, y, depth bin, gripper) non-negative ints."""
    if step_hints is None:
        return {}
    if not isinstance(step_hints, dict):
        raise InvalidInputError(f"step_hints must map mark ids to lists of steps, got {type(step_hints).__name__}")
    checked = {}
    for mark_id, steps in step_hints.items():
        try:
            rows = [tuple(int(v) for v in step) for step in steps]
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"step hint of mark {mark_id!r} must be a list of integer steps: {exc}") from exc
        if any(len(row) not in (2, 4) or min(row) < 0 for row in rows):
            raise InvalidInputError(f"step hint of mark {mark_id!r}: each step must be 2 or 4 non-negative ints, got {rows}")
        checked[int(mark_id)] = rows
    return checked


def _remember(cache: OrderedDict, key, value) -> None:
    cache[key] = value
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


__all__ = ["BACKENDS", "PromptCache", "greedy_trace_ids", "score_continuations", "score_continuations_cached",
           "trace_lookahead", "trace_start_prefix"]

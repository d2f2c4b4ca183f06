"""`greedy_trace`: the jump-forward greedy decoder gives generate()'s greedy tokens in fewer forward calls."""
import inspect

import numpy as np
import pytest
import torch

from magma_core.errors import InvalidInputError
from magma_core.model import MagmaConfig, MagmaForConditionalGeneration, MagmaProcessor, TraceGrammar
from magma_core.model.generation import generate_trace, greedy_trace
from magma_core.model.tokenizer_tiny import EOS_ID, TRACE_END_ID, TRACE_START_ID, train_tiny_tokenizer
from magma_core.model.trace_grammar import Phase
from magma_core.prompts import trace_prompt
from model_fixtures import SMALL, one_torch_thread  # noqa: E402,F401

MARKS = [(1, (10, 20)), (2, (100, 200)), (7, (30, 40))]
ONE_MARK_25D = TraceGrammar(expect_steps=3, expect_25d=True, mark_ids=frozenset({1}), max_marks=1)


@pytest.fixture(scope="module")
def processor():
    return MagmaProcessor.for_config(train_tiny_tokenizer(), MagmaConfig.magma_tiny(**SMALL))


def _model(seed: int):
    torch.manual_seed(seed)
    return MagmaForConditionalGeneration(MagmaConfig.magma_tiny(**SMALL)).eval()


@pytest.fixture(scope="module")
def model():
    return _model(1)


def _batch(processor, seed=0, instruction="put the red cube on the pad", with_depth=True, n=1):
    image = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    prompt = trace_prompt(instruction, MARKS, 2, with_depth=with_depth)
    return processor([image] * n, [prompt] * n)


class _CountingForward:
    """Wraps model.forward: counts calls and, given a script, makes the model write it (a large logit bonus).

    The script (answer ids) is indexed by absolute position, read from the KV cache length, so it
    also steers a decoder that feeds several tokens per call or crops its cache.
    """

    def __init__(self, model, prompt_length=0, script=()):
        self.model, self.inner = model, model.forward
        self.prompt_length, self.script = prompt_length, list(script)
        self.calls, self.history = 0, []
        self.__signature__ = inspect.signature(self.inner)  # generate() checks its kwargs against it

    def __enter__(self):
        self.model.forward = self
        return self

    def __exit__(self, *exc):
        del self.model.forward

    def __call__(self, input_ids=None, cache=None, past_key_values=None, **kwargs):
        self.calls += 1
        past = cache if cache is not None else past_key_values
        start = past.get_seq_length() if past is not None else 0
        self.history = self.history[:start] + input_ids[0].tolist()
        out = self.inner(input_ids=input_ids, cache=cache, past_key_values=past_key_values, **kwargs)
        rows = out.logits.shape[1]
        for row in range(rows):
            index = len(self.history) - rows + row + 1 - self.prompt_length
            if 0 <= index < len(self.script):
                out.logits[0, row, self.script[index]] += 1e4
        return out


def _reference_greedy(model, processor, batch, grammar, max_new_tokens, prefix_ids):
    """One full forward per token, no cache: the plainest grammar-masked greedy decode."""
    vocab = processor.trace_vocabulary
    state = grammar.initial_state()
    answer = []
    for token in prefix_ids:
        state = vocab.options(grammar, state)[2][token]
        answer.append(token)
    while len(answer) < max_new_tokens and state.phase != Phase.DONE:
        ids, costs, next_states = vocab.options(grammar, state)
        ids = ids[costs <= max_new_tokens - len(answer) - 1]
        with torch.inference_mode():
            logits = model(
                input_ids=torch.cat([batch["input_ids"], torch.tensor([answer], dtype=torch.long)], dim=1),
                pixel_values=batch["pixel_values"], image_grids=batch["image_grids"], logits_to_keep=1,
            ).logits[0, -1]
        masked = torch.full_like(logits, float("-inf"))
        masked[ids] = logits[ids]
        token = int(masked.argmax())
        answer.append(token)
        state = next_states[token]
    return answer


def _branching_tokens(processor, grammar, answer, max_new_tokens):
    """Answer tokens chosen where the grammar and the token budget allowed more than one token."""
    vocab, state, count = processor.trace_vocabulary, grammar.initial_state(), 0
    for position, token in enumerate(answer):
        ids, costs, next_states = vocab.options(grammar, state)
        if int((costs <= max_new_tokens - position - 1).sum()) > 1:
            count += 1
        state = next_states[token]
    return count


def _rows(result):
    return [(t.mark_id, t.cells.tolist(), _list(t.depth_bins), _list(t.gripper)) for t in result.traces]


def _list(values):
    return None if values is None else values.tolist()


# ------------------------------------------------------------------ equivalence


@pytest.mark.parametrize(
    "seed, grammar, with_depth",
    [
        (0, ONE_MARK_25D, True),
        (1, TraceGrammar(expect_steps=3, expect_25d=True, mark_ids=frozenset({1, 2, 7}), max_marks=2), True),
        (2, TraceGrammar(), True),
        (3, TraceGrammar(expect_25d=False, max_marks=3), False),
        (4, TraceGrammar(expect_steps=2, mark_ids=frozenset({2, 7})), False),
    ],
)
def test_same_tokens_and_parse_as_generate_greedy(processor, seed, grammar, with_depth):
    model = _model(seed)
    batch = _batch(processor, seed, with_depth=with_depth)
    expected, expected_ids = generate_trace(model, processor, batch, grammar, max_new_tokens=64, do_sample=False)
    results, ids = greedy_trace(model, processor, batch, grammar, max_new_tokens=64)
    assert ids.tolist() == expected_ids.tolist()
    assert len(results) == 1 and results[0].ok
    assert expected[0].ok and _rows(results[0]) == _rows(expected[0])
    assert ids[0, 0] == TRACE_START_ID and ids[0, -2:].tolist() == [TRACE_END_ID, EOS_ID]


def test_tight_budget_gives_the_same_closed_trace(model, processor):
    grammar = TraceGrammar(expect_steps=2, expect_25d=True)
    fewest = grammar.min_tokens_to_finish(grammar.initial_state())
    batch = _batch(processor, 5)
    _, expected_ids = generate_trace(model, processor, batch, grammar, max_new_tokens=fewest, do_sample=False)
    results, ids = greedy_trace(model, processor, batch, grammar, max_new_tokens=fewest)
    assert ids.tolist() == expected_ids.tolist() and results[0].ok
    with pytest.raises(InvalidInputError, match="too small"):
        greedy_trace(model, processor, batch, grammar, max_new_tokens=fewest - 1)


# ------------------------------------------------------------------ forced prefix


def test_forced_prefix_is_kept_and_the_rest_is_greedy(model, processor):
    batch = _batch(processor, 6)
    prefix = "<trace_start>Mark 1: [(114,74,59,"
    results, ids = greedy_trace(model, processor, batch, ONE_MARK_25D, max_new_tokens=72, forced_prefix=prefix)
    assert results[0].ok
    assert processor.decode_text(ids[0]).startswith(prefix)
    trace = results[0].traces[0]
    assert trace.mark_id == 1 and trace.cells[0].tolist() == [114, 74] and int(trace.depth_bins[0]) == 59 and trace.length == 3
    prefix_ids = processor.tokenizer.encode(prefix, add_special_tokens=False)
    assert ids[0].tolist() == _reference_greedy(model, processor, batch, ONE_MARK_25D, 72, prefix_ids)


@pytest.mark.parametrize(
    "prefix, problem",
    [
        ("Mark 1: [(", "cannot follow"),  # the start marker is missing
        ("<trace_start>Mark 9: [(", "cannot follow"),  # only mark 1 is allowed
        ("<trace_start>Mark 1: [(300,", "cannot follow"),  # outside the grid
        ("<trace_start>Mark 1: [(1,2)", "cannot follow"),  # 2D where the grammar wants 2.5D
        ("<trace_start>Mark 1: [(1,2,3,0)]<trace_end>", "cannot follow"),  # one step where three are needed
    ],
)
def test_forced_prefix_the_grammar_rejects_is_refused(model, processor, prefix, problem):
    with pytest.raises(InvalidInputError, match=problem):
        greedy_trace(model, processor, _batch(processor), ONE_MARK_25D, max_new_tokens=72, forced_prefix=prefix)


def test_forced_prefix_must_be_text_and_fit_the_budget(model, processor):
    with pytest.raises(InvalidInputError, match="must be a str"):
        greedy_trace(model, processor, _batch(processor), ONE_MARK_25D, 72, forced_prefix=b"<trace_start>")
    grammar = TraceGrammar(expect_steps=1, expect_25d=True, max_marks=2)
    fewest = grammar.min_tokens_to_finish(grammar.initial_state())
    # A second mark: the shortest completion of the first fits the budget, two marks do not.
    with pytest.raises(InvalidInputError, match=f"within {fewest} tokens"):
        prefix = "<trace_start>Mark 1: [(1,2,3,0)]\nMark 2: [("
        greedy_trace(model, processor, _batch(processor), grammar, fewest, forced_prefix=prefix)


def test_a_complete_prefix_needs_no_forward_call(model, processor):
    text = "<trace_start>Mark 1: [(1,2,3,0),(4,5,6,0),(7,8,9,1)]<trace_end>"
    with _CountingForward(model) as counter:
        results, ids = greedy_trace(model, processor, _batch(processor), ONE_MARK_25D, 72, forced_prefix=text)
    assert counter.calls == 0
    assert results[0].ok and processor.decode_text(ids[0]) == text and ids[0, -1] == EOS_ID


# ------------------------------------------------------------------ input checks and robustness


def test_batches_of_several_prompts_are_refused(model, processor):
    with pytest.raises(InvalidInputError, match="one prompt at a time"):
        greedy_trace(model, processor, _batch(processor, n=2), ONE_MARK_25D, 72)


def test_random_weights_always_parse(processor):
    prefixes = ("", "<trace_start>", "<trace_start>Mark 1: [(", "<trace_start>Mark 1: [(114,74,59,")
    for seed in range(20):
        model = _model(100 + seed)
        if seed % 2:
            grammar = ONE_MARK_25D
        else:
            grammar = TraceGrammar(expect_steps=2, expect_25d=True, mark_ids=frozenset({1, 2, 7}), max_marks=2)
        prefix = prefixes[seed % len(prefixes)]
        results, ids = greedy_trace(model, processor, _batch(processor, seed), grammar, 72, forced_prefix=prefix)
        result = results[0]
        assert result.ok, (seed, result.error)
        assert all(t.is_25d and t.length == grammar.expect_steps and t.mark_id in grammar.mark_ids for t in result.traces)
        assert ids.shape[1] <= 72 and ids[0, -1] == EOS_ID
        assert processor.decode_text(ids[0]).startswith(prefix)


# ------------------------------------------------------------------ forward calls


def test_forward_calls_at_most_branching_tokens_plus_one(processor):
    grammar = TraceGrammar(expect_steps=3, expect_25d=True, mark_ids=frozenset({1, 2, 7}), max_marks=2)
    for seed in range(3):
        model = _model(200 + seed)
        batch = _batch(processor, seed)
        with _CountingForward(model) as counter:
            _, ids = greedy_trace(model, processor, batch, grammar, 96)
        answer = ids[0].tolist()
        assert counter.calls <= _branching_tokens(processor, grammar, answer, 96) + 1
        assert counter.calls < len(answer)
        with _CountingForward(model) as counter:
            _, old_ids = generate_trace(model, processor, batch, grammar, max_new_tokens=96, do_sample=False)
        assert counter.calls == len(answer) and old_ids.tolist() == ids.tolist()  # generate: one call per token


def test_a_model_writing_canonical_text_is_asked_only_for_the_numbers(model, processor):
    """Jump-forward proper: punctuation, mark ids and markers cost no call; each number costs one."""
    batch = _batch(processor, 7)
    answer = "<trace_start>Mark 1: [(114,74,59,1),(120,80,57,1),(126,88,5,0)]<trace_end>"
    script = processor.encode_answer(answer)
    prompt_length = batch["input_ids"].shape[1]
    with _CountingForward(model, prompt_length, script) as counter:
        results, ids = greedy_trace(model, processor, batch, ONE_MARK_25D, 72)
    assert ids[0].tolist() == script and results[0].ok
    assert counter.calls == 12 + 1  # 3 steps x 4 numbers, + the prefill
    prefix = "<trace_start>Mark 1: [(114,74,59,"
    with _CountingForward(model, prompt_length, script) as counter:
        _, ids = greedy_trace(model, processor, batch, ONE_MARK_25D, 72, forced_prefix=prefix)
    assert ids[0].tolist() == script
    assert counter.calls == 9 + 1
    with _CountingForward(model, prompt_length, script) as counter:
        _, old_ids = generate_trace(model, processor, batch, ONE_MARK_25D, max_new_tokens=72, do_sample=False)
    assert old_ids[0].tolist() == script and counter.calls == len(script)


def test_trace_start_prefix_writes_the_canonical_opening(model, processor):
    from magma_core.model.fast_decode import trace_start_prefix

    assert trace_start_prefix(1, (114, 74), 59) == "<trace_start>Mark 1: [(114,74,59,"
    assert trace_start_prefix(3, np.array([0, 255])) == "<trace_start>Mark 3: [(0,255,"
    with pytest.raises(InvalidInputError, match="non-negative ints"):
        trace_start_prefix(1, (1.5, 2), 3)
    with pytest.raises(InvalidInputError, match="pair"):
        trace_start_prefix(1, (1, 2, 3))
    results, _ = greedy_trace(model, processor, _batch(processor), ONE_MARK_25D, 72, trace_start_prefix(1, (114, 74), 59))
    assert results[0].ok and results[0].traces[0].cells[0].tolist() == [114, 74]


# ------------------------------------------------------------------ listed-position drafts


def test_listed_position_drafts_keep_the_greedy_tokens_and_save_calls(processor):
    """Drafting a mark's listed position where its step begins is verified like any draft: the tokens stay the
    greedy ones whatever is listed, and when the model writes the listed position the decode needs fewer calls."""
    from magma_core.model.fast_decode import greedy_trace_ids

    grammar = TraceGrammar(expect_steps=3, expect_25d=True, mark_ids=frozenset({1, 2, 7}), max_marks=2)
    model, batch = _model(11), _batch(processor, 11)
    plain_stats, listed_stats, wrong_stats = {}, {}, {}
    plain = greedy_trace_ids(model, processor, batch, grammar, 64, stats=plain_stats)
    result = processor.decode_trace(plain[0], expect_25d=True, expect_steps=3)
    assert result.ok
    # What the model writes at each mark's first step, as a prompt would list it; the first mark does not move.
    listed = {t.mark_id: (*(int(v) for v in t.cells[0]), int(t.depth_bins[0])) for t in result.traces}
    moving = result.traces[-1].mark_id
    same = greedy_trace_ids(model, processor, batch, grammar, 64, stats=listed_stats, mark_positions=listed, moving_mark=moving)
    assert same.tolist() == plain.tolist()
    assert listed_stats["forward_calls"] < plain_stats["forward_calls"]
    wrong = {k: (v[0] + 1, v[1], v[2]) for k, v in listed.items()}
    assert greedy_trace_ids(model, processor, batch, grammar, 64, stats=wrong_stats, mark_positions=wrong).tolist() == plain.tolist()


def _two_mark_greedy(processor, seed: int):
    """A two-mark 2.5D grammar, a random model and prompt, and its plain greedy decode (ids, stats, parse)."""
    from magma_core.model.fast_decode import greedy_trace_ids

    grammar = TraceGrammar(expect_steps=3, expect_25d=True, mark_ids=frozenset({1, 2, 7}), max_marks=2)
    model, batch = _model(seed), _batch(processor, seed)
    plain_stats = {}
    plain = greedy_trace_ids(model, processor, batch, grammar, 64, stats=plain_stats)
    result = processor.decode_trace(plain[0], expect_25d=True, expect_steps=3)
    assert result.ok
    return grammar, model, batch, plain, plain_stats, result


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_drafted_gripper_flags_keep_the_greedy_tokens_and_save_calls(processor, seed):
    from magma_core.model.fast_decode import greedy_trace_ids

    grammar, model, batch, plain, plain_stats, result = _two_mark_greedy(processor, seed)
    first_flag = int(result.traces[0].gripper[0])
    for flag in (0, 1):  # right or wrong, a guess never changes what is written
        stats = {}
        assert greedy_trace_ids(model, processor, batch, grammar, 64, stats=stats, gripper_flag=flag).tolist() == plain.tolist()
        if flag == first_flag:
            assert stats["forward_calls"] <= plain_stats["forward_calls"]
    with pytest.raises(InvalidInputError, match="gripper_flag"):
        greedy_trace_ids(model, processor, batch, grammar, 64, gripper_flag=2)

@pytest.mark.parametrize("backend", ["lean", "transformers"])
def test_decoding_on_from_the_scoring_cache_gives_the_same_trace(model, processor, backend):
    """The policy scores goal lines on the prompt, then traces after the best one: going on from the scoring's
    KV cache (no second prefill) must give exactly the tokens of a decode that runs the whole prompt again."""
    from magma_core.model.fast_decode import greedy_trace_ids, score_continuations_cached

    batch = _batch(processor, seed=3)
    lines = [processor.tokenizer.encode(t, add_special_tokens=False) for t in ("Goal: red block 4cm\n", "Goal: pad 9cm\n")]
    scores, cache = score_continuations_cached(model, batch, lines, backend=backend, room=200)
    best = lines[int(np.argmax(scores))]
    ids = torch.cat([batch["input_ids"], torch.tensor([best + [TRACE_START_ID]])], dim=1)
    extended = {**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    plain = greedy_trace_ids(model, processor, extended, ONE_MARK_25D, max_new_tokens=80, backend=backend)
    reused = greedy_trace_ids(model, processor, extended, ONE_MARK_25D, max_new_tokens=80, backend=backend,
                              prompt_cache=cache)
    assert reused.tolist() == plain.tolist()
    with pytest.raises(InvalidInputError, match="used already"):
        greedy_trace_ids(model, processor, extended, ONE_MARK_25D, max_new_tokens=80, prompt_cache=cache)
    _, other = score_continuations_cached(model, batch, lines, backend=backend, room=200)
    with pytest.raises(InvalidInputError, match="another prompt"):
        greedy_trace_ids(model, processor, _batch(processor, seed=3, instruction="push the cube"), ONE_MARK_25D,
                         max_new_tokens=80, prompt_cache=other)
    _, small = score_continuations_cached(model, batch, lines, backend=backend, room=4)
    with pytest.raises(InvalidInputError, match="room"):
        greedy_trace_ids(model, processor, extended, ONE_MARK_25D, max_new_tokens=80, prompt_cache=small)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_step_hints_keep_the_greedy_tokens_and_save_calls_when_right(processor, seed):
    """The previous frame's plan drafted as step hints is verified like any draft: right, wrong or partly right,
    the tokens stay the greedy ones; right hints cost fewer calls."""
    from magma_core.model.fast_decode import greedy_trace_ids

    grammar, model, batch, plain, plain_stats, result = _two_mark_greedy(processor, seed)
    exact = {t.mark_id: [(int(x), int(y), int(d), int(g)) for (x, y), d, g in zip(t.cells, t.depth_bins, t.gripper)]
             for t in result.traces}
    moved = {k: [(x, (y + 1) % 100, d, g) for x, y, d, g in steps] for k, steps in exact.items()}
    half = {k: steps[:1] + moved[k][1:] for k, steps in exact.items()}
    counts = {}
    for name, hints in (("exact", exact), ("moved", moved), ("half", half), ("flat", {k: [(1, 2)] for k in exact})):
        stats = {}
        ids = greedy_trace_ids(model, processor, batch, grammar, 64, stats=stats, step_hints=hints)
        assert ids.tolist() == plain.tolist(), name
        counts[name] = stats["forward_calls"]
    assert counts["exact"] < plain_stats["forward_calls"]
    # A wrong hint costs at most the one probe: hints stop for the rest of the decode once one is refused.
    assert counts["moved"] <= plain_stats["forward_calls"]


@pytest.mark.parametrize("hints, problem", [
    ([(1, 2)], "map mark ids"),
    ({1: [(1, 2, 3)]}, "2 or 4"),
    ({1: [(1, -2)]}, "non-negative"),
    ({1: [("a", 2)]}, "integer steps"),
])
def test_step_hints_are_checked(model, processor, hints, problem):
    from magma_core.model.fast_decode import greedy_trace_ids

    with pytest.raises(InvalidInputError, match=problem):
        greedy_trace_ids(model, processor, _batch(processor, 1), ONE_MARK_25D, 80, step_hints=hints)


def test_a_lookahead_in_the_scoring_call_gives_the_same_trace_with_a_call_fewer(processor):
    """The policy traces ahead, inside the goal-line scoring call, the goal its belief already leads with. Whether
    that goal then wins, loses, or the lookahead is nonsense, the trace is the greedy one; when it wins and the
    lookahead is what the decode would feed first, the decode's first call is already done."""
    from magma_core.model.fast_decode import greedy_trace_ids, score_continuations_cached, trace_lookahead

    model, batch = _model(12), _batch(processor, seed=12)
    grammar = TraceGrammar(expect_steps=3, expect_25d=True, mark_ids=frozenset({1, 2}), max_marks=2, final_mark=1)
    lines = [processor.tokenizer.encode(t, add_special_tokens=False) for t in ("Goal: red block 4cm\n", "Goal: pad 9cm\n")]
    plain_scores, _ = score_continuations_cached(model, batch, lines, backend="lean", room=300)
    best = int(np.argmax(plain_scores))
    ids = torch.cat([batch["input_ids"], torch.tensor([lines[best] + [TRACE_START_ID]])], dim=1)
    extended = {**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    plain_stats = {}
    plain = greedy_trace_ids(model, processor, extended, grammar, max_new_tokens=120, backend="lean", stats=plain_stats)
    ahead = [TRACE_START_ID] + trace_lookahead(processor, grammar, max_new_tokens=120)
    assert processor.tokenizer.decode(ahead[1:]).startswith("Mark ")  # the answer's opening, drafted
    for index, tokens in ((best, ahead), (1 - best, ahead), (best, [TRACE_START_ID, 40, 41, 42]), (best, ahead[:1])):
        scores, cache = score_continuations_cached(model, batch, lines, backend="lean", room=300, lookahead=(index, tokens))
        np.testing.assert_allclose(scores, plain_scores, atol=1e-4)
        stats = {}
        assert greedy_trace_ids(model, processor, extended, grammar, max_new_tokens=120, backend="lean",
                                prompt_cache=cache, stats=stats).tolist() == plain.tolist()
        if index == best and tokens == ahead:
            assert stats["forward_calls"] == plain_stats["forward_calls"] - 1
    with pytest.raises(InvalidInputError, match="names no continuation"):
        score_continuations_cached(model, batch, lines, backend="lean", lookahead=(2, ahead))
    with pytest.raises(InvalidInputError, match="lookahead must be"):
        score_continuations_cached(model, batch, lines, backend="lean", lookahead=ahead)

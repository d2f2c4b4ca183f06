"""Constrained decoding: the trace grammar automaton, and random-weight generations that always parse."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from magma_core.codecs.action_tokenizer import ActionNormStats, ActionTokenizer
from magma_core.codecs.trace_text import GridTrace, encode_traces, parse_traces
from magma_core.errors import InvalidInputError
from magma_core.model import MagmaConfig, MagmaForConditionalGeneration, MagmaProcessor, TraceGrammar
from magma_core.model.constrained import TraceLogitsProcessor, token_texts
from magma_core.model.generation import generate_actions, generate_trace
from magma_core.model.tokenizer_tiny import EOS_ID, TRACE_END_ID, TRACE_START_ID, train_tiny_tokenizer
from magma_core.model.trace_grammar import Phase
from magma_core.prompts import action_prompt, trace_prompt
from model_fixtures import SMALL, one_torch_thread  # noqa: E402,F401


@pytest.fixture(scope="module")
def processor():
    return MagmaProcessor.for_config(train_tiny_tokenizer(), MagmaConfig.magma_tiny(**SMALL))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return MagmaForConditionalGeneration(MagmaConfig.magma_tiny(**SMALL)).eval()


def _accepts(grammar: TraceGrammar, text: str) -> bool:
    state = grammar.walk(grammar.initial_state(start_marker_done=True), text)
    return state is not None and state.phase == Phase.AFTER_MARK


# ------------------------------------------------------------------ the automaton


@st.composite
def trace_blocks(draw):
    n_marks = draw(st.integers(1, 4))
    n_steps = draw(st.integers(1, 5))
    with_depth = draw(st.booleans())
    ids = draw(st.lists(st.integers(0, 999), min_size=n_marks, max_size=n_marks, unique=True))
    traces = []
    for mark_id in ids:
        cells = np.array(draw(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=n_steps, max_size=n_steps)))
        if with_depth:
            depth = np.array(draw(st.lists(st.integers(0, 99), min_size=n_steps, max_size=n_steps)))
            grip = np.array(draw(st.lists(st.integers(0, 1), min_size=n_steps, max_size=n_steps)))
            traces.append(GridTrace(mark_id, cells, depth, grip))
        else:
            traces.append(GridTrace(mark_id, cells))
    return traces


@settings(max_examples=60, deadline=None)
@given(trace_blocks())
def test_every_encoded_trace_is_accepted(traces):
    text = encode_traces(traces, with_markers=False)
    assert _accepts(TraceGrammar(), text)
    assert _accepts(TraceGrammar(expect_steps=traces[0].length, expect_25d=traces[0].is_25d), text)
    assert not _accepts(TraceGrammar(expect_steps=traces[0].length + 1), text)


@pytest.mark.parametrize(
    "text",
    [
        "Mark 1: [(256,0)]",  # outside the grid
        "Mark 1: [(07,1)]",  # leading zero
        "Mark 1: [(1,2),(3,4,5,1)]",  # 2D then 2.5D
        "Mark 1: [(1,2)]\nMark 1: [(3,4)]",  # duplicate id
        "Mark 1: [(1,2)]\nMark 2: [(1,2),(3,4)]",  # different lengths
        "Mark 1: [(1,2,100,0)]",  # depth bin >= 100
        "Mark 1: [(1,2,3,2)]",  # gripper not 0/1
        "Mark 1000: [(1,2)]",  # id above max_mark_id
        "Mark 1:[(1,2)]",  # not the canonical spacing
        "Mark 1: []",  # empty mark
    ],
)
def test_grammar_rejects_what_the_parser_or_the_format_forbids(text):
    assert not _accepts(TraceGrammar(), text)


def test_mark_id_set_and_marker_text_mode():
    grammar = TraceGrammar(mark_ids=frozenset({3, 12}), markers_as_text=True)
    state = grammar.walk(grammar.initial_state(), "<trace_start>Mark 12: [(1,2)]\nMark 3: [(4,5)]<trace_end>")
    assert state is not None and state.phase == Phase.END
    assert grammar.walk(grammar.initial_state(), "<trace_start>Mark 4") is None
    # Both allowed ids used: no room for a third mark.
    assert grammar.walk(grammar.initial_state(), "<trace_start>Mark 12: [(1,2)]\nMark 3: [(4,5)]\n") is None


def test_anchors_pin_a_marks_first_step_and_final_mark_makes_the_answer_goal_first():
    """Goal-first decoding: a trace starts at its mark's listed (x, y, depth bin); one goal, then the gripper, then the end."""
    grammar = TraceGrammar(expect_steps=2, expect_25d=True, mark_ids=frozenset({1, 4, 6}), anchors={4: (12, 130, 77), 1: (9, 8, 7)},
                           final_mark=1)
    assert _accepts(grammar, "Mark 4: [(12,130,77,0),(40,41,42,1)]\nMark 1: [(9,8,7,1),(12,130,77,1)]")
    for wrong in ("Mark 4: [(12,131,77,0),(1,1,1,0)]", "Mark 4: [(1,130,77,0),(1,1,1,0)]", "Mark 4: [(12,130,7,0),(1,1,1,0)]",
                  "Mark 1: [(9,8,7,0),(1,1,1,0)]", "Mark 4: [(12,130,77,0),(1,1,1,0)]\nMark 6: [(1,1,1,0),(1,1,1,0)]"):
        assert not _accepts(grammar, wrong), wrong
    state = grammar.walk(grammar.initial_state(start_marker_done=True), "Mark 4: [(1")
    assert grammar.step(state, "2") is not None and grammar.step(state, "3") is None and grammar.step(state, ",") is None
    # One trace is not an answer: no end marker after it; after the gripper's, no third mark.
    one = grammar.walk(grammar.initial_state(start_marker_done=True), "Mark 6: [(0,0,0,0),(0,0,0,0)]")
    assert one.phase == Phase.AFTER_MARK and grammar.after_end_marker(one) is None
    two = grammar.walk(one, "\nMark 1: [(9,8,7,0),(0,0,0,0)]")
    assert grammar.after_end_marker(two) is not None and grammar.step(two, "\n") is None
    # Budgets count the gripper's trace still to come.
    start = grammar.initial_state(start_marker_done=True)
    assert grammar.min_chars_to_close(one) == len("\nMark 1: [(0,0,0,0),(0,0,0,0)]")
    assert grammar.min_chars_to_close(start) == len("Mark 4: [(0,0,0,0),(0,0,0,0)]\nMark 1: [(0,0,0,0),(0,0,0,0)]")
    # Later steps and the gripper field are free.
    assert _accepts(grammar, "Mark 4: [(12,130,77,1),(0,0,0,0)]\nMark 1: [(9,8,7,0),(255,255,99,1)]")
    assert TraceGrammar(anchors={4: (1, 2)}).anchors == ((4, (1, 2)),) and hash(grammar)
    for bad in ({4: (1, 2, 3, 4)}, {4: (300, 2)}, {4: ("x", 2)}):
        with pytest.raises(InvalidInputError, match="anchor"):
            TraceGrammar(expect_25d=True, anchors=bad)
    with pytest.raises(InvalidInputError, match="final_mark"):
        TraceGrammar(mark_ids=frozenset({1}), final_mark=1)


def test_min_tokens_is_exact_for_the_shortest_completion():
    grammar = TraceGrammar(expect_steps=3, expect_25d=True)
    start = grammar.initial_state()
    shortest = "Mark 0: [(0,0,0,0),(0,0,0,0),(0,0,0,0)]"
    assert grammar.min_tokens_to_finish(start) == 1 + len(shortest) + 1 + 1  # start marker, text, end marker, eos
    state = grammar.walk(grammar.after_start_marker(start), "Mark 0: [(0,0,0,0),(0,")
    assert grammar.min_tokens_to_finish(state) == len("0,0,0),(0,0,0,0)]") + 2


# ------------------------------------------------------------------ generation with random weights



@pytest.mark.parametrize("grammar", [
    TraceGrammar(expect_25d=True, expect_steps=3),
    TraceGrammar(expect_25d=True, expect_steps=3, mark_ids=frozenset({1, 4, 12}), final_mark=1,
                 anchors={4: (30, 200, 57), 1: (128, 31, 20)}),
])
def test_allowed_token_costs_equal_the_grammars_own_count(processor, grammar):
    # The costs are computed once per shape of state (a number's value does not change them): they must
    # still be exactly min_tokens_to_finish of every next state, along random walks through the grammar.
    vocab = processor.trace_vocabulary
    rng = np.random.default_rng(5)
    for _ in range(6):
        state = grammar.initial_state()
        for _ in range(60):
            ids, costs, next_states = vocab.options(grammar, state)
            for token, cost in zip(ids.tolist(), costs.tolist()):
                assert cost == grammar.min_tokens_to_finish(next_states[token])
            # Cached options may come from the anchor-free twin of the grammar: they must be this grammar's own.
            assert sorted(ids.tolist()) == sorted(token for token, _ in vocab.trie.walk(grammar, state)) or \
                state.phase in (Phase.START, Phase.END, Phase.DONE, Phase.AFTER_MARK)
            assert all(next_states[token] == nxt for token, nxt in vocab.trie.walk(grammar, state))
            if state.phase == Phase.DONE:
                break
            state = next_states[int(ids[rng.integers(len(ids))])]

def test_token_texts_decode_byte_level_pieces(processor):
    texts = token_texts(processor.tokenizer)
    ids = processor.tokenizer.encode("Mark 1: [(12,3)]\n", add_special_tokens=False)
    assert "".join(texts[i] for i in ids) == "Mark 1: [(12,3)]\n"
    assert texts[TRACE_START_ID] is None and texts[EOS_ID] is None and texts[-1] is None


def test_fifty_random_trace_generations_all_parse(model, processor):
    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    marks = [(1, (10, 20)), (2, (100, 200)), (7, (30, 40))]
    prompts = [trace_prompt("put the red cube on the pad", marks, 2), trace_prompt("open the drawer", marks, 2, with_depth=True)]
    for prompt, with_depth in zip(prompts, (False, True)):
        batch = processor([image] * 25, [prompt] * 25)
        grammar = TraceGrammar(expect_steps=3, expect_25d=with_depth, mark_ids=frozenset(m for m, _ in marks))
        results, ids = generate_trace(model, processor, batch, grammar, max_new_tokens=64, do_sample=True, top_k=0)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert all(t.is_25d == with_depth and t.length == 3 for r in results for t in r.traces)
        assert all(t.mark_id in {1, 2, 7} for r in results for t in r.traces)
        assert (ids[:, 0] == TRACE_START_ID).all() and ids.shape[1] <= 64
        for row in ids.tolist():  # every row ends "<trace_end></s>" inside the budget
            end = row.index(EOS_ID)
            assert row[end - 1] == TRACE_END_ID


def test_tight_budget_still_closes_the_trace(model, processor):
    image = np.zeros((64, 64, 3), np.uint8)
    batch = processor([image] * 8, [trace_prompt("push the cube", [(1, (5, 5))], 3)] * 8)
    grammar = TraceGrammar(expect_steps=4)
    fewest = grammar.min_tokens_to_finish(grammar.initial_state())
    results, _ = generate_trace(model, processor, batch, grammar, max_new_tokens=fewest, do_sample=True, top_k=0)
    assert all(r.ok for r in results)
    with pytest.raises(InvalidInputError, match="too small for a trace"):
        TraceLogitsProcessor(processor.trace_vocabulary, grammar, 10, fewest - 1)


def test_fifty_random_action_generations_decode_to_seven_numbers(model, processor):
    torch.manual_seed(0)
    codec = ActionTokenizer(processor.vocab_size, ActionNormStats(-np.ones(7), np.ones(7) * 2))
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    batch = processor([image] * 50, [action_prompt("put the cube in the bowl")] * 50)
    actions = generate_actions(model, processor, batch, codec, do_sample=True, top_k=0)
    assert actions.shape == (50, 1, 7)
    assert np.all(actions >= -1) and np.all(actions <= 2)
    assert len(np.unique(actions[:, 0, 0])) > 5  # sampled, not one fixed answer
    chunk = generate_actions(model, processor, processor([image], [action_prompt("push it")]), codec, n_actions=2)
    assert chunk.shape == (1, 2, 7)


def test_parse_of_generated_text_matches_parser_options(model, processor):
    image = np.zeros((64, 64, 3), np.uint8)
    batch = processor([image] * 4, [trace_prompt("push the cube", [(1, (5, 5))], 1, with_depth=True)] * 4)
    results, ids = generate_trace(model, processor, batch, TraceGrammar(expect_25d=True, max_marks=2), max_new_tokens=48, do_sample=True)
    for result, row in zip(results, ids):
        assert result.ok and len(result.traces) <= 2
        assert parse_traces(processor.decode_text(row), expect_25d=True).ok


def test_markers_spelled_as_text_for_tokenizers_without_them(model, processor):
    from magma_core.model.constrained import TraceVocabulary
    from magma_core.model.generation import generate_ids

    vocab = TraceVocabulary(processor.tokenizer, processor.eos_token_id, markers_as_text=True)
    batch = processor([np.zeros((64, 64, 3), np.uint8)] * 6, [trace_prompt("push the cube", [(1, (5, 5))], 1)] * 6)
    constraint = TraceLogitsProcessor(vocab, TraceGrammar(expect_steps=2), batch["input_ids"].shape[1], 80)
    torch.manual_seed(3)
    ids = generate_ids(model, batch, [constraint], 80, do_sample=True, top_k=0)
    for row in ids:
        assert TRACE_START_ID not in row.tolist() and TRACE_END_ID not in row.tolist()
        text = processor.decode_text(row)
        assert text.startswith("<trace_start>Mark ") and text.endswith("<trace_end>")
        assert parse_traces(text, expect_steps=2).ok


def test_options_shared_between_frames_are_each_grammars_own(processor):
    """Frames differ in their anchors: options cached for one frame (anchor-free, or keyed by the one mark's anchor
    being written, a finished number forgotten) must be exactly what the next frame's own grammar allows."""
    vocab = processor.trace_vocabulary
    frames = [TraceGrammar(expect_25d=True, expect_steps=3, mark_ids=frozenset({1, 4, 12}), final_mark=1,
                           anchors={4: (30, 200, 57), 1: gripper}) for gripper in ((128, 31, 20), (97, 31, 20), (128, 5, 2))]
    rng = np.random.default_rng(9)
    for grammar in frames + frames[::-1]:
        for _ in range(8):
            state = grammar.initial_state()
            for _ in range(60):
                ids, _, next_states = vocab.options(grammar, state)
                if state.phase not in (Phase.START, Phase.END, Phase.DONE, Phase.AFTER_MARK):
                    own = vocab.trie.walk(grammar, state)
                    assert sorted(ids.tolist()) == sorted(token for token, _ in own)
                    assert all(next_states[token] == nxt for token, nxt in own)
                if state.phase == Phase.DONE:
                    break
                # Mostly the anchored values (as a model trained on them writes), sometimes anything allowed.
                state = next_states[int(ids[rng.integers(len(ids))])] if rng.random() < 0.3 else \
                    next_states[int(ids[0])]

"""`LeanLlamaDecoder`: transformers' logits through prefill, multi-token steps and crops; the same greedy traces."""
import numpy as np
import pytest
import torch

from magma_core.errors import InvalidInputError
from magma_core.model import MagmaConfig, MagmaForConditionalGeneration, MagmaProcessor, TraceGrammar
from magma_core.model.fast_decode import greedy_trace_ids
from magma_core.model.lean_decoder import LeanLlamaDecoder, check_lean_support, merged_input_embeddings
from magma_core.model.tokenizer_tiny import IMAGE_ID, train_tiny_tokenizer
from magma_core.prompts import trace_prompt
from model_fixtures import SMALL, one_torch_thread  # noqa: E402,F401

MARKS = [(1, (10, 20)), (2, (100, 200)), (7, (30, 40))]
# Steps after the prefill: (tokens fed, logits rows kept, tokens cropped afterwards). Covers one-row
# steps, draft-sized blocks, a block longer than the few-rows product (> 8 rows) and crops of each.
STEPS = [(4, 4, 2), (1, 1, 0), (6, 3, 5), (2, 2, 0), (11, 11, 4), (3, 1, 1), (1, 1, 1), (5, 5, 0)]


@pytest.fixture(scope="module")
def processor():
    return MagmaProcessor.for_config(train_tiny_tokenizer(), MagmaConfig.magma_tiny(**SMALL))


def _model(seed: int, text: dict | None = None):
    torch.manual_seed(seed)
    config = MagmaConfig.magma_tiny(text={**SMALL["text"], **(text or {})}, vision=SMALL["vision"], image_size=SMALL["image_size"])
    return MagmaForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def model():
    return _model(3)


def _batch(processor, seed=0, instruction="put the red cube on the pad"):
    image = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return processor([image], [trace_prompt(instruction, MARKS, 2, with_depth=True)])


def _compare_with_transformers(model, batch, steps=STEPS, capacity=0, keep_first=3):
    """Feed the same tokens to the model's forward (DynamicCache) and to the lean decoder; return the largest logit gap."""
    ids = batch["input_ids"]
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.inference_mode():
        out = model(input_ids=ids, pixel_values=batch["pixel_values"], image_grids=batch["image_grids"],
                    attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=keep_first)
        cache, seen = out.cache, ids.shape[1]
        lean = LeanLlamaDecoder(model, capacity)
        logits = lean.prefill(merged_input_embeddings(model, ids, batch["pixel_values"], batch["image_grids"]), keep_first)
        assert logits.shape == out.logits[0].shape
        worst = max(worst, float((logits - out.logits[0]).abs().max()))
        for n, keep, crop in steps:
            new = torch.randint(IMAGE_ID + 1, model.config.text_config.vocab_size, (1, n), generator=generator)
            out = model(input_ids=new, attention_mask=torch.ones(1, seen + n, dtype=torch.long), cache=cache,
                        use_cache=True, logits_to_keep=keep)
            logits = lean.step(new[0].tolist(), keep)
            assert logits.shape == (keep, model.config.text_config.vocab_size)
            worst = max(worst, float((logits - out.logits[0]).abs().max()))
            seen += n
            if crop:
                cache.crop(-crop)
                lean.crop_last(crop)
                seen -= crop
            assert lean.length == seen == cache.get_seq_length()
    return worst


# ------------------------------------------------------------------ logits


def test_logits_match_transformers_through_prefill_steps_and_crops(model, processor):
    assert _compare_with_transformers(model, _batch(processor)) < 1e-4


@pytest.mark.parametrize("heads, kv_heads, head_dim", [(4, 4, 32), (8, 2, 32)])
def test_other_head_layouts_match_too(processor, heads, kv_heads, head_dim):
    """Plain multi-head attention and four query heads per key/value head."""
    model = _model(6, {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim})
    assert _compare_with_transformers(model, _batch(processor, 3), steps=STEPS[:5]) < 1e-4


@pytest.mark.parametrize("heads, kv_heads, head_dim", [(None, None, None), (8, 2, 32)])
def test_sibling_branches_in_one_call_equal_feeding_each_alone(processor, heads, kv_heads, head_dim):
    model = _model(3) if heads is None else _model(6, {"num_attention_heads": heads, "num_key_value_heads": kv_heads,
                                                        "head_dim": head_dim})
    batch = _batch(processor, 4)
    ids = batch["input_ids"]
    lean = LeanLlamaDecoder(model, capacity=ids.shape[1] + 4)  # the branches outgrow it: the cache must grow
    lean.prefill(merged_input_embeddings(model, ids, batch["pixel_values"], batch["image_grids"]))
    lean.step([IMAGE_ID + 5, IMAGE_ID + 9], 1)
    held = lean.length
    branches = [[IMAGE_ID + 11, IMAGE_ID + 12, IMAGE_ID + 13], [IMAGE_ID + 21], [IMAGE_ID + 31, IMAGE_ID + 32, IMAGE_ID + 33, IMAGE_ID + 34]]
    together = lean.score_branches(branches)
    assert lean.length == held and [t.shape[0] for t in together] == [3, 1, 4]
    for branch, logits in zip(branches, together):
        alone = lean.step(branch, len(branch))
        lean.crop_last(len(branch))
        assert float((logits - alone).abs().max()) < 1e-4
    after = lean.step([IMAGE_ID + 40], 1)  # the sequence held is untouched by the branches
    lean.crop_last(1)
    lean.score_branches(branches)
    assert torch.equal(after, lean.step([IMAGE_ID + 40], 1))
    with pytest.raises(InvalidInputError, match="non-empty"):
        lean.score_branches([[IMAGE_ID + 1], []])

def test_the_cache_grows_past_its_first_capacity(model, processor):
    batch = _batch(processor, 1)
    prompt = batch["input_ids"].shape[1]
    lean = LeanLlamaDecoder(model, capacity=prompt + 2)
    assert lean.capacity >= max(prompt + 2, 64) and lean.capacity % 64 == 0
    # Ten 9-token steps outgrow that allocation several times over; the logits stay the transformers ones.
    assert _compare_with_transformers(model, batch, steps=[(9, 2, 1)] * 10, capacity=prompt + 2) < 1e-4


def test_attention_biases_are_used(processor):
    model = _model(4, {"attention_bias": True})
    with torch.no_grad():
        for layer in model.language_model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj):
                proj.bias.normal_(0, 0.5)
    assert _compare_with_transformers(model, _batch(processor, 2), steps=STEPS[:4]) < 1e-4


def test_inputs_are_checked(model, processor):
    lean = LeanLlamaDecoder(model)
    vocab = model.config.text_config.vocab_size
    with pytest.raises(InvalidInputError, match="inputs_embeds must be"):
        lean.prefill(torch.zeros(2, 3, model.config.text_config.hidden_size))
    lean.prefill(torch.zeros(1, 5, model.config.text_config.hidden_size), 2)
    with pytest.raises(InvalidInputError, match="token ids"):
        lean.step([3, vocab])
    with pytest.raises(InvalidInputError, match="token ids"):
        lean.step(torch.tensor([-1]))
    with pytest.raises(InvalidInputError, match="image placeholder"):
        lean.step([IMAGE_ID])
    with pytest.raises(InvalidInputError, match="logits_to_keep"):
        lean.step([5, 6], logits_to_keep=3)
    with pytest.raises(InvalidInputError, match="no tokens"):
        lean.step([])
    with pytest.raises(InvalidInputError, match="crop_last"):
        lean.crop_last(6)
    assert lean.length == 5
    batch = _batch(processor)
    with pytest.raises(InvalidInputError, match="no pixel_values"):
        merged_input_embeddings(model, batch["input_ids"])


# ------------------------------------------------------------------ greedy traces


@pytest.mark.parametrize(
    "seed, grammar, prefix",
    [
        (0, TraceGrammar(expect_steps=3, expect_25d=True, mark_ids=frozenset({1}), max_marks=1), ""),
        (1, TraceGrammar(expect_steps=3, expect_25d=True, mark_ids=frozenset({1, 2, 7}), max_marks=2), ""),
        (2, TraceGrammar(), "<trace_start>Mark 1: [(114,74,59,"),
        (3, TraceGrammar(expect_25d=False, max_marks=3), "<trace_start>"),
    ],
)
def test_greedy_trace_ids_are_the_same_on_both_backends(processor, seed, grammar, prefix):
    model, batch = _model(10 + seed), _batch(processor, seed)
    positions = {1: (10, 20, 5), 2: (100, 200, 9), 7: (30, 40, 3)} if seed % 2 else None
    results = {}
    for backend in ("transformers", "lean", "auto"):
        stats = {}
        ids = greedy_trace_ids(model, processor, batch, grammar, 64, forced_prefix=prefix, stats=stats,
                               mark_positions=positions, moving_mark=1, backend=backend)
        results[backend] = (ids.tolist(), stats["forward_calls"], stats["backend"])
    assert results["transformers"][2] == "transformers" and results["lean"][2] == "lean" == results["auto"][2]
    assert results["lean"][:2] == results["transformers"][:2] == results["auto"][:2]
    assert processor.decode_trace(torch.tensor(results["lean"][0][0]), expect_25d=grammar.expect_25d).ok


# ------------------------------------------------------------------ what the lean path refuses


def _backend(model, processor, backend="auto"):
    stats = {}
    grammar = TraceGrammar(expect_steps=2, expect_25d=True, mark_ids=frozenset({1}), max_marks=1)
    ids = greedy_trace_ids(model, processor, _batch(processor), grammar, 48, stats=stats, backend=backend)
    return stats["backend"], ids.tolist()


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda: _model(5, {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}), "rope_type 'linear'"),
        (lambda: _model(5).train(), "eval mode"),
        (lambda: _eager(_model(5)), "'sdpa'"),
    ],
)
def test_unsupported_models_fall_back_or_are_refused(processor, make, problem):
    model = make()
    with pytest.raises(InvalidInputError, match=problem):
        check_lean_support(model)
    with pytest.raises(InvalidInputError, match="backend='lean' cannot run this model"):
        _backend(model, processor, "lean")
    backend, ids = _backend(model, processor)
    assert backend == "transformers" and ids == _backend(model, processor, "transformers")[1]


def _eager(model):
    model.set_attn_implementation("eager")
    return model


def test_a_wrapped_or_hooked_forward_keeps_the_transformers_path(model, processor):
    """Instrumentation that wraps or hooks the model expects to see every call."""
    assert _backend(model, processor)[0] == "lean"
    calls = []
    inner = model.forward
    model.forward = lambda *args, **kwargs: calls.append(1) or inner(*args, **kwargs)
    try:
        assert _backend(model, processor)[0] == "transformers" and calls
    finally:
        del model.forward
    handle = model.language_model.model.layers[0].register_forward_hook(lambda *args: calls.append(2))
    try:
        assert _backend(model, processor)[0] == "transformers" and 2 in calls
        assert _backend(model, processor, "lean")[0] == "lean"  # asked for explicitly: runs, hook or not
    finally:
        handle.remove()


def test_backend_names_are_checked(model, processor):
    with pytest.raises(InvalidInputError, match="backend must be one of"):
        _backend(model, processor, "fast")


# ------------------------------------------------------------------ packed weights


@pytest.mark.parametrize("layout", ["in_out", "out_in"])
def test_both_weight_layouts_match_transformers(processor, layout, monkeypatch):
    """Whichever layout this CPU measures faster, the arithmetic is the model's (checked for both)."""
    import magma_core.model.lean_decoder as lean_decoder

    monkeypatch.setattr(lean_decoder, "_layout_measured", layout)
    model = _model(8, {"attention_bias": True})
    with torch.no_grad():
        for layer in model.language_model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    assert LeanLlamaDecoder(model).layout == layout
    assert _compare_with_transformers(model, _batch(processor, 5), steps=STEPS[:5]) < 1e-4


def test_the_layout_is_measured_once_and_is_one_of_the_two():
    from magma_core.model.lean_decoder import LAYOUTS, projection_layout

    first = projection_layout()
    assert first in LAYOUTS and projection_layout() == first
    with pytest.raises(InvalidInputError, match="layout"):
        LeanLlamaDecoder(_model(2), layout="diagonal")


def test_a_decoder_built_after_training_runs_the_new_weights(processor):
    """Packed weights are kept per model and rebuilt when a parameter changes (in place, as an optimizer does, or
    replaced): evaluation during training must never run stale weights."""
    from magma_core.model.lean_decoder import PackedWeights

    model, batch = _model(9), _batch(processor, 2)
    ids = batch["input_ids"]

    def last_logits():
        lean = LeanLlamaDecoder(model)
        return lean.prefill(merged_input_embeddings(model, ids, batch["pixel_values"], batch["image_grids"]))

    before = last_logits()
    packed = PackedWeights.for_model(model.language_model)
    assert PackedWeights.for_model(model.language_model) is packed  # unchanged weights: reused, not copied again
    with torch.no_grad():
        model.language_model.model.layers[0].mlp.up_proj.weight.mul_(1.5)  # in place
    changed = last_logits()
    assert PackedWeights.for_model(model.language_model) is not packed
    assert float((changed - before).abs().max()) > 1e-3
    assert _compare_with_transformers(model, batch, steps=STEPS[:3]) < 1e-4
    model.language_model.model.layers[1].self_attn.v_proj.weight = torch.nn.Parameter(
        model.language_model.model.layers[1].self_attn.v_proj.weight.detach() * 0.5)  # replaced
    assert float((last_logits() - changed).abs().max()) > 1e-4
    assert _compare_with_transformers(model, batch, steps=STEPS[:3]) < 1e-4

"""MagmaForConditionalGeneration: image positions, loss, training, safetensors round trip, generation with the KV cache."""
import os

import numpy as np
import pytest
import torch

from magma_core.errors import InvalidInputError
from magma_core.model import MagmaConfig, MagmaForConditionalGeneration, MagmaProcessor
from magma_core.model.tokenizer_tiny import IMAGE_ID, train_tiny_tokenizer
from magma_core.prompts import action_prompt
from model_fixtures import SMALL, one_torch_thread  # noqa: E402,F401


@pytest.fixture(scope="module")
def processor():
    return MagmaProcessor.for_config(train_tiny_tokenizer(), MagmaConfig.magma_tiny(**SMALL))


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return MagmaForConditionalGeneration(MagmaConfig.magma_tiny(**SMALL)).eval()


def _image(seed):
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _batch(processor, instructions, answers, padding_side="right"):
    examples = [processor.build_example(_image(i), action_prompt(text), answer=answer) for i, (text, answer) in enumerate(zip(instructions, answers))]
    return processor.collate(examples, padding_side=padding_side)


def test_forward_shapes_and_answer_only_loss(model, processor):
    batch = _batch(processor, ["push the cube", "open the top drawer"], ["Mark 1", "Marks 2 and 5"])
    out = model(**batch)
    assert out.logits.shape == (2, batch["input_ids"].shape[1], processor.vocab_size)
    labels = batch["labels"][:, 1:]
    logits = out.logits[:, :-1]
    keep = labels != -100
    manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(out.loss, manual, atol=1e-5)
    assert int(keep.sum()) == sum(len(processor.encode_answer(a)) for a in ["Mark 1", "Marks 2 and 5"])


def test_image_features_fill_exactly_the_placeholders(model, processor):
    config = model.config
    features = model.get_image_features(torch.randn(3, 3, 64, 64), torch.tensor([[1, 1], [1, 2]]))
    side = config.features_per_side
    assert features.shape == (config.num_image_tokens(1, 1) + config.num_image_tokens(1, 2), config.text_config.hidden_size)
    with torch.no_grad():
        model.multi_modal_projector.row_separator.fill_(7.0)
        features = model.get_image_features(torch.randn(1, 3, 64, 64))
    rows = features.view(side, side + 1, -1)
    assert torch.all(rows[:, -1] == 7.0) and not torch.any(rows[:, :-1] == 7.0)


def test_images_change_only_positions_after_them(model, processor):
    batch = processor([_image(0)], [action_prompt("push the cube")])
    other = dict(batch, pixel_values=torch.from_numpy(processor.image_processor.preprocess(_image(9))[0]))
    first_image = int((batch["input_ids"][0] == IMAGE_ID).nonzero()[0])
    with torch.no_grad():
        a, b = model(**batch).logits, model(**other).logits
    assert torch.equal(a[:, :first_image], b[:, :first_image])  # causal: text before the image ignores it
    assert not torch.allclose(a[:, -1], b[:, -1])  # the answer position sees the image


def test_mismatched_image_inputs_are_refused(model, processor):
    batch = processor([_image(0)], [action_prompt("push the cube")])
    with pytest.raises(InvalidInputError, match="no pixel_values"):
        model(input_ids=batch["input_ids"])
    with pytest.raises(InvalidInputError, match="image positions but the images give"):
        model(input_ids=batch["input_ids"][:, 5:], pixel_values=batch["pixel_values"])
    with pytest.raises(InvalidInputError, match="describe 2 crops"):
        model(**dict(batch, image_grids=torch.tensor([[1, 2]])))


def test_overfits_one_batch(processor):
    torch.manual_seed(0)
    model = MagmaForConditionalGeneration(MagmaConfig.magma_tiny(**SMALL)).train()
    batch = _batch(processor, ["push the cube", "open the drawer", "lift the red bowl", "stack the blocks"],
                   ["Mark 1", "Mark 7", "Marks 2 and 3", "Mark 4"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::8]


def test_safetensors_round_trip_gives_identical_outputs(model, processor, tmp_path):
    batch = processor([_image(0), _image(1)], [action_prompt("push the cube"), action_prompt("open the drawer")])
    model.save_pretrained(tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith((".bin", ".pt", ".pth"))]
    loaded = MagmaForConditionalGeneration.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, MagmaForConditionalGeneration.from_pretrained(sharded)(**batch).logits)
    with pytest.raises(InvalidInputError, match="safetensors only"):
        model.save_pretrained(tmp_path / "pickle", safe_serialization=False)


def test_generate_with_cache_equals_without_and_batching_is_exact(model, processor):
    prompts = [action_prompt("push the cube"), action_prompt("put the red cube on the green pad behind the bowl")]
    batch = processor([_image(0), _image(1)], prompts)  # left-padded: the first prompt is shorter
    assert batch["attention_mask"][0, 0] == 0
    kwargs = dict(max_new_tokens=12, do_sample=False, min_new_tokens=12)
    with torch.no_grad():
        cached = model.generate(**batch, use_cache=True, **kwargs)
        uncached = model.generate(**batch, use_cache=False, **kwargs)
        alone = [model.generate(**processor([_image(i)], [p]), **kwargs) for i, p in enumerate(prompts)]
    assert torch.equal(cached, uncached)
    width = batch["input_ids"].shape[1]
    for row, single in enumerate(alone):
        assert torch.equal(cached[row, width:], single[0, single.shape[1] - 12 :])
    assert not (cached[:, width:] == IMAGE_ID).any()  # the placeholder id is never generated

"""MagmaProcessor: image checks and crops, <image> expansion, labels, padding, decoding, files."""
import json

import numpy as np
import pytest
import torch

from magma_core.codecs.action_tokenizer import ActionNormStats, ActionTokenizer
from magma_core.codecs.trace_text import GridTrace
from magma_core.errors import InvalidInputError
from magma_core.model import MagmaConfig, MagmaImageProcessor, MagmaProcessor, UnparsableOutputError
from magma_core.model.image_processing_magma import CLIP_MEAN, CLIP_STD
from magma_core.model.tokenizer_tiny import EOS_ID, IMAGE_ID, PAD_ID, TRACE_START_ID, train_tiny_tokenizer
from magma_core.prompts import action_prompt, trace_answer, trace_prompt


@pytest.fixture(scope="module")
def processor():
    return MagmaProcessor.for_config(train_tiny_tokenizer(), MagmaConfig.magma_tiny())


def _image(height=96, width=128, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((64, 64, 3), np.float32), "dtype float32"),
        (np.zeros((64, 64, 4), np.uint8), "RGBA"),
        (np.zeros((64, 64), np.uint8), "grayscale"),
        (np.zeros((8, 64, 3), np.uint8), "at least 16"),
        ([[0, 0, 0]], "numpy array"),
        ("frame.png", "numpy array"),
    ],
)
def test_bad_images_get_named_errors(processor, image, message):
    with pytest.raises(InvalidInputError, match=message):
        processor.image_processor.preprocess(image)


def test_crops_are_normalised_and_row_major():
    proc = MagmaImageProcessor(image_size=32, max_num_crops=4)
    image = np.zeros((32, 128, 3), np.uint8)  # a wide strip: 1 row of 4 crops, no resizing
    for col in range(4):
        image[:, col * 32 : (col + 1) * 32] = 60 * col
    crops, grid = proc.preprocess(image)
    assert grid == (1, 4) and crops.shape == (4, 3, 32, 32) and crops.dtype == np.float32
    for col in range(4):
        expected = (60 * col / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0]
        np.testing.assert_allclose(crops[col, 0], expected, rtol=1e-5)


def test_grid_choice_follows_aspect_and_limit():
    proc = MagmaImageProcessor(image_size=512, max_num_crops=4)
    assert proc.select_grid(1024, 1024) == (2, 2)
    assert proc.select_grid(2048, 500) == (1, 4)
    assert proc.select_grid(500, 2048) == (4, 1)
    assert proc.select_grid(300, 200) == (1, 1)
    assert MagmaImageProcessor(image_size=128, max_num_crops=1).select_grid(4000, 100) == (1, 1)


def test_image_placeholder_expands_to_the_feature_layout(processor):
    ids, pixels, grids = processor.encode_prompt(action_prompt("put the cube on the pad"), _image())
    assert ids[0] == processor.tokenizer.bos_token_id
    assert ids.count(IMAGE_ID) == 8 * (8 + 1) == processor.num_image_tokens((1, 1))
    assert pixels.shape == (1, 3, 128, 128) and grids == [(1, 1)]
    with pytest.raises(InvalidInputError, match="1 <image> placeholder"):
        processor.encode_prompt(action_prompt("put the cube on the pad"), [_image(), _image(seed=1)])


def test_example_labels_cover_only_the_answer(processor):
    marks = [(1, (10, 20)), (2, (100, 200))]
    answer = trace_answer([GridTrace(1, np.array([[10, 20], [12, 22]])), GridTrace(2, np.array([[100, 200], [90, 190]]))])
    example = processor.build_example(_image(), trace_prompt("put the cube on the pad", marks, 1), answer=answer)
    n_prompt = example.labels.count(-100)
    assert all(label == -100 for label in example.labels[:n_prompt])
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]
    assert example.input_ids[n_prompt] == TRACE_START_ID and example.input_ids[-1] == EOS_ID
    assert processor.decode_text(example.input_ids[n_prompt:]) == answer


def test_action_answer_ids_and_their_decoding(processor):
    codec = ActionTokenizer(processor.vocab_size, ActionNormStats(-np.ones(7), np.ones(7)))
    action = np.array([0.1, -0.2, 0.3, 0.0, 0.5, -0.9, 1.0])
    example = processor.build_example(_image(), action_prompt("open the drawer"), answer_ids=codec.encode(action))
    answer = example.input_ids[example.labels.count(-100) :]
    assert len(answer) == 8 and answer[-1] == EOS_ID
    np.testing.assert_allclose(processor.decode_actions(answer, codec), action[None], atol=1 / 256 + 1e-9)
    with pytest.raises(UnparsableOutputError, match="expected a multiple of 7"):
        processor.decode_actions(answer[:5] + [EOS_ID], codec)
    with pytest.raises(UnparsableOutputError, match="not action tokens"):
        processor.decode_actions([5] + answer[1:], codec)
    with pytest.raises(InvalidInputError, match="writes action ids"):
        processor.decode_actions(answer, ActionTokenizer(4096, ActionNormStats(-np.ones(7), np.ones(7))))


def test_collate_pads_right_for_training_and_left_for_generation(processor):
    short = processor.build_example(_image(), action_prompt("push the cube"), answer="Mark 1")
    long = processor.build_example(_image(seed=2), action_prompt("put the red cube on the green pad behind the bowl"), answer="Mark 2")
    batch = processor.collate([short, long], padding_side="right")
    n = len(short.input_ids)
    assert batch["input_ids"].shape[1] == len(long.input_ids)
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    assert (batch["input_ids"][0, n:] == PAD_ID).all() and (batch["labels"][0, n:] == -100).all()
    assert batch["pixel_values"].shape == (2, 3, 128, 128) and batch["image_grids"].tolist() == [[1, 1], [1, 1]]
    inference = processor([_image(), _image(seed=2)], [action_prompt("push the cube"), action_prompt("put the red cube on the green pad behind the bowl")])
    assert "labels" not in inference
    assert inference["attention_mask"][0, -1] == 1 and inference["attention_mask"][0, 0] == 0
    assert inference["input_ids"][0, -1].item() == inference["input_ids"][1, -1].item()  # both end with the newline


def test_too_long_examples_are_refused(processor):
    with pytest.raises(InvalidInputError, match="more than the model's 1024"):
        processor.build_example(_image(), action_prompt("push the cube"), answer="Mark 1 " * 600)


def test_decode_trace_stops_at_eos_and_reports_errors(processor):
    good = processor.tokenizer.encode("<trace_start>Mark 1: [(1,2),(3,4)]<trace_end>", add_special_tokens=False)
    result = processor.decode_trace(torch.tensor(good + [EOS_ID, PAD_ID, PAD_ID]), expect_steps=2)
    assert result.ok and result.traces[0].cells.tolist() == [[1, 2], [3, 4]]
    cut = processor.decode_trace(good[:-3])
    assert not cut.ok and cut.error.code == "truncated"


def test_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["features_per_side"] == 8
    again = MagmaProcessor.from_pretrained(tmp_path)
    prompt = action_prompt("put the cube on the pad")
    a, pa, _ = processor.encode_prompt(prompt, _image())
    b, pb, _ = again.encode_prompt(prompt, _image())
    assert a == b and np.array_equal(pa, pb)
    again.check_model_config(MagmaConfig.magma_tiny())
    with pytest.raises(InvalidInputError, match="image feature layout"):
        again.check_model_config(MagmaConfig.magma_tiny(image_size=64))


def test_official_preprocessor_files_load(processor, tmp_path):
    processor.tokenizer.save_pretrained(tmp_path)
    official = {"anyres_strategy": "crop", "base_img_size": 512, "num_crops": 4, "image_mean": list(CLIP_MEAN),
                "image_std": list(CLIP_STD), "image_processor_type": "MagmaImageProcessor"}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(official))
    loaded = MagmaProcessor.from_pretrained(tmp_path)
    assert loaded.image_processor.image_size == 512 and loaded.image_processor.max_num_crops == 4
    assert loaded.features_per_side == 16 and loaded.prompt_style == "chat"
    assert loaded.num_image_tokens((2, 2)) == MagmaConfig.magma_8b().num_image_tokens(2, 2)


def test_missing_processor_files_are_named(tmp_path):
    with pytest.raises(InvalidInputError, match="no tokenizer.json"):
        MagmaProcessor.from_pretrained(tmp_path)

"""The magma-tiny tokenizer: fixed layout, action tokens last, numbers and trace text round-trip."""
import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from magma_core.codecs.action_tokenizer import ActionNormStats, ActionTokenizer
from magma_core.codecs.trace_text import GridTrace, encode_traces
from magma_core.model.tokenizer_tiny import (
    BOS_ID,
    EOS_ID,
    IMAGE_ID,
    PAD_ID,
    TINY_VOCAB_SIZE,
    TRACE_END_ID,
    TRACE_START_ID,
    action_token,
    check_tiny_layout,
    train_tiny_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer()


def test_layout_special_tokens_first_actions_last(tokenizer):
    assert len(tokenizer) == TINY_VOCAB_SIZE
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert tokenizer.convert_tokens_to_ids(["<image>", "<trace_start>", "<trace_end>"]) == [IMAGE_ID, TRACE_START_ID, TRACE_END_ID]
    first = TINY_VOCAB_SIZE - 256
    assert [tokenizer.convert_tokens_to_ids(action_token(i)) for i in range(256)] == list(range(first, TINY_VOCAB_SIZE))
    # The shared ActionTokenizer maps bin i to the same id as the tokenizer's <act_i>.
    codec = ActionTokenizer(len(tokenizer), ActionNormStats(-np.ones(7), np.ones(7)))
    assert codec.action_id_range == (first, TINY_VOCAB_SIZE)
    ids = codec.encode(np.array([-1.0, -0.5, 0.0, 0.25, 0.5, 0.99, 1.0]))
    assert tokenizer.convert_ids_to_tokens(ids.tolist())[0] == "<act_000>"


def test_training_is_deterministic(tokenizer):
    assert train_tiny_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_every_grid_number_is_one_token(tokenizer):
    for number in range(256):
        assert len(tokenizer.encode(str(number), add_special_tokens=False)) == 1, number


def test_trace_text_round_trips_with_markers_atomic(tokenizer):
    traces = [GridTrace(1, np.array([[120, 45], [123, 47]])), GridTrace(12, np.array([[0, 255], [7, 200]]))]
    text = encode_traces(traces)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == TRACE_START_ID and ids[-1] == TRACE_END_ID
    assert tokenizer.decode(ids) == text
    depth = encode_traces([GridTrace(3, np.array([[1, 2]]), np.array([57]), np.array([1]))])
    assert tokenizer.decode(tokenizer.encode(depth, add_special_tokens=False)) == depth


def test_unseen_text_still_encodes(tokenizer):
    text = "Pick up the ramekin, then wipe the über-shiny counter 1234"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_save_and_reload_keep_the_layout(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    check_tiny_layout(again)
    text = "<image>\nWhat action should the robot take to put the red cube on the pad?"
    assert again.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)


def test_layout_check_names_the_problem(tokenizer):
    from tokenizers import Tokenizer, models

    broken = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token="</s>")
    with pytest.raises(ValueError, match="magma-tiny layout"):
        check_tiny_layout(broken)

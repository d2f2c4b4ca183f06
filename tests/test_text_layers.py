"""keep_text_layers: a shallower student that holds the chosen layers' weights and everything else unchanged."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from magma_core.errors import InvalidInputError  # noqa: E402
from magma_core.model import MagmaConfig, MagmaForConditionalGeneration  # noqa: E402
from magma_core.model.text_layers import keep_text_layers  # noqa: E402
from model_fixtures import one_torch_thread  # noqa: E402,F401

FOUR_LAYERS = dict(text={"num_hidden_layers": 4, "hidden_size": 64, "intermediate_size": 128}, vision={"hidden_sizes": [8, 16, 32]},
                   image_size=64)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return MagmaForConditionalGeneration(MagmaConfig.magma_tiny(**FOUR_LAYERS)).eval()


def test_student_holds_the_kept_layers_in_order_and_every_other_weight(teacher):
    student = keep_text_layers(teacher, [0, 3])
    assert student.config.text_config.num_hidden_layers == 2 and len(student.language_model.model.layers) == 2
    assert teacher.config.text_config.num_hidden_layers == 4  # the teacher's config is left alone
    source = teacher.state_dict()
    for key, tensor in student.state_dict().items():
        layer_one = "language_model.model.layers.1."
        expected = source[key.replace(layer_one, "language_model.model.layers.3.") if key.startswith(layer_one) else key]
        assert torch.equal(tensor, expected), key
    assert not student.training


def test_student_computes_what_the_teacher_computes_with_the_dropped_layers_skipped(teacher):
    """Skipping layers 1 and 2 of the teacher by hand gives the student's logits."""
    student = keep_text_layers(teacher, [0, 3])
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    kept = torch.nn.ModuleList([teacher.language_model.model.layers[i] for i in (0, 3)])
    everything = teacher.language_model.model.layers
    with torch.no_grad():
        expected_logits = None
        try:
            teacher.language_model.model.layers = kept
            teacher.language_model.config.num_hidden_layers = 2
            expected_logits = teacher(input_ids=ids, use_cache=False).logits
        finally:
            teacher.language_model.model.layers = everything
            teacher.language_model.config.num_hidden_layers = 4
        logits = student(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_student_round_trips_through_save_and_load(teacher, tmp_path):
    student = keep_text_layers(teacher, [1])
    student.save_pretrained(tmp_path)
    loaded = MagmaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.text_config.num_hidden_layers == 1
    ids = torch.tensor([[1, 50, 51, 52]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, student(input_ids=ids).logits)


@pytest.mark.parametrize("indices", [[], [4], [2, 1], [1, 1], [-1]])
def test_bad_layer_lists_are_refused(teacher, indices):
    with pytest.raises(InvalidInputError, match="distinct, increasing indices in \\[0, 4\\)"):
        keep_text_layers(teacher, indices)

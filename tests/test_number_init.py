"""Number-aware initialisation: number tokens start ordered (near values near), the rest untouched."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from magma_core.errors import InvalidInputError  # noqa: E402
from magma_core.model import MagmaConfig, MagmaForConditionalGeneration  # noqa: E402
from magma_core.model.number_init import fourier_number_features, init_number_embeddings, number_token_values  # noqa: E402
from magma_core.training.trainer import _tiny_tokenizer  # noqa: E402
from model_fixtures import SMALL, one_torch_thread  # noqa: E402,F401


def test_every_grid_value_has_one_number_token():
    values = number_token_values(_tiny_tokenizer())
    assert sorted(values.values()) == list(range(256))


def test_number_rows_become_ordered_features_and_other_rows_stay():
    torch.manual_seed(0)
    model = MagmaForConditionalGeneration(MagmaConfig.magma_tiny(**SMALL))
    tokenizer = _tiny_tokenizer()
    before = model.get_input_embeddings().weight.detach().clone()
    assert init_number_embeddings(model, tokenizer) == 256
    weight = model.get_input_embeddings().weight.detach()
    ids = {value: token for token, value in number_token_values(tokenizer).items()}
    cos = torch.nn.functional.cosine_similarity
    near = float(cos(weight[ids[100]], weight[ids[101]], dim=0))
    far = float(cos(weight[ids[100]], weight[ids[200]], dim=0))
    assert near > 0.5 and abs(far) < 0.3
    others = [i for i in range(weight.shape[0]) if i not in set(ids.values())]
    assert torch.equal(weight[others], before[others])
    assert abs(float(weight[list(ids.values())].std()) / float(before.std()) - 1.0) < 0.2  # same scale as the rest
    head = model.get_output_embeddings().weight.detach()
    assert float(cos(head[ids[50]], head[ids[51]], dim=0)) > 0.5


def test_features_are_unit_variance_and_dim_is_checked():
    features = fourier_number_features(torch.arange(256), 64)
    assert features.shape == (256, 64) and abs(float(features.pow(2).mean()) - 1.0) < 0.05
    with pytest.raises(InvalidInputError):
        fourier_number_features(torch.arange(3), 1)

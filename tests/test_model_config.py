"""MagmaConfig: presets, derived sizes, validation, round trip; the 8B shapes built on the meta device."""
import pytest
import torch

from magma_core.errors import InvalidInputError
from magma_core.model import MagmaConfig, MagmaForConditionalGeneration
from magma_core.model.configuration_magma import MAGMA_8B_IMAGE_TOKEN_ID, MAGMA_8B_VOCAB_SIZE


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_magma_8b_shapes_on_meta_device():
    config = MagmaConfig.magma_8b()
    with torch.device("meta"):
        model = MagmaForConditionalGeneration(config)
    vision = model.vision_tower.encoder.stages
    assert [len(stage.layers) for stage in vision] == [3, 4, 30, 3]
    assert model.vision_tower.embeddings.patch_embeddings.out_channels == 384
    assert vision[3].layers[0].pwconv1.in_features == 3072
    decoder = model.language_model.model
    assert len(decoder.layers) == 32
    assert decoder.embed_tokens.weight.shape == (MAGMA_8B_VOCAB_SIZE, 4096)
    assert decoder.layers[0].self_attn.k_proj.out_features == 8 * 128  # 8 KV heads of 128
    assert decoder.layers[0].mlp.gate_proj.out_features == 14336
    assert config.text_config.rope_parameters["rope_theta"] == 500000.0
    assert model.multi_modal_projector.proj[0].in_features == 3072
    # ConvNeXt-XXLarge as in timm: every LayerNorm of the tower uses eps 1e-5.
    assert model.vision_tower.encoder.stages[2].layers[5].layernorm.eps == 1e-5
    # Published sizes: ConvNeXt-XXLarge trunk ~843M, Llama-3-8B 8.03B (with Magma's 5 extra tokens).
    assert _count(model.vision_tower) == 843_391_872
    assert _count(model.language_model) == 8_030_302_208
    assert _count(model) == 8_903_066_496


def test_magma_8b_image_positions_match_magma():
    config = MagmaConfig.magma_8b()
    assert config.vision_stride == 32 and config.features_per_side == 16
    # Magma: rows*cols*256 + rows*16 positions for a rows x cols crop grid.
    for rows, cols in [(1, 1), (2, 2), (1, 4), (4, 1)]:
        assert config.num_image_tokens(rows, cols) == rows * cols * 256 + rows * 16
    assert config.image_token_id == MAGMA_8B_IMAGE_TOKEN_ID


def test_magma_tiny_sizes():
    config = MagmaConfig.magma_tiny()
    assert config.vision_stride == 16 and config.features_per_side == 8
    assert config.num_image_tokens() == 8 * 9
    with torch.device("meta"):
        model = MagmaForConditionalGeneration(config)
    assert 3_000_000 < _count(model) < 6_500_000  # fits a ~25 MB float32 checkpoint
    assert model.config.text_config.num_key_value_heads < model.config.text_config.num_attention_heads


def test_overrides_and_round_trip(tmp_path):
    config = MagmaConfig.magma_tiny(text={"num_hidden_layers": 2}, vision={"hidden_sizes": [8, 16, 24]}, image_size=64)
    config.save_pretrained(tmp_path)
    again = MagmaConfig.from_pretrained(tmp_path)
    assert again.text_config.num_hidden_layers == 2
    assert list(again.vision_config.hidden_sizes) == [8, 16, 24]
    assert again.image_size == 64 and again.features_per_side == 4
    assert again.vision_norm_eps == config.vision_norm_eps


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"projector_type": "mlp2x_relu"}, "projector_type"),
        ({"image_size": 100}, "multiple of the vision stride"),
        ({"image_token_id": 99_999}, "outside the vocabulary"),
        ({"max_num_crops": 0}, "max_num_crops"),
    ],
)
def test_invalid_settings_are_named(overrides, message):
    with pytest.raises(InvalidInputError, match=message):
        MagmaConfig.magma_tiny(**overrides)

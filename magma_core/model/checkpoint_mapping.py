"""microsoft/Magma-8B's checkpoint (config.json and tensor names) -> this package's `MagmaConfig` and modules.

Magma-8B's vision tower is open_clip's ConvNeXt-XXLarge, a timm model, under
``vision_tower.clip_vision_model.trunk``; ours is transformers' ConvNeXt. The renames:

    trunk.stem.0 (conv 4x4/4)          -> vision_tower.embeddings.patch_embeddings
    trunk.stem.1 (LayerNorm2d)         -> vision_tower.embeddings.layernorm
    trunk.stages.N.downsample.{0,1}    -> vision_tower.encoder.stages.N.downsampling_layer.{0,1}
    trunk.stages.N.blocks.M.conv_dw    -> vision_tower.encoder.stages.N.layers.M.dwconv
    trunk.stages.N.blocks.M.norm       -> ...layers.M.layernorm
    trunk.stages.N.blocks.M.mlp.fc1    -> ...layers.M.pwconv1
    trunk.stages.N.blocks.M.mlp.fc2    -> ...layers.M.pwconv2
    trunk.stages.N.blocks.M.gamma      -> ...layers.M.layer_scale_parameter
    multi_modal_projector.proj.K       -> multi_modal_projector.proj.K            (Linear, GELU, Linear)
    multi_modal_projector.row_seperator (1, 1, H) -> multi_modal_projector.row_separator (H,)
    language_model.model.* / language_model.lm_head.weight -> the same names (Llama)

Shapes match one to one (timm's ConvNeXt uses Linear MLPs like transformers'). Older
transformers renamed parameters called ``gamma`` to ``weight`` when saving, so a block's own
``weight`` is read as its layer scale too. Tensors Magma never reads are dropped on purpose
(`UNUSED_OFFICIAL_KEYS`): timm's classifier-head norm (applied after pooling), CLIP's image
projection, and rotary buffers some versions saved. Any other name is an error.
"""
from __future__ import annotations

import re

import torch

from magma_core.errors import InvalidInputError

_VISION = r"vision_tower\.clip_vision_model\.trunk\."
_RENAMES: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (_VISION + r"stem\.0\.(weight|bias)$", r"vision_tower.embeddings.patch_embeddings.\1"),
        (_VISION + r"stem\.1\.(weight|bias)$", r"vision_tower.embeddings.layernorm.\1"),
        (_VISION + r"stages\.(\d+)\.downsample\.([01])\.(weight|bias)$", r"vision_tower.encoder.stages.\1.downsampling_layer.\2.\3"),
        (_VISION + r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(weight|bias)$", r"vision_tower.encoder.stages.\1.layers.\2.dwconv.\3"),
        (_VISION + r"stages\.(\d+)\.blocks\.(\d+)\.norm\.(weight|bias)$", r"vision_tower.encoder.stages.\1.layers.\2.layernorm.\3"),
        (_VISION + r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$", r"vision_tower.encoder.stages.\1.layers.\2.pwconv1.\3"),
        (_VISION + r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$", r"vision_tower.encoder.stages.\1.layers.\2.pwconv2.\3"),
        (_VISION + r"stages\.(\d+)\.blocks\.(\d+)\.(?:gamma|weight)$", r"vision_tower.encoder.stages.\1.layers.\2.layer_scale_parameter"),
        (r"^multi_modal_projector\.proj\.(\d+)\.(weight|bias)$", r"multi_modal_projector.proj.\1.\2"),
        (r"^multi_modal_projector\.row_seperator$", r"multi_modal_projector.row_separator"),
        (r"^language_model\.(model\..+)$", r"language_model.\1"),
        (r"^language_model\.(lm_head\.weight)$", r"language_model.\1"),
    )
)
UNUSED_OFFICIAL_KEYS: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern), reason)
    for pattern, reason in (
        (_VISION + r"head\..+", "timm classifier head (norm after pooling); Magma reads the last stage's map"),
        (_VISION + r"norm_pre\..+", "timm pre-head norm (identity in ConvNeXt-XXLarge)"),
        (r"^vision_tower\.clip_vision_model\.head\..+", "CLIP image-text projection, unused by Magma"),
        (r"^language_model\.model\.rotary_emb\.inv_freq$", "rotary frequencies are recomputed from the config"),
        (r"^language_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$", "rotary frequencies are recomputed"),
    )
)
_UNSUPPORTED = (
    (re.compile(r"^multi_modal_projector\.img_(start|end)_seperator$"), "image start/end separators (mm_use_im_start_end)"),
)

# ConvNeXt shapes by Magma's backbone name (timm's definitions; only XXLarge uses eps 1e-5).
BACKBONES = {
    "convnextxxlarge": {"depths": [3, 4, 30, 3], "hidden_sizes": [384, 768, 1536, 3072], "norm_eps": 1e-5},
    "convnextlarge": {"depths": [3, 3, 27, 3], "hidden_sizes": [192, 384, 768, 1536], "norm_eps": 1e-6},
    "convnextbase": {"depths": [3, 3, 27, 3], "hidden_sizes": [128, 256, 512, 1024], "norm_eps": 1e-6},
}
_NOT_TEXT_KEYS = {"auto_map", "architectures", "_name_or_path", "vision_config", "text_config", "model_type", "transformers_version"}


def is_official_config(config: dict) -> bool:
    """True for a Magma-8B style config.json (vision_config names a backbone instead of a ConvNeXt config)."""
    vision = config.get("vision_config")
    return isinstance(vision, dict) and ("vision_backbone" in vision or "mm_projector_type" in vision)


def map_official_key(name: str) -> str | None:
    """Official tensor name -> this model's name; None for a tensor Magma does not use; error for an unknown one."""
    for pattern, reason in _UNSUPPORTED:
        if pattern.match(name):
            raise InvalidInputError(f"checkpoint tensor {name}: {reason} are not supported by this implementation")
    for pattern, _reason in UNUSED_OFFICIAL_KEYS:
        if pattern.match(name):
            return None
    for pattern, replacement in _RENAMES:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    raise InvalidInputError(f"checkpoint tensor {name} has no counterpart in this model (unknown Magma checkpoint layout)")


def adapt_tensor(target: str, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reshape where the layouts differ: Magma's row separator is (1, 1, H), ours (H,)."""
    if target == "multi_modal_projector.row_separator" and tensor.numel() == shape.numel():
        return tensor.reshape(shape)
    return tensor


def official_config_to_magma(config: dict):
    """A Magma-8B style config.json (dict) -> MagmaConfig. Shapes come from the backbone name unless spelled out."""
    from magma_core.model.configuration_magma import MagmaConfig

    vision = config.get("vision_config") or {}
    if vision.get("img_anyres_strategy", "crop") != "crop":
        raise InvalidInputError(f"img_anyres_strategy {vision.get('img_anyres_strategy')!r} is not supported; only 'crop'")
    if vision.get("vision_feature_layer", "clip_vis_dense") != "clip_vis_dense":
        raise InvalidInputError(f"vision_feature_layer {vision.get('vision_feature_layer')!r} is not supported; only 'clip_vis_dense'")
    if vision.get("mm_use_im_start_end", False):
        raise InvalidInputError("mm_use_im_start_end=True (image start/end separators) is not supported")
    backbone = str(vision.get("vision_backbone", "convnextxxlarge"))
    shapes = dict(BACKBONES.get(backbone, {}))
    # A checkpoint may spell its shapes out (the scaled-down test checkpoints do).
    for key in ("depths", "hidden_sizes", "norm_eps"):
        if key in vision:
            shapes[key] = vision[key]
    if "depths" not in shapes or "hidden_sizes" not in shapes:
        raise InvalidInputError(f"unknown vision_backbone {backbone!r}; known: {sorted(BACKBONES)} (or give depths and hidden_sizes)")
    mm_hidden = vision.get("mm_hidden_size")
    if mm_hidden is not None and int(mm_hidden) != int(shapes["hidden_sizes"][-1]):
        raise InvalidInputError(f"mm_hidden_size {mm_hidden} differs from the backbone's last width {shapes['hidden_sizes'][-1]}")
    image_size = int(vision.get("img_size", config.get("img_size", 512)))
    text = dict(config["text_config"]) if isinstance(config.get("text_config"), dict) else {
        key: value for key, value in config.items() if key not in _NOT_TEXT_KEYS
    }
    text = {key: value for key, value in text.items() if key not in _NOT_TEXT_KEYS}
    image_token = config.get("image_token_index", config.get("image_token_id"))
    if image_token is None:
        raise InvalidInputError("the checkpoint config has no image_token_index")
    return MagmaConfig(
        vision_config={
            "num_channels": 3,
            "patch_size": 4,
            "num_stages": len(shapes["depths"]),
            "depths": list(shapes["depths"]),
            "hidden_sizes": list(shapes["hidden_sizes"]),
            "hidden_act": "gelu",
            "layer_scale_init_value": 1e-6,
            "drop_path_rate": 0.0,
            "image_size": image_size,
        },
        text_config={"model_type": "llama", **text},
        image_token_id=int(image_token),
        image_size=image_size,
        max_num_crops=int(vision.get("max_num_crops", 4)),
        projector_type=str(vision.get("mm_projector_type", "mlp2x_gelu")),
        use_row_separator=bool(vision.get("mm_use_row_seperator", True)),
        vision_norm_eps=float(shapes.get("norm_eps", 1e-6)),
        vision_backbone=backbone,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


__all__ = ["is_official_config", "map_official_key", "adapt_tensor", "official_config_to_magma", "BACKBONES", "UNUSED_OFFICIAL_KEYS"]

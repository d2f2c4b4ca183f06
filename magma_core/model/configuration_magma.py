"""`MagmaConfig`: a ConvNeXt vision tower, an MLP projector with a row separator, a Llama decoder.

Two presets share the code: `MagmaConfig.magma_8b()` has Magma-8B's shapes (ConvNeXt-XXLarge from
CLIP at 512 px crops, up to 4 crops, Llama-3-8B) and `MagmaConfig.magma_tiny()` a few million
parameters that train on a CPU. One image becomes ``n_rows * (n_cols + 1)`` positions in the
text: the feature map of all crops laid side by side, one learned separator closing each row.
"""
from __future__ import annotations

import re

from transformers import ConvNextConfig, LlamaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from magma_core.errors import InvalidInputError
from magma_core.model.tokenizer_tiny import IMAGE_ID as TINY_IMAGE_TOKEN_ID
from magma_core.model.tokenizer_tiny import TINY_VOCAB_SIZE

# Llama-3's 128256 tokens plus Magma's <pad> (128256), <image> (128257), <image_start>,
# <image_end> and <action>, added in that order by Magma's training script. A local checkpoint's
# own config.json always wins over this number (see checkpoint_mapping.official_config_to_magma).
MAGMA_8B_VOCAB_SIZE = 128261
MAGMA_8B_IMAGE_TOKEN_ID = 128257

_PROJECTOR_TYPE = re.compile(r"^(linear|mlp(\d+)x_gelu)$")

# ConvNeXt-XXLarge as trained by LAION's CLIP (open_clip over timm): stem 4x4 stride 4, four
# stages; timm builds this size with LayerNorm eps 1e-5 instead of the usual 1e-6.
_CONVNEXT_XXL = {
    "num_channels": 3,
    "patch_size": 4,
    "num_stages": 4,
    "depths": [3, 4, 30, 3],
    "hidden_sizes": [384, 768, 1536, 3072],
    "hidden_act": "gelu",
    "layer_scale_init_value": 1e-6,
    "drop_path_rate": 0.0,
    "image_size": 512,
}
_LLAMA3_8B = {
    "vocab_size": MAGMA_8B_VOCAB_SIZE,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "bos_token_id": 128000,
    "eos_token_id": 128009,
    "pad_token_id": 128256,
    "tie_word_embeddings": False,
}

# magma-tiny: 3 ConvNeXt stages (stride 16, so a 128 px image gives an 8x8 feature map, 72 image
# positions with separators) and a 4-layer Llama with grouped-query attention like the 8B.
# Token ids match magma_core.model.tokenizer_tiny's fixed layout.
_TINY_VISION = {
    "num_channels": 3,
    "patch_size": 4,
    "num_stages": 3,
    "depths": [2, 2, 2],
    "hidden_sizes": [32, 64, 128],
    "hidden_act": "gelu",
    "layer_scale_init_value": 1e-6,
    "drop_path_rate": 0.0,
    "image_size": 128,
}
_TINY_TEXT = {
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "pad_token_id": 0,  # tokenizer_tiny's fixed layout
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}


class MagmaConfig(PreTrainedConfig):
    """Configuration of `MagmaForConditionalGeneration`; the defaults are Magma-8B's shapes.

    vision_config:     transformers `ConvNextConfig` of the vision tower (features after its last stage).
    text_config:       transformers `LlamaConfig` of the decoder; its vocab_size is the whole vocabulary,
                       action tokens included (the last 256 ids).
    image_token_id:    placeholder id the processor repeats once per image position.
    image_size:        side in pixels of one crop fed to the vision tower.
    max_num_crops:     an image is resized to a grid of at most this many crops (Magma's "anyres" crop).
    projector_type:    "linear" or "mlp<N>x_gelu" (Magma-8B: "mlp2x_gelu").
    use_row_separator: append a learned embedding after each row of visual features.
    vision_norm_eps:   epsilon of every LayerNorm inside the vision tower (1e-5 for ConvNeXt-XXL).
    vision_backbone:   provenance label, e.g. "convnextxxlarge"; not used to build anything.
    """

    model_type = "magma"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=ConvNextConfig, init_kwargs=dict(_CONVNEXT_XXL)),
        "text_config": SubConfigSpec(config_class=LlamaConfig, init_kwargs=dict(_LLAMA3_8B)),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = MAGMA_8B_IMAGE_TOKEN_ID
    image_size: int = 512
    max_num_crops: int = 4
    projector_type: str = "mlp2x_gelu"
    use_row_separator: bool = True
    vision_norm_eps: float = 1e-5
    vision_backbone: str | None = "convnextxxlarge"
    ignore_index: int = -100
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check()

    # ------------------------------------------------------------------ derived sizes

    @property
    def vision_stride(self) -> int:
        """Pixels per feature-map cell: the stem's patch size, halved resolution at each later stage."""
        patch = self.vision_config.patch_size
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        return int(patch) * 2 ** (int(self.vision_config.num_stages) - 1)

    @property
    def features_per_side(self) -> int:
        """Feature-map cells along each side of one crop."""
        return self.image_size // self.vision_stride

    @property
    def vision_hidden_size(self) -> int:
        return int(self.vision_config.hidden_sizes[-1])

    @property
    def projector_depth(self) -> int:
        """Number of Linear layers in the projector (1 for "linear")."""
        match = _PROJECTOR_TYPE.match(self.projector_type)
        return 1 if match.group(2) is None else int(match.group(2))

    def num_image_tokens(self, n_rows: int = 1, n_cols: int = 1) -> int:
        """Positions one image takes in the text when resized to a grid of n_rows x n_cols crops."""
        side = self.features_per_side
        per_row = n_cols * side + (1 if self.use_row_separator else 0)
        return n_rows * side * per_row

    # ------------------------------------------------------------------ presets

    @classmethod
    def magma_8b(cls, text: dict | None = None, vision: dict | None = None, **overrides) -> "MagmaConfig":
        """Magma-8B's shapes: ConvNeXt-XXLarge (CLIP) at 512 px crops (up to 4) and Llama-3-8B."""
        return cls(
            vision_config={**_CONVNEXT_XXL, **(vision or {})},
            text_config={**_LLAMA3_8B, **(text or {})},
            **{
                "image_token_id": MAGMA_8B_IMAGE_TOKEN_ID,
                "image_size": 512,
                "max_num_crops": 4,
                "vision_norm_eps": 1e-5,
                "vision_backbone": "convnextxxlarge",
                **overrides,
            },
        )

    @classmethod
    def magma_tiny(cls, text: dict | None = None, vision: dict | None = None, **overrides) -> "MagmaConfig":
        """A few million parameters, 128 px single-crop images; token ids of the tiny tokenizer."""
        return cls(
            vision_config={**_TINY_VISION, **(vision or {})},
            text_config={**_TINY_TEXT, **(text or {})},
            **{
                "image_token_id": TINY_IMAGE_TOKEN_ID,
                "image_size": 128,
                "max_num_crops": 1,
                "vision_norm_eps": 1e-6,
                "vision_backbone": "convnext-tiny-magma",
                **overrides,
            },
        )

    # ------------------------------------------------------------------ validation

    def _check(self) -> None:
        if not _PROJECTOR_TYPE.match(str(self.projector_type)):
            raise InvalidInputError(f"projector_type must be 'linear' or 'mlp<N>x_gelu', got {self.projector_type!r}")
        if self.projector_depth < 1:
            raise InvalidInputError(f"projector_type {self.projector_type!r} needs at least one layer")
        if int(self.max_num_crops) < 1:
            raise InvalidInputError(f"max_num_crops must be >= 1, got {self.max_num_crops}")
        vision = self.vision_config
        if len(vision.depths) != vision.num_stages or len(vision.hidden_sizes) != vision.num_stages:
            raise InvalidInputError(
                f"vision tower: {vision.num_stages} stages but depths {list(vision.depths)} and hidden sizes {list(vision.hidden_sizes)}"
            )
        if self.image_size < self.vision_stride or self.image_size % self.vision_stride:
            raise InvalidInputError(
                f"image_size {self.image_size} must be a positive multiple of the vision stride {self.vision_stride}"
            )
        vocab = int(self.text_config.vocab_size)
        if not 0 <= int(self.image_token_id) < vocab:
            raise InvalidInputError(f"image_token_id {self.image_token_id} is outside the vocabulary [0, {vocab})")
        if not self.vision_norm_eps > 0:
            raise InvalidInputError(f"vision_norm_eps must be positive, got {self.vision_norm_eps}")


__all__ = ["MagmaConfig", "MAGMA_8B_VOCAB_SIZE", "MAGMA_8B_IMAGE_TOKEN_ID", "TINY_IMAGE_TOKEN_ID"]

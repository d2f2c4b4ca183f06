"""`MagmaForConditionalGeneration`: ConvNeXt vision tower -> projector (+ row separator) -> Llama decoder.

The processor repeats `config.image_token_id` once per image position (``n_rows * (n_cols + 1)``
per image, see `MagmaConfig.num_image_tokens`); the model computes the visual features, appends
the learned separator after each row, and writes them over those positions. Generation works
with transformers' `generate()`: pixel values are used in the prefill only, later steps read the
KV cache. Weights load from safetensors only (`from_pretrained`, see `safe_loading`).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, LlamaForCausalLM, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.convnext.modeling_convnext import ConvNextEmbeddings, ConvNextEncoder, ConvNextLayerNorm

from magma_core.errors import InvalidInputError
from magma_core.model.configuration_magma import MagmaConfig


class MagmaVisionTower(nn.Module):
    """ConvNeXt stem and stages (transformers' modules); returns the last stage's map (B, C, h, w).

    Like Magma, no pooling and no final norm: the projector reads the raw stage output.
    """

    def __init__(self, config: MagmaConfig):
        super().__init__()
        self.embeddings = ConvNextEmbeddings(config.vision_config)
        self.encoder = ConvNextEncoder(config.vision_config)
        # transformers hard-codes eps=1e-6 in ConvNeXt's norms; ConvNeXt-XXLarge was trained with 1e-5.
        for module in self.modules():
            if isinstance(module, ConvNextLayerNorm):
                module.eps = float(config.vision_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(pixel_values)).last_hidden_state


class MagmaMultiModalProjector(nn.Module):
    """Vision channels -> text hidden size ("linear" or "mlpNx_gelu"), plus the row separator embedding."""

    def __init__(self, config: MagmaConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        layers: list[nn.Module] = [nn.Linear(config.vision_hidden_size, hidden)]
        for _ in range(1, config.projector_depth):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        self.proj = nn.Sequential(*layers)
        self.row_separator = nn.Parameter(torch.zeros(hidden)) if config.use_row_separator else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class MagmaPreTrainedModel(PreTrainedModel):
    config: MagmaConfig
    config_class = MagmaConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["LlamaDecoderLayer", "ConvNextStage"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MagmaMultiModalProjector) and module.row_separator is not None:
            nn.init.zeros_(module.row_separator)


class MagmaForConditionalGeneration(MagmaPreTrainedModel, GenerationMixin):
    """Magma: images and text in, text (traces, marks) or action tokens out."""

    def __init__(self, config: MagmaConfig):
        super().__init__(config)
        self.vision_tower = MagmaVisionTower(config)
        self.multi_modal_projector = MagmaMultiModalProjector(config)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.post_init()
        self._sync_generation_config()

    def _sync_generation_config(self) -> None:
        text = self.config.text_config
        gen = self.generation_config
        gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = text.bos_token_id, text.eos_token_id, text.pad_token_id
        # A generated placeholder would be read as an image position at the next no-cache step.
        gen.suppress_tokens = [int(self.config.image_token_id)]

    # ------------------------------------------------------------------ embeddings (HF conventions)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.model

    # ------------------------------------------------------------------ images

    def get_image_features(self, pixel_values: torch.Tensor, image_grids: torch.Tensor | None = None) -> torch.Tensor:
        """Crops (N, 3, S, S) and their images' grids (n_images, 2 = rows, cols) -> (positions, hidden).

        Crops of one image are consecutive, row-major. Without `image_grids` every crop is one image.
        """
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise InvalidInputError(f"pixel_values must be a (crops, 3, H, W) tensor, got {shape}")
        n_crops = pixel_values.shape[0]
        grids = _check_grids(image_grids, n_crops)
        maps = self.vision_tower(pixel_values.to(self.vision_tower.embeddings.patch_embeddings.weight.dtype))
        maps = self.multi_modal_projector(maps.permute(0, 2, 3, 1))  # (N, h, w, hidden)
        _, side_h, side_w, hidden = maps.shape
        separator = self.multi_modal_projector.row_separator
        out, start = [], 0
        for rows, cols in grids.tolist():
            crops = maps[start : start + rows * cols]
            start += rows * cols
            # Lay the crops out as one big map: (rows, cols, h, w) -> (rows*h, cols*w).
            grid = crops.view(rows, cols, side_h, side_w, hidden).permute(0, 2, 1, 3, 4).reshape(rows * side_h, cols * side_w, hidden)
            if separator is not None:
                grid = torch.cat([grid, separator.to(grid.dtype).expand(grid.shape[0], 1, hidden)], dim=1)
            out.append(grid.reshape(-1, hidden))
        return torch.cat(out, dim=0)

    def _merge_image_features(self, input_ids, inputs_embeds, pixel_values, image_grids) -> torch.Tensor:
        features = self.get_image_features(pixel_values, image_grids)
        placeholders = input_ids == self.config.image_token_id
        n_positions = int(placeholders.sum())
        if n_positions != features.shape[0]:
            raise InvalidInputError(
                f"the text has {n_positions} image positions but the images give {features.shape[0]} features; "
                "build inputs with MagmaProcessor so each <image> is expanded for its crop grid"
            )
        return inputs_embeds.masked_scatter(placeholders.unsqueeze(-1), features.to(inputs_embeds.dtype))

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                     image_grids: torch.Tensor | None = None, prefill: bool = True) -> torch.Tensor:
        """(batch, n, hidden) input embeddings of `input_ids` with the image features written over the image positions.

        `prefill`: the text starts a sequence, so image positions without `pixel_values` are an error."""
        placeholders = input_ids == self.config.image_token_id
        # Placeholder ids are looked up as 0: the image features overwrite them anyway.
        embeds = self.get_input_embeddings()(input_ids.masked_fill(placeholders, 0))
        if pixel_values is not None:
            return self._merge_image_features(input_ids, embeds, pixel_values, image_grids)
        if prefill and bool(placeholders.any()):
            raise InvalidInputError("the text holds image positions but no pixel_values were given")
        return embeds

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits over the vocabulary; with `labels` (-100 where ignored) also the next-token loss."""
        if (input_ids is None) == (inputs_embeds is None):
            raise InvalidInputError("pass exactly one of input_ids or inputs_embeds")
        cache = cache if cache is not None else past_key_values
        if labels is not None and use_cache is None:
            use_cache = False  # training: a KV cache would only cost memory
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_grids, prefill=_is_prefill(cache))
        elif pixel_values is not None:  # inputs_embeds without input_ids: nothing says where the image goes
            raise InvalidInputError("pixel_values need input_ids to locate the image positions")

        outputs = self.language_model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if labels is None and isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif labels is None and isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.language_model.lm_head(hidden)
        loss = self.answer_loss(logits, labels) if labels is not None else None
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states)

    def answer_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over positions whose label is not `config.ignore_index`."""
        if labels.shape != logits.shape[:2]:
            raise InvalidInputError(f"labels shape {tuple(labels.shape)} does not match the sequence {tuple(logits.shape[:2])}")
        targets = labels[:, 1:].to(logits.device)
        if not bool((targets != self.config.ignore_index).any()):
            raise InvalidInputError("every label is ignored (-100): the batch has no answer tokens to learn")
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=self.config.ignore_index
        )

    # ------------------------------------------------------------------ safetensors only

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
        """Load a local directory: this project's checkpoints or a copy of microsoft/Magma-8B (safetensors only)."""
        from magma_core.model.safe_loading import load_magma

        return load_magma(cls, path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | os.PathLike, max_shard_size: str | int = "5GB", **kwargs) -> None:
        """Write config.json, generation_config.json and safetensors weights (never pickle)."""
        if kwargs.pop("safe_serialization", True) is False:
            raise InvalidInputError("this model saves safetensors only; pickle checkpoints are refused")
        super().save_pretrained(path, max_shard_size=max_shard_size, **kwargs)


def _check_grids(image_grids, n_crops: int) -> torch.Tensor:
    if image_grids is None:
        return torch.ones(n_crops, 2, dtype=torch.long)
    grids = torch.as_tensor(image_grids).reshape(-1, 2).to("cpu", torch.long)
    if bool((grids < 1).any()):
        raise InvalidInputError(f"image_grids must hold positive (rows, cols), got {grids.tolist()}")
    needed = int((grids[:, 0] * grids[:, 1]).sum())
    if needed != n_crops:
        raise InvalidInputError(f"image_grids describe {needed} crops but pixel_values hold {n_crops}")
    return grids


def _is_prefill(cache) -> bool:
    return cache is None or not isinstance(cache, Cache) or cache.get_seq_length() == 0


__all__ = ["MagmaForConditionalGeneration", "MagmaPreTrainedModel", "MagmaVisionTower", "MagmaMultiModalProjector"]

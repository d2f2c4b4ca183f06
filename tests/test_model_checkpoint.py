"""Loading checkpoints: safetensors only, named errors, and Magma-8B's official layout mapped tensor by tensor."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from magma_core.errors import InvalidInputError
from magma_core.model import CheckpointError, MagmaConfig, MagmaForConditionalGeneration
from magma_core.model.checkpoint_mapping import map_official_key
from model_fixtures import one_torch_thread  # noqa: F401

VISION = "vision_tower.clip_vision_model.trunk."
DEPTHS, DIMS, HIDDEN = [1, 2, 1], [8, 16, 24], 32
IMAGE_TOKEN = 250


def _official_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """A scaled-down checkpoint with Magma-8B's tensor names (open_clip/timm ConvNeXt, Magma projector, Llama)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.2

    t = {VISION + "stem.0.weight": rand(DIMS[0], 3, 4, 4), VISION + "stem.0.bias": rand(DIMS[0]),
         VISION + "stem.1.weight": 1 + rand(DIMS[0]), VISION + "stem.1.bias": rand(DIMS[0])}
    for s, (depth, dim) in enumerate(zip(DEPTHS, DIMS)):
        stage = f"{VISION}stages.{s}."
        if s > 0:
            t[stage + "downsample.0.weight"], t[stage + "downsample.0.bias"] = 1 + rand(DIMS[s - 1]), rand(DIMS[s - 1])
            t[stage + "downsample.1.weight"], t[stage + "downsample.1.bias"] = rand(dim, DIMS[s - 1], 2, 2), rand(dim)
        for b in range(depth):
            block = f"{stage}blocks.{b}."
            t[block + "conv_dw.weight"], t[block + "conv_dw.bias"] = rand(dim, 1, 7, 7), rand(dim)
            t[block + "norm.weight"], t[block + "norm.bias"] = 1 + rand(dim), rand(dim)
            t[block + "mlp.fc1.weight"], t[block + "mlp.fc1.bias"] = rand(4 * dim, dim), rand(4 * dim)
            t[block + "mlp.fc2.weight"], t[block + "mlp.fc2.bias"] = rand(dim, 4 * dim), rand(dim)
            t[block + "gamma"] = rand(dim)
    # Present in the official file, never read by Magma.
    t[VISION + "head.norm.weight"], t[VISION + "head.norm.bias"] = rand(DIMS[-1]), rand(DIMS[-1])
    t["vision_tower.clip_vision_model.head.proj.weight"] = rand(12, DIMS[-1])
    t["multi_modal_projector.proj.0.weight"], t["multi_modal_projector.proj.0.bias"] = rand(HIDDEN, DIMS[-1]), rand(HIDDEN)
    t["multi_modal_projector.proj.2.weight"], t["multi_modal_projector.proj.2.bias"] = rand(HIDDEN, HIDDEN), rand(HIDDEN)
    t["multi_modal_projector.row_seperator"] = rand(1, 1, HIDDEN)
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(LlamaConfig(**_text_config()))
    t.update({f"language_model.{k}": v.clone() for k, v in llama.state_dict().items()})
    return {k: v.to(torch.bfloat16) for k, v in t.items()}


def _text_config():
    return {"model_type": "llama", "vocab_size": 256, "hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 512, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}


def _write_official(directory, tensors, shards: int = 2):
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for k in range(shards):
        shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = names[k::shards]
        save_file({n: tensors[n].contiguous() for n in part}, str(directory / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "architectures": ["MagmaForCausalLM"], "model_type": "magma", "image_token_index": IMAGE_TOKEN, "img_size": 64,
        "torch_dtype": "bfloat16", "text_config": _text_config(),
        "vision_config": {"vision_backbone": "convnextxxlarge", "depths": DEPTHS, "hidden_sizes": DIMS, "norm_eps": 1e-5,
                          "img_size": 64, "max_num_crops": 4, "img_anyres_strategy": "crop", "mm_projector_type": "mlp2x_gelu",
                          "mm_hidden_size": DIMS[-1], "mm_use_row_seperator": True, "vision_feature_layer": "clip_vis_dense"},
    }
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}))
    return directory


def _timm_convnext(t: dict, pixels: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference forward of open_clip's timm ConvNeXt trunk (stem + stages), written from the official names."""
    def ln2d(x, w, b):
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, eps).permute(0, 3, 1, 2)

    x = F.conv2d(pixels, t[VISION + "stem.0.weight"], t[VISION + "stem.0.bias"], stride=4)
    x = ln2d(x, t[VISION + "stem.1.weight"], t[VISION + "stem.1.bias"])
    for s, depth in enumerate(DEPTHS):
        stage = f"{VISION}stages.{s}."
        if s > 0:
            x = ln2d(x, t[stage + "downsample.0.weight"], t[stage + "downsample.0.bias"])
            x = F.conv2d(x, t[stage + "downsample.1.weight"], t[stage + "downsample.1.bias"], stride=2)
        for b in range(depth):
            p = f"{stage}blocks.{b}."
            y = F.conv2d(x, t[p + "conv_dw.weight"], t[p + "conv_dw.bias"], padding=3, groups=x.shape[1]).permute(0, 2, 3, 1)
            y = F.layer_norm(y, (y.shape[-1],), t[p + "norm.weight"], t[p + "norm.bias"], eps)
            y = F.linear(F.gelu(F.linear(y, t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"])), t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"])
            x = x + (y * t[p + "gamma"]).permute(0, 3, 1, 2)
    return x


def test_official_checkpoint_maps_every_tensor(tmp_path):
    tensors = _official_tensors()
    model = MagmaForConditionalGeneration.from_pretrained(_write_official(tmp_path / "magma", tensors))
    ours = model.state_dict()
    mapped = {}
    for name, tensor in tensors.items():
        target = map_official_key(name)
        if target is None:
            assert "head" in name  # only CLIP/timm head tensors are dropped
            continue
        mapped[target] = name
        assert torch.equal(ours[target], tensor.reshape(ours[target].shape)), name
    assert set(mapped) == set(ours)  # no model tensor left unset, none set twice
    assert model.dtype == torch.bfloat16 and model.config.image_token_id == IMAGE_TOKEN
    assert model.config.vision_norm_eps == 1e-5 and model.config.num_image_tokens(2, 2) == 2 * 4 * (2 * 4 + 1)  # 3 stages: 64 px -> 4x4
    assert model.generation_config.pad_token_id == 0


def test_mapped_vision_tower_computes_what_timm_computes(tmp_path):
    tensors = _official_tensors(seed=3)
    model = MagmaForConditionalGeneration.from_pretrained(_write_official(tmp_path / "magma", tensors), dtype=torch.float32)
    pixels = torch.randn(2, 3, 64, 64)
    reference = _timm_convnext({k: v.float() for k, v in tensors.items()}, pixels, eps=1e-5)
    with torch.no_grad():
        ours = model.vision_tower(pixels)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    ids = torch.tensor([[1] + [IMAGE_TOKEN] * model.config.num_image_tokens() + [5, 6]])
    with torch.no_grad():
        assert model(input_ids=ids, pixel_values=pixels[:1]).logits.shape == (1, ids.shape[1], 256)


def test_official_layout_problems_are_named(tmp_path):
    tensors = _official_tensors()
    unknown = dict(tensors, **{"vision_tower.clip_vision_model.trunk.stages.0.extra.weight": torch.zeros(3)})
    with pytest.raises(InvalidInputError, match="no counterpart"):
        MagmaForConditionalGeneration.from_pretrained(_write_official(tmp_path / "unknown", unknown))
    missing = {k: v for k, v in tensors.items() if not k.endswith("blocks.0.gamma")}
    with pytest.raises(CheckpointError, match="lacks 3 tensor"):
        MagmaForConditionalGeneration.from_pretrained(_write_official(tmp_path / "missing", missing))
    wrong = dict(tensors, **{"multi_modal_projector.proj.0.bias": torch.zeros(HIDDEN + 1)})
    with pytest.raises(CheckpointError, match="has shape"):
        MagmaForConditionalGeneration.from_pretrained(_write_official(tmp_path / "wrong", wrong))
    legacy = {k.replace(".gamma", ".weight"): v for k, v in tensors.items()}  # old transformers' gamma->weight rename
    assert MagmaForConditionalGeneration.from_pretrained(_write_official(tmp_path / "legacy", legacy)) is not None


def _tiny_checkpoint(directory):
    torch.manual_seed(0)
    config = MagmaConfig.magma_tiny(text={"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128}, vision={"hidden_sizes": [8, 16, 24]}, image_size=64)
    MagmaForConditionalGeneration(config).save_pretrained(directory)
    return directory


def test_pickle_weights_are_refused_with_a_clear_error(tmp_path):
    only_pickle = _tiny_checkpoint(tmp_path / "a")
    (only_pickle / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, only_pickle / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle weights .*pytorch_model.bin"):
        MagmaForConditionalGeneration.from_pretrained(only_pickle)
    disguised = _tiny_checkpoint(tmp_path / "b")
    torch.save({"w": torch.zeros(2)}, disguised / "model.safetensors")  # a pickle under the safetensors name
    with pytest.raises(CheckpointError, match="pickle/torch.save file"):
        MagmaForConditionalGeneration.from_pretrained(disguised)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        MagmaForConditionalGeneration.from_pretrained(tmp_path / "nowhere")
    no_config = _tiny_checkpoint(tmp_path / "c")
    (no_config / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        MagmaForConditionalGeneration.from_pretrained(no_config)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "magma"}))
    with pytest.raises(CheckpointError, match="has no weights"):
        MagmaForConditionalGeneration.from_pretrained(empty)
    sharded = _write_official(tmp_path / "sharded", _official_tensors(), shards=3)
    (sharded / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lacks 1 shard.*model-00002-of-00003.safetensors"):
        MagmaForConditionalGeneration.from_pretrained(sharded)
    with pytest.raises(CheckpointError, match="is a file"):
        MagmaForConditionalGeneration.from_pretrained(sharded / "config.json")

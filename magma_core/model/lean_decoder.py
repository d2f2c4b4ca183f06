"""A lean inference path for the Llama text decoder of `MagmaForConditionalGeneration` (batch of one).

A decode step of magma-tiny (4 layers, hidden 256) does microseconds of arithmetic, yet one call
through transformers costs milliseconds: module dispatch, output dataclasses, mask building,
cache bookkeeping. `LeanLlamaDecoder` runs the same computation as plain tensor operations:

    embeddings -> per layer: RMSNorm, q/k/v projections, rotary embedding, grouped-query
    attention (`scaled_dot_product_attention` over the cached keys/values), o_proj, residual,
    RMSNorm, gated MLP, residual -> final RMSNorm -> lm_head on the trailing rows only.

It reads the weights from the loaded model's modules (references, no copies) and owns a
preallocated KV cache, so it can take a prefill of merged input embeddings (images included, see
`merged_input_embeddings`), then several new tokens per call (drafts), and forget the last k tokens
(rejected drafts). The arithmetic is transformers' Llama arithmetic; three choices only change how
it is scheduled, never what is computed: a projection of a few rows runs as weight @ x^T (`_project`),
the query heads that share a key/value head attend as one block (`_attend`), and the last layer
carries on only the rows whose logits are asked for. Logits match the transformers forward to
float rounding (about 1e-6 on magma-tiny), so greedy tokens are the same up to exact ties.

Anything it does not implement exactly (another text model, rope scaling, sliding windows, a
non-SDPA attention implementation, training mode) is refused by `check_lean_support` with an
`InvalidInputError`; callers then use the transformers path.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP, LlamaModel, LlamaRMSNorm

from magma_core.errors import InvalidInputError

_MIN_CAPACITY = 64  # tokens of KV cache allocated at least; grown by doubling when exceeded
# Up to this many rows a projection runs as weight @ x^T (see `_project`); a prefill keeps F.linear.
_FEW_ROWS = 8


def check_lean_support(model) -> None:
    """Raise InvalidInputError naming the first thing `LeanLlamaDecoder` cannot reproduce exactly in `model`."""
    language_model = getattr(model, "language_model", None)
    if type(language_model) is not LlamaForCausalLM or type(getattr(language_model, "model", None)) is not LlamaModel:
        raise InvalidInputError(
            f"the lean decoder runs a transformers LlamaForCausalLM text model; this model's is {type(language_model).__name__}"
        )
    if model.training or language_model.training:
        raise InvalidInputError("the lean decoder is for inference: put the model in eval mode (dropout would differ)")
    config = language_model.config
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise InvalidInputError(f"the lean decoder implements the default rotary embedding only, not rope_type {rope['rope_type']!r}")
    rotary = language_model.model.rotary_emb
    if getattr(rotary, "rope_type", "default") != "default" or float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        raise InvalidInputError("the lean decoder implements the default rotary embedding only (no scaling)")
    if getattr(config, "sliding_window", None) is not None:
        raise InvalidInputError(f"the lean decoder has no sliding-window attention (sliding_window={config.sliding_window})")
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        raise InvalidInputError(f"the lean decoder implements full attention only; layer types {sorted(set(layer_types))}")
    attention = getattr(config, "_attn_implementation", None)
    if attention != "sdpa":
        raise InvalidInputError(f"the lean decoder mirrors the 'sdpa' attention implementation; this model uses {attention!r}")
    if int(getattr(config, "pretraining_tp", 1) or 1) != 1:
        raise InvalidInputError("the lean decoder does not implement pretraining_tp > 1")
    layers = language_model.model.layers
    if len(layers) < int(config.num_hidden_layers):
        raise InvalidInputError(f"the text model has {len(layers)} layers but its config asks for {config.num_hidden_layers}")
    for index, layer in enumerate(layers[: int(config.num_hidden_layers)]):
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if type(layer) is not LlamaDecoderLayer or any(type(norm) is not LlamaRMSNorm for norm in norms):
            raise InvalidInputError(f"text layer {index} is not transformers' LlamaDecoderLayer with RMSNorms")
        attn = layer.self_attn
        if type(attn) is not LlamaAttention or type(layer.mlp) is not LlamaMLP:
            raise InvalidInputError(f"text layer {index} does not hold transformers' LlamaAttention and LlamaMLP")
        if attn.q_proj.out_features % attn.head_dim or attn.k_proj.out_features % attn.head_dim \
                or (attn.q_proj.out_features // attn.head_dim) % (attn.k_proj.out_features // attn.head_dim):
            raise InvalidInputError(f"text layer {index}: query heads are not a whole multiple of key/value heads")
    if type(language_model.model.norm) is not LlamaRMSNorm:
        raise InvalidInputError("the text model's final norm is not transformers' LlamaRMSNorm")


def merged_input_embeddings(model, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                            image_grids: torch.Tensor | None = None) -> torch.Tensor:
    """(1, n, hidden) input embeddings with image features written over the image positions: the model's own
    `embed_inputs`, the path its forward takes."""
    return model.embed_inputs(input_ids, pixel_values, image_grids)


class _Layer:
    """One decoder layer's weights (references to the module's parameters) and attention shape."""

    def __init__(self, layer: LlamaDecoderLayer):
        attn, mlp = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = ((p.weight, p.bias) for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
        self.gate, self.up, self.down = ((p.weight, p.bias) for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        self.act = mlp.act_fn
        self.norm_in = (layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon))
        self.norm_post = (layer.post_attention_layernorm.weight, float(layer.post_attention_layernorm.variance_epsilon))
        self.head_dim = int(attn.head_dim)
        self.scaling = float(attn.scaling)
        self.n_heads = attn.q_proj.out_features // self.head_dim
        self.n_kv_heads = attn.k_proj.out_features // self.head_dim
        self.groups = self.n_heads // self.n_kv_heads  # query heads per key/value head


class LeanLlamaDecoder:
    """Prefill, multi-token steps and cropping over a preallocated KV cache, for one sequence.

    Usage: ``logits = dec.prefill(embeds, logits_to_keep)``, then ``dec.step(ids, logits_to_keep)``
    any number of times, ``dec.crop_last(k)`` to forget the last k tokens. Logits come as
    (logits_to_keep, vocab): the rows after each of the last `logits_to_keep` tokens fed.
    Weights are read from `model` when the decoder is built: build a new one after replacing
    parameters (in-place updates are seen). Not thread-safe: one sequence, one caller.
    """

    def __init__(self, model, capacity: int = 0):
        check_lean_support(model)
        language_model = model.language_model
        decoder = language_model.model
        config = language_model.config
        self.layers = [_Layer(layer) for layer in decoder.layers[: int(config.num_hidden_layers)]]
        self.embed_weight = decoder.embed_tokens.weight
        self.final_norm = (decoder.norm.weight, float(decoder.norm.variance_epsilon))
        self.lm_head = (language_model.lm_head.weight, language_model.lm_head.bias)
        self.inv_freq = decoder.rotary_emb.inv_freq
        self.dtype = self.embed_weight.dtype
        self.device = self.embed_weight.device
        self.vocab_size = int(self.embed_weight.shape[0])
        # Magma's forward reads this id as "image feature here": as a plain token it would mean something else.
        self.image_token_id = getattr(model.config, "image_token_id", None)
        self.hidden_size = int(self.embed_weight.shape[1])
        self.length = 0  # tokens held in the cache
        # Per layer (kv_heads, capacity, head_dim); rotary tables (capacity, head_dim) by position.
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._cos = self._sin = torch.empty(0)
        with torch.inference_mode():
            self._allocate(max(int(capacity), _MIN_CAPACITY))

    # ------------------------------------------------------------------ cache

    @property
    def capacity(self) -> int:
        return self._keys[0].shape[1] if self._keys else 0

    def _allocate(self, capacity: int) -> None:
        old_keys, old_values, held = self._keys, self._values, self.length
        self._keys, self._values = [], []
        for index, layer in enumerate(self.layers):
            shape = (layer.n_kv_heads, capacity, layer.head_dim)
            keys = torch.empty(shape, dtype=self.dtype, device=self.device)
            values = torch.empty(shape, dtype=self.dtype, device=self.device)
            if old_keys:
                keys[:, :held] = old_keys[index][:, :held]
                values[:, :held] = old_values[index][:, :held]
            self._keys.append(keys)
            self._values.append(values)
        self._cos, self._sin = self._rotary_tables(capacity)

    def _rotary_tables(self, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin by position: transformers' default rope values, computed once.

        transformers rotates x as ``x * cos + rotate_half(x) * sin`` with rotate_half(x) = (-x2, x1);
        ``x.roll(half) * (-sin1, sin2)`` multiplies the same numbers (a sign flip is exact) in fewer ops.
        """
        positions = torch.arange(capacity, device=self.device)
        freqs = positions[:, None].float() * self.inv_freq.to(device=self.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        half = sin.shape[-1] // 2
        return cos, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def crop_last(self, k: int) -> None:
        """Forget the last `k` tokens (e.g. rejected draft tokens); their cache rows are overwritten later."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= self.length:
            raise InvalidInputError(f"crop_last needs 0 <= k <= {self.length} (tokens held), got {k!r}")
        self.length -= k

    def reset(self) -> None:
        """Forget every token (the buffers stay allocated)."""
        self.length = 0

    # ------------------------------------------------------------------ forward

    def prefill(self, inputs_embeds: torch.Tensor, logits_to_keep: int = 1) -> torch.Tensor:
        """Start a sequence from (1, n, hidden) input embeddings (e.g. `merged_input_embeddings`); logits of the last rows."""
        self.reset()
        return self.step_embeds(inputs_embeds, logits_to_keep)

    def step(self, input_ids: Sequence[int] | torch.Tensor, logits_to_keep: int = 1) -> torch.Tensor:
        """Append token ids (a list, or a (n,) / (1, n) tensor) to the sequence; logits of the last rows.

        Text tokens only: images enter through `prefill` (see `merged_input_embeddings`).
        """
        values = input_ids.reshape(-1).tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size for t in values):
            raise InvalidInputError(f"token ids must be ints in [0, {self.vocab_size}), got {values}")
        if self.image_token_id in values:
            raise InvalidInputError(
                f"the image placeholder id {self.image_token_id} is not a text token: images enter through prefill"
            )
        ids = torch.tensor(values, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            return self._forward(F.embedding(ids, self.embed_weight), logits_to_keep)

    def step_embeds(self, inputs_embeds: torch.Tensor, logits_to_keep: int = 1) -> torch.Tensor:
        """Append (1, n, hidden) input embeddings to the sequence; logits of the last rows."""
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.ndim != 3 or inputs_embeds.shape[0] != 1 \
                or inputs_embeds.shape[2] != self.hidden_size:
            shape = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, torch.Tensor) else type(inputs_embeds).__name__
            raise InvalidInputError(f"inputs_embeds must be (1, n, {self.hidden_size}) for one sequence, got {shape}")
        with torch.inference_mode():
            return self._forward(inputs_embeds[0].to(self.device, self.dtype), logits_to_keep)

    def score_branches(self, branches: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Logits after every token of each branch, the branches fed side by side in ONE call as alternative
        continuations of the sequence held (tree attention: a branch sees the sequence and its own earlier
        tokens, at the positions it would have alone). The cache is left as it was.

        Returns one (len(branch), vocab) tensor per branch: row i predicts the token after branch[i].
        """
        lists = [list(b.reshape(-1).tolist()) if isinstance(b, torch.Tensor) else list(b) for b in branches]
        if not lists or any(not b for b in lists):
            raise InvalidInputError("score_branches needs one or more non-empty branches")
        flat = [t for b in lists for t in b]
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size for t in flat):
            raise InvalidInputError(f"token ids must be ints in [0, {self.vocab_size}), got {flat}")
        if self.image_token_id in flat:
            raise InvalidInputError(f"the image placeholder id {self.image_token_id} is not a text token")
        past, n = self.length, len(flat)
        if past + n > self.capacity:
            self._allocate(max(past + n, 2 * self.capacity))
        offsets = torch.tensor([i for b in lists for i in range(len(b))], device=self.device)
        branch = torch.tensor([j for j, b in enumerate(lists) for _ in b], device=self.device)
        positions = past + offsets
        rope = (self._cos[positions], self._sin[positions])
        # Each new row sees the whole sequence held, and the rows of its own branch up to itself.
        own = (branch[:, None] == branch[None, :]) & (offsets[None, :] <= offsets[:, None])
        visible = torch.cat([torch.ones(n, past, dtype=torch.bool, device=self.device), own], dim=1)
        groups = self.layers[0].groups
        mask = (visible[None].expand(groups, n, past + n).reshape(groups * n, past + n), False)
        with torch.inference_mode():
            hidden = F.embedding(torch.tensor(flat, dtype=torch.long, device=self.device), self.embed_weight)
            for index, layer in enumerate(self.layers):
                hidden = self._layer(layer, self._keys[index], self._values[index], hidden, rope, past, n, mask)
            logits = _project(_rms_norm(hidden, *self.final_norm), *self.lm_head).contiguous()
        # The branches' keys and values sit past the sequence's end and are overwritten by the next feed.
        return list(logits.split([len(b) for b in lists]))

    def _forward(self, hidden: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        """(n, hidden) new positions -> (logits_to_keep, vocab); the cache grows by n."""
        n = hidden.shape[0]
        if n == 0:
            raise InvalidInputError("nothing to feed: the step holds no tokens")
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or not 1 <= logits_to_keep <= n:
            raise InvalidInputError(f"logits_to_keep must be an int in [1, {n}] (the tokens fed), got {logits_to_keep!r}")
        past, total = self.length, self.length + n
        if total > self.capacity:
            self._allocate(max(total, 2 * self.capacity))
        rope = (self._cos[past:total], self._sin[past:total])
        # Past the last layer's keys and values only the kept rows matter: a prefill skips the rest.
        masks = {rows: self._mask(past, n, rows) for rows in {n, logits_to_keep}}
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            rows = logits_to_keep if index == last else n
            hidden = self._layer(layer, self._keys[index], self._values[index], hidden, rope, past, rows, masks[rows])
        self.length = total
        # Row-wise from here: the final norm and lm_head see the kept rows only.
        return _project(_rms_norm(hidden, *self.final_norm), *self.lm_head).contiguous()

    def _mask(self, past: int, n: int, rows: int) -> tuple[torch.Tensor | None, bool]:
        """(mask, is_causal) for the last `rows` of `n` new queries over every key: causal inside the new block only.

        The mask is laid out for `_attend`'s packed queries (each key/value head's query heads stacked).
        """
        if rows == 1:
            return None, False  # the newest query sees every key
        if past == 0 and rows == n:
            return None, True  # a fresh block: plain causal attention
        total = past + n
        groups = self.layers[0].groups
        visible = torch.ones(groups, rows, total, dtype=torch.bool, device=self.device).tril_(total - rows)
        return visible.view(groups * rows, total), False

    @staticmethod
    def _layer(layer: _Layer, key_cache, value_cache, hidden, rope, past: int, rows: int, mask) -> torch.Tensor:
        """One decoder layer over n new positions: keys/values of all of them are cached, the last `rows` go on."""
        n = hidden.shape[0]
        total = past + n
        cos, sin = rope
        normed = _rms_norm(hidden, *layer.norm_in)
        k = _project(normed, *layer.k).view(n, layer.n_kv_heads, layer.head_dim).transpose(0, 1)
        v = _project(normed, *layer.v).view(n, layer.n_kv_heads, layer.head_dim).transpose(0, 1)
        key_cache[:, past:total] = _rotate(k, cos, sin)
        value_cache[:, past:total] = v
        if rows < n:
            hidden, normed, cos, sin = hidden[n - rows :], normed[n - rows :], cos[n - rows :], sin[n - rows :]
        q = _project(normed, *layer.q).view(rows, layer.n_heads, layer.head_dim).transpose(0, 1)
        attended = _attend(layer, _rotate(q, cos, sin), key_cache[:, :total], value_cache[:, :total], *mask)
        hidden = hidden + _project(attended, *layer.o)
        normed = _rms_norm(hidden, *layer.norm_post)
        gated = layer.act(_project(normed, *layer.gate)) * _project(normed, *layer.up)
        return hidden + _project(gated, *layer.down)


def _attend(layer: _Layer, q, keys, values, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """Grouped-query attention of q (heads, rows, head_dim) over cached keys/values -> (rows, heads * head_dim).

    SDPA gets 4-D inputs: with 3-D ones the CPU falls back to its slow unfused kernel.
    """
    rows = q.shape[1]
    if causal or layer.groups == 1:
        out = F.scaled_dot_product_attention(q.contiguous()[None], keys[None], values[None], attn_mask=mask,
                                             is_causal=causal, scale=layer.scaling, enable_gqa=layer.groups > 1)
    else:
        # The query heads sharing a key/value head attend as one block of rows (mask stacked to match):
        # a plain SDPA call, about twice as fast on the CPU as enable_gqa with a mask.
        packed = q.reshape(1, layer.n_kv_heads, layer.groups * rows, layer.head_dim)
        out = F.scaled_dot_product_attention(packed, keys[None], values[None], attn_mask=mask, scale=layer.scaling)
    return out.view(layer.n_heads, rows, layer.head_dim).transpose(0, 1).reshape(rows, -1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin_folded: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (heads, n, head_dim) at the positions of cos / sin_folded (n, head_dim)."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin_folded


def _project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear of (n, in) rows; a few rows are multiplied as weight @ x^T (the result is a transposed view).

    For up to 8 rows MKL's kernel for x @ weight^T is about half as fast as the one for the transposed
    product (a few columns against the whole weight), measured on this project's CPUs; the sums are
    the same up to float rounding order (one row: bit for bit). Longer blocks use F.linear as transformers.
    """
    if x.shape[0] > _FEW_ROWS:
        return F.linear(x, weight, bias)
    out = torch.mm(weight, x.t()).t()
    return out if bias is None else out + bias


def _rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's arithmetic: statistics in float32, the weight applied in the input dtype."""
    dtype = hidden.dtype
    if dtype != torch.float32:
        hidden = hidden.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (hidden if dtype == torch.float32 else hidden.to(dtype))


__all__ = ["LeanLlamaDecoder", "check_lean_support", "merged_input_embeddings"]

"""A lean inference path for the Llama text decoder of `MagmaForConditionalGeneration` (batch of one).

A decode step of magma-tiny (4 layers, hidden 256) does microseconds of arithmetic, yet one call
through transformers costs milliseconds: module dispatch, output dataclasses, mask building,
cache bookkeeping. `LeanLlamaDecoder` runs the same computation as plain tensor operations:

    embeddings -> per layer: RMSNorm, q/k/v projections, rotary embedding, grouped-query
    attention (`scaled_dot_product_attention` over the cached keys/values), o_proj, residual,
    RMSNorm, gated MLP, residual -> final RMSNorm -> lm_head on the trailing rows only.

It owns a preallocated KV cache, so it can take a prefill of merged input embeddings (images
included, see `merged_input_embeddings`), then several new tokens per call (drafts), and forget the
last k tokens (rejected drafts). The arithmetic is transformers' Llama arithmetic; these choices only
change how it is scheduled, never what is computed:
- the projections that read the same input run as one product (q/k/v, gate/up: `PackedWeights`, built
  once per model and rebuilt when a parameter changes), in the memory layout whose kernel is faster on
  this CPU (`projection_layout`: measured once per process; the best one differs between CPUs);
- the query heads that share a key/value head attend as one block (`_attend`);
- the last layer carries on only the rows whose logits are asked for.
Logits match the transformers forward to float rounding (about 1e-6 on magma-tiny), so greedy tokens
are the same up to exact ties.

Anything it does not implement exactly (another text model, rope scaling, sliding windows, a
non-SDPA attention implementation, training mode) is refused by `check_lean_support` with an
`InvalidInputError`; callers then use the transformers path.
"""
from __future__ import annotations

import time
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP, LlamaModel, LlamaRMSNorm

from magma_core.errors import InvalidInputError

_MIN_CAPACITY = 64  # tokens of KV cache allocated at least; grown by doubling when exceeded
# Up to this many rows a projection may run as weight @ x^T (layout "out_in", see `_project`); more keep F.linear.
_FEW_ROWS = 8
LAYOUTS = ("in_out", "out_in")  # weights stored (in, out) and multiplied x @ w, or stored (out, in) as nn.Linear
_layout_measured: str | None = None


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


def projection_layout() -> str:
    """The weight layout whose matrix product is faster for a few rows on this CPU: "in_out" (x @ w, w stored
    (in, out)) or "out_in" (w @ x^T for a few rows, F.linear for more, w stored (out, in) as nn.Linear keeps it).

    MKL picks different kernels for the two, and which is faster differs between CPUs by up to 2x (measured on this
    project's machines both ways round), so it is measured once per process on a magma-tiny-sized product."""
    global _layout_measured
    if _layout_measured is None:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(1536, 256, generator=generator)
        stored = {"in_out": weight.t().contiguous(), "out_in": weight}
        rows = [torch.randn(n, 256, generator=generator) for n in (1, 2, 4)]
        best: dict[str, float] = {layout: float("inf") for layout in LAYOUTS}
        with torch.inference_mode():
            for _ in range(5):  # interleaved rounds, best of each: robust to a busy neighbour
                for layout in LAYOUTS:
                    start = time.perf_counter()
                    for _ in range(10):
                        for x in rows:
                            _project(x, stored[layout], None, layout)
                    best[layout] = min(best[layout], time.perf_counter() - start)
        _layout_measured = min(LAYOUTS, key=best.__getitem__)
    return _layout_measured


class _Layer:
    """One decoder layer's packed weights and attention shape."""

    def __init__(self, layer: LlamaDecoderLayer, layout: str):
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = _packed(layout, attn.q_proj, attn.k_proj, attn.v_proj)
        # Views of the queries' and the keys/values' part, for blocks whose later rows only need keys and values.
        queries = attn.q_proj.out_features
        self.q_part, self.kv_part = (_output_slice(self.qkv, layout, part) for part in (slice(0, queries), slice(queries, None)))
        self.o = _packed(layout, attn.o_proj)
        self.gate_up = _packed(layout, mlp.gate_proj, mlp.up_proj)
        self.down = _packed(layout, mlp.down_proj)
        self.intermediate = int(mlp.gate_proj.out_features)
        self.act = mlp.act_fn
        self.norm_in = (layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon))
        self.norm_post = (layer.post_attention_layernorm.weight, float(layer.post_attention_layernorm.variance_epsilon))
        self.head_dim = int(attn.head_dim)
        self.scaling = float(attn.scaling)
        self.n_heads = attn.q_proj.out_features // self.head_dim
        self.n_kv_heads = attn.k_proj.out_features // self.head_dim
        self.groups = self.n_heads // self.n_kv_heads  # query heads per key/value head


def _packed(layout: str, *linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of `linears` stacked along their outputs, stored in `layout` (a copy)."""
    weight = torch.cat([linear.weight.detach() for linear in linears], dim=0)
    biases = [linear.bias for linear in linears]
    if all(b is None for b in biases):
        bias = None
    else:
        bias = torch.cat([b.detach() if b is not None else weight.new_zeros(linear.out_features)
                          for b, linear in zip(biases, linears)])
    return (weight.t().contiguous() if layout == "in_out" else weight.contiguous()), bias


def _output_slice(packed: tuple[torch.Tensor, torch.Tensor | None], layout: str, part: slice):
    """(weight, bias) views of some output features of a packed product."""
    weight, bias = packed
    return (weight[:, part] if layout == "in_out" else weight[part]), (None if bias is None else bias[part])


class PackedWeights:
    """A text model's weights as `LeanLlamaDecoder` multiplies them: fused and laid out (`projection_layout`).

    `for_model` keeps one per model and builds a new one when any parameter was replaced or changed in place
    (training between evaluations), so a decoder always runs the model's current weights."""

    _cache: "weakref.WeakKeyDictionary[object, PackedWeights]" = weakref.WeakKeyDictionary()

    def __init__(self, language_model, layout: str):
        decoder = language_model.model
        count = int(language_model.config.num_hidden_layers)
        self.layout = layout
        with torch.no_grad():
            self.layers = [_Layer(layer, layout) for layer in decoder.layers[:count]]
            self.lm_head = _packed(layout, language_model.lm_head)
        self.signature = self.signature_of(language_model)
        self.rotary: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (capacity, device, dtype) -> cos, sin

    @staticmethod
    def signature_of(language_model) -> tuple:
        # Storage, version counter (bumped by in-place updates) and dtype/device of every parameter.
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in language_model.parameters())

    @classmethod
    def for_model(cls, language_model, layout: str | None = None) -> "PackedWeights":
        layout = layout or projection_layout()
        found = cls._cache.get(language_model)
        if found is None or found.layout != layout or found.signature != cls.signature_of(language_model):
            found = cls(language_model, layout)
            cls._cache[language_model] = found
        return found


class LeanLlamaDecoder:
    """Prefill, multi-token steps and cropping over a preallocated KV cache, for one sequence.

    Usage: ``logits = dec.prefill(embeds, logits_to_keep)``, then ``dec.step(ids, logits_to_keep)``
    any number of times, ``dec.crop_last(k)`` to forget the last k tokens. Logits come as
    (logits_to_keep, vocab): the rows after each of the last `logits_to_keep` tokens fed.
    Weights are read from `model` when the decoder is built (`PackedWeights`): build a new one after changing
    parameters. Not thread-safe: one sequence, one caller.
    """

    def __init__(self, model, capacity: int = 0, layout: str | None = None):
        check_lean_support(model)
        if layout is not None and layout not in LAYOUTS:
            raise InvalidInputError(f"layout must be one of {LAYOUTS} or None (measured), got {layout!r}")
        language_model = model.language_model
        decoder = language_model.model
        packed = PackedWeights.for_model(language_model, layout)
        self._packed = packed
        self.layout = packed.layout
        self.layers = packed.layers
        self.embed_weight = decoder.embed_tokens.weight
        self.final_norm = (decoder.norm.weight, float(decoder.norm.variance_epsilon))
        self.lm_head = packed.lm_head
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
        capacity = -(-capacity // _MIN_CAPACITY) * _MIN_CAPACITY  # whole blocks: few distinct sizes, tables reused
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
        # Kept with the packed weights: every decoder of a model needs the same tables (one per step of the policy).
        key = (capacity, self.device, self.dtype)
        found = self._packed.rotary.get(key)
        if found is None:
            if len(self._packed.rotary) >= 16:
                self._packed.rotary.clear()
            found = self._packed.rotary[key] = self._compute_rotary_tables(capacity)
        return found

    def _compute_rotary_tables(self, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
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

    def score_branches(self, branches: Sequence[Sequence[int]], keep_first: bool = False) -> list[torch.Tensor]:
        """Logits after every token of each branch, the branches fed side by side in ONE call as alternative
        continuations of the sequence held (tree attention: a branch sees the sequence and its own earlier
        tokens, at the positions it would have alone). The cache is left as it was, or with `keep_first` holds
        the first branch after the sequence, as if it had been fed alone (its rows come first, in place).

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
                hidden = self._layer(layer, self._keys[index], self._values[index], hidden, rope, past, n, mask,
                                     self.layout)
            logits = _project(_rms_norm(hidden, *self.final_norm), *self.lm_head, self.layout).contiguous()
        # The branches' keys and values sit past the sequence's end and are overwritten by the next feed.
        if keep_first:
            self.length = past + len(lists[0])
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
            hidden = self._layer(layer, self._keys[index], self._values[index], hidden, rope, past, rows, masks[rows],
                                 self.layout)
        self.length = total
        # Row-wise from here: the final norm and lm_head see the kept rows only.
        return _project(_rms_norm(hidden, *self.final_norm), *self.lm_head, self.layout).contiguous()

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
    def _layer(layer: _Layer, key_cache, value_cache, hidden, rope, past: int, rows: int, mask,
               layout: str) -> torch.Tensor:
        """One decoder layer over n new positions: keys/values of all of them are cached, the last `rows` go on."""
        n = hidden.shape[0]
        total = past + n
        cos, sin = rope
        heads, kv_heads, head_dim = layer.n_heads, layer.n_kv_heads, layer.head_dim
        if rows < n:
            # Keys and values for every new row; queries (and all that follows) for the kept rows only.
            normed = _rms_norm(hidden, *layer.norm_in)
            kv = _project(normed, *layer.kv_part, layout)
            k = kv[:, : kv_heads * head_dim].reshape(n, kv_heads, head_dim).transpose(0, 1)
            key_cache[:, past:total] = _rotate(k, cos, sin)
            value_cache[:, past:total] = kv[:, kv_heads * head_dim:].reshape(n, kv_heads, head_dim).transpose(0, 1)
            hidden, normed, cos, sin = hidden[n - rows :], normed[n - rows :], cos[n - rows :], sin[n - rows :]
            q = _project(normed, *layer.q_part, layout)
            q = _rotate(q.reshape(rows, heads, head_dim).transpose(0, 1), cos, sin)
        else:
            qkv = _project(_rms_norm(hidden, *layer.norm_in), *layer.qkv, layout)
            # Queries and keys rotate together: one pass over (rows, heads + kv_heads, head_dim).
            qk = _rotate(qkv[:, : (heads + kv_heads) * head_dim].reshape(n, heads + kv_heads, head_dim),
                         cos[:, None], sin[:, None]).transpose(0, 1)
            q = qk[:heads]
            key_cache[:, past:total] = qk[heads:]
            value_cache[:, past:total] = qkv[:, (heads + kv_heads) * head_dim:].reshape(n, kv_heads, head_dim).transpose(0, 1)
        attended = _attend(layer, q, key_cache[:, :total], value_cache[:, :total], *mask)
        hidden = hidden + _project(attended, *layer.o, layout)
        gate_up = _project(_rms_norm(hidden, *layer.norm_post), *layer.gate_up, layout)
        gated = layer.act(gate_up[:, : layer.intermediate]) * gate_up[:, layer.intermediate:]
        return hidden + _project(gated, *layer.down, layout)


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
    """Rotary embedding of x (..., head_dim) at the positions of cos / sin_folded (broadcast against x)."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin_folded


def _project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: str) -> torch.Tensor:
    """x @ W^T + b of (n, in) rows with W stored in `layout` (see `projection_layout`).

    "in_out": one x @ w product. "out_in": a few rows are multiplied as w @ x^T (the result is a transposed view),
    more as F.linear. The sums are the same up to float rounding order.
    """
    if layout == "in_out":
        return torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)
    if x.shape[0] > _FEW_ROWS:
        return F.linear(x, weight, bias)
    out = torch.mm(weight, x.t()).t()
    return out if bias is None else out + bias


def _rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's arithmetic: statistics in float32, the weight applied in the input dtype."""
    dtype = hidden.dtype
    if dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(hidden, weight.shape, weight, eps)  # the same arithmetic in one kernel
    if dtype != torch.float32:
        hidden = hidden.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (hidden if dtype == torch.float32 else hidden.to(dtype))


__all__ = ["LAYOUTS", "LeanLlamaDecoder", "PackedWeights", "check_lean_support", "merged_input_embeddings",
           "projection_layout"]

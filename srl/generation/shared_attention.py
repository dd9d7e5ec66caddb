"""Attention over a shared prompt prefix read once per step, not once per row (cascade attention).

When every prompt of an engine call starts with the same tokens (the judge's rubric, a few-shot
block), the engine encodes that prefix once. Copying its keys and values into every row makes each
decode step read the prefix ``rows`` times and makes the cache ``rows x prefix`` tokens larger. Here
the rows' caches hold only their own tokens; this attention function scores each row's queries
against the prefix's keys in one matrix product over all rows (the prefix is read once per layer),
against the row's own keys as usual, and takes one softmax over both parts:

    softmax([q K_prefix^T, q K_own^T + mask]) [V_prefix; V_own]

which is the same attention as over the concatenated cache (the prefix is visible to every query;
the model's mask applies to the row's own columns). The engine turns it on for its forwards only
(``active``), for models whose attention is the standard scaled dot product over a full context.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Sequence

import torch

NAME = "srl_shared_prefix"
_PREFIX: contextvars.ContextVar[Sequence[tuple[torch.Tensor, torch.Tensor]] | None] = contextvars.ContextVar("srl_shared_prefix", default=None)
_CACHE: contextvars.ContextVar[Any] = contextvars.ContextVar("srl_shared_prefix_cache", default=None)  # the rows' cache
_BIAS: contextvars.ContextVar[Any] = contextvars.ContextVar("srl_shared_prefix_bias", default=None)  # (mask, bias) of this forward
# Architectures whose attention layers call the attention interface with plain scaled dot-product
# attention over the whole context (no soft-capping, no attention sinks, no sliding window).
SUPPORTED = {"llama", "mistral", "qwen2", "qwen3", "granite", "olmo", "olmo2", "phi3", "smollm3"}
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, shared_prefix_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # boolean masks over the row's own columns
    _registered = True


def supported(model: torch.nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED:
        return False
    if getattr(cfg, "_attn_implementation", None) not in ("sdpa", "eager", None):
        return False
    return not getattr(cfg, "sliding_window", None) or getattr(cfg, "use_sliding_window", True) is False


def layer_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a one-row cache: the shared prefix."""
    from srl.generation.kv_cache import _get, _layers

    return [(_get(h, k), _get(h, v)) for h, k, v in _layers(cache)]


@contextlib.contextmanager
def active(model: torch.nn.Module, prefix: Sequence[tuple[torch.Tensor, torch.Tensor]], cache: Any = None) -> Iterator[None]:
    """Forwards of ``model`` inside attend to ``prefix`` (per layer (1, kv heads, P, head dim)) before their own cache
    (``cache``: the rows' cache the forward updates, whose preallocated buffers decode steps may read whole)."""
    _register()
    cfg = model.config
    saved = cfg._attn_implementation
    tokens = (_PREFIX.set(prefix), _CACHE.set(cache), _BIAS.set(None))
    cfg._attn_implementation = NAME
    try:
        yield
    finally:
        cfg._attn_implementation = saved
        _BIAS.reset(tokens[2])
        _CACHE.reset(tokens[1])
        _PREFIX.reset(tokens[0])


def shared_prefix_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
    dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (b, heads, q, d); key/value (b, kv heads, own length, d); returns (b, q, heads, d) as HF's attention functions.

    Decode steps (one query per row) take the cascade path of the module docstring; a prefill (several queries per row)
    is compute-bound, and runs the fused SDPA kernel over the prefix expanded for that call only."""
    prefix = _PREFIX.get()
    if prefix is None:
        raise RuntimeError("shared-prefix attention called outside srl.generation.shared_attention.active")
    pk, pv = prefix[module.layer_idx]
    b, heads, q, d = query.shape
    kv_heads, own = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else d ** -0.5
    if q > 1:  # a prefill: compute-bound, so the fused kernel over the prefix copied for this call is faster
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        keep = _keep(attention_mask, b, q, own, key.device)
        full_mask = torch.cat([keep.new_ones(b, 1, q, pk.shape[2]), keep], dim=-1)
        full_key = torch.cat([pk.expand(b, -1, -1, -1), key], dim=2)
        full_value = torch.cat([pv.expand(b, -1, -1, -1), value], dim=2)
        kwargs.pop("is_causal", None)
        return sdpa_attention_forward(module, query, full_key, full_value, full_mask, dropout=dropout, scaling=scale, is_causal=False, **kwargs)
    # Query heads h = kv * groups + j use key/value head kv (transformers' repeat_kv layout).
    qg = query.reshape(b, kv_heads, groups * q, d)
    key, value, width = _full_buffers(module.layer_idx, key, value)
    bias = _column_bias(attention_mask, (b, q, own), pk.shape[2], width, torch.promote_types(query.dtype, torch.float32), key.device)
    flat = qg.transpose(0, 1).reshape(kv_heads, b * groups * q, d)
    scores_pre = torch.matmul(flat, pk[0].transpose(-1, -2)).reshape(kv_heads, b, groups * q, -1).transpose(0, 1)
    # keys @ queries^T, then the small result transposed: a product with the keys transposed as its right
    # operand copies them first on a CPU in bfloat16.
    scores_own = torch.matmul(key, qg.transpose(-1, -2)).transpose(-1, -2)  # (b, kv, groups*q, width)
    scores = torch.add(bias, torch.cat([scores_pre, scores_own], dim=-1).to(bias.dtype), alpha=scale)
    probs = torch.softmax(scores, dim=-1).to(query.dtype)
    p_len = pk.shape[2]
    p_pre = probs[..., :p_len].transpose(0, 1).reshape(kv_heads, b * groups * q, p_len)
    out = torch.matmul(p_pre, pv[0]).reshape(kv_heads, b, groups * q, d).transpose(0, 1)
    out = out + torch.matmul(probs[..., p_len:], value)
    out = out.reshape(b, kv_heads, groups, q, d).reshape(b, heads, q, d)
    return out.transpose(1, 2).contiguous(), None


def _full_buffers(layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The layer's whole preallocated buffers when ``key``/``value`` are their filled part (``ReservedLayer``).

    A batched product over the filled part (a view whose rows are ``capacity`` apart) copies it first on a CPU
    in bfloat16: a copy of the whole own cache per layer and step. The buffers are contiguous, and their unfilled
    columns are zeros that the column bias masks out."""
    cache = _CACHE.get()
    layers = getattr(cache, "layers", None)
    layer = layers[layer_idx] if layers is not None and layer_idx < len(layers) else None
    full = layer.filled_buffers(key, value) if hasattr(layer, "filled_buffers") else None
    if full is None:
        return key, value, key.shape[2]
    return full[0], full[1], full[0].shape[2]


def _keep(attention_mask: torch.Tensor | None, b: int, q: int, own: int, device: torch.device) -> torch.Tensor:
    """(b, 1, q, own) True where a query attends to an own column."""
    if attention_mask is None:  # no padding: causal over the own columns
        keep = torch.arange(own, device=device)[None, :] <= torch.arange(own - q, own, device=device)[:, None]
        return keep[None, None].expand(b, 1, q, own)
    if attention_mask.dtype == torch.bool:
        return attention_mask.expand(b, 1, q, own)
    return (attention_mask == 0).expand(b, 1, q, own)  # an additive mask: 0 where attended


def _column_bias(attention_mask: Any, shape: tuple[int, int, int], p_len: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(b, 1, q, p_len + width) additive bias: 0 over the prefix and the kept own columns, -inf elsewhere
    (masked, or not yet filled). Built once per forward: every layer gets the same mask object."""
    b, q, own = shape
    key = (shape, p_len, width, dtype)
    memo = _BIAS.get()
    if memo is not None and memo[0] is attention_mask and memo[1] == key:
        return memo[2]
    bias = torch.full((b, 1, q, p_len + width), float("-inf"), dtype=dtype, device=device)
    bias[..., :p_len] = 0
    bias[..., p_len:p_len + own].masked_fill_(_keep(attention_mask, b, q, own, device), 0)
    _BIAS.set((attention_mask, key, bias))
    return bias

"""Attention: real probabilities in the real pass, the recorded ones in the data pass, uniform ones in the path
pass.

Attention that dispatches through transformers' ``AttentionInterface`` goes through :func:`attention`, registered
under :data:`ATTENTION_IMPLEMENTATION` only while some :class:`LinearizedPasses` is active (see
:func:`routed_attention`): importing px_hf changes nothing in transformers. Attention that computes its softmax
inline is caught where its probabilities pass through its dropout module (:class:`InlineAttentionRule`), or, when
it has none (LeViT, Hiera), at the softmax call itself (:class:`InlineSoftmax`), which also catches attention that
calls ``torch.nn.functional.scaled_dot_product_attention`` directly (Data2Vec-vision's SDPA attention).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Iterator, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..structure import is_attention_dropout
from .base import Rule

if TYPE_CHECKING:
    from .engine import LinearizedPasses

ATTENTION_IMPLEMENTATION = "px_hf"
_ACTIVE: list["LinearizedPasses"] = []


def _px_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention function transformers calls; defers to the innermost active passes."""
    return attention(_ACTIVE[-1], module, query, key, value, attention_mask, scaling)


@contextmanager
def routed_attention(passes: "LinearizedPasses", configs: list) -> Iterator[None]:
    """Route the attention of every model config in ``configs`` to ``passes`` inside the block."""
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.modeling_utils import AttentionInterface

    if not _ACTIVE:
        AttentionInterface.register(ATTENTION_IMPLEMENTATION, _px_attention)
        AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, eager_mask)
    previous = [config._attn_implementation for config in configs]
    _ACTIVE.append(passes)
    for config in configs:
        config._attn_implementation = ATTENTION_IMPLEMENTATION
    try:
        yield
    finally:
        for config, implementation in zip(configs, previous):
            config._attn_implementation = implementation
        _ACTIVE.remove(passes)


def _per_query_head(tensor: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Keys or values (batch, heads, tokens, dim) repeated to the query's heads (grouped-query attention)."""
    heads = query.shape[-3]
    return tensor if tensor.shape[-3] == heads else tensor.repeat_interleave(heads // tensor.shape[-3], -3)


def attention(passes: "LinearizedPasses", module, query, key, value, attention_mask,
              scaling: Optional[float]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The attention of ``module`` in the current mode of ``passes``; returns ``(output, probabilities)``."""
    key, value = _per_query_head(key, query), _per_query_head(value, query)
    if passes.mode in ("path", "synflow"):
        uniform = value.mean(-2, keepdim=True).expand(*value.shape[:2], query.shape[2], value.shape[-1])
        return uniform.transpose(1, 2).contiguous(), None
    if passes.mode == "data":
        probs = passes.take(module).to(value.dtype)  # recorded under autocast, perhaps in half precision
    else:
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        logits = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            logits = logits + attention_mask
        with passes.inline_softmax.paused() if passes.inline_softmax is not None else nullcontext():
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
        if passes.mode == "real":
            passes.keep(module, probs.detach())
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class InlineAttentionRule(Rule):
    """The dropout on an inline softmax's probabilities (an identity in eval mode). Real: record the probabilities.
    Data: the recorded ones instead of the data pass's own. Path, synflow: uniform, ``1/N`` over the keys."""

    @staticmethod
    def matches(module: nn.Module, parent: Optional[nn.Module]) -> bool:
        return is_attention_dropout(module, parent)

    def apply(self, passes, module, z, out):
        if passes.mode == "real":
            passes.keep(module, z.detach())
            return None
        if passes.mode == "data":
            return passes.take(module).to(z.dtype)
        return torch.full_like(z, 1.0 / z.shape[-1])


# Looked up on every torch call while the mode is on.
_SOFTMAX = frozenset((torch.softmax, torch.Tensor.softmax, torch.nn.functional.softmax,
                      torch.special.softmax))
_SDPA = torch.nn.functional.scaled_dot_product_attention


def _sdpa_probabilities(query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                        enable_gqa=False) -> torch.Tensor:
    """The probabilities ``scaled_dot_product_attention`` applies to its values (eval mode: no dropout)."""
    key = _per_query_head(key, query)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.matmul(query, key.transpose(-2, -1)) * scale
    if is_causal:
        allowed = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~allowed, -torch.inf)
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, -torch.inf) if attn_mask.dtype == torch.bool else logits + attn_mask
    return torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)


class _AttentionKernelProbe(TorchFunctionMode):
    """Notes whether the model calls ``scaled_dot_product_attention`` itself."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen = self.seen or func is _SDPA
        return func(*args, **(kwargs or {}))


def calls_attention_kernel(run) -> bool:
    """Whether ``run()`` (a forward pass) calls ``torch.nn.functional.scaled_dot_product_attention`` directly,
    attention no rule sees: its probabilities are then caught at the call (:class:`InlineSoftmax`)."""
    with _AttentionKernelProbe() as probe:
        run()
    return probe.seen


class InlineSoftmax(TorchFunctionMode):
    """Every softmax the model calls outside a rule, caught at the call: real pass, record the probabilities; data
    pass, the recorded ones (matched by call order); path and synflow, uniform ones over the softmax's dimension.
    A direct call of ``scaled_dot_product_attention`` is taken apart the same way: its probabilities are recorded,
    replayed or uniform, and applied to its values.

    It makes attention that computes its softmax inline without a dropout module linear in the data pass. It costs
    a Python call per torch operation, so :func:`~.linearity.check_data_pass_linear` turns it on only for models
    that call the attention kernel themselves or whose data pass is not linear without it.
    """

    def __init__(self, passes: "LinearizedPasses"):
        super().__init__()
        self.passes = passes
        self._paused = 0

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Let softmax calls through untouched (px_hf's own attention records its probabilities itself)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        passes = self.passes
        if (func not in _SOFTMAX and func is not _SDPA) or self._paused or passes.mode == "off" or passes.replacing:
            return func(*args, **kwargs)
        if func is _SDPA:
            return self._attention(*args, **kwargs)
        if passes.mode == "real":
            out = func(*args, **kwargs)
            passes.keep(InlineSoftmax, out.detach())
            return out
        logits = args[0]
        if passes.mode == "data":
            return passes.take(InlineSoftmax).to(logits.dtype)
        dim = kwargs["dim"] if "dim" in kwargs else args[1]
        return torch.full_like(logits, 1.0 / logits.shape[dim])

    def _attention(self, query, key, value, *args, **kwargs) -> torch.Tensor:
        passes, value = self.passes, _per_query_head(value, query)
        if passes.mode in ("path", "synflow"):
            return value.mean(-2, keepdim=True).expand(*value.shape[:-2], query.shape[-2], value.shape[-1])
        if passes.mode == "real":
            probs = _sdpa_probabilities(query, key, value, *args, **kwargs)
            passes.keep(InlineSoftmax, probs.detach())
        else:
            probs = passes.take(InlineSoftmax).to(value.dtype)
        return torch.matmul(probs, value)

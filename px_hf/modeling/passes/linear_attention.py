"""Attention of linear cost, whose context is a product of two projections of the input rather than a softmax
over key-query pairs: MobileViTV2's separable self-attention and SwiftFormer's additive attention.

Each is linearized as a gate, as squeeze-excitation is (``gate.py``). The real pass records the data-dependent
factors: the context that multiplies the values, and the per-token normalization of SwiftFormer's queries and
keys. The data pass replays them, so the module is linear in its input along the value path. In the path pass the
module's parts all stay on paths (a context built from its own projections, divided by its mean so that the module
keeps the magnitude of its value path), and softmax weights over tokens are uniform, as in every other attention.

Both rules recompute the module's forward from its submodules; the real pass checks once per module that this
reconstruction is what the module returned, so a change in transformers' code stops PX with a clear error instead
of giving wrong scores.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ModelError
from ..structure import is_additive_attention, is_separable_attention
from .base import Rule, per_mean, same_output
from .residual import balanced, magnitude

if TYPE_CHECKING:
    from .engine import LinearizedPasses


class _RecomputedRule(Rule):
    """A module whose forward the rule computes itself in the data and path passes; the module runs as it is in the
    real and synflow passes, where the rule records what the data pass needs."""

    computes = ""  # the forward the rule rebuilds, for the error when the module computes something else
    projections: tuple[str, ...] = ()  # the submodules whose real-pass outputs the rule reads instead of recomputing

    def __init__(self) -> None:
        self._checked: set[nn.Module] = set()
        self._real: dict[tuple[nn.Module, str], torch.Tensor] = {}

    def setup(self, passes, module: nn.Module) -> list:
        def remember(key, _, __, out):
            if passes.mode == "real":
                self._real[key] = out

        return [getattr(module, name).register_forward_hook(partial(remember, (module, name)))
                for name in self.projections]

    def replaces_output(self, passes: "LinearizedPasses", module: nn.Module) -> bool:
        return passes.mode in ("data", "path")

    def _projected(self, passes, module: nn.Module, name: str, z: torch.Tensor) -> torch.Tensor:
        """The output of submodule ``name`` on ``z``: in the real pass the one the module's own forward computed."""
        if passes.mode == "real":
            return self._real.pop((module, name))
        return getattr(module, name)(z)

    def _check(self, module: nn.Module, out, rebuild: Callable[[], torch.Tensor]) -> None:
        """Once per module: ``rebuild()``, the rule's own forward, must be what the module returned."""
        if module in self._checked:
            return
        if not same_output(out, rebuild()):
            raise ModelError(
                f"{type(module).__name__} does not compute what px_hf's pass rule for it assumes ({self.computes}), "
                "so PX cannot linearize it. The baselines (magnitude, snip, grasp, synflow, random) can prune this model"
            )
        self._checked.add(module)


class SeparableAttentionRule(_RecomputedRule):
    """MobileViTV2's separable self-attention, ``out_proj(relu(v) * sum_tokens(k * softmax_tokens(q)))`` with
    ``q, k, v`` one fused projection. Real: record the gate ``1[v > 0] * |context|``. Data: ``out_proj(v * gate)``.
    Path: softmax replaced by ``q`` over its sum (uniform when the query is pruned), so the query, key and value rows
    of the fused projection are all on paths, and the context over its mean."""

    computes = "out_proj(relu(v) * sum(k * softmax(q)))"

    @staticmethod
    def matches(module: nn.Module, parent: Optional[nn.Module]) -> bool:
        return is_separable_attention(module)

    projections = ("qkv_proj",)

    def apply(self, passes, module, z, out):
        if passes.mode == "synflow":
            return None
        fused = self._projected(passes, module, "qkv_proj", z)
        query, key, value = torch.split(fused, [1, module.embed_dim, module.embed_dim], dim=1)
        if passes.mode == "real":
            context = (key * torch.softmax(query, dim=-1)).sum(-1, keepdim=True)
            self._check(module, out, lambda: module.out_proj(F.relu(value) * context))
            # The bound counts every path positively: the context's sign is not a path's.
            passes.keep(module, (value > 0).to(value.dtype) * context.abs())
            return None
        if passes.mode == "data":
            return module.out_proj(value * passes.take(module).to(value.dtype))
        total = query.detach().sum(-1, keepdim=True)
        # A pruned query (all zero) weighs the tokens uniformly, with no gradient: dividing by a clamped zero would
        # send an infinite gradient into the pruned weights, whose scores would be 0 * inf.
        weights = torch.where(total > 0, query / total.clamp_min(torch.finfo(query.dtype).tiny), 1.0 / query.shape[-1])
        context = (key * weights).sum(-1, keepdim=True)
        return module.out_proj(value * per_mean(context))


class AdditiveAttentionRule(_RecomputedRule):
    """SwiftFormer's efficient additive attention, ``final(proj(g * k^) + q^)`` with ``q^, k^`` the per-token
    L2-normalized query and key and ``g`` their global query, ``sum_tokens(softmax(q^ w_g) * q^)``. Real: record
    each token's ``1 / |q|`` and ``1 / |k|`` and the gate ``|g|``. Data: the same normalizations and gate replayed.
    Path: each token normalized by its own detached norm, uniform token weights, the global query over its mean (so
    the query projection stays on the paths through the gate), and the key path held at the query's magnitude."""

    computes = "final(proj(g * normalize(k)) + normalize(q))"

    projections = ("to_query", "to_key")

    @staticmethod
    def matches(module: nn.Module, parent: Optional[nn.Module]) -> bool:
        return is_additive_attention(module)

    @staticmethod
    def _inverse_norm(tensor: torch.Tensor) -> torch.Tensor:
        # F.normalize's own epsilon, so that the replay is the real normalization
        return 1.0 / torch.linalg.vector_norm(tensor, dim=-1, keepdim=True).clamp_min(1e-12)

    def apply(self, passes, module, z, out):
        if passes.mode == "synflow":
            return None
        query, key = (self._projected(passes, module, name, z) for name in self.projections)
        if passes.mode == "real":
            scale_q, scale_k = self._inverse_norm(query).detach(), self._inverse_norm(key).detach()
            query, key = query * scale_q, key * scale_k
            weights = ((query @ module.w_g) * module.scale_factor).softmax(dim=-1)
            global_query = (weights * query).sum(1, keepdim=True)
            self._check(module, out, lambda: module.final(module.proj(global_query * key) + query))
            for record in (scale_q, scale_k, global_query.detach().abs()):
                passes.keep(module, record)
            return None
        if passes.mode == "data":
            scale_q, scale_k, gate = (passes.take(module).to(z.dtype) for _ in range(3))
            return module.final(module.proj(gate * key * scale_k) + query * scale_q)
        query, key = query * self._inverse_norm(query).detach(), key * self._inverse_norm(key).detach()
        # Uniform token weights make the global query the tokens' sum, a constant factor away from any weighting.
        attended = module.proj(per_mean(query.sum(1, keepdim=True)) * key)
        # Held at the magnitude of the query added beside it: with weights of std 0.02 the key path through proj
        # starts at a few percent of it, and iterative pruning would empty to_key and proj.
        return module.final(balanced(attended, magnitude(query)) + query)

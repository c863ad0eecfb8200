"""The PX saliency (Iurada et al., CVPR 2024): ``S_j = theta_j**2 * dR / d(theta_j**2)`` with
``R = sum_k Z1_k * z2_k``, a data-aware upper bound on the trace of the Neural Tangent Kernel.

- ``Z1 = sum_n z1(x_n)``: the network with unit weights where the mask keeps them, squared input ``x**2``, and
  every non-linearity replaced by the gate the real network produced on ``x`` (no gradient).
- ``z2``: the network with squared weights, linear activations, uniform attention and one all-ones input.

Because the data enters only through the K-vector ``Z1`` (K = number of outputs), scoring across processes
needs one small all-reduce per round. ``Z1`` is kept as ``value * exp(log_scale)`` so that deep models stay
finite in float32; the scores are exact up to one positive factor common to all weights.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import torch

from ..modeling.io import forward
from ..modeling.passes import admit_stream_blocks, check_data_pass_linear, pass_parameters
from ..modeling.structure import AttentionWeights, attention_blocks
from .base import Scores, ScoringContext


def output_vector(out: torch.Tensor) -> torch.Tensor:
    """Sum a batch of outputs into one vector per output unit, in at least float32 (half precision would
    lose the small terms of the sum)."""
    vector = out.flatten(1).sum(0)
    return vector if vector.dtype in (torch.float32, torch.float64) else vector.float()


def _accumulate(vector: torch.Tensor) -> torch.Tensor:
    # Sums over batches (and processes) are kept in float64, so that the order in which shards are added
    # changes nothing at float32 precision: any number of processes gives the same masks.
    return vector.double()


class LogScaledSum:
    """A running sum of vectors kept as ``value * exp(log_scale)`` with ``max |value| == 1``."""

    def __init__(self) -> None:
        self.value: Optional[torch.Tensor] = None
        self.log_scale = -math.inf

    def add(self, vector: torch.Tensor, log_scale: float) -> None:
        peak = float(vector.abs().max()) if vector.numel() else 0.0
        if not math.isfinite(peak):
            raise FloatingPointError(
                "the PX data pass overflowed; keep px_rescale_blocks=True or use a float64 model"
            )
        if peak == 0.0:
            if self.value is None:
                self.value = _accumulate(torch.zeros_like(vector))
            return
        vector, log_scale = _accumulate(vector) / peak, log_scale + math.log(peak)
        if self.value is None or self.log_scale == -math.inf:
            self.value, self.log_scale = vector, log_scale
            return
        top = max(self.log_scale, log_scale)
        self.value = self.value * math.exp(self.log_scale - top) + vector * math.exp(log_scale - top)
        self.log_scale = top

    def all_reduce(self, reduce) -> None:
        """Sum across processes: agree on the largest scale first, then add the rescaled values."""
        value = self.value
        log_scale = torch.tensor([self.log_scale], dtype=torch.float64, device=value.device)
        reduce([log_scale], "max")
        top = float(log_scale)
        factor = math.exp(self.log_scale - top) if math.isfinite(top) else 0.0
        value = value * factor
        reduce([value], "sum")
        self.value, self.log_scale = value, top


def _weight_buffers(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    """One tensor per prunable weight, kept across rounds: the masks in the data pass, then ``theta**2`` in the
    path pass. Reusing it bounds PX's extra memory to about one copy of the prunable weights."""
    buffers = ctx.cache.get("px_buffers")
    if buffers is None:
        params = ctx.parameters()
        buffers = ctx.cache["px_buffers"] = {n: torch.empty_like(p, requires_grad=False) for n, p in params.items()}
    return buffers


def data_term(ctx: ScoringContext) -> torch.Tensor:
    """``Z1 = sum_n z1(x_n)`` over the whole pruning set (all processes), up to a positive factor.

    Also leaves every normalization's ``E[rstd**2]`` in ``ctx.passes`` for the path pass.
    """
    passes, model = ctx.passes, ctx.model
    buffers = _weight_buffers(ctx)
    for name, buffer in buffers.items():
        buffer.copy_(ctx.masks[name])
    data_params = pass_parameters(ctx.roles, dict(model.named_parameters()), "data", given=buffers,
                                  bias=ctx.config.px_bias)
    if "linear" not in ctx.cache:  # once, before the first round: never score through an unknown non-linearity
        first = next(iter(ctx.batches), (None, None))[0]
        admit_stream_blocks(passes, model, first, data_params, ctx.all_reduce)
        check_data_pass_linear(passes, model, first, data_params, ctx.all_reduce)
        ctx.cache["linear"] = True
    z1 = LogScaledSum()
    passes.reset_statistics()
    with torch.no_grad():
        for inputs, _ in ctx.batches:
            with passes.run("real"), ctx.autocast():
                forward(model, inputs)
            with passes.run("data"):
                out = forward(model, inputs * inputs, data_params)
            z1.add(output_vector(out), passes.log_scale)
            passes.clear_records()
    del data_params
    if z1.value is None:  # this process's shard is empty
        z1.value = _output_like(ctx)
    z1.all_reduce(ctx.all_reduce)
    stats = passes.statistics()
    if stats:
        ctx.all_reduce(stats, "sum")
    return z1.value


def _output_like(ctx: ScoringContext) -> torch.Tensor:
    """A zero vector with one entry per model output (for processes whose shard is empty)."""
    with torch.no_grad(), ctx.passes.run("synflow"):
        out = _ones_forward(ctx, pass_parameters(ctx.roles, dict(ctx.model.named_parameters()), "synflow"))
    return _accumulate(torch.zeros_like(output_vector(out)))


def _ones_forward(ctx: ScoringContext, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    reference = next(iter(params.values()))
    ones = torch.ones((1, *ctx.sample_shape), device=reference.device, dtype=reference.dtype)
    return forward(ctx.model, ones, params)


def path_gradient_scores(
    ctx: ScoringContext, mode: str, leaves: dict[str, torch.Tensor], given: dict[str, torch.Tensor],
    weights: Optional[torch.Tensor] = None, into_leaves: bool = False,
) -> Scores:
    """``leaf * dR/d(leaf)`` for ``R = sum_k weights_k * output_k`` of the one-sample ``mode`` pass, where the
    prunable weights enter as ``given`` (computed from ``leaves``, which require grad).

    With ``into_leaves`` each leaf is overwritten by its score as soon as its gradient is ready, and the gradient
    is dropped, so the scores cost no memory beyond the leaves (which must be scratch tensors).
    """
    params = dict(ctx.model.named_parameters())
    with torch.enable_grad():
        with ctx.passes.run(mode):
            out = _ones_forward(ctx, pass_parameters(ctx.roles, params, mode, given=given, bias=ctx.config.px_bias))
        out = output_vector(out)
        total = out.sum() if weights is None else (weights.to(out.dtype) * out).sum()
        if not into_leaves:
            grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
            return {
                n: torch.zeros_like(leaf) if g is None else _pruned_zeroed(g, leaf.detach()).mul_(leaf.detach())
                for (n, leaf), g in zip(leaves.items(), grads)
            }

        reached: set[int] = set()

        def to_score(leaf: torch.Tensor) -> None:
            # The leaf's own backward node has run: overwriting it cannot corrupt the remaining backward.
            with torch.no_grad():
                leaf.mul_(_pruned_zeroed(leaf.grad, leaf))
            leaf.grad = None
            reached.add(id(leaf))

        handles = [leaf.register_post_accumulate_grad_hook(to_score) for leaf in leaves.values()]
        try:
            total.backward()
        finally:
            for handle in handles:
                handle.remove()
    with torch.no_grad():
        for leaf in leaves.values():
            if id(leaf) not in reached:  # not on any path to the output: no gradient, score 0
                leaf.zero_()
    return {n: leaf.detach() for n, leaf in leaves.items()}


def _pruned_zeroed(grad: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """``grad``, set to 0 in place where ``leaf`` is 0 (a pruned weight, whose score is 0). A pruned weight's
    gradient can overflow to infinity where a path pass divides by a magnitude its pruning made tiny (MobileViTV2's
    query over its sum), and its score would be 0 * inf = NaN."""
    return grad.masked_fill_(leaf == 0, 0.0)


def _sorted(values: torch.Tensor) -> torch.Tensor:
    if values.device.type == "cpu":
        return torch.from_numpy(np.sort(values.detach().numpy()))  # about 3x faster than torch.sort on CPU
    return values.sort().values


def _magnitude_order(ctx: ScoringContext, name: str) -> torch.Tensor:
    """Flat indices of weight ``name`` from smallest to largest magnitude, its pruned entries first."""
    # Pruning only zeroes weights, so the magnitude order of the live entries never changes: sort once.
    orders = ctx.cache.setdefault("magnitude_order", {})
    if name not in orders:
        orders[name] = ctx.parameters()[name].detach().abs().reshape(-1).argsort(stable=True)
    order = orders[name]
    pruned = ~ctx.masks[name].reshape(-1)[order]
    return torch.cat([order[pruned], order[~pruned]])


def _ranked_onto(reference: torch.Tensor, order: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Scores of ``shape`` that follow the sorted ``reference`` distribution, increasing along ``order``."""
    values = reference
    if reference.numel() != order.numel():
        positions = torch.linspace(0, reference.numel() - 1, order.numel(), device=reference.device)
        values = reference[positions.round().long()]
    ranked = torch.empty_like(values)
    ranked[order] = values
    return ranked.reshape(shape)


def transfer_value_density(
    scores: Scores, ctx: ScoringContext, blocks: list[AttentionWeights]
) -> Scores:
    """Give each block's query and key weights the score distribution of its value weights, entries ranked
    by magnitude: a global threshold then keeps the same fraction of Q and K as of V, the largest entries."""
    for block in blocks:
        if block.value not in scores:
            continue
        reference = _sorted(scores[block.value].reshape(-1))
        for name in (block.query, block.key):
            if name in scores:
                scores[name] = _ranked_onto(reference, _magnitude_order(ctx, name), scores[name].shape)
    return scores


def transfer_global_density(scores: Scores, ctx: ScoringContext, names: list[str]) -> Scores:
    """Give the weights ``names``, which lie on no path of the bound, the score distribution of all the other
    weights, entries ranked by magnitude: a global threshold then keeps about the network's overall density of
    them, the largest entries."""
    others = [s.reshape(-1) for n, s in scores.items() if n not in names and s.numel()]
    if not others:
        return scores
    # A strided sample of about a million scores describes the distribution as well as all of them.
    step = max(1, sum(s.numel() for s in others) // 2 ** 20)
    reference = _sorted(torch.cat([s[::step] for s in others]))
    for name in names:
        scores[name] = _ranked_onto(reference, _magnitude_order(ctx, name), scores[name].shape)
    return scores


def _path_scores(ctx: ScoringContext, z1: torch.Tensor) -> Scores:
    """``theta**2 * dR/d(theta**2)`` from the path pass weighted by ``z1``, written into the weight buffers."""
    squared = _weight_buffers(ctx)
    with torch.no_grad():
        for name, param in ctx.parameters().items():
            torch.mul(param, param, out=squared[name])
    leaves = {n: b.requires_grad_(True) for n, b in squared.items()}
    try:
        return path_gradient_scores(ctx, "path", leaves, given=leaves, weights=z1, into_leaves=True)
    finally:
        for buffer in squared.values():
            buffer.requires_grad_(False)


def px_scores(ctx: ScoringContext) -> Scores:
    """PX saliencies of ``ctx.prunable`` on the current masked model (non-negative)."""
    z1 = data_term(ctx)
    scores = _path_scores(ctx, z1)
    if ctx.passes.residual.rescore_once():
        scores = _path_scores(ctx, z1)
    if "signs" not in ctx.cache:  # once, on the unpruned network: the structure is what can go wrong
        _check_signs(ctx, z1, scores)
        ctx.cache["signs"] = True
    if ctx.config.qk_scores == "value":
        scores = transfer_value_density(scores, ctx, attention_blocks(ctx.model))
        if "pathless" not in ctx.cache:  # found on the unpruned network: later, pruning itself cuts paths
            ctx.cache["pathless"] = [n for n, s in scores.items() if s.numel() and not bool(s.detach().ne(0).any())]
        if ctx.cache["pathless"]:
            scores = transfer_global_density(scores, ctx, ctx.cache["pathless"])
    return scores


def _check_signs(ctx: ScoringContext, z1: torch.Tensor, scores: Scores) -> None:
    """Raise :class:`~px_hf.errors.ModelError` when the first round's scores cannot be PX saliencies: all zero
    (the selection would be a random draw) or negative (the bound sums squares, so every path counts positively)."""
    from ..errors import ModelError

    model = type(ctx.model).__name__
    extremes = {n: torch.aminmax(s.detach()) for n, s in scores.items() if s.numel()}
    top = max((float(e.max) for e in extremes.values()), default=0.0)
    if top <= 0.0 and not any(float(e.min) < 0 for e in extremes.values()):
        where = ("its data pass gives a zero output" if not bool(z1.ne(0).any())
                 else "no path of its path pass reaches the output")
        raise ModelError(
            f"PX scores of this {model} are all zero: {where}, so pruning would be a random draw. A module px_hf "
            "has no pass rule for may centre its weights or inputs (weight standardization, for example). The "
            "baselines (magnitude, snip, grasp, synflow, random) can prune it."
        )
    negative = sorted(n for n, e in extremes.items() if float(e.min) < -1e-6 * top)
    if negative:
        raise ModelError(
            f"PX scores of {len(negative)} weight tensors of this {model} are negative (first: {negative[0]}): "
            "the network combines paths with a negative fixed coefficient (a subtraction such as pool(x) - x) that "
            "px_hf has no pass rule for, and the PX bound counts every path positively. The baselines (magnitude, "
            "snip, grasp, synflow, random) can prune it."
        )

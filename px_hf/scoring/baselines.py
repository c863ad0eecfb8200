"""The pruning-at-initialization baselines PX is compared against, in the same scorer interface."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..modeling.io import forward
from .base import Scores, ScoringContext
from .px import path_gradient_scores

GRASP_TEMPERATURE = 200.0  # softmax temperature of the GraSP paper


def random_scores(ctx: ScoringContext) -> Scores:
    """Uniform random scores (seeded): random pruning."""
    return {
        n: torch.rand(p.shape, generator=ctx.generator).to(p.device) for n, p in ctx.parameters().items()
    }


def magnitude_scores(ctx: ScoringContext) -> Scores:
    """``|theta|``."""
    return {n: p.detach().abs() for n, p in ctx.parameters().items()}


def _loss_gradients(ctx: ScoringContext, temperature: float = 1.0, against=None) -> Scores:
    """Gradient of the summed cross-entropy over the pruning set; with ``against`` (a gradient g), the
    Hessian-gradient product ``H g`` instead. Summed over all processes."""
    params = ctx.parameters()
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for inputs, labels in ctx.batches:
        with torch.enable_grad(), ctx.passes.run("real", record=False):
            leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            # A Hessian product differentiates twice; the fused CPU attention kernels and hardsigmoid have no
            # double backward in torch, so they run as plain differentiable formulas.
            twice = contextlib.ExitStack()
            if against is not None:
                twice.enter_context(sdpa_kernel(SDPBackend.MATH))
                twice.enter_context(_hard_gates_as_clamps(ctx.model))
            with ctx.autocast(), twice:
                logits = forward(ctx.model, inputs, leaves)
            logits = logits.float() / temperature
            loss = F.cross_entropy(logits, labels, reduction="sum")
            # allow_unused: a model may hold weights its classification forward never uses (SigLIP's pooling head).
            grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=against is not None,
                                        allow_unused=True)
            if against is not None:
                inner = sum((g * against[n]).sum() for n, g in zip(leaves, grads) if g is not None)
                grads = torch.autograd.grad(inner, list(leaves.values()), allow_unused=True)
        for n, g in zip(leaves, grads):
            if g is not None:
                total[n] += g.detach()
        # Held until the next batch's gradients exist, these would cost one more copy of the parameters.
        del grads, leaves
    ctx.all_reduce(list(total.values()), "sum")
    return total


@contextlib.contextmanager
def _hard_gates_as_clamps(model: torch.nn.Module):
    """Inside the block, ``nn.Hardsigmoid`` and ``nn.Hardswish`` modules return the same values computed with
    ``clamp``, which torch can differentiate twice."""
    def hardsigmoid(x):
        return torch.clamp(x / 6 + 0.5, 0.0, 1.0)

    formulas = {torch.nn.Hardsigmoid: hardsigmoid, torch.nn.Hardswish: lambda x: x * hardsigmoid(x)}
    handles = [module.register_forward_hook(lambda m, args, out, f=formulas[type(module)]: f(args[0]))
               for module in model.modules() if type(module) in formulas]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def snip_scores(ctx: ScoringContext) -> Scores:
    """SNIP (Lee et al., 2019): ``|theta * dL/dtheta|``."""
    grads = _loss_gradients(ctx)
    return {n: (g * p.detach()).abs() for (n, p), g in zip(ctx.parameters().items(), grads.values())}


def grasp_scores(ctx: ScoringContext) -> Scores:
    """GraSP (Wang et al., 2020): keeps the weights with the largest ``theta * H g`` (the paper removes those
    with the largest ``-theta * H g``); scores can be negative."""
    grads = _loss_gradients(ctx, GRASP_TEMPERATURE)
    hessian_grads = _loss_gradients(ctx, GRASP_TEMPERATURE, against=grads)
    return {n: hg * p.detach() for (n, p), hg in zip(ctx.parameters().items(), hessian_grads.values())}


def synflow_scores(ctx: ScoringContext) -> Scores:
    """SynFlow (Tanaka et al., 2020): ``|theta| dR/d|theta|`` with ``R`` the summed output of the network with
    absolute weights, linear activations and an all-ones input (data-free)."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in ctx.parameters().items()}
    with torch.enable_grad():
        given = {n: leaf.abs() for n, leaf in leaves.items()}
    return path_gradient_scores(ctx, "synflow", leaves, given=given)

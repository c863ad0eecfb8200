"""The empirical Neural Tangent Kernel trace: what PX's saliency bounds, measured directly."""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from .modeling.io import forward
from .modeling.passes import LinearizedPasses


def ntk_trace(
    model: nn.Module, inputs: torch.Tensor, masks: Optional[Mapping[str, torch.Tensor]] = None,
    chunk: int = 32,
) -> float:
    """``Tr Theta = sum_n sum_k ||d f_k(x_n) / d theta||**2`` over the batch ``inputs``.

    The model runs as when it trains: dropout off, BatchNorm on the batch's statistics (without touching its
    running buffers). Only trainable weights count: every parameter that requires grad, minus the entries that
    ``masks`` prunes (a pruned weight is not trained, so it adds nothing to the sparse network's kernel).

    Args:
        model: a transformers image model or any module taking a batch of inputs.
        inputs: a batch ``(N, ...)``.
        masks: parameter name -> bool mask (True = kept); ``None`` for the dense network.
        chunk: output entries differentiated at once (each holds one gradient per parameter).
    """
    masks = masks or {}
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    keep = {n: masks[n].to(p.device, p.dtype) for n, p in params.items() if n in masks}
    total = torch.zeros((), dtype=torch.float64)
    with LinearizedPasses(model, norm="batch", rescale_blocks=False) as passes, passes.run("real", record=False), \
            torch.enable_grad():
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        outputs = forward(model, inputs.to(next(iter(params.values())).device), leaves).reshape(-1)
        basis = torch.eye(outputs.numel(), dtype=outputs.dtype, device=outputs.device)
        for rows in basis.split(chunk):
            grads = torch.autograd.grad(outputs, list(leaves.values()), grad_outputs=rows, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True)
            for name, grad in zip(leaves, grads):
                if grad is not None:
                    squared = grad.double() ** 2
                    total += (squared * keep[name].double()).sum() if name in keep else squared.sum()
    return float(total)

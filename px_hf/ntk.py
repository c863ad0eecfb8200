"""The empirical Neural Tangent Kernel trace: what PX's saliency bounds, measured directly."""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from .modeling.io import output_tensor


def ntk_trace(
    model: nn.Module, inputs: torch.Tensor, masks: Optional[Mapping[str, torch.Tensor]] = None,
    batch_size: int = 8,
) -> float:
    """``Tr Theta = sum_n sum_k ||d f_k(x_n) / d theta||**2`` over ``inputs``, in eval mode.

    Only trainable weights count: every parameter that requires grad, minus the entries that ``masks`` prunes
    (a pruned weight is not trained, so it contributes nothing to the kernel of the sparse network).

    Args:
        model: a transformers image model or any module taking a batch of inputs.
        inputs: a batch ``(N, ...)``.
        masks: parameter name -> bool mask (True = kept); ``None`` for the dense network.
        batch_size: examples whose Jacobians are held in memory at once (each costs outputs x parameters).
    """
    masks = masks or {}
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    keep = {n: masks[n].to(p.device, p.dtype) for n, p in params.items() if n in masks}
    name = getattr(model, "main_input_name", None)
    training = model.training
    model.eval()

    def outputs(parameters, x):
        batch = x.unsqueeze(0)
        args, kwargs = ((), {name: batch}) if name else ((batch,), {})
        return output_tensor(functional_call(model, parameters, args, kwargs)).reshape(-1)

    total = torch.zeros((), dtype=torch.float64)
    try:
        for start in range(0, inputs.shape[0], batch_size):
            chunk = inputs[start:start + batch_size].to(next(iter(params.values())).device)
            jacobians = vmap(jacrev(outputs), in_dims=(None, 0))(params, chunk)
            for n, jac in jacobians.items():
                squared = jac.double() ** 2
                total += (squared * keep[n].double()).sum() if n in keep else squared.sum()
    finally:
        model.train(training)
    return float(total)

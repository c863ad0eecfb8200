"""The check that the data pass is linear in its input, which PX's bound needs.

With the real pass's gates in place, every module a rule covers is linear, and so is every module built only from
them. A module that computes a non-linearity no rule knows (a softmax written inline, a squeeze-excitation product,
a focal modulation) makes the data pass non-linear and PX's scores meaningless. Instead of producing such scores
silently, PX checks additivity, ``z1(u + v) == z1(u) + z1(v)`` under the same gates, on two examples before
the first round, and names the first module whose output breaks it although its input did not.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from ...errors import ModelError
from ..io import forward
from .residual import first_tensor

# Relative error allowed for float32 rounding; the data passes of covered models measure 1e-7 to 1e-6 (float64:
# 1e-16 to 1e-15), the non-linear ones 1e-2 and more.
TOLERANCE = 1e-3


def _additivity_error(tensor: torch.Tensor, n: int) -> float:
    """``|t(u+v) - t(u) - t(v)| / (|t(u)| + |t(v)|)`` for a batch laid out as ``[u, v, u + v]`` of ``n`` each."""
    t = tensor.detach().double()
    u, v, both = t[:n], t[n:2 * n], t[2 * n:]
    scale = float(u.norm() + v.norm())
    return float((both - u - v).norm()) / scale if scale > 0 else 0.0


def check_data_pass_linear(passes, model: nn.Module, inputs: Optional[torch.Tensor],
                           params: Mapping[str, torch.Tensor], all_reduce=None) -> None:
    """Raise :class:`~px_hf.errors.ModelError` if PX's data pass of ``model`` is not linear in its input.

    ``passes`` must be entered; ``inputs`` are real examples (the first two are used; ``None`` for a process without
    data); ``params`` the data-pass parameters; ``all_reduce`` (``tensors, op``) makes every process raise together.
    Costs one real and one data pass on six examples.
    """
    error, culprit = _nonlinearity(passes, model, inputs, params) if inputs is not None else (0.0, None)
    if all_reduce is not None:
        shared = torch.tensor([error], dtype=torch.float64, device=next(iter(params.values())).device)
        all_reduce([shared], "max")
        error = float(shared)
    if error > TOLERANCE:  # NaN (float32 overflow) passes here: PX retries in float64 and checks again
        name, kind = culprit or ("a module of another process's data path", "unknown")
        raise ModelError(
            f"PX cannot score this {type(model).__name__}: with the real network's gates its data pass is not linear "
            f"in the input (relative error {error:.2g}), so the PX bound does not hold. The first module that breaks "
            f"linearity is {name} ({kind}): it computes a non-linearity px_hf has no pass rule for (an inline "
            "softmax or a multiplicative gate, for example). The baselines (magnitude, snip, grasp, synflow, random) "
            "can prune it; docs/supported_models.md lists the model types PX supports."
        )


def _nonlinearity(passes, model: nn.Module, inputs: torch.Tensor,
                  params: Mapping[str, torch.Tensor]) -> tuple[float, Optional[tuple[str, str]]]:
    """The data pass's additivity error and the first module (name, class) that breaks additivity."""
    x = inputs[:2]
    n = x.shape[0]
    generator = torch.Generator().manual_seed(0)
    u = x * x
    v = torch.rand(u.shape, generator=generator).to(u)
    suspects: list[tuple[str, str]] = []
    linear_inputs: dict[nn.Module, bool] = {}
    names = {module: name for name, module in model.named_modules()}

    def check_input(module, args):
        tensor = first_tensor(args[0]) if args else None
        linear_inputs[module] = _is_batch(tensor, n) and _additivity_error(tensor, n) <= TOLERANCE / 10

    def check_output(module, args, out):
        tensor = first_tensor(out)
        if linear_inputs.pop(module, False) and _is_batch(tensor, n) and _additivity_error(tensor, n) > TOLERANCE:
            suspects.append((names[module] or "the model itself", type(module).__name__))

    with torch.no_grad():
        with passes.run("real", record=True):
            forward(model, torch.cat([x, x, x]))
        handles = [h for m in model.modules()
                   for h in (m.register_forward_pre_hook(check_input), m.register_forward_hook(check_output))]
        try:
            with passes.run("data"):
                out = forward(model, torch.cat([u, v, u + v]), params)
        finally:
            for handle in handles:
                handle.remove()
            passes.clear_records()
    culprit = suspects[0] if suspects else ("the model's own forward", type(model).__name__)
    return _additivity_error(out, n), culprit


def _is_batch(tensor: Optional[torch.Tensor], n: int) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.dim() > 0 \
        and tensor.shape[0] == 3 * n

"""The check that the data pass is linear in its input, which PX's bound needs.

With the real pass's gates in place, every module a rule covers is linear, and so is every module built only from
them. A module that computes a non-linearity no rule knows (a softmax written inline, a squeeze-excitation product,
an additive attention) makes the data pass non-linear and PX's scores meaningless. Instead of producing such scores
silently, PX checks additivity and homogeneity, ``z1(u + v) == z1(u) + z1(v)`` and ``z1(4 u) == 4 z1(u)`` under
the same gates, on two examples before the first round, and names the first module whose output breaks it
although its input did not. A model that calls ``scaled_dot_product_attention`` itself gets its attention caught
at the call before the test (a softmax saturated by the data pass's large logits is piecewise constant and could
pass it).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from ...errors import ModelError
from ..io import forward
from .attention import calls_attention_kernel
from .residual import first_tensor

# Relative error allowed for float32 rounding: the linear data passes of the covered model types measure 1e-7 to
# 1e-6 in float32 (ViT-Base at 224 px: 3e-6; float64: 1e-16 to 1e-11), the non-linear ones 5e-4 (LeViT) and more.
TOLERANCE = 1e-4


SCALE = 4.0  # the homogeneity test's factor: an inline softmax's logits grow by SCALE**2, far from linear


def _additivity_error(tensor: torch.Tensor, n: int) -> float:
    """For a batch laid out as ``[u, v, u + v, SCALE * u]`` of ``n`` each, the larger of
    ``|t(u+v) - t(u) - t(v)| / (|t(u)| + |t(v)|)`` and ``|t(SCALE u) - SCALE t(u)| / (SCALE |t(u)|)``."""
    t = tensor.detach().double()
    u, v, both, scaled = t[:n], t[n:2 * n], t[2 * n:3 * n], t[3 * n:]
    additive = float((both - u - v).norm()) / max(float(u.norm() + v.norm()), 1e-300)
    homogeneous = float((scaled - SCALE * u).norm()) / max(SCALE * float(u.norm()), 1e-300)
    return max(additive, homogeneous)


def check_data_pass_linear(passes, model: nn.Module, inputs: Optional[torch.Tensor],
                           params: Mapping[str, torch.Tensor], all_reduce=None) -> None:
    """Raise :class:`~px_hf.errors.ModelError` if PX's data pass of ``model`` is not linear in its input.

    ``passes`` must be entered; ``inputs`` are real examples (the first two are used; ``None`` for a process without
    data); ``params`` the data-pass parameters; ``all_reduce`` (``tensors, op``) makes every process raise together.
    Costs a real and a data pass on eight examples (and two more to name the module when the check fails).
    """
    if passes.inline_softmax is None and largest_everywhere(
            [float(_calls_kernel(passes, model, inputs))], params, all_reduce)[0] > 0:
        # A saturated softmax is piecewise constant and can pass the linearity test: never leave it to the test.
        passes.enable_inline_softmax()
    error, culprit = _shared_error(passes, model, inputs, params, all_reduce)
    if error > TOLERANCE and passes.inline_softmax is None:
        # An inline softmax without a dropout module to catch it at (LeViT, Hiera) is the usual cause: catch the
        # softmax calls themselves, and keep doing so if that makes the data pass linear.
        passes.enable_inline_softmax()
        retried, _ = _shared_error(passes, model, inputs, params, all_reduce)
        if retried > TOLERANCE:
            passes.enable_inline_softmax(False)
        else:
            error = retried
    if error > TOLERANCE:  # NaN (float32 overflow) passes here: PX retries in float64 and checks again
        name, kind = culprit or ("a module of another process's data path", "unknown")
        raise ModelError(
            f"PX cannot score this {type(model).__name__}: with the real network's gates its data pass is not linear "
            f"in the input (relative error {error:.2g}), so the PX bound does not hold. The first module that breaks "
            f"linearity is {name} ({kind}): it computes a non-linearity px_hf has no pass rule for (an inline "
            "softmax or a multiplicative gate, for example). The baselines (magnitude, snip, grasp, synflow, random) "
            "can prune it; docs/supported_models.md lists the model types PX supports."
        )


def _calls_kernel(passes, model: nn.Module, inputs: Optional[torch.Tensor]) -> bool:
    """Whether the real forward calls ``scaled_dot_product_attention`` itself (one example)."""
    if inputs is None:
        return False

    def run():
        with torch.no_grad(), passes.run("real", record=False):
            forward(model, inputs[:1])

    return calls_attention_kernel(run)


def largest_everywhere(values: Sequence[float], params: Mapping[str, torch.Tensor], all_reduce) -> list[float]:
    """Each of ``values`` replaced by its largest value over all processes (``all_reduce`` ``None``: as they are),
    so that every process takes the same decision. ``params`` gives the device."""
    if all_reduce is None:
        return list(values)
    shared = torch.tensor(list(values), dtype=torch.float64, device=next(iter(params.values())).device)
    all_reduce([shared], "max")
    return shared.tolist()


def _shared_error(passes, model: nn.Module, inputs: Optional[torch.Tensor], params: Mapping[str, torch.Tensor],
                  all_reduce) -> tuple[float, Optional[tuple[str, str]]]:
    """The largest error over all processes, and this process's culprit."""
    error, culprit = _nonlinearity(passes, model, inputs, params) if inputs is not None else (0.0, None)
    return largest_everywhere([error], params, all_reduce)[0], culprit


def _nonlinearity(passes, model: nn.Module, inputs: torch.Tensor,
                  params: Mapping[str, torch.Tensor]) -> tuple[float, Optional[tuple[str, str]]]:
    """The data pass's additivity error and, when it is too large, the first module (name, class) that breaks
    additivity: a second run with hooks on every module finds it, so a linear model pays for two small passes."""
    x = inputs[:2]
    n = x.shape[0]
    u = x * x
    v = torch.rand(u.shape, generator=torch.Generator().manual_seed(0)).to(u)
    batch = torch.cat([u, v, u + v, SCALE * u])
    error = _additivity_error(_data_pass(passes, model, x, batch, params), n)
    if not error > TOLERANCE:
        return error, None
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

    _data_pass(passes, model, x, batch, params, hooks=(check_input, check_output))
    return error, suspects[0] if suspects else ("the model's own forward", type(model).__name__)


def _data_pass(passes, model: nn.Module, x: torch.Tensor, batch: torch.Tensor, params: Mapping[str, torch.Tensor],
               hooks: Optional[tuple] = None) -> torch.Tensor:
    """The data pass on ``batch`` (``[u, v, u + v, SCALE * u]``) under the gates of a real pass on ``x`` four times, with
    ``hooks`` (a forward pre-hook and a forward hook) on every module during the data pass."""
    handles = []
    with torch.no_grad():
        try:
            with passes.run("real", record=True):
                forward(model, torch.cat([x] * 4))
            if hooks is not None:
                handles = [h for m in model.modules()
                           for h in (m.register_forward_pre_hook(hooks[0]), m.register_forward_hook(hooks[1]))]
            with passes.run("data"):
                return forward(model, batch, params)
        finally:
            for handle in handles:
                handle.remove()
            passes.clear_records()


def _is_batch(tensor: Optional[torch.Tensor], n: int) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.dim() > 0 \
        and tensor.shape[0] == 4 * n

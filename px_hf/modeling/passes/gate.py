"""Squeeze-excitation and other channel gates: ``x * sigmoid(f(pool(x)))`` (EfficientNet, RegNet, PP-LCNet, ...).

The gate is data-dependent, like an activation's ``phi(z) / z``: the data pass multiplies by the gate the real
pass computed, which keeps it linear. In the path pass the gate block runs as it is (the gate's own layers are
on the paths through it, so they get scores), divided by the mean of its gate so that the block stays
homogeneous of degree one in its input, as every other block of the path network is.
"""

from __future__ import annotations

from typing import Optional, TYPE_CHECKING

import torch
from torch import nn

from ...errors import ModelError
from ..structure import gate_activation
from .base import Rule

if TYPE_CHECKING:
    from .engine import LinearizedPasses


class GateRule(Rule):
    """Real: record the gate. Data: multiply by it. Path: the block's own output over its mean gate. Synflow:
    the block as it is."""

    def __init__(self) -> None:
        self._latest: dict[nn.Module, torch.Tensor] = {}
        self._checked: set[nn.Module] = set()

    @staticmethod
    def matches(module: nn.Module, parent: Optional[nn.Module]) -> bool:
        return gate_activation(module) is not None

    def setup(self, module: nn.Module) -> list:
        # The gate is the output of the block's last sigmoid-like module, seen after the engine's own hooks.
        def remember(_, __, out, block=module):
            self._latest[block] = out

        return [gate_activation(module).register_forward_hook(remember)]

    def replaces_output(self, passes: "LinearizedPasses", module: nn.Module) -> bool:
        return passes.mode == "data"

    def apply(self, passes, module, z, out):
        if passes.mode == "data":
            return z * passes.take(module)
        gate = self._latest.pop(module, None)
        if passes.mode == "synflow":
            return None
        if module not in self._checked:  # once per module: the structure was a guess, the product is a fact
            product = None if gate is None or gate.dim() != z.dim() else z * gate
            if product is None or product.shape != out.shape or not torch.allclose(out, product, rtol=1e-4,
                                                                                     atol=1e-6):
                raise ModelError(
                    f"{type(module).__name__} looks like a squeeze-excitation gate (a pooled input through a "
                    "sigmoid) but does not return its input times that gate, so PX cannot linearize it. The baselines "
                    "(magnitude, snip, grasp, synflow, random) can prune this model"
                )
            self._checked.add(module)
        if passes.mode == "real":
            passes.keep(module, gate.detach())
            return None
        # A fully pruned gate is all zeros, and so is the block's output: keep it 0, not 0/0.
        return out / gate.detach().mean().clamp_min(torch.finfo(gate.dtype).tiny)

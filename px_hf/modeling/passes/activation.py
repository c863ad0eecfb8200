"""Element-wise activations (ReLU, GELU, SiLU/Swish, Hardswish, ReLU6, Mish, QuickGELU, ...): one rule for all,
since PX needs only the gate ``phi(z) / z`` each applied on the real data."""

from __future__ import annotations

from typing import Optional, TYPE_CHECKING

import torch
from torch import nn

from ..structure import is_activation
from .base import Rule

if TYPE_CHECKING:
    from .engine import LinearizedPasses


class ActivationRule(Rule):
    """Real: record the gate. Data: multiply by it (the network becomes linear). Path, synflow: the identity."""

    def __init__(self) -> None:
        self._slope0: dict[nn.Module, float] = {}

    @staticmethod
    def matches(module: nn.Module, parent: Optional[nn.Module]) -> bool:
        return is_activation(module)

    def setup(self, passes, module: nn.Module) -> list:
        # phi(z) / z is 0/0 at z == 0; its limit there is the slope at 0, measured once per module.
        probe = torch.tensor([1e-3, -1e-3])
        with torch.no_grad():
            out = module(probe)
        self._slope0[module] = float((out[0] - out[1]) / 2e-3)
        return []

    def replaces_output(self, passes: "LinearizedPasses", module: nn.Module) -> bool:
        return passes.mode != "real"

    def apply(self, passes, module, z, out):
        if passes.mode == "real":
            zd = z.detach()
            if passes.activation == "binary" or isinstance(module, nn.ReLU):
                gate = zd > 0
            else:
                # phi(z) / z (Phi(z) for GELU) from the module's own output: two passes; 0/0 only where z == 0.
                gate = torch.nan_to_num_(out.detach() / zd, nan=self._slope0[module])
            passes.keep(module, gate)
            return None
        if passes.mode == "data":
            gate = passes.take(module)
            # Binary gates are stored as bool to save memory. On CPU, multiplying by their uint8 view is about
            # 2.5x faster than converting them to z's dtype first (and much faster than torch.where).
            return z * (gate.view(torch.uint8) if gate.dtype == torch.bool else gate)
        return z

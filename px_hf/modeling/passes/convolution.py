"""Weight-standardized convolutions (BiT): ``conv(x, (w - mean) / std)`` with the statistics taken per output
channel over the weight itself.

In the linear passes the standardization becomes what PX makes of a norm: a gain, never a centring. Data: a plain
convolution with the data pass's unit weights (run as it is, standardization turns all-ones weights into zeros and
every PX score with them). Path: ``theta**2 / var`` per output channel, the square of the effective weight without
its mean; synflow: ``|theta| / std``. ``var`` comes from the live weights (with their masks), detached.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...errors import ModelError
from ...targets import standardizes_weight
from .base import Rule, same_output


def _standardized(weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight standardized per output channel, and the variance per output channel (shaped to broadcast)."""
    flat = weight.reshape(weight.shape[0], -1)
    var = flat.var(dim=1, unbiased=False).reshape(-1, *([1] * (weight.dim() - 1)))
    mean = flat.mean(dim=1).reshape(var.shape)
    return (weight - mean) / torch.sqrt(var + eps), var


class WeightStandardizedConvRule(Rule):
    """A convolution with its own forward and an ``eps``, taken to standardize its weight (checked on the first real
    pass). Real: the module as it is. Data, path, synflow: a plain convolution with the mode's weight times the gain
    (1, ``1 / (var + eps)``, ``1 / sqrt(var + eps)``)."""

    def __init__(self) -> None:
        # The live parameter, held here: inside a pass the module's ``weight`` is the mode's stand-in.
        self._weight: dict[nn.Module, torch.Tensor] = {}
        self._checked: set[nn.Module] = set()

    @staticmethod
    def matches(module: nn.Module, parent: Optional[nn.Module]) -> bool:
        return standardizes_weight(module)

    def setup(self, passes, module: nn.Module) -> list:
        self._weight[module] = module.weight
        return []

    def apply(self, passes, module, z, out):
        padded = module.pad(z) if getattr(module, "pad", None) is not None else z
        if passes.mode == "real":
            if module not in self._checked:  # once per module: the structure was a guess, the output is a fact
                standardized, _ = _standardized(self._weight[module].detach(), module.eps)
                if not same_output(out, module._conv_forward(padded, standardized, module.bias)):
                    raise ModelError(
                        f"{type(module).__name__} is a convolution with its own forward that does not standardize its "
                        "weight, so PX cannot linearize it. The baselines (magnitude, snip, grasp, synflow, random) can "
                        "prune this model"
                    )
                self._checked.add(module)
            return None
        weight = module.weight
        if passes.mode != "data":
            _, var = _standardized(self._weight[module].detach(), module.eps)
            gain = 1.0 / (var + module.eps) if passes.mode == "path" else torch.rsqrt(var + module.eps)
            weight = weight * gain.to(weight)
        return module._conv_forward(padded, weight, module.bias)

"""Max pooling: the real pass's choice of position, reused in the data pass."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import nn

from ..structure import is_max_pool
from .base import Rule


class MaxPoolRule(Rule):
    """Real: pool and record the indices. Data: gather the same positions. Path, synflow: the module's own max
    (positively homogeneous, so block rescaling stays a common factor)."""

    @staticmethod
    def matches(module: nn.Module, parent: Optional[nn.Module]) -> bool:
        return is_max_pool(module)

    def replaces_output(self, passes, module) -> bool:
        return passes.mode in ("real", "data")

    def apply(self, passes, module, z, out):
        if passes.mode == "real":
            pool = getattr(F, f"max_pool{z.dim() - 2}d")
            out, index = pool(z, module.kernel_size, module.stride, module.padding, module.dilation,
                              ceil_mode=module.ceil_mode, return_indices=True)
            passes.keep(module, index)
            return out
        if passes.mode == "data":
            index = passes.take(module)
            return z.flatten(2).gather(2, index.flatten(2)).reshape(index.shape)
        return None

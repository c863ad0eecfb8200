"""Pooling: max pooling's choice of position, reused in the data pass; and PoolFormer's token mixer, an average
pool minus its input, whose negative coefficient PX counts as positive."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import nn

from ...errors import ModelError
from ..structure import is_max_pool
from .base import Rule, same_output

_AVERAGE_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


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


class PoolMinusInputRule(Rule):
    """A parameter-free module holding one average pool, taken to return ``pool(x) - x`` (PoolFormer's token mixer;
    checked on the first real pass). Real: the module as it is. Data, path, synflow: ``pool(x) + x``.

    The PX bound sums every path's squared product of coefficients, so the identity path's -1 counts as +1. Run as
    it is, the difference cancels on the path pass's all-ones input and the scores come out negative."""

    def __init__(self) -> None:
        self._checked: set[nn.Module] = set()

    @staticmethod
    def matches(module: nn.Module, parent: Optional[nn.Module]) -> bool:
        children = list(module.children())
        return (len(children) == 1 and isinstance(children[0], _AVERAGE_POOLS)
                and not any(True for _ in module.parameters(recurse=False)))

    def apply(self, passes, module, z, out):
        pool = next(module.children())
        if passes.mode != "real":
            return pool(z) + z
        if module not in self._checked:  # once per module: the structure was a guess, the difference is a fact
            if not same_output(out, pool(z) - z):
                raise ModelError(
                    f"{type(module).__name__} holds only an average pool but does not return pool(x) - x, so PX "
                    "cannot linearize it. The baselines (magnitude, snip, grasp, synflow, random) can prune this model"
                )
            self._checked.add(module)
        return None

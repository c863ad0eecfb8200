"""Normalizations (BatchNorm, LayerNorm and its channels-first variants, GroupNorm): the real pass records the
inverse standard deviation it divides by; the linear passes multiply by it instead of dividing by a statistic of
their own input."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..structure import is_norm
from .base import Rule


def _channel_view(module: nn.Module, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a per-channel tensor of ``module`` to broadcast against its input."""
    channels_last = isinstance(module, nn.LayerNorm) and getattr(module, "data_format", "") != "channels_first"
    return t if channels_last else t.reshape(1, -1, *([1] * (ndim - 2)))


class NormRule(Rule):
    """Real: normalize and record ``rstd`` (and sum ``rstd**2`` for the path pass). Data: ``z * rstd * |gamma|``.
    Path: the fixed gain ``gamma**2 * E[rstd**2]``. Synflow: ``|gamma|``."""

    def __init__(self) -> None:
        self.sums: dict[nn.Module, torch.Tensor] = {}
        self.counts: dict[nn.Module, torch.Tensor] = {}

    @staticmethod
    def matches(module: nn.Module, parent: Optional[nn.Module]) -> bool:
        return is_norm(module)

    def replaces_output(self, passes, module) -> bool:
        if passes.mode != "real":
            return True
        return not (isinstance(module, _BatchNorm) and not self._batch_statistics(passes, module))

    # ----------------------------------------------------------------------------------- path-pass statistics
    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()

    def statistics(self, norms: list[nn.Module]) -> list[torch.Tensor]:
        """Sums of ``rstd**2`` and their counts for ``norms`` in that order (zeros for a norm not yet seen)."""
        for m in norms:
            if m not in self.sums:
                like = next(iter(m.parameters()), None)
                like = like if like is not None else next(iter(m.buffers()), torch.zeros(()))
                shape = (m.num_features,) if isinstance(m, _BatchNorm) else ()
                self.sums[m] = torch.zeros(shape, dtype=torch.float64, device=like.device)
                self.counts[m] = torch.zeros((), dtype=torch.float64, device=like.device)
        return [self.sums[m] for m in norms] + [self.counts[m] for m in norms]

    # ------------------------------------------------------------------------------------------------ modes
    @staticmethod
    def _batch_statistics(passes, module: nn.Module) -> bool:
        """Whether a BatchNorm normalizes with the batch's statistics (rather than running ones) in the real pass."""
        return not (passes.norm == "running" and module.running_var is not None)

    def _normalize(self, passes, module: nn.Module, z: torch.Tensor) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """The real output of ``module`` on ``z`` (``None``: the module's own) and the inverse standard deviation
        it applied, broadcastable against ``z``. Fused ATen kernels give both in one pass, differentiably (for
        the gradient-based baselines) and without touching BatchNorm's running buffers."""
        ndim = z.dim()
        channel = (1, -1, *([1] * (ndim - 2)))
        if isinstance(module, _BatchNorm):
            if not self._batch_statistics(passes, module):
                return None, torch.rsqrt(module.running_var + module.eps).reshape(channel)
            out, _, rstd = torch.native_batch_norm(z, module.weight, module.bias, None, None, True, 0.0, module.eps)
            return out, rstd.reshape(channel)
        if isinstance(module, nn.GroupNorm):
            n, c = z.shape[:2]
            out, _, rstd = torch.native_group_norm(z, module.weight, module.bias, n, c, z[0, 0].numel(),
                                                   module.num_groups, module.eps)
            return out, rstd.repeat_interleave(c // module.num_groups, 1).reshape(n, c, *([1] * (ndim - 2)))
        if getattr(module, "data_format", "") == "channels_first":
            out, _, rstd = torch.native_layer_norm(z.movedim(1, -1), module.normalized_shape, module.weight,
                                                   module.bias, module.eps)
            return out.movedim(-1, 1), rstd.movedim(-1, 1)
        out, _, rstd = torch.native_layer_norm(z, module.normalized_shape, module.weight, module.bias, module.eps)
        return out, rstd

    def apply(self, passes, module, z, out):
        gamma = module.weight
        ndim = z.dim()
        if passes.mode == "real":
            out, rstd = self._normalize(passes, module, z)
            if passes.record:
                rstd = rstd.detach()
                passes.keep(module, rstd)
                # float64 sums: the order in which batches and processes add up must not matter.
                if isinstance(module, _BatchNorm):
                    total, count = rstd.reshape(-1).double() ** 2 * z.shape[0], z.shape[0]
                else:
                    total, count = (rstd.double() ** 2).sum(), rstd.numel()
                self.sums[module] = self.sums.get(module, 0) + total
                self.counts[module] = self.counts.get(module, 0) + torch.tensor(
                    float(count), device=z.device, dtype=torch.float64)
            return out
        if passes.mode == "data":
            gain = passes.take(module)
            if gamma is None:
                return z * gain
            gamma = _channel_view(module, gamma.detach().abs(), ndim)
            if math.prod(torch.broadcast_shapes(gain.shape, gamma.shape)) < z.numel():
                return z * (gain * gamma)  # per-channel factors: one pass over the activations, not two
            return torch.mul(z, gain).mul_(gamma)
        if passes.mode == "path":
            count = self.counts.get(module)
            gain = 1.0
            if count is not None and float(count) > 0:
                gain = (self.sums[module] / count).to(z.dtype)
                if isinstance(module, _BatchNorm):
                    gain = _channel_view(module, gain, ndim)
            scale = 1.0 if gamma is None else _channel_view(module, gamma.detach() ** 2, ndim)
            return z * (scale * gain)
        return z if gamma is None else z * _channel_view(module, gamma.detach().abs(), ndim)

"""Multiplicative gates: squeeze-excitation's ``x * sigmoid(f(pool(x)))`` (EfficientNet, RegNet, PP-LCNet, ...) and
focal modulation's ``q * modulator`` (FocalNet).

The gate is data-dependent, like an activation's ``phi(z) / z``: the data pass multiplies by the gate the real
pass computed, which keeps it linear. In the path pass the gate runs as it is (the gate's own layers are on the
paths through it, so they get scores), divided by its mean so that the block stays homogeneous of degree one in
its input, as every other block of the path network is.
"""

from __future__ import annotations

from typing import Optional, TYPE_CHECKING

import torch
from torch import nn

from ...errors import ModelError
from ..structure import gate_activation, is_focal_modulation
from .base import Rule, per_mean
from .residual import balanced, magnitude

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

    def setup(self, passes, module: nn.Module) -> list:
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


class ModulatorRule(Rule):
    """A focal modulation (FocalNet): ``q * projection_context(sum_l ctx_l * gate_l)``, the contexts ``ctx_l`` coming
    from a chain of focal layers. The rule claims the modulation module and hooks two kinds of its layers.

    - The layer that makes the modulator (``projection_context``). Real: record its output's magnitude. Data:
      replace the output by that record, so the modulator is a gate. Path: its output over its mean, as a squeeze-excitation gate.
    - The focal layers, in the path pass: each passes on its input's mean magnitude. The contexts of deeper levels
      are longer paths summed beside shorter ones; at initialization a level's output is 0.3-0.8% of its input
      (depthwise weights of std 0.02), so the second level's term starts at 1/125 of the first's, and iterative
      pruning empties it (2 of its 17 layers at 90% in the coverage test, also with each level held at its own
      initial gain). At unit gain every level's term weighs alike, and the learned weighting of the levels is left
      to the gates, which stay on the paths.

    The product itself stays the module's own code; the linearity check confirms that the modulator enters the
    output only as a factor.
    """

    @staticmethod
    def matches(module: nn.Module, parent: Optional[nn.Module]) -> bool:
        return is_focal_modulation(module)

    def setup(self, passes, module: nn.Module) -> list:
        def modulator(_, __, out, key=module):
            if passes.mode == "real":
                # Unlike a sigmoid gate the modulator is signed, and the bound counts every path positively.
                passes.keep(key, out.detach().abs())
            elif passes.mode == "data":
                return passes.take(key)
            elif passes.mode == "path":
                return per_mean(out)
            return None

        def unit_gain(_, args, out):
            return balanced(out, magnitude(args[0])) if passes.mode == "path" else None

        return ([module.projection_context.register_forward_hook(modulator)]
                + [level.register_forward_hook(unit_gain) for level in module.focal_layers])

    def replaces_output(self, passes: "LinearizedPasses", module: nn.Module) -> bool:
        return False

    def apply(self, passes, module, z, out):
        return None

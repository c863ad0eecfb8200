"""What a pass rule is: how one kind of module behaves in the real, data, path and synflow modes.

A rule claims the modules it :meth:`~Rule.matches`; the engine hooks every claimed module, saves its input, and
hands input and output to :meth:`Rule.apply`, which returns the module's output in the current mode (``None``:
the module's own). While a rule computes a module's output itself, the modules inside it run unhooked. Adding
support for a kind of module is adding a rule class to :data:`.registry.RULES`.
Modules no rule claims run as they are; a non-linear one among them is caught by :func:`~.linearity.check_data_pass_linear`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:
    from .engine import LinearizedPasses


class Rule:
    """How one kind of module behaves in PX's passes."""

    @staticmethod
    def matches(module: nn.Module, parent: Optional[nn.Module]) -> bool:
        """Whether the rule claims ``module`` (``parent``: the module that holds it, ``None`` for the root)."""
        raise NotImplementedError

    def setup(self, passes: "LinearizedPasses", module: nn.Module) -> list[RemovableHandle]:
        """Called once per claimed module when the passes are entered, after the engine's hooks are in place;
        returns the hooks the rule installs itself (removed on leaving), which may read ``passes.mode``."""
        return []

    def replaces_output(self, passes: "LinearizedPasses", module: nn.Module) -> bool:
        """Whether :meth:`apply` computes the output itself in the current mode (the module then runs on an
        empty batch, sparing its own, discarded, computation)."""
        return passes.mode in ("data", "path", "synflow")

    def apply(self, passes: "LinearizedPasses", module: nn.Module, z: torch.Tensor,
              out: torch.Tensor) -> Optional[torch.Tensor]:
        """The output of ``module`` on input ``z`` in ``passes.mode`` (``out``: what the module returned)."""
        raise NotImplementedError


def same_output(out, expected: torch.Tensor) -> bool:
    """Whether a module's output ``out`` is ``expected``, the output a rule assumed from its structure, up to float32
    rounding: one relative error over the whole tensor, since entries near zero of large sums round on their own."""
    return (isinstance(out, torch.Tensor) and out.shape == expected.shape
            and float((out - expected).detach().norm()) <= 1e-4 * float(expected.detach().norm()))


def per_mean(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` over its detached mean: a gate's path-pass form, homogeneous of degree one in what it multiplies
    (a fully pruned gate is all zeros: it stays 0, not 0/0)."""
    return tensor / tensor.detach().mean().clamp_min(torch.finfo(tensor.dtype).tiny)

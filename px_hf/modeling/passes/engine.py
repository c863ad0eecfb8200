"""The hooks that switch a model between its real forward and PX's linearized passes."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from typing import Iterator, Optional, Union

import torch
from torch import nn

from ..io import evaluating
from ..structure import uses_attention_interface
from .attention import InlineSoftmax, routed_attention
from .normalization import NormRule
from .residual import ResidualScaling
from .base import Rule
from .registry import RULES


class LinearizedPasses:
    """Hooks that switch a model between its real forward and PX's linearized passes.

    Use as a context manager around the passes; inside, ``with passes.run(mode): forward(...)``. Entering puts the
    model in eval mode and routes its transformers attention to PX's; leaving restores both and removes every hook.

    Args:
        model: the module to instrument.
        norm: ``"running"`` (BatchNorm on its running statistics in the real pass) or ``"batch"`` (batch statistics).
        activation: ``"gated"`` (gate ``phi(z)/z``) or ``"binary"`` (``1[z > 0]``).
        rescale_blocks: divide residual blocks' outputs by a detached scalar in the linear modes.
        branch_share: in the path mode, scale every residual branch to this multiple of the mean magnitude of its
            block's input stream; ``"initial"``: to the multiple it has in the first path pass; ``"floored"``: as
            ``"initial"``, but from the second path pass on no share is below the median of those first shares;
            ``None``: leave branches as they are.

    The defaults are :class:`~px_hf.PXConfig`'s.
    """

    def __init__(self, model: nn.Module, norm: str = "running", activation: str = "gated", rescale_blocks: bool = True,
                 branch_share: Optional[Union[float, str]] = "floored"):
        self.model = model
        self.norm = norm
        self.activation = activation
        self.rules: dict[nn.Module, Rule] = {}
        instances: dict[type, Rule] = {}
        parents = {child: module for module in model.modules() for child in module.children()}
        for module in model.modules():
            kind = next((cls for cls in RULES if cls.matches(module, parents.get(module))), None)
            if kind is not None:
                if kind not in instances:
                    instances[kind] = kind()
                self.rules[module] = instances[kind]
        self._norm_rule = instances.get(NormRule) or NormRule()
        self.residual = ResidualScaling(model, rescale_blocks, branch_share)
        self.attentions = [m for m in model.modules() if uses_attention_interface(m)]
        self.mode = "off"
        self.record = True
        self.log_scale = 0.0
        self._records: dict[nn.Module, list] = {}
        self._cursor: dict[nn.Module, int] = {}
        self._inputs: dict[nn.Module, torch.Tensor] = {}
        self._replacing = 0  # depth of modules whose output a rule is computing: their insides run unhooked
        # Catches inline softmax calls in the passes once enable_inline_softmax() is called (None: off).
        self.inline_softmax: Optional[InlineSoftmax] = None
        self._exit: Optional[ExitStack] = None

    # ----------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "LinearizedPasses":
        stack = ExitStack()
        stack.enter_context(evaluating(self.model))
        handles = []
        for module in self.rules:
            handles.append(module.register_forward_pre_hook(self._save_input))
            handles.append(module.register_forward_hook(self._apply_rule))
        for module, rule in self.rules.items():
            handles += rule.setup(self, module)
        handles += [m.register_forward_pre_hook(self._contiguous_input) for m in self.model.modules()
                    if isinstance(m, nn.Linear)]
        self.residual.install(self)
        stack.callback(self.residual.remove)
        stack.callback(lambda: [handle.remove() for handle in handles])
        configs = list({id(m.config): m.config for m in self.attentions}.values())
        stack.enter_context(routed_attention(self, configs))
        stack.callback(self.clear_records)
        self._exit = stack
        return self

    def __exit__(self, *exc) -> None:
        stack, self._exit = self._exit, None
        stack.close()

    @property
    def replacing(self) -> bool:
        """Whether a rule is computing the output of the module now running (whose insides then run unhooked)."""
        return self._replacing > 0

    def enable_inline_softmax(self, enabled: bool = True) -> None:
        """Catch the softmax calls of the passes (see :class:`~.attention.InlineSoftmax`), or stop catching them."""
        self.inline_softmax = InlineSoftmax(self) if enabled else None

    @contextmanager
    def run(self, mode: str, record: bool = True) -> Iterator["LinearizedPasses"]:
        """Run the forward passes inside the block in ``mode`` (``real``, ``data``, ``path`` or ``synflow``)."""
        self.mode, self.record, self.log_scale = mode, record, 0.0
        self._cursor = {}
        if mode == "real" and record:
            self._records.clear()  # a data pass replays the latest real pass, never a stale one
        try:
            with self.inline_softmax if self.inline_softmax is not None else nullcontext():
                yield self
        finally:
            self.residual.end_of_pass(mode)
            self.mode = "off"
            self._inputs.clear()
            self._replacing = 0

    # ------------------------------------------------------------------------------------------------ records
    def keep(self, module, value) -> None:
        """Record ``value`` for ``module`` (or another key, e.g. :class:`InlineSoftmax` for the softmax calls) in the
        real pass, for the data pass on the same inputs."""
        if self.record:
            self._records.setdefault(module, []).append(value)

    def take(self, module):
        """The next record of ``module`` from the real pass (a module may run more than once per forward)."""
        index = self._cursor.get(module, 0)
        self._cursor[module] = index + 1
        try:
            return self._records[module][index]
        except (KeyError, IndexError):
            raise RuntimeError(
                f"the data pass reached {getattr(module, '__name__', type(module).__name__)} more often than the "
                "real pass did; "
                "run a real pass on the same inputs first"
            ) from None

    def clear_records(self) -> None:
        """Forget what the real pass recorded (call after the matching data pass)."""
        self._records.clear()

    # ------------------------------------------------------------------------------------ norm statistics
    def reset_statistics(self) -> None:
        self._norm_rule.reset()

    def statistics(self) -> list[torch.Tensor]:
        """Per-norm sums of ``rstd**2`` and their counts, for every norm in a fixed order (for all-reducing across
        processes: a process that saw no data contributes zeros of the same shapes)."""
        return self._norm_rule.statistics([m for m, rule in self.rules.items() if rule is self._norm_rule])

    # ------------------------------------------------------------------------------------------------ hooks
    def _save_input(self, module: nn.Module, args):
        if self.mode == "off" or self._replacing:
            return None
        z = args[0]
        self._inputs[module] = z
        if self.rules[module].replaces_output(self, module):
            # The rule computes the output from the saved input; an empty batch spares the module's own work.
            self._replacing += 1
            return (z[:0], *args[1:])
        if getattr(module, "inplace", False):
            # The saved pre-activation must survive an in-place activation.
            return (z.clone(), *args[1:])
        return None

    def _contiguous_input(self, module: nn.Module, args):
        # A linear layer without a bias (the linear passes drop biases) on a strided input, such as ConvNeXt's
        # permuted channels-last activations, runs as a batched matmul against an expanded weight: on ConvNeXt-Tiny
        # 68 ms a call against 45 ms for the single matmul a contiguous copy allows (one thread).
        if self.mode in ("off", "real") or self._replacing or not args or not isinstance(args[0], torch.Tensor):
            return None
        return None if args[0].is_contiguous() else (args[0].contiguous(), *args[1:])

    def _apply_rule(self, module: nn.Module, args, out):
        if self.mode == "off" or module not in self._inputs:
            return None
        if self.rules[module].replaces_output(self, module):
            self._replacing -= 1
        return self.rules[module].apply(self, module, self._inputs.pop(module), out)

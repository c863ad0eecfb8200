"""Residual blocks in the linear passes: rescaling the stream, and balancing each branch against it.

Rescaling: in the data, path and synflow modes every residual block's output is divided by a detached scalar.
All passes are positively homogeneous, so this only multiplies the result by ``exp(log_scale)`` and keeps float32
finite in deep networks.

Branch balancing (path mode only) multiplies each residual branch's output by a detached factor that gives it a
share of the mean magnitude of the stream entering its block. Without it a branch's path mass falls like its
density to the power of its depth while its weight count falls like its density, so per-weight scores of a
thinning branch fall and iterative pruning removes whole branches; with it each branch keeps a constant share of
the path mass, the conservation that keeps the layers of a plain chain alive (docs/px_generalization.md).
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import TYPE_CHECKING, Optional, Union

import torch
from torch import nn
from torch.func import functional_call

from ...config import BRANCH_SHARE_RULES
from ..structure import ResidualBlock, nested_blocks, residual_block, residual_blocks, residual_branches

if TYPE_CHECKING:
    from .engine import LinearizedPasses

logger = logging.getLogger(__name__)


# The lowest floor of the "floored" rule. At transformers' initialization SegFormer, PVT-v2, MobileNetV2, MobileViT,
# LeViT and CvT start with every branch almost silent (median shares 1e-5 to 3e-4), and PX removes whole branches
# of them below a floor of 1e-3 (3e-4 is not enough). The pre-trained and benchmark networks measured have median
# shares above it (the digits pre-trained ViT 1.6e-3), so they keep their own balance (docs/px_generalization.md).
SHARE_FLOOR = 1e-3
# A branch this far below the floor is silent: its weights score about zero in the first round, before any floor
# applies, so that round is scored again with the floored shares. MobileViTV2 starts with shares of 4e-6 to 3e-17;
# the smallest of the benchmark networks' is 6.8e-4 (the small ConvNeXt at initialization), which keeps its
# first round as it was.
SILENT_SHARE = 1e-5


def first_tensor(out) -> torch.Tensor:
    """The hidden states of a module output that may be a tuple, possibly nested (transformers blocks; PVTv2's
    blocks return a tuple inside a tuple)."""
    while isinstance(out, tuple):
        out = out[0]
    return out


def with_first(out, tensor: torch.Tensor):
    """``out`` with its hidden states replaced by ``tensor``."""
    return (with_first(out[0], tensor), *out[1:]) if isinstance(out, tuple) else tensor


def magnitude(tensor: torch.Tensor) -> float:
    """Mean magnitude of ``tensor`` (detached). The mean of a strided sample is enough to keep values near 1 and
    costs nothing next to a full reduction; the full mean is the fallback when the sample is all zero."""
    flat = tensor.detach().reshape(-1)
    scale = float(flat[:: max(1, flat.numel() // 4096)].abs().mean())
    if not scale > 0:
        scale = float(torch.linalg.vector_norm(flat, 1)) / flat.numel()
    return scale


def balanced(branch: torch.Tensor, target: float) -> torch.Tensor:
    """``branch`` times a detached factor that makes its mean magnitude ``target`` (unchanged when it is all zero:
    a branch without paths stays without paths)."""
    scale = magnitude(branch)
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(target) and target > 0):
        return branch
    return branch * (target / scale)


class ResidualScaling:
    """The hooks on residual blocks: rescaling (``rescale_blocks``) and branch balancing (``branch_share``: a
    fixed multiple of the stream, ``"initial"``, ``"floored"`` or ``None``; see :class:`~.engine.LinearizedPasses`)."""

    def __init__(self, model: nn.Module, rescale_blocks: bool, branch_share: Optional[Union[float, str]]):
        self.blocks = residual_blocks(model) if rescale_blocks else []
        # Nested blocks that may carry the whole stream: admitted by admit() once a test on data says they do.
        self.candidates = nested_blocks(model) if rescale_blocks else []
        self.branch_share = branch_share
        self.branched = residual_branches(model) if branch_share is not None else []
        self._flat: set[nn.Module] = set()  # blocks balanced as a whole (no branch module), filled by install
        self._identity_skip: dict[nn.Module, bool] = {}
        self._balanced_modules: Optional[set[nn.Module]] = None  # blocks and branches balanced, once the path pass runs
        self._adds_stream: dict[nn.Module, bool] = {}
        self._stream: dict[nn.Module, float] = {}
        self._shares: dict[nn.Module, float] = {}  # branch (or flat block) -> its share, for "initial"/"floored"
        self._shares_fixed = False
        # Set when the first path pass found a silent branch (share below SILENT_SHARE) that the floor raised: the
        # scores of that pass starve the branch, so the first round is scored again (see rescore_once).
        self._rescore = False
        self._names = {module: name for name, module in model.named_modules()}
        self._block_inputs: dict[nn.Module, torch.Tensor] = {}
        self._handles: list = []
        self.passes: Optional["LinearizedPasses"] = None

    def install(self, passes: "LinearizedPasses") -> None:
        """Register the hooks (:meth:`remove` removes them)."""
        self.passes = passes
        for residual in self.branched:
            self._install_balancing(residual)
        for block in self.blocks:
            self._handles.append(block.register_forward_hook(self._block_hook))

    def _install_balancing(self, residual: ResidualBlock) -> None:
        # Registered before the rescaling hook, so a flat block is balanced before its output is rescaled. The input
        # hook goes first: a pass rule that computes the block's output itself hands the module an empty batch.
        block = residual.module
        self._handles.append(block.register_forward_pre_hook(self._block_input_hook, prepend=True))
        if residual.branches:
            for branch in residual.branches:
                if branch in residual.closing:
                    position = list(inspect.signature(branch.forward).parameters).index("input_tensor")
                    self._handles.append(branch.register_forward_hook(
                        lambda m, a, kw, out, b=block, i=position: self._balance_closing(m, b, a, kw, i, out),
                        with_kwargs=True))
                    continue
                self._handles.append(branch.register_forward_hook(
                    lambda m, a, out, b=block: self._balance_branch(m, b, out, a)))
        else:
            self._handles.append(block.register_forward_hook(self._balance_flat_block))
            self._flat.add(block)

    def admit(self, blocks: list[nn.Module]) -> None:
        """Rescale (and balance the branches of) ``blocks``, candidates found to carry the whole stream."""
        for block in blocks:
            self.candidates.remove(block)
            self.blocks.append(block)
            self._balanced_modules = None
            if self.branch_share is not None:
                residual = residual_block(block)
                self.branched.append(residual)
                self._install_balancing(residual)
            self._handles.append(block.register_forward_hook(self._block_hook))

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def end_of_pass(self, mode: str) -> None:
        """Forget the pass's streams; after the first path pass, log the shares and floor them (``"floored"``)."""
        if mode == "path" and self._shares and not self._shares_fixed:
            median = float(torch.tensor(list(self._shares.values())).median())
            floor = max(median, SHARE_FLOOR) if self.branch_share == "floored" else 0.0
            if logger.isEnabledFor(logging.DEBUG):
                shares = {self._names.get(branch, "?"): share for branch, share in self._shares.items()}
                logger.debug("branch shares in the first path pass (%s; median %.3g%s): %s", self.branch_share,
                             median, f", raised to at least {floor:.3g}" if floor else "",
                             ", ".join(f"{name}={share:.3g}" for name, share in shares.items()),
                             extra={"branch_shares": shares, "share_floor": floor})
            # Every share below the median of the first path pass's shares is raised to it: a pre-trained network
            # keeps its own balance, while branches that start almost silent (a layer scale of 1e-6, a zero-init
            # residual) are not starved of path mass and removed whole. SHARE_FLOOR does the same when every
            # branch starts almost silent, and the median with it.
            self._rescore = self.branch_share == "floored" and min(self._shares.values()) < SILENT_SHARE
            self._shares = {branch: max(share, floor) for branch, share in self._shares.items()}
            self._shares_fixed = True
        self._stream.clear()
        self._block_inputs.clear()

    def rescore_once(self) -> bool:
        """True once, after the first path pass, if the floor raised a silent branch: the first round's
        path pass should then run again with the floored shares. Otherwise every weight of such a branch scores
        about zero in the first round (MobileViTV2's inverted residuals start at shares of 1e-17), and the first
        pruning step removes the branch whole before the floor ever applies."""
        rescore, self._rescore = self._rescore, False
        return rescore

    # ------------------------------------------------------------------------------------------------ hooks
    def _balancing(self) -> bool:
        """Whether branches are balanced now: in the path pass, except inside a module whose output a pass rule
        computes itself (the module runs on an empty batch, and what its insides compute is discarded)."""
        return self.passes.mode == "path" and not self.passes.replacing

    def _block_input_hook(self, module: nn.Module, args):
        if self._balancing():
            self._stream[module] = magnitude(args[0])
            if module in self._flat:  # its branch is its output minus this input
                self._block_inputs[module] = args[0]

    def _target(self, branch: nn.Module, block: nn.Module, tensor: torch.Tensor) -> float:
        """The magnitude ``branch`` (a module, or a flat block) is balanced to in this path pass."""
        stream = self._stream[block]
        if self.branch_share not in BRANCH_SHARE_RULES:
            return self.branch_share * stream
        if branch not in self._shares:  # the first path pass: the network's own share, kept from here on
            self._shares[branch] = magnitude(tensor) / stream if stream > 0 else 1.0
        return self._shares[branch] * stream

    def _balance_branch(self, branch: nn.Module, block: nn.Module, out, args: tuple = ()):
        if not self._balancing():
            return None
        tensor = first_tensor(out)
        if len(args) == 1 and self._is_sequential_residual(branch, args[0], tensor):
            # A residual block of its own that the block applies in sequence rather than adding its output to the
            # stream (SwiftFormer's local representation): what it adds to its input is balanced against that input.
            skip = args[0]
            self._stream[branch] = magnitude(skip)
            return with_first(out, skip + balanced(tensor - skip, self._target(branch, branch, tensor - skip)))
        return with_first(out, balanced(tensor, self._target(branch, block, tensor)))

    def _is_sequential_residual(self, branch: nn.Module, x, out: torch.Tensor) -> bool:
        """Whether ``branch``, called on ``x`` alone, returns ``x`` plus something: its output is ``x`` when all its
        parameters are zero (once per module). A branch that needs more arguments than ``x`` is not one, nor one
        that holds blocks or branches balanced on their own (a stack of transformer layers: what it adds to its input
        is theirs)."""
        if branch not in self._identity_skip:
            if self._balanced_modules is None:  # after admit(): every block and branch the hooks balance
                self._balanced_modules = {r.module for r in self.branched} | {b for r in self.branched
                                                                              for b in r.branches}
            if (not (isinstance(x, torch.Tensor) and x.shape == out.shape)
                    or any(m in self._balanced_modules for m in list(branch.modules())[1:])):
                self._identity_skip[branch] = False
                return False
            try:
                return self._has_identity_skip(branch, x)
            except TypeError:  # called with keyword arguments the hook does not see
                self._identity_skip[branch] = False
        return self._identity_skip[branch]

    def _balance_closing(self, branch: nn.Module, block: nn.Module, args, kwargs, position: int, out):
        """A branch's last module that may add the stream itself, ``output(hidden_states, input_tensor)`` with
        ``input_tensor`` at argument ``position``: when it does, what it adds to the stream is balanced, not the
        stream with it."""
        if not self._balancing():
            return None
        stream = kwargs["input_tensor"] if "input_tensor" in kwargs else args[position] if position < len(args) else None
        if not isinstance(stream, torch.Tensor):
            return self._balance_branch(branch, block, out)
        tensor = first_tensor(out)
        if branch not in self._adds_stream:
            self._adds_stream[branch] = self._returns_input_plus(branch, args, kwargs, position, stream, tensor)
        if not self._adds_stream[branch]:
            return self._balance_branch(branch, block, out)
        added = tensor - stream
        return with_first(out, stream + balanced(added, self._target(branch, block, added)))

    def _returns_input_plus(self, branch: nn.Module, args, kwargs, position: int, stream: torch.Tensor,
                            out: torch.Tensor) -> bool:
        """Whether ``branch`` returns its ``input_tensor`` ``stream`` (keyword, or argument ``position``) plus
        something that does not depend on it (once per module): with a zero stream its output must be
        ``out - stream``."""
        zero = torch.zeros_like(stream)
        if "input_tensor" in kwargs:
            kwargs = {**kwargs, "input_tensor": zero}
        else:
            args = (*args[:position], zero, *args[position + 1:])
        alone = self._unhooked(lambda: branch(*args, **kwargs))
        return alone.shape == out.shape and bool(torch.allclose(alone + stream.detach(), out.detach(), rtol=1e-4,
                                                                  atol=1e-6 * float(out.detach().abs().max())))

    def _balance_flat_block(self, module: nn.Module, args, out):
        """A block without a branch module: its branch is its output minus its identity skip."""
        if not self._balancing():
            return None
        tensor, skip = first_tensor(out), self._block_inputs.pop(module)
        if not self._has_identity_skip(module, skip):
            return None  # a plain stage: without a skip there is no branch to separate
        branch = tensor - skip
        return with_first(out, skip + balanced(branch, self._target(module, module, branch)))

    def _has_identity_skip(self, module: nn.Module, x: torch.Tensor) -> bool:
        """Whether ``module`` returns its input when all its parameters are zero (once per module): true of
        ``x + branch(x)``, false of a stage without a skip, which must not be split as if it had one."""
        if module not in self._identity_skip:
            zeros = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
            out = self._unhooked(lambda: functional_call(module, zeros, (x.detach(),)))
            # Relative to x: the path pass's tensors can be far below allclose's absolute tolerance, and a zero
            # output would pass for them.
            peak = float(x.detach().abs().max()) if x.numel() else 0.0
            self._identity_skip[module] = (out.shape == x.shape and peak > 0
                                           and bool(torch.allclose(out, x, rtol=1e-5, atol=1e-6 * peak)))
        return self._identity_skip[module]

    def _unhooked(self, run) -> torch.Tensor:
        """The hidden states ``run()`` returns with every pass hook off and no gradient: a module as it is."""
        passes, mode = self.passes, self.passes.mode
        passes.mode = "off"
        try:
            with torch.no_grad():
                return first_tensor(run())
        finally:
            passes.mode = mode

    def _block_hook(self, module: nn.Module, args, out):
        if self.passes.mode in ("off", "real") or self.passes.replacing:
            return None
        tensor = first_tensor(out)
        scale = magnitude(tensor)
        if not (math.isfinite(scale) and scale > 0):
            return None
        self.passes.log_scale += math.log(scale)
        # In the no-grad data pass the block's output has no other user, so it is rescaled in place.
        return with_first(out, tensor.div_(scale) if not torch.is_grad_enabled() else tensor / scale)

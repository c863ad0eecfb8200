"""Run one model in PX's linearized passes through forward hooks: no copies, no patched torch functions.

Modes:

- ``real``: the model as it is, on real data. Each activation's gate ``phi(z) / z``, each normalization's inverse
  standard deviation, each attention probability matrix and each max-pool choice are recorded.
- ``data``: the recorded gates replace every non-linearity, so the network becomes linear in its input
  (``z1`` of the paper: unit weights, squared input).
- ``path``: activations are the identity, attention is uniform, norms are the fixed gain
  ``gamma**2 * E[rstd**2]`` (``z2``: squared weights, all-ones input).
- ``synflow``: as ``path`` with norms reduced to ``|gamma|``, for SynFlow's data-free pass.

In the three linear modes every residual block's output can be divided by a detached scalar; all passes are then
positively homogeneous, so this only rescales the result by ``exp(log_scale)`` and keeps float32 finite.

Branch balancing (path mode only) multiplies each residual branch's output by a detached factor that gives it a
fixed multiple (the share) of the mean magnitude of the stream entering its block. Without it a branch's path mass
falls like its density to the power of its depth while its weight count falls like its density, so per-weight
scores of a thinning branch fall and iterative pruning removes whole branches; with it each branch keeps a constant
share of the path mass, the conservation that keeps layers of a plain chain alive (measurements in
docs/px_generalization.md).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_utils import AttentionInterface

from ..config import BRANCH_SHARE_RULES
from .structure import (
    Role, is_activation, is_max_pool, is_norm, residual_blocks, residual_branches, uses_attention_interface,
)

ATTENTION_IMPLEMENTATION = "px_hf"
_ACTIVE: list["LinearizedPasses"] = []


def _px_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention function registered with transformers; defers to the active :class:`LinearizedPasses`."""
    return _ACTIVE[-1].attention(module, query, key, value, attention_mask, scaling)


AttentionInterface.register(ATTENTION_IMPLEMENTATION, _px_attention)
AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, eager_mask)


def _channel_view(module: nn.Module, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a per-channel tensor of ``module`` to broadcast against its input."""
    channels_last = isinstance(module, nn.LayerNorm) and getattr(module, "data_format", "") != "channels_first"
    return t if channels_last else t.reshape(1, -1, *([1] * (ndim - 2)))


class LinearizedPasses:
    """Hooks that switch a model between its real forward and PX's linearized passes.

    Use as a context manager around the passes; inside, ``with passes.run(mode): forward(...)``.

    Args:
        model: the module to instrument.
        norm: ``"gated"`` (BatchNorm on batch statistics in the real pass) or ``"running"`` (running statistics).
        activation: ``"gated"`` (gate ``phi(z)/z``) or ``"binary"`` (``1[z > 0]``).
        rescale_blocks: divide residual blocks' outputs by a detached scalar in the linear modes.
        branch_share: in the path mode, scale every residual branch to this multiple of the mean magnitude of its
            block's input stream; ``"initial"``: to the multiple it has in the first path pass; ``"floored"``: as
            ``"initial"``, but from the second path pass on no share is below the median of those first shares;
            ``None``: leave branches as they are.
    """

    def __init__(self, model: nn.Module, norm: str = "gated", activation: str = "gated", rescale_blocks: bool = True,
                 branch_share: Optional[float] = None):
        self.model = model
        self.norm = norm
        self.activation = activation
        self.modules = [m for m in model.modules() if is_activation(m) or is_norm(m) or is_max_pool(m)]
        self.attentions = [m for m in model.modules() if uses_attention_interface(m)]
        self.blocks = residual_blocks(model) if rescale_blocks else []
        self.branch_share = branch_share
        self.branched = residual_branches(model) if branch_share is not None else []
        self._flat = {r.module for r in self.branched if not r.branches}
        self._identity_skip: dict[nn.Module, bool] = {}
        self._stream: dict[nn.Module, float] = {}
        self._shares: dict[nn.Module, float] = {}  # branch (or flat block) -> its share, for "initial"/"floored"
        self._floored = False
        self._block_inputs: dict[nn.Module, torch.Tensor] = {}
        self.mode = "off"
        self.record = True
        self.log_scale = 0.0
        self._records: dict[nn.Module, list] = {}
        self._cursor: dict[nn.Module, int] = {}
        self._inputs: dict[nn.Module, torch.Tensor] = {}
        self._norm_sum: dict[nn.Module, torch.Tensor] = {}
        self._norm_count: dict[nn.Module, torch.Tensor] = {}
        self._slope0: dict[nn.Module, float] = {}
        self._handles: list = []
        self._restore: list = []

    # ----------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "LinearizedPasses":
        training = {m: m.training for m in self.model.modules()}
        self._restore.append(lambda: [m.train(flag) for m, flag in training.items()])
        self.model.eval()
        for m in self.modules:
            if is_activation(m):
                probe = torch.tensor([1e-3, -1e-3])
                with torch.no_grad():
                    out = m(probe)
                self._slope0[m] = float((out[0] - out[1]) / 2e-3)
            self._handles.append(m.register_forward_pre_hook(self._save_input))
            self._handles.append(m.register_forward_hook(self._module_hook))
        for residual in self.branched:
            # Registered before the rescaling hook, so a flat block is balanced before its output is rescaled.
            block = residual.module
            self._handles.append(block.register_forward_pre_hook(self._block_input_hook))
            if residual.branches:
                for branch in residual.branches:
                    self._handles.append(branch.register_forward_hook(
                        lambda m, a, out, b=block: self._balance_branch(m, b, out)))
            else:
                self._handles.append(block.register_forward_hook(self._balance_flat_block))
        for block in self.blocks:
            self._handles.append(block.register_forward_hook(self._block_hook))
        configs = {id(m.config): m.config for m in self.attentions}
        for config in configs.values():
            previous = config._attn_implementation
            self._restore.append(lambda c=config, p=previous: setattr(c, "_attn_implementation", p))
            config._attn_implementation = ATTENTION_IMPLEMENTATION
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        for handle in self._handles:
            handle.remove()
        for restore in reversed(self._restore):
            restore()
        self._handles, self._restore = [], []
        self.clear_records()

    @contextmanager
    def run(self, mode: str, record: bool = True) -> Iterator["LinearizedPasses"]:
        """Run the forward passes inside the block in ``mode`` (``real``, ``data``, ``path`` or ``synflow``)."""
        self.mode, self.record, self.log_scale = mode, record, 0.0
        self._cursor = {}
        try:
            yield self
        finally:
            if mode == "path" and self.branch_share == "floored" and self._shares and not self._floored:
                self._floor_shares()
            self.mode = "off"
            self._inputs.clear()
            self._stream.clear()
            self._block_inputs.clear()

    def clear_records(self) -> None:
        """Forget what the real pass recorded (call after the matching data pass)."""
        self._records.clear()

    # ------------------------------------------------------------------------------------ norm statistics
    def reset_statistics(self) -> None:
        self._norm_sum.clear()
        self._norm_count.clear()

    def statistics(self) -> list[torch.Tensor]:
        """Per-norm sums of ``rstd**2`` and their counts, for every norm in a fixed order (for all-reducing across
        processes: a process that saw no data contributes zeros of the same shapes)."""
        norms = [m for m in self.modules if is_norm(m)]
        for m in norms:
            if m not in self._norm_sum:
                like = next(iter(m.parameters()), None)
                like = like if like is not None else next(iter(m.buffers()), torch.zeros(()))
                shape = (m.num_features,) if isinstance(m, _BatchNorm) else ()
                self._norm_sum[m] = torch.zeros(shape, dtype=torch.float64, device=like.device)
                self._norm_count[m] = torch.zeros((), dtype=torch.float64, device=like.device)
        return [self._norm_sum[m] for m in norms] + [self._norm_count[m] for m in norms]

    # ------------------------------------------------------------------------------------------------ hooks
    def _take(self, module: nn.Module):
        """The next record of ``module`` from the real pass (a module may run more than once per forward)."""
        index = self._cursor.get(module, 0)
        self._cursor[module] = index + 1
        try:
            return self._records[module][index]
        except (KeyError, IndexError):
            raise RuntimeError(
                f"the data pass reached {type(module).__name__} more often than the real pass did; "
                "run a real pass on the same inputs first"
            ) from None

    def _keep(self, module: nn.Module, value) -> None:
        if self.record:
            self._records.setdefault(module, []).append(value)

    def _replaces_output(self, module: nn.Module) -> bool:
        """Whether the hook computes ``module``'s output itself in the current mode."""
        if self.mode in ("data", "path", "synflow"):
            return not (is_max_pool(module) and self.mode != "data")
        if is_max_pool(module):
            return True
        return is_norm(module) and not (isinstance(module, _BatchNorm) and not self._batch_statistics(module))

    def _save_input(self, module: nn.Module, args):
        if self.mode == "off":
            return None
        z = args[0]
        self._inputs[module] = z
        if self._replaces_output(module):
            # The hook will compute the output from the saved input; an empty batch spares the module's own
            # (discarded) computation.
            return (z[:0], *args[1:])
        if getattr(module, "inplace", False):
            # The saved pre-activation must survive an in-place activation.
            return (z.clone(), *args[1:])
        return None

    def _module_hook(self, module: nn.Module, args, out):
        if self.mode == "off":
            return None
        z = self._inputs.pop(module)
        if is_activation(module):
            return self._activation(module, z, out)
        if is_norm(module):
            return self._normalization(module, z)
        return self._max_pool(module, z, out)

    def _activation(self, module: nn.Module, z: torch.Tensor, out: torch.Tensor):
        if self.mode == "real":
            zd = z.detach()
            if self.activation == "binary" or isinstance(module, nn.ReLU):
                gate = zd > 0
            else:
                # phi(z) / z (Phi(z) for GELU) from the module's own output: two passes; 0/0 only where z == 0.
                gate = torch.nan_to_num_(out.detach() / zd, nan=self._slope0[module])
            self._keep(module, gate)
            return None
        if self.mode == "data":
            gate = self._take(module)
            # Gates are stored as bool to save memory; multiplying by a bool tensor is several times slower
            # on CPU than converting it first.
            return z * (gate.to(z.dtype) if gate.dtype == torch.bool else gate)
        return z

    def _batch_statistics(self, module: nn.Module) -> bool:
        """Whether a BatchNorm normalizes with the batch's statistics (rather than running ones) in the real pass."""
        return not (self.norm == "running" and module.running_var is not None)

    def _normalize(self, module: nn.Module, z: torch.Tensor) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """The real output of ``module`` on ``z`` (``None``: the module's own) and the inverse standard deviation
        it applied, broadcastable against ``z``. Fused ATen kernels give both in one pass, differentiably (for
        the gradient-based baselines) and without touching BatchNorm's running buffers."""
        ndim = z.dim()
        channel = (1, -1, *([1] * (ndim - 2)))
        if isinstance(module, _BatchNorm):
            if not self._batch_statistics(module):
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

    def _normalization(self, module: nn.Module, z: torch.Tensor):
        gamma = module.weight
        ndim = z.dim()
        if self.mode == "real":
            out, rstd = self._normalize(module, z)
            if self.record:
                rstd = rstd.detach()
                self._keep(module, rstd)
                # float64 sums: the order in which batches and processes add up must not matter.
                if isinstance(module, _BatchNorm):
                    total, count = rstd.reshape(-1).double() ** 2 * z.shape[0], z.shape[0]
                else:
                    total, count = (rstd.double() ** 2).sum(), rstd.numel()
                self._norm_sum[module] = self._norm_sum.get(module, 0) + total
                self._norm_count[module] = self._norm_count.get(module, 0) + torch.tensor(
                    float(count), device=z.device, dtype=torch.float64)
            return out
        if self.mode == "data":
            gain = self._take(module)
            if gamma is None:
                return z * gain
            gamma = _channel_view(module, gamma.detach().abs(), ndim)
            if math.prod(torch.broadcast_shapes(gain.shape, gamma.shape)) < z.numel():
                return z * (gain * gamma)  # per-channel factors: one pass over the activations, not two
            return torch.mul(z, gain).mul_(gamma)
        if self.mode == "path":
            count = self._norm_count.get(module)
            gain = 1.0
            if count is not None and float(count) > 0:
                gain = (self._norm_sum[module] / count).to(z.dtype)
                if isinstance(module, _BatchNorm):
                    gain = _channel_view(module, gain, ndim)
            scale = 1.0 if gamma is None else _channel_view(module, gamma.detach() ** 2, ndim)
            return z * (scale * gain)
        return z if gamma is None else z * _channel_view(module, gamma.detach().abs(), ndim)

    def _max_pool(self, module: nn.Module, z: torch.Tensor, out: torch.Tensor):
        if self.mode == "real":
            pool = getattr(F, f"max_pool{z.dim() - 2}d")
            out, index = pool(z, module.kernel_size, module.stride, module.padding, module.dilation,
                              ceil_mode=module.ceil_mode, return_indices=True)
            self._keep(module, index)
            return out
        if self.mode == "data":
            index = self._take(module)
            return z.flatten(2).gather(2, index.flatten(2)).reshape(index.shape)
        return None

    def _block_input_hook(self, module: nn.Module, args):
        if self.mode == "path":
            self._stream[module] = _magnitude(args[0])
            if module in self._flat:  # its branch is its output minus this input
                self._block_inputs[module] = args[0]

    def _target(self, branch: nn.Module, block: nn.Module, tensor: torch.Tensor) -> float:
        """The magnitude ``branch`` (a module, or a flat block) is balanced to in this path pass."""
        stream = self._stream[block]
        if self.branch_share not in BRANCH_SHARE_RULES:
            return self.branch_share * stream
        if branch not in self._shares:  # the first path pass: the network's own share, kept from here on
            self._shares[branch] = _magnitude(tensor) / stream if stream > 0 else 1.0
        return self._shares[branch] * stream

    def _floor_shares(self) -> None:
        """Raise every share below the median of the first path pass's shares to that median: a pre-trained
        network keeps its own balance, while branches that start almost silent (a layer scale of 1e-6, a zero-init
        residual) are not starved of path mass and removed whole."""
        median = float(torch.tensor(list(self._shares.values())).median())
        self._shares = {branch: max(share, median) for branch, share in self._shares.items()}
        self._floored = True

    def _balance_branch(self, branch: nn.Module, block: nn.Module, out):
        if self.mode != "path":
            return None
        tensor = _first(out)
        return _with_first(out, _balanced(tensor, self._target(branch, block, tensor)))

    def _balance_flat_block(self, module: nn.Module, args, out):
        """A block without a branch module: its branch is its output minus its identity skip."""
        if self.mode != "path":
            return None
        tensor, skip = _first(out), self._block_inputs.pop(module)
        if not self._has_identity_skip(module, skip):
            return None  # a plain stage: without a skip there is no branch to separate
        branch = tensor - skip
        return _with_first(out, skip + _balanced(branch, self._target(module, module, branch)))

    def _has_identity_skip(self, module: nn.Module, x: torch.Tensor) -> bool:
        """Whether ``module`` returns its input when all its parameters are zero (once per module): true of
        ``x + branch(x)``, false of a stage without a skip, which must not be split as if it had one."""
        if module not in self._identity_skip:
            zeros = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
            mode, self.mode = self.mode, "off"  # the module as it is, none of these hooks
            try:
                with torch.no_grad():
                    out = _first(functional_call(module, zeros, (x.detach(),)))
            finally:
                self.mode = mode
            self._identity_skip[module] = out.shape == x.shape and bool(torch.allclose(out, x))
        return self._identity_skip[module]

    def _block_hook(self, module: nn.Module, args, out):
        if self.mode in ("off", "real"):
            return None
        tensor = _first(out)
        scale = _magnitude(tensor)
        if not (math.isfinite(scale) and scale > 0):
            return None
        self.log_scale += math.log(scale)
        # In the no-grad data pass the block's output has no other user, so it is rescaled in place.
        return _with_first(out, tensor.div_(scale) if not torch.is_grad_enabled() else tensor / scale)

    def attention(self, module, query, key, value, attention_mask, scaling: Optional[float]):
        """The attention of ``module`` in the current mode; returns ``(output, probabilities)``."""
        if key.shape[1] != query.shape[1]:
            repeat = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
        if self.mode in ("path", "synflow"):
            uniform = value.mean(-2, keepdim=True).expand(*value.shape[:2], query.shape[2], value.shape[-1])
            return uniform.transpose(1, 2).contiguous(), None
        if self.mode == "data":
            probs = self._take(module).to(value.dtype)  # recorded under autocast, perhaps in half precision
        else:
            scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
            logits = torch.matmul(query, key.transpose(2, 3)) * scaling
            if attention_mask is not None:
                logits = logits + attention_mask
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
            if self.mode == "real":
                self._keep(module, probs.detach())
        return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _first(out) -> torch.Tensor:
    """The hidden states of a module output that may be a tuple, possibly nested (transformers blocks; PVTv2's
    blocks return a tuple inside a tuple)."""
    while isinstance(out, tuple):
        out = out[0]
    return out


def _with_first(out, tensor: torch.Tensor):
    """``out`` with its hidden states replaced by ``tensor``."""
    return (_with_first(out[0], tensor), *out[1:]) if isinstance(out, tuple) else tensor


def _magnitude(tensor: torch.Tensor) -> float:
    """Mean magnitude of ``tensor`` (detached). The mean of a strided sample is enough to keep values near 1 and
    costs nothing next to a full reduction; the full mean is the fallback when the sample is all zero."""
    flat = tensor.detach().reshape(-1)
    scale = float(flat[:: max(1, flat.numel() // 4096)].abs().mean())
    if not scale > 0:
        scale = float(torch.linalg.vector_norm(flat, 1)) / flat.numel()
    return scale


def _balanced(branch: torch.Tensor, target: float) -> torch.Tensor:
    """``branch`` times a detached factor that makes its mean magnitude ``target`` (unchanged when it is all zero:
    a branch without paths stays without paths)."""
    scale = _magnitude(branch)
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(target) and target > 0):
        return branch
    return branch * (target / scale)


def pass_parameters(
    roles: dict[str, Role],
    parameters: dict[str, torch.Tensor],
    mode: str,
    given: Optional[dict[str, torch.Tensor]] = None,
    bias: str = "zero",
) -> dict[str, torch.Tensor]:
    """Parameters to run ``mode`` with (through ``functional_call``), built from the live ones.

    - ``data``: path weights are unit weights (``given`` carries the masks of the pruned ones).
    - ``path``: path weights become ``theta**2``; ``synflow``: ``|theta|``.
    - Biases are zero (``bias="zero"``) or a weight on a constant unit (1, ``b**2``, ``|b|``); class tokens and
      position embeddings are zero; layer scales are one; norm parameters are read by the norm hooks.

    ``given`` maps names to ready-made tensors used as they are (masks, or squared weights that require grad).
    """
    given = given or {}
    transform = {"path": lambda w: w * w, "synflow": torch.abs, "data": torch.ones_like}
    out = {}
    for name, role in roles.items():
        p = parameters[name].detach()
        if name in given:
            out[name] = given[name]
        elif role is Role.PATH_WEIGHT or (role is Role.BIAS and bias == "path"):
            out[name] = transform[mode](p)
        elif role in (Role.BIAS, Role.ADDITIVE):
            out[name] = torch.zeros_like(p)
        elif role is Role.SCALE:
            out[name] = torch.ones_like(p)
    return out

"""The test on data that admits a nested block to rescaling: does it carry the whole stream?

Rescaling a block's output in the linear passes only multiplies the result by a common factor when every later
value depends on the input through that output alone. The outermost blocks are taken on their structure
(:func:`~px_hf.modeling.structure.residual_blocks`); blocks nested in them are sometimes the same kind of block
(PVT-v2's transformer blocks inside its stages, which overflow float32 unless rescaled one by one) and
sometimes one input of a concatenation or of a skip that bypasses them (HGNet-v2's aggregation, MobileViT's
fusion). The structure cannot tell these apart; the data pass can. Under the real pass's gates it is linear and
bias-free, so zeroing a block's output zeroes the model's output exactly, bit for bit, when nothing bypasses the
block, and leaves the bypass's contribution otherwise. A doubling test would not do: with unit weights a bypass
can be 1e-15 of the output, invisible next to rounding, yet rescaling the block would raise it by the block's
gain.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from ..io import forward
from .linearity import largest_everywhere
from .residual import first_tensor, with_first


def admit_stream_blocks(passes, model: nn.Module, inputs: Optional[torch.Tensor],
                        params: Mapping[str, torch.Tensor], all_reduce=None) -> list[nn.Module]:
    """Test every nested candidate of ``passes`` and admit to rescaling the blocks that carry the whole stream;
    returns them.

    ``passes`` must be entered; ``inputs`` are real examples (the first two are used; ``None`` for a process without
    data); ``params`` the data-pass parameters; ``all_reduce`` (``tensors, op``) makes every process admit the same
    blocks. Costs a real pass and one data pass per candidate on two examples, nothing when there is no candidate.
    With ``px_bias="path"`` biases add constants after any block and no candidate is admitted.
    """
    candidates = list(passes.residual.candidates)
    if not candidates or (inputs is None and all_reduce is None):
        return []
    # 1 where zeroing the block leaves something (or the test says nothing), 0 where it zeroes the output; a process
    # without data leaves the decision to the others.
    bypassed = [0.0] * len(candidates) if inputs is None else \
        _bypassed(passes, model, inputs[:2], params, candidates).tolist()
    admitted = [block for block, flag in zip(candidates, largest_everywhere(bypassed, params, all_reduce))
                if flag == 0.0]
    passes.residual.admit(admitted)
    return admitted


def _bypassed(passes, model: nn.Module, x: torch.Tensor, params: Mapping[str, torch.Tensor],
              candidates: list[nn.Module]) -> torch.Tensor:
    """Per candidate, 0.0 if zeroing its output in the data pass zeroes the model's output, else 1.0."""
    with torch.no_grad():
        try:
            with passes.run("real", record=True):
                forward(model, x)
            with passes.run("data"):
                reference = forward(model, x * x, params)
            if not bool(reference.ne(0).any()):  # a dead output cannot tell a bypass from none
                return torch.ones(len(candidates), dtype=torch.float64)
            flags = []
            for block in candidates:
                handle = block.register_forward_hook(lambda m, a, out: with_first(out, torch.zeros_like(
                    first_tensor(out))))
                try:
                    with passes.run("data"):
                        flags.append(float(forward(model, x * x, params).ne(0).any()))
                finally:
                    handle.remove()
            return torch.tensor(flags, dtype=torch.float64)
        finally:
            passes.clear_records()

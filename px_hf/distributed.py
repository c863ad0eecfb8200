"""Scoring across processes and devices through Accelerate: this process's place, its device, and the small
reductions that a pruning round needs."""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager, Mapping, Optional

import torch
import torch.distributed as dist

from .masks import mask_digest

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def process_state(cpu: bool = False):
    """Accelerate's ``PartialState`` for this process.

    Accelerate detects several CPU processes (gloo) only when asked for the CPU; launched with several processes
    on a machine without CUDA (``torchrun``, ``accelerate launch``), px_hf asks for it.
    """
    from accelerate import PartialState

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) != -1
    return PartialState(cpu=cpu or (launched and not torch.cuda.is_available()))


class ProcessContext:
    """Where this process stands in an ``accelerate launch``/``torchrun`` job (or alone).

    Args:
        cpu: force the CPU even where an accelerator is present.
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` for the real (data) pass; ``None`` follows
            ``accelerate launch --mixed_precision``.
    """

    def __init__(self, cpu: bool = False, mixed_precision: Optional[str] = None):
        self.state = process_state(cpu)
        self.rank = self.state.process_index
        self.world_size = self.state.num_processes
        self.device = self.state.device
        self.mixed_precision = mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        self.bytes_reduced = 0

    @property
    def is_main_process(self) -> bool:
        return self.state.is_main_process

    def all_reduce(self, tensors: list[torch.Tensor], op: str = "sum") -> None:
        """Reduce ``tensors`` in place across all processes; counts the bytes each process sends."""
        if self.world_size == 1:
            return
        for tensor in tensors:
            dist.all_reduce(tensor, op=_OPS[op])
            self.bytes_reduced += tensor.numel() * tensor.element_size()

    def autocast(self) -> ContextManager:
        """The mixed-precision context for the real pass (a no-op for ``"no"``)."""
        dtype = _PRECISIONS.get(self.mixed_precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def check_identical(self, masks: Mapping[str, torch.Tensor]) -> str:
        """The masks' sha256, after checking that every process holds the same; a mismatch is an error."""
        digest = mask_digest(masks)
        if self.world_size > 1:
            from accelerate.utils import gather_object

            digests = gather_object([digest])
            if len(set(digests)) != 1:
                raise RuntimeError(f"the processes computed different masks (sha256 per rank: {digests}); "
                                   "scores must be identical on every rank")
        return digest


def shutdown_distributed() -> None:
    """Tear down torch.distributed after a launched run. Collecting the model's memory before destroying the
    process group avoids an abort at interpreter exit seen in about 1 of 7 two-process runs."""
    import gc

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""What every scorer receives, and how scorers are looked up by name."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Optional

import torch
from torch import nn

from ..config import PXConfig
from ..modeling.passes import LinearizedPasses
from ..modeling.structure import Role

Scores = dict[str, torch.Tensor]
# Reduces a list of tensors across processes in place with "sum" or "max"; the identity in a single process.
AllReduce = Callable[[list[torch.Tensor], str], None]


def _no_reduce(tensors: list[torch.Tensor], op: str = "sum") -> None:
    return None


@dataclass
class ScoringContext:
    """The state a scorer works on for one round.

    Attributes:
        model: the model, with pruned weights already set to zero.
        prunable: names of the parameters to score.
        masks: current masks of the prunable parameters.
        batches: the pruning set of this process as ``(inputs, labels)`` pairs on the model's device.
        sample_shape: shape of one input example (for the data-free passes).
        passes: the hooks that run the model in PX's linearized modes (``None`` for a scorer registered with
            ``uses_passes=False``).
        config: the run's configuration.
        generator: seeded generator for random choices.
        roles: how each parameter enters the linearized passes.
        all_reduce: reduces tensors across processes (identity when running alone).
        cache: state a scorer keeps from one round to the next (reused buffers).
        autocast: the mixed-precision context for real forward passes.
    """

    model: nn.Module
    prunable: list[str]
    masks: dict[str, torch.Tensor]
    batches: Iterable[tuple[torch.Tensor, Optional[torch.Tensor]]]
    sample_shape: tuple[int, ...]
    passes: Optional[LinearizedPasses]
    config: PXConfig
    generator: torch.Generator
    roles: dict[str, Role]
    all_reduce: AllReduce = field(default=_no_reduce)
    cache: dict = field(default_factory=dict)
    autocast: Callable[[], ContextManager] = field(default=contextlib.nullcontext)

    def parameters(self) -> dict[str, torch.Tensor]:
        """The prunable parameters by name."""
        params = dict(self.model.named_parameters())
        return {n: params[n] for n in self.prunable}


Scorer = Callable[[ScoringContext], Scores]

"""The sanity checks of pruning at initialization (Frankle et al., 2021): a good mask should lose to itself
shuffled within each layer, or to itself on fresh weights, if it carried information beyond layer densities."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import PXConfig
from .masks import apply_masks, shuffle_masks


def apply_sanity_check(model: nn.Module, config: PXConfig, masks: dict[str, torch.Tensor],
                       params: dict[str, torch.Tensor], initial: Optional[dict[str, torch.Tensor]],
                       generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The masks after ``config.sanity_check``: ``"shuffle"`` permutes each layer's mask and restores the initial
    weights (``initial``), ``"reinit"`` draws fresh weights; the masks are applied to the weights again."""
    check = config.sanity_check
    if check == "shuffle":
        masks = shuffle_masks(masks, generator)
        with torch.no_grad():
            for name, value in initial.items():
                params[name].copy_(value)
    elif check == "reinit":
        reinitialize(model, config.seed)
    if check is not None:
        apply_masks(params, masks)
    return masks


def reinitialize(model: nn.Module, seed: int) -> None:
    """Draw fresh initial weights: transformers' own initialization for its models, ``reset_parameters`` else."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        init = getattr(model, "_init_weights", None)
        for module in model.modules():
            if init is not None:
                init(module)
            elif hasattr(module, "reset_parameters") and module is not model:
                module.reset_parameters()

"""Small composable operations on masks: schedules, exact top-k selection, application, shuffling."""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch

Masks = dict[str, torch.Tensor]


def density_schedule(density: float, rounds: int, schedule: str = "exponential") -> list[float]:
    """Density to keep after each round; the last entry is ``density``.

    ``exponential`` is the published schedule: round r (0-based) keeps ``density ** ((r + 1) / rounds)``.
    """
    if schedule == "exponential":
        return [density ** ((r + 1) / rounds) for r in range(rounds)]
    if schedule == "linear":
        return [1.0 - (1.0 - density) * (r + 1) / rounds for r in range(rounds)]
    raise ValueError(f"unknown schedule {schedule!r}")


def top_k_mask(scores: torch.Tensor, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) selecting exactly ``k`` largest entries.

    Entries tied at the threshold are chosen at random (seeded by ``generator``), so ties never change the count.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(flat, n - k + 1).values
    chosen = flat > threshold
    missing = k - int(chosen.sum())
    if missing > 0:
        tied = torch.nonzero(flat == threshold).reshape(-1)
        order = torch.randperm(tied.numel(), generator=generator, device="cpu").to(tied.device)
        chosen[tied[order[:missing]]] = True
    return chosen.reshape(scores.shape)


def select_masks(
    scores: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    density: float,
    scope: str = "global",
    generator: Optional[torch.Generator] = None,
) -> Masks:
    """New masks keeping ``density`` of all weights by score; weights already pruned stay pruned.

    ``scope="global"`` keeps exactly ``round(density * total)`` weights with one threshold across tensors;
    ``scope="layer"`` keeps ``round(density * numel)`` in every tensor.
    """
    # A pruned weight must never come back, whatever its score.
    live = {n: scores[n].float().masked_fill(~masks[n], -math.inf) for n in masks}
    if scope == "layer":
        return {
            n: top_k_mask(s, min(round(density * s.numel()), int(masks[n].sum())), generator) for n, s in live.items()
        }
    total = sum(s.numel() for s in live.values())
    kept = sum(int(m.sum()) for m in masks.values())
    flat = torch.cat([s.reshape(-1) for s in live.values()])
    chosen = top_k_mask(flat, min(round(density * total), kept), generator)
    out, start = {}, 0
    for n, s in live.items():
        out[n] = chosen[start:start + s.numel()].reshape(s.shape)
        start += s.numel()
    return out


@torch.no_grad()
def apply_masks(parameters: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Set every masked position of every parameter to exactly +0.0, in place."""
    for name, mask in masks.items():
        parameters[name].masked_fill_(~mask.to(parameters[name].device), 0.0)


def shuffle_masks(masks: Mapping[str, torch.Tensor], generator: Optional[torch.Generator] = None) -> Masks:
    """Permute each mask's entries at random: same per-layer density, different positions.

    A layer that is neither empty nor full is redrawn until its mask actually changes.
    """
    out = {}
    for name, mask in masks.items():
        flat = mask.reshape(-1)
        kept = int(flat.sum())
        shuffled = flat
        if 0 < kept < flat.numel():
            while torch.equal(shuffled, flat):
                shuffled = flat[torch.randperm(flat.numel(), generator=generator, device="cpu").to(flat.device)]
        out[name] = shuffled.reshape(mask.shape)
    return out

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


_SAMPLE = 1 << 16


def _kth_largest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a 1-D tensor (1 <= k <= numel).

    On large tensors a strided sample brackets the answer and only the entries in that bracket are searched,
    which is several times faster than a full selection; the result is exact either way.
    """
    n = flat.numel()
    if n > 16 * _SAMPLE:
        sample = flat[:: n // _SAMPLE]
        m = sample.numel()
        position = m * (1.0 - k / n)
        margin = 8.0 * math.sqrt(m) + 16
        lo = sample.kthvalue(max(1, int(position - margin))).values
        hi = sample.kthvalue(min(m, int(position + margin) + 1)).values
        above = int(torch.count_nonzero(flat > hi))
        band = flat[(flat >= lo) & (flat <= hi)]
        need = k - above
        if 1 <= need <= band.numel():
            return band.kthvalue(band.numel() - need + 1).values
    return flat.kthvalue(n - k + 1).values


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
    threshold = _kth_largest(flat, k)
    chosen = flat > threshold
    missing = k - int(torch.count_nonzero(chosen))
    if missing > 0:
        tied = torch.nonzero(flat == threshold).reshape(-1)
        order = torch.randperm(tied.numel(), generator=generator, device="cpu").to(tied.device)
        chosen[tied[order[:missing]]] = True
    return chosen.reshape(scores.shape)


def select_masks(
    scores: dict[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    density: float,
    scope: str = "global",
    generator: Optional[torch.Generator] = None,
    release: bool = False,
) -> Masks:
    """New masks keeping ``density`` of all weights by score; weights already pruned stay pruned.

    ``scope="global"`` keeps exactly ``round(density * total)`` weights with one threshold across tensors;
    ``scope="layer"`` keeps ``round(density * numel)`` in every tensor. ``release=True`` removes each entry from
    ``scores`` (a dict) once it is used, so that it can be freed early.
    """
    if scope == "layer":
        return {
            n: top_k_mask(_live(scores[n], m), min(round(density * m.numel()), int(torch.count_nonzero(m))), generator)
            for n, m in masks.items()
        }
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(torch.count_nonzero(m)) for m in masks.values())
    first = next(iter(masks.values()))
    # One flat buffer filled in place: no per-layer copies on top of it.
    flat = torch.empty(total, dtype=torch.float32, device=first.device)
    start = 0
    for n, m in masks.items():
        view = flat[start:start + m.numel()]
        view.copy_((scores.pop(n) if release else scores[n]).reshape(-1))
        view.masked_fill_(~m.reshape(-1), -math.inf)
        start += m.numel()
    chosen = top_k_mask(flat, min(round(density * total), kept), generator)
    del flat
    out, start = {}, 0
    for n, m in masks.items():
        out[n] = chosen[start:start + m.numel()].reshape(m.shape)
        start += m.numel()
    return out


def _live(score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # A pruned weight must never come back, whatever its score.
    return score.float().masked_fill(~mask, -math.inf)


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
        kept = int(torch.count_nonzero(flat))
        shuffled = flat
        if 0 < kept < flat.numel():
            while torch.equal(shuffled, flat):
                shuffled = flat[torch.randperm(flat.numel(), generator=generator, device="cpu").to(flat.device)]
        out[name] = shuffled.reshape(mask.shape)
    return out

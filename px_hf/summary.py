"""Per-layer accounting of a set of masks: what was kept where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch


@dataclass(frozen=True)
class LayerSummary:
    """One prunable tensor: its name, shape, size and how many entries the mask keeps."""

    name: str
    shape: tuple[int, ...]
    params: int
    kept: int

    @property
    def density(self) -> float:
        return self.kept / self.params if self.params else 0.0


@dataclass(frozen=True)
class PruningSummary:
    """Per-layer and total densities; ``str()`` renders a table."""

    layers: tuple[LayerSummary, ...]

    @classmethod
    def from_masks(cls, masks: Mapping[str, torch.Tensor]) -> "PruningSummary":
        return cls(tuple(LayerSummary(n, tuple(m.shape), m.numel(), int(torch.count_nonzero(m))) for n, m in masks.items()))

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def kept(self) -> int:
        return sum(layer.kept for layer in self.layers)

    @property
    def density(self) -> float:
        return self.kept / self.params if self.params else 0.0

    @property
    def collapsed(self) -> list[str]:
        """Layers left with no weight at all (layer collapse)."""
        return [layer.name for layer in self.layers if layer.kept == 0]

    def to_dict(self) -> dict:
        return {
            "layers": [dict(name=l.name, shape=list(l.shape), params=l.params, kept=l.kept, density=l.density)
                       for l in self.layers],
            "params": self.params, "kept": self.kept, "density": self.density, "collapsed": self.collapsed,
        }

    def __str__(self) -> str:
        width = max([len("layer")] + [len(layer.name) for layer in self.layers])
        rows = [f"{'layer':<{width}}  {'params':>10}  {'kept':>10}  {'density':>8}", "-" * (width + 34)]
        for layer in self.layers:
            rows.append(f"{layer.name:<{width}}  {layer.params:>10,}  {layer.kept:>10,}  {layer.density:>8.2%}")
        rows.append("-" * (width + 34))
        rows.append(f"{'total':<{width}}  {self.params:>10,}  {self.kept:>10,}  {self.density:>8.2%}")
        return "\n".join(rows)

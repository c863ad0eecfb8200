"""Which parameters are pruned: chosen by module type, then narrowed by patterns resolved against the live model."""

from __future__ import annotations

import re
import warnings
from typing import Optional, Sequence

from torch import nn

from .errors import ModelError

# Weights of these layers carry the network's paths; everything else (biases, norms, embeddings) is never pruned.
PRUNABLE_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


_PLAIN_CONVOLUTIONS = {nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward}


def standardizes_weight(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution with its own forward and an ``eps``: one that standardizes its weight on
    every call (BiT's ``WeightStandardizedConv2d``)."""
    return (isinstance(module, nn.modules.conv._ConvNd) and type(module).forward not in _PLAIN_CONVOLUTIONS
            and isinstance(getattr(module, "eps", None), float))


def path_weight_names(model: nn.Module) -> list[str]:
    """Names of the weights of every Linear and Conv layer, in registration order."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYER_TYPES) and isinstance(getattr(module, "weight", None), nn.Parameter):
            names.append(f"{module_name}.weight" if module_name else "weight")
    return names


def _compile(patterns: Sequence[str], option: str) -> list[re.Pattern]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ModelError(f"{option} pattern {pattern!r} is not a valid regular expression: {err}") from None
    return compiled


def resolve_prunable(
    model: nn.Module, include: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None
) -> list[str]:
    """Return the names of the parameters to prune.

    Patterns are regular expressions searched in parameter names (``re.search``). Every pattern must match at
    least one Linear/Conv weight of ``model``; otherwise the error lists examples of the names that exist.
    """
    candidates = path_weight_names(model)
    if not candidates:
        raise ModelError(
            f"{type(model).__name__} has no prunable layer: px_hf prunes the weights of "
            "nn.Linear and nn.Conv1d/2d/3d modules, and this model has none"
        )
    chosen = list(candidates)
    for option, patterns in (("include", include), ("exclude", exclude)):
        if not patterns:
            continue
        regexes = _compile(patterns, option)
        for pattern, regex in zip(patterns, regexes):
            if not any(regex.search(name) for name in candidates):
                examples = ", ".join(candidates[:4])
                raise ModelError(
                    f"{option} pattern '{pattern}' matches no Linear/Conv weight of {type(model).__name__}; "
                    f"prunable names look like: {examples}, ..."
                )
        keep_if_match = option == "include"
        chosen = [n for n in chosen if any(r.search(n) for r in regexes) == keep_if_match]
    if not chosen:
        raise ModelError("include/exclude patterns leave no parameter to prune; loosen them")
    modules = dict(model.named_modules())
    standardized = [n for n in chosen if standardizes_weight(modules[n.rpartition(".")[0]])]
    if standardized:
        warnings.warn(
            f"{len(standardized)} of the pruned weights ({standardized[0]}, ...) belong to weight-standardized "
            "convolutions: a mask zeroes the parameter, but the convolution re-centres its weight on every call, so "
            "a pruned entry acts as -mean/std. The parameters are exactly sparse; the effective kernels are not.",
            stacklevel=2,
        )
    return chosen

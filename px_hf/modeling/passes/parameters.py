"""The parameters each linear pass runs with, built from the live ones (through ``functional_call``)."""

from __future__ import annotations

from typing import Optional

import torch

from ..structure import Role


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

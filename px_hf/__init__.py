"""px_hf: PX (Path eXclusion) pruning at initialization for Hugging Face vision models.

The public names are imported on first use (PEP 562), so ``import px_hf`` and ``px-hf --help`` do not pay for
torch, transformers and accelerate until a pruner, a mask function or a summary is actually needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import PXConfig
from .errors import ConfigError, DataError, HubError, ModelError, OutputDirError, PrunedModelError, PXError
from .scoring.registry import register_scorer, scorer_info

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {
    "PXPruner": "pruner",
    "PruningSummary": "summary",
    "ScoringContext": "scoring.base",
    "apply_masks": "masks",
    "density_schedule": "masks",
    "select_masks": "masks",
    "shuffle_masks": "masks",
    "top_k_mask": "masks",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__
    from .masks import apply_masks, density_schedule, select_masks, shuffle_masks, top_k_mask
    from .pruner import PXPruner
    from .scoring.base import ScoringContext
    from .summary import PruningSummary


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "PXPruner", "PXConfig", "PruningSummary", "PXError", "ConfigError", "DataError", "ModelError",
    "OutputDirError", "PrunedModelError", "HubError", "register_scorer", "scorer_info", "ScoringContext",
    "apply_masks", "density_schedule", "select_masks", "shuffle_masks", "top_k_mask", "__version__",
]

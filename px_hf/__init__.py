"""px_hf: PX (Path eXclusion) pruning at initialization for Hugging Face vision models."""

from .config import PXConfig
from .errors import (
    ConfigError, DataError, HubError, ModelError, OutputDirError, PrunedModelError, PXError,
)
from .masks import apply_masks, density_schedule, select_masks, shuffle_masks, top_k_mask
from .pruner import PXPruner
from .summary import PruningSummary

__version__ = "0.1.0"

__all__ = [
    "PXPruner", "PXConfig", "PruningSummary", "PXError", "ConfigError", "DataError", "ModelError",
    "OutputDirError", "PrunedModelError", "HubError",
    "apply_masks", "density_schedule", "select_masks", "shuffle_masks", "top_k_mask", "__version__",
]

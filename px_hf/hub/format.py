"""px_hf's on-disk format: the names of the files in a pruned model's directory and the record
``pruning_config.json`` holds. The one place that spells either."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..errors import PrunedModelError

PRUNING_CONFIG_FILE = "pruning_config.json"  # a pruned model's PruningRecord
CONFIG_ONLY_FILE = "px_config.json"  # a PXConfig saved alone (PXConfig.save_pretrained)
MASK_FILE = "px_masks.safetensors"
COMPACT_WEIGHTS_FILE = "px_compact.safetensors"
# Weights of a model that is not a transformers model (transformers writes its own file names).
GENERIC_WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
DENSITY_PLOT = "density_per_layer.png"

# Every file a px_hf save writes, next to what transformers' save_pretrained writes.
PX_HF_FILES = (PRUNING_CONFIG_FILE, CONFIG_ONLY_FILE, MASK_FILE, COMPACT_WEIGHTS_FILE, GENERIC_WEIGHTS_FILE,
               CARD_FILE, DENSITY_PLOT)

FORMAT_VERSION = 1
# Keys of records written before the format had a version, and what they became (None: dropped, as a copy of a
# config field).
_LEGACY_KEYS = {"mask_sha256": "mask_file_sha256", "rounds": "rounds_run", "scorer": None, "schedule": None,
                "scope": None}


@dataclass
class PruningRecord:
    """What a pruned model records about its pruning (``pruning_config.json``).

    Attributes:
        config: the :class:`~px_hf.PXConfig` that produced the masks, as a dict (the only copy of its fields).
        architecture: the model's class name.
        rounds_run: the rounds actually run (``config["rounds"]`` may be ``None``: the scorer's default).
        target_density, achieved_density, prunable_params, kept_params: what was asked and what the masks keep.
        mask_file, mask_file_sha256: the mask file and the sha256 of its bytes (set when written).
        weights_format: ``"dense"`` (transformers layout) or ``"compact"`` (kept values only).
        base_model: ``{"name", "revision"}`` of the model that was pruned.
        pruning_set: the pruning data (source, split, examples, the sha256 of the chosen indices).
        previous_pruning: the records of earlier prunings of the same weights, oldest first.
        finetuning: what fine-tuning recorded (recipe, metrics).
        dense_parameters: parameters kept dense although prunable (a new classifier head).
        extra: fields this px_hf does not know (written by a newer one, or added with ``PXPruner.annotate``),
            kept as they are.
    """

    config: dict[str, Any]
    architecture: str
    rounds_run: int
    target_density: float
    achieved_density: float
    prunable_params: int
    kept_params: int
    mask_file: str = MASK_FILE
    mask_file_sha256: Optional[str] = None
    weights_format: str = "dense"
    base_model: Optional[dict[str, Any]] = None
    pruning_set: Optional[dict[str, Any]] = None
    previous_pruning: list[dict[str, Any]] = field(default_factory=list)
    finetuning: Optional[dict[str, Any]] = None
    dense_parameters: Optional[list[str]] = None
    px_hf_version: Optional[str] = None
    torch_version: Optional[str] = None
    transformers_version: Optional[str] = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``pruning_config.json`` (``extra`` merged in at the top level)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **values}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = PRUNING_CONFIG_FILE) -> "PruningRecord":
        """Read a record; :class:`~px_hf.PrunedModelError` when a required field is missing or mistyped."""
        if not isinstance(values, Mapping):
            raise PrunedModelError(f"{source} must hold a JSON object, got {type(values).__name__}")
        values = dict(values)
        for old, new in _LEGACY_KEYS.items():
            if old in values:
                value = values.pop(old)
                if new is not None:
                    values.setdefault(new, value)
        if values.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            warnings.warn(f"{source} has format version {values['format_version']}, newer than this px_hf's "
                          f"{FORMAT_VERSION}; reading the fields it knows", stacklevel=2)
        required = {"config": dict, "architecture": str, "mask_file_sha256": str, "kept_params": int,
                    "prunable_params": int, "target_density": (int, float), "achieved_density": (int, float)}
        missing = [key for key, kind in required.items()
                   if not isinstance(values.get(key), kind) or isinstance(values.get(key), bool)]
        if missing:
            raise PrunedModelError(f"{source} lacks {', '.join(missing)} (or holds the wrong type): it was not "
                                   "written by px_hf's save_pretrained, or it was damaged")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in values.items() if k in names}
        known.setdefault("rounds_run", known["config"].get("rounds") or 1)
        known["previous_pruning"] = known.get("previous_pruning") or []
        return cls(**known, extra={k: v for k, v in values.items() if k not in names})

    @classmethod
    def read(cls, directory: str) -> Optional["PruningRecord"]:
        """The record of the pruned model in ``directory``, or ``None`` when it has none (an unpruned model)."""
        path = os.path.join(directory, PRUNING_CONFIG_FILE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as handle:
                values = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise PrunedModelError(f"{path} is not a readable JSON file: {err}") from err
        return cls.from_dict(values, path)

    def write(self, directory: str) -> None:
        with open(os.path.join(directory, PRUNING_CONFIG_FILE), "w") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)

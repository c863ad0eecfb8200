"""Restore a pruned model from a directory, exactly, and refuse anything that would not be exact."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import PrunedModelError
from ..masks import check_masks
from .format import COMPACT_WEIGHTS_FILE, GENERIC_WEIGHTS_FILE, MASK_FILE, PRUNING_CONFIG_FILE, PruningRecord
from .mask_file import file_sha256, load_masks


def check_record(record: PruningRecord, masks: dict[str, torch.Tensor], path: str) -> None:
    """Raise :class:`PrunedModelError` when ``record`` misreports ``masks`` (an edited or foreign record)."""
    from ..config import PXConfig
    from ..errors import ConfigError

    try:
        config = PXConfig.from_dict(record.config)
    except (ConfigError, TypeError) as err:
        raise PrunedModelError(f"{path} holds an invalid config: {err}") from err
    kept = sum(int(torch.count_nonzero(m)) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    problems = []
    if abs(config.density - record.target_density) > 1e-9:
        problems.append(f"config.sparsity {config.sparsity} but target_density {record.target_density}")
    if not record.dense_parameters:  # a new head's mask was dropped: the counts are the original model's
        if (kept, total) != (record.kept_params, record.prunable_params):
            problems.append(f"it records {record.kept_params} of {record.prunable_params} weights kept, the "
                            f"masks keep {kept} of {total}")
        elif abs(kept / total - record.achieved_density) > 1e-9:
            problems.append(f"achieved_density {record.achieved_density} but the masks keep {kept / total:.6f}")
        # Rounding to whole weights (per tensor with a layer-wise threshold) is the only allowed gap.
        elif abs(record.achieved_density - config.density) > len(masks) / total + 1e-9 and not (
                config.scope == "layer" and record.previous_pruning):
            problems.append(f"the masks keep {kept / total:.6f} of the weights, not the configured density "
                            f"{config.density:.6f}")
    if problems:
        raise PrunedModelError(f"{path} disagrees with the masks: {'; '.join(problems)}. The file was edited or "
                               "belongs to other masks; px_hf does not load a record that misreports them")


def _load_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise PrunedModelError(f"{path} is missing: the weights of the pruned model cannot be restored")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise PrunedModelError(f"the weights file {path} is corrupt or truncated: {err}") from err


def saved_architecture(directory: str) -> Optional[str]:
    """The model class a saved model (or Trainer checkpoint) directory was written for, from its config.json."""
    try:
        with open(os.path.join(directory, "config.json")) as handle:
            return (json.load(handle).get("architectures") or [None])[0]
    except (OSError, json.JSONDecodeError):
        return None


def check_architecture(directory: str, model: nn.Module, role: str = "the model is a") -> None:
    """Raise :class:`PrunedModelError` when ``directory`` was saved from another class than ``model``'s."""
    saved = saved_architecture(directory)
    if saved is not None and saved != type(model).__name__:
        raise PrunedModelError(f"the checkpoint {directory} holds a {saved}, but {role} {type(model).__name__}; "
                               "resume from a checkpoint of the same model")


def _transformers_class(directory: str, record: PruningRecord):
    import transformers

    name = saved_architecture(directory)
    if name is not None and name != record.architecture:
        raise PrunedModelError(
            f"{os.path.join(directory, PRUNING_CONFIG_FILE)} was written for a {record.architecture}, but "
            f"config.json describes a {name}"
        )
    cls = getattr(transformers, name or "", None)
    return cls or transformers.AutoModelForImageClassification


def _load_transformers_model(directory: str, record: PruningRecord, compact: bool, **kwargs
                             ) -> tuple[nn.Module, list[str]]:
    """The model and the names of the tensors re-initialized because of ``ignore_mismatched_sizes=True`` (a new
    label set)."""
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise PrunedModelError(f"{directory} has no config.json; pass model= to load into your own module")
    cls = _transformers_class(directory, record)
    if compact:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory)
        return (cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)), []
    try:
        model, info = cls.from_pretrained(directory, use_safetensors=True, output_loading_info=True, **kwargs)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise PrunedModelError(f"cannot load the weights in {directory}: {err}") from err
    mismatched = [k for k, *_ in info.get("mismatched_keys") or []]
    missing = list(info.get("missing_keys") or []) + ([] if kwargs.get("ignore_mismatched_sizes") else mismatched)
    if missing:
        # transformers would silently re-initialize these: a pruned model must never come back half random.
        raise PrunedModelError(
            f"the weights in {directory} lack or mis-shape {len(missing)} tensor(s) (e.g. {missing[:3]}); "
            "the file is truncated or belongs to another model"
        )
    return model, mismatched if kwargs.get("ignore_mismatched_sizes") else []


def _fill_compact(model: nn.Module, directory: str, masks: dict[str, torch.Tensor]) -> None:
    path = os.path.join(directory, COMPACT_WEIGHTS_FILE)
    stored = _load_file(path)
    state = {}
    for name, value in stored.items():
        if name in masks:
            mask = masks[name]
            if value.numel() != int(torch.count_nonzero(mask)):
                raise PrunedModelError(f"{path}: {name} stores {value.numel()} values but its mask keeps "
                                       f"{int(torch.count_nonzero(mask))}")
            full = torch.zeros(mask.shape, dtype=value.dtype)
            full[mask] = value
            value = full
        state[name] = value
    _load_state(model, state, path)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise PrunedModelError(
            f"{path} does not fit {type(model).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"shape mismatches {wrong[:3]}"
        )
    model.load_state_dict(state, strict=True, assign=True)


def _check_masks(model: nn.Module, masks: dict[str, torch.Tensor], record: PruningRecord, directory: str) -> None:
    check_masks(dict(model.named_parameters()), masks, f"the {type(model).__name__} loaded from {directory}")
    check_record(record, masks, os.path.join(directory, PRUNING_CONFIG_FILE))


def load_pruned(
    directory: str, record: PruningRecord, model: Optional[nn.Module] = None, **model_kwargs: Any
) -> tuple[nn.Module, dict[str, torch.Tensor], PruningRecord]:
    """Rebuild the pruned model saved in ``directory`` and its masks, bit-exactly, verifying the mask hash; also
    returns the record, with a re-initialized head listed in ``dense_parameters``.

    ``model``: a module to load the weights into (required for models that are not transformers models).
    """
    mask_path = os.path.join(directory, record.mask_file or MASK_FILE)
    if not os.path.isfile(mask_path):
        raise PrunedModelError(
            f"{directory} has a {PRUNING_CONFIG_FILE} but no {os.path.basename(mask_path)}: which weights are "
            "pruned cannot be restored"
        )
    expected = record.mask_file_sha256
    actual = file_sha256(mask_path)
    if expected is None or actual != expected:
        raise PrunedModelError(f"{mask_path} has sha256 {actual} but {PRUNING_CONFIG_FILE} records {expected}: "
                               "the mask file was changed or replaced")
    masks = load_masks(mask_path)
    compact = record.weights_format == "compact"
    if model is None:
        model, reinitialized = _load_transformers_model(directory, record, compact, **model_kwargs)
        dropped = sorted(set(reinitialized) & set(masks))
        if dropped:
            # A new label set: the re-initialized head is trained dense (its old mask cannot fit it).
            masks = {n: m for n, m in masks.items() if n not in dropped}
            record = dataclasses.replace(record, dense_parameters=sorted(set(record.dense_parameters or []) | set(dropped)))
    elif type(model).__name__ != record.architecture:
        raise PrunedModelError(f"{PRUNING_CONFIG_FILE} in {directory} was written for a {record.architecture}, "
                               f"not a {type(model).__name__}")
    elif not compact:
        _load_state(model, _load_file(os.path.join(directory, GENERIC_WEIGHTS_FILE)), directory)
    if compact:
        _fill_compact(model, directory, masks)
    _check_masks(model, masks, record, directory)
    return model, masks, record

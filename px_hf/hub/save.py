"""Write a pruned model into a directory: transformers layout (or compact weights), masks, pruning config, card."""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Mapping, Optional

import torch
from safetensors.torch import save_file
from torch import nn

from ..summary import PruningSummary
from .card import write_card
from .format import COMPACT_WEIGHTS_FILE, GENERIC_WEIGHTS_FILE, MASK_FILE, PruningRecord
from .mask_file import save_masks


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory; contiguous copies are written instead.
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def _save_compact(model: nn.Module, masks: Mapping[str, torch.Tensor], directory: str) -> None:
    """Kept values only for pruned tensors (their positions are in the mask file); everything else dense."""
    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach()
        tensors[name] = value[masks[name]].contiguous() if name in masks else value.contiguous().clone()
    save_file(tensors, os.path.join(directory, COMPACT_WEIGHTS_FILE), metadata={"format": "px_hf.compact.v1"})
    if hasattr(model, "config"):
        # save_pretrained records the class in `architectures`; a config saved alone must too, or loading cannot
        # tell which head to build.
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]
        config.save_pretrained(directory)


def _save_dense(model: nn.Module, directory: str) -> None:
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        save_file(_state_dict(model), os.path.join(directory, GENERIC_WEIGHTS_FILE))


def write_pruned(
    directory: str, model: nn.Module, masks: Mapping[str, torch.Tensor], record: PruningRecord,
    compact: bool = False, repo_id: Optional[str] = None,
) -> PruningRecord:
    """Write everything into an existing empty ``directory``; return the pruning record as written."""
    if compact:
        _save_compact(model, masks, directory)
    else:
        _save_dense(model, directory)
    return write_pruning_files(directory, masks, record, "compact" if compact else "dense", card=True,
                               repo_id=repo_id)


def write_pruning_files(
    directory: str, masks: Mapping[str, torch.Tensor], record: PruningRecord, weights_format: str = "dense",
    card: bool = False, repo_id: Optional[str] = None,
) -> PruningRecord:
    """Write ``px_masks.safetensors`` and ``pruning_config.json`` (with the mask file's sha256), and with ``card``
    the model card, into ``directory``, next to weights already there; return the record as written."""
    digest = save_masks(masks, os.path.join(directory, MASK_FILE))
    record = dataclasses.replace(record, weights_format=weights_format, mask_file=MASK_FILE, mask_file_sha256=digest)
    record.write(directory)
    if card:
        write_card(directory, PruningSummary.from_masks(masks), record, repo_id)
    return record

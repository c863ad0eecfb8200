"""Write a pruned model to a directory: transformers layout, masks and pruning config, atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import torch
from torch import nn

from .mask_file import MASK_FILE, save_masks

PRUNING_CONFIG_FILE = "pruning_config.json"


def _save_model(model: nn.Module, directory: str) -> None:
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(directory, "model.safetensors"))


def save_pruned(model: nn.Module, masks: Mapping[str, torch.Tensor], record: dict[str, Any], directory: str) -> None:
    """Save ``model`` (pruned weights are exact zeros), its ``masks`` and the pruning ``record`` to ``directory``.

    Everything is written to a temporary directory beside the target and moved into place at the end, so an
    interrupted save never leaves a directory that loads as a wrong model.
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".px_hf-save-", dir=parent)
    try:
        _save_model(model, staging)
        record = dict(record, mask_file=MASK_FILE, mask_sha256=save_masks(masks, os.path.join(staging, MASK_FILE)))
        with open(os.path.join(staging, PRUNING_CONFIG_FILE), "w") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

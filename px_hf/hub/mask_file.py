"""The mask file: one bit per weight, bit-packed, in safetensors, keyed by parameter name."""

from __future__ import annotations

import hashlib
import json
from typing import Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MASK_FILE = "px_masks.safetensors"


def pack_masks(masks: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Bit-pack bool masks into uint8 tensors; the shapes go to the safetensors metadata."""
    packed, shapes = {}, {}
    for name, mask in masks.items():
        bits = np.packbits(mask.detach().cpu().reshape(-1).numpy().astype(np.uint8))
        packed[name] = torch.from_numpy(bits)
        shapes[name] = list(mask.shape)
    return packed, {"shapes": json.dumps(shapes), "format": "px_hf.packbits.v1"}


def save_masks(masks: Mapping[str, torch.Tensor], path: str) -> str:
    """Write ``masks`` to ``path``; return the file's sha256."""
    packed, metadata = pack_masks(masks)
    save_file(packed, path, metadata=metadata)
    return file_sha256(path)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_masks(path: str) -> dict[str, torch.Tensor]:
    """Read a mask file written by :func:`save_masks`."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    shapes = json.loads(metadata["shapes"])
    packed = load_file(path)
    masks = {}
    for name, shape in shapes.items():
        count = int(np.prod(shape)) if shape else 1
        bits = np.unpackbits(packed[name].numpy())[:count]
        masks[name] = torch.from_numpy(bits.astype(bool)).reshape(shape)
    return masks

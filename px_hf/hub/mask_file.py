"""The mask file: one bit per weight, bit-packed, in safetensors, keyed by parameter name."""

from __future__ import annotations

import hashlib
import json
from typing import Mapping

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import PrunedModelError

MASK_FORMAT = "px_hf.packbits.v1"


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, eight entries a byte (big-endian bit order, as numpy.packbits)."""
    return torch.from_numpy(np.packbits(mask.detach().cpu().reshape(-1).numpy().astype(np.uint8)))


def unpack_bits(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`."""
    count = int(np.prod(shape)) if shape else 1
    bits = np.unpackbits(packed.numpy())[:count]
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def save_masks(masks: Mapping[str, torch.Tensor], path: str) -> str:
    """Write ``masks`` to ``path`` (shapes in the safetensors metadata); return the file's sha256."""
    packed = {name: pack_bits(mask) for name, mask in masks.items()}
    shapes = {name: list(mask.shape) for name, mask in masks.items()}
    # One metadata entry: safetensors writes several in no fixed order, and equal masks must give equal bytes
    # (and so an equal hash).
    header = json.dumps({"format": MASK_FORMAT, "shapes": shapes})  # shapes in the model's order
    save_file(packed, path, metadata={"px_hf": header})
    return file_sha256(path)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_masks(path: str) -> dict[str, torch.Tensor]:
    """Read a mask file written by :func:`save_masks`; a damaged file raises :class:`PrunedModelError`."""
    try:
        with safe_open(path, framework="pt") as handle:
            header = json.loads((handle.metadata() or {}).get("px_hf", "{}"))
            if header.get("format") != MASK_FORMAT:
                raise PrunedModelError(f"{path} is not a px_hf mask file (format {header.get('format')!r})")
            shapes = header["shapes"]
            masks = {}
            for name, shape in shapes.items():
                packed = handle.get_tensor(name)
                if packed.numel() != (int(np.prod(shape)) + 7) // 8:
                    raise PrunedModelError(f"{path}: the mask of {name} has {packed.numel()} bytes, which does not "
                                           f"fit its shape {shape}")
                masks[name] = unpack_bits(packed, shape)
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise PrunedModelError(f"the mask file {path} is corrupt or truncated: {err}") from err
    return masks

"""The pruning set: a seeded, class-balanced sample of what the user gives ``PXPruner.prune``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from .errors import DataError

_IMAGE_COLUMNS = ("pixel_values", "image", "img")
_LABEL_COLUMNS = ("labels", "label")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_folder_classes(path: str) -> list[str]:
    """The class sub-directories (those holding images) of an image folder, sorted.

    Raises :class:`DataError` when ``path`` is not a folder or holds no image at all.
    """
    if not os.path.isdir(path):
        raise DataError(f"{path!r} is not a folder" + (" (it is a file)" if os.path.exists(path) else ""))

    def is_image(name: str) -> bool:
        return name.lower().endswith(IMAGE_EXTENSIONS)

    classes, loose = [], 0
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if os.path.isdir(full):
            if any(is_image(f) for _, _, files in os.walk(full) for f in files):
                classes.append(entry)
        elif is_image(entry):
            loose += 1
    if not classes and not loose:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {path}; an image folder holds one "
                        "sub-directory of images per class")
    return classes


def dataset_class_names(dataset: Any, label_column: Optional[str] = None) -> Optional[list[str]]:
    """The class names of a ``datasets.Dataset``: its ``ClassLabel`` names, else ``"0"`` to the largest label id;
    ``None`` when it has no label column."""
    columns = list(dataset.column_names)
    label_column = label_column or next((c for c in _LABEL_COLUMNS if c in columns), None)
    if label_column is None:
        return None
    names = getattr(dataset.features.get(label_column), "names", None)
    if names:
        return list(names)
    labels = _as_labels(dataset[label_column], f"column {label_column!r}")
    if labels.numel() and int(labels.min()) < 0:
        raise DataError(f"column {label_column!r} holds negative labels; class ids start at 0")
    return [str(i) for i in range(int(labels.max()) + 1 if labels.numel() else 0)]


@dataclass
class PruningSet:
    """The examples scored on, in memory.

    Attributes:
        inputs: model inputs, shape ``(N, ...)``.
        labels: integer labels ``(N,)``, or ``None`` for unlabeled data.
        indices: position of each example in the data it was drawn from.
        source: a short description of that data (dataset name, ``tensors``, ``DataLoader``).
        split: the dataset split, when known.
    """

    inputs: torch.Tensor
    labels: Optional[torch.Tensor]
    indices: list[int]
    source: str
    split: Optional[str] = None

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def indices_sha256(self) -> str:
        """Hash of the chosen indices: identifies the pruning set without storing it."""
        return hashlib.sha256(json.dumps(self.indices).encode()).hexdigest()

    def batches(
        self, batch_size: int, device: torch.device, rank: int = 0, world_size: int = 1
    ) -> list[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """This process's share of fixed-size batches: batch i goes to process ``i % world_size``.

        Batches are the same whatever the number of processes, so statistics computed per batch (BatchNorm)
        and hence the scores do not depend on how the work is split.
        """
        out = []
        for number, start in enumerate(range(0, len(self), batch_size)):
            if number % world_size != rank:
                continue
            x = self.inputs[start:start + batch_size].to(device)
            y = None if self.labels is None else self.labels[start:start + batch_size].to(device)
            out.append((x, y))
        return out


def _too_few(cls: int, available: int, per_class: int) -> DataError:
    return DataError(
        f"class {cls} has only {available} example(s) but examples_per_class={per_class}; give more data, "
        "lower examples_per_class, or set it to None to use every example"
    )


def balanced_indices(labels: torch.Tensor, per_class: int, seed: int) -> list[int]:
    """``per_class`` indices of every class, drawn at random (seeded); classes in increasing order."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).reshape(-1)
        if members.numel() < per_class:
            raise _too_few(cls, members.numel(), per_class)
        chosen.extend(members[torch.randperm(members.numel(), generator=generator)[:per_class]].tolist())
    return chosen


def _as_labels(values: Any, where: str) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(values))
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        raise DataError(f"labels from {where} must be a 1-D sequence of integer class ids, got {labels.dtype} "
                        f"of shape {tuple(labels.shape)}")
    return labels.long()


def _require_labels(labels: Optional[torch.Tensor], per_class: Optional[int], where: str) -> None:
    if labels is None and per_class is not None:
        raise DataError(
            f"{where} has no labels, but examples_per_class={per_class} needs them to build a class-balanced "
            "pruning set; pass (inputs, labels), or set examples_per_class=None to use every example"
        )


def _split_batch(batch: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(batch, Mapping):
        inputs = next((batch[k] for k in ("pixel_values", "inputs", "input") if k in batch), None)
        if inputs is None:
            raise DataError(f"a batch dict needs a 'pixel_values' entry; it has {sorted(batch)}")
        labels = next((batch[k] for k in _LABEL_COLUMNS if k in batch), None)
        return torch.as_tensor(inputs), None if labels is None else torch.as_tensor(labels)
    if isinstance(batch, (tuple, list)):
        if len(batch) >= 2:
            return torch.as_tensor(batch[0]), torch.as_tensor(batch[1])
        return torch.as_tensor(batch[0]), None
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise DataError(f"cannot read a batch of type {type(batch).__name__}; yield (inputs, labels) or a dict "
                    "with 'pixel_values' and 'labels'")


def _from_loader(loader: DataLoader, per_class: Optional[int], seed: int) -> PruningSet:
    """Reservoir-sample ``per_class`` examples of each class in one pass over the loader."""
    rng = random.Random(seed)
    reservoirs: dict[int, list[tuple[int, torch.Tensor]]] = {}
    seen: dict[int, int] = {}
    kept: list[tuple[int, torch.Tensor, Optional[int]]] = []
    position = 0
    for batch in loader:
        inputs, labels = _split_batch(batch)
        if labels is not None:
            labels = _as_labels(labels, "the DataLoader")
        _require_labels(labels, per_class, "the DataLoader")
        for i in range(inputs.shape[0]):
            if per_class is None:
                kept.append((position, inputs[i], None if labels is None else int(labels[i])))
            else:
                cls = int(labels[i])
                count = seen.get(cls, 0)
                seen[cls] = count + 1
                bucket = reservoirs.setdefault(cls, [])
                if count < per_class:
                    bucket.append((position, inputs[i]))
                else:
                    slot = rng.randrange(count + 1)
                    if slot < per_class:
                        bucket[slot] = (position, inputs[i])
            position += 1
    if position == 0:
        raise DataError("the DataLoader yielded no examples")
    if per_class is not None:
        for cls in sorted(reservoirs):
            if seen[cls] < per_class:
                raise _too_few(cls, seen[cls], per_class)
            kept.extend((pos, x, cls) for pos, x in sorted(reservoirs[cls], key=lambda item: item[0]))
    labels_out = None if kept[0][2] is None else torch.tensor([k[2] for k in kept])
    return PruningSet(torch.stack([k[1] for k in kept]), labels_out, [k[0] for k in kept], "DataLoader")


def _from_dataset(
    dataset: Any, per_class: Optional[int], seed: int, image_processor: Any, transform: Optional[Callable],
    image_column: Optional[str], label_column: Optional[str],
) -> PruningSet:
    columns = list(dataset.column_names)
    image_column = image_column or next((c for c in _IMAGE_COLUMNS if c in columns), None)
    if image_column not in columns:
        raise DataError(f"the dataset has no image column {image_column!r}; its columns are {columns}; "
                        "pass image_column=")
    label_column = label_column or next((c for c in _LABEL_COLUMNS if c in columns), None)
    if label_column is not None and label_column not in columns:
        raise DataError(f"the dataset has no label column {label_column!r}; its columns are {columns}")
    labels = None if label_column is None else _as_labels(dataset[label_column], f"column {label_column!r}")
    _require_labels(labels, per_class, "the dataset")
    indices = list(range(len(dataset))) if per_class is None else balanced_indices(labels, per_class, seed)
    if not indices:
        raise DataError("the dataset is empty")
    images = _decoded(dataset.select(indices), image_column)
    if image_processor is not None:
        inputs = image_processor(images=[im.convert("RGB") if hasattr(im, "convert") else im for im in images],
                                 return_tensors="pt")["pixel_values"]
    elif transform is not None:
        inputs = torch.stack([torch.as_tensor(transform(im)) for im in images])
    elif isinstance(images, torch.Tensor) or not hasattr(images[0], "convert"):
        inputs = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    else:
        raise DataError(f"column {image_column!r} holds images; pass image_processor= (e.g. AutoImageProcessor) or "
                        "transform= to turn them into tensors")
    name = getattr(getattr(dataset, "info", None), "dataset_name", None) or "datasets.Dataset"
    split = getattr(dataset, "split", None)
    return PruningSet(inputs, None if labels is None else labels[indices], indices, name,
                      None if split is None else str(split))


def _decoded(dataset: Any, column: str) -> Any:
    """The column's values, images decoded one by one so that an unreadable file is named."""
    from datasets import Image as ImageFeature

    feature = dataset.features.get(column)
    if not isinstance(feature, ImageFeature) or not feature.decode:
        return dataset[column]
    from PIL import Image

    images = []
    for item in dataset.cast_column(column, ImageFeature(decode=False))[column]:
        name = item.get("path") or "an image stored in the dataset"
        try:
            image = Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"])
            image.load()
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for damaged files
            raise DataError(f"cannot read the image {name}: {err}") from None
        images.append(image)
    return images


def _check_finite(pruning_set: PruningSet) -> PruningSet:
    inputs = pruning_set.inputs
    if inputs.is_floating_point():
        bad = ~torch.isfinite(inputs.reshape(inputs.shape[0], -1)).all(dim=1)
        if bad.any():
            first = pruning_set.indices[int(torch.nonzero(bad)[0])]
            raise DataError(f"{int(bad.sum())} pruning example(s) hold NaN or infinite values (the first is example "
                            f"{first} of the data given); clean or re-normalize the inputs")
    return pruning_set


def build_pruning_set(
    data: Any,
    examples_per_class: Optional[int],
    seed: int = 0,
    image_processor: Any = None,
    transform: Optional[Callable] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
) -> PruningSet:
    """Draw the pruning set from ``data``.

    ``data`` is a tensor of inputs, a pair ``(inputs, labels)``, a DataLoader yielding ``(inputs, labels)`` or
    dicts with ``pixel_values``/``labels``, or a ``datasets.Dataset`` (with ``image_processor`` or ``transform``
    when its images are PIL images). With ``examples_per_class`` set, exactly that many examples of every class
    are drawn at random (seeded); otherwise every example is used. Inputs holding NaN or infinity are refused.
    """
    if isinstance(data, DataLoader):
        return _check_finite(_from_loader(data, examples_per_class, seed))
    if hasattr(data, "column_names") and hasattr(data, "select"):
        return _check_finite(_from_dataset(data, examples_per_class, seed, image_processor, transform, image_column,
                                           label_column))
    if hasattr(data, "column_names"):
        raise DataError("got a DatasetDict; pass one split, e.g. dataset['train']")
    if isinstance(data, torch.Tensor):
        inputs, labels = data, None
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        inputs, labels = torch.as_tensor(data[0]), _as_labels(data[1], "the (inputs, labels) pair")
        if labels.shape[0] != inputs.shape[0]:
            raise DataError(f"got {inputs.shape[0]} inputs but {labels.shape[0]} labels")
    else:
        raise DataError(
            f"cannot prune on a {type(data).__name__}: pass (inputs, labels) tensors, a DataLoader or a "
            "datasets.Dataset"
        )
    if inputs.shape[0] == 0:
        raise DataError("the pruning data is empty")
    _require_labels(labels, examples_per_class, "the input tensor")
    if examples_per_class is None:
        indices = list(range(inputs.shape[0]))
    else:
        indices = balanced_indices(labels, examples_per_class, seed)
    return _check_finite(PruningSet(inputs[indices], None if labels is None else labels[indices], indices, "tensors"))

"""Fashion-MNIST (from the Debian package ``dataset-fashion-mnist`` or a folder) as image tensors."""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Where `apt-get install dataset-fashion-mnist` puts the four idx files.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "PX_HF_FASHION_MNIST"
_FILES = {"train": "train", "test": "t10k"}
# idx magic numbers: 0x00000803 = unsigned bytes, 3 dims (images); 0x00000801 = unsigned bytes, 1 dim (labels).
_MAGIC = {"images": 0x803, "labels": 0x801}


def _file_names(split: str) -> tuple[str, str]:
    prefix = _FILES[split]
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def _find_root(split: str, root: str | os.PathLike | None) -> str:
    """The folder holding ``split``'s two files: ``root`` if given, else $PX_HF_FASHION_MNIST, else the package's."""
    names = _file_names(split)
    if root is not None:
        candidates = [str(root)]
    else:
        candidates = [path for path in (os.environ.get(ENV_VAR), DEBIAN_DIR) if path]
    for folder in candidates:
        if all(os.path.isfile(os.path.join(folder, name)) for name in names):
            return folder
    looked = ", ".join(candidates)
    raise DataError(
        f"Fashion-MNIST {split} files ({', '.join(names)}) not found in {looked}. Install the Debian package "
        f"dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`, files in {DEBIAN_DIR}), or pass "
        f"root=<folder> (or set {ENV_VAR}=<folder>) to a folder holding the gzip idx files."
    )


def _read_idx(path: str, kind: str) -> np.ndarray:
    """Parse one gzip idx file; any malformed content becomes a DataError naming the file."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # bad gzip header, truncated stream, bad CRC
        raise DataError(f"{path} is not a readable gzip idx file ({error}); re-download or reinstall it") from error
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than the idx header")
    magic = int.from_bytes(data[:4], "big")
    if magic != _MAGIC[kind]:
        raise DataError(f"{path} has idx magic number {magic:#x}, expected {_MAGIC[kind]:#x} for {kind}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise DataError(f"{path} is truncated or corrupt: header says {dims} ({size} bytes), "
                        f"found {len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None, image_size: int = 28,
    classes: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` (``"train"``: 60000, ``"test"``: 10000), resized to ``image_size`` and scaled to
    [-1, 1]: ``(images (N,1,S,S), labels)``.

    Files are read from ``root``, else from $PX_HF_FASHION_MNIST, else from the ``dataset-fashion-mnist`` package.
    ``classes`` keeps only those labels (labels unchanged; names in :data:`FASHION_MNIST_CLASSES`).
    """
    if split not in _FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; choose 'train' or 'test'")
    folder = _find_root(split, root)
    image_file, label_file = (os.path.join(folder, name) for name in _file_names(split))
    raw_images, raw_labels = _read_idx(image_file, "images"), _read_idx(label_file, "labels")
    if len(raw_images) != len(raw_labels):
        raise DataError(f"{image_file} holds {len(raw_images)} images but {label_file} {len(raw_labels)} labels")
    images = torch.from_numpy(raw_images.copy()).unsqueeze(1)  # copy: frombuffer arrays are read-only
    labels = torch.from_numpy(raw_labels.astype(np.int64))
    if classes is not None:
        keep = torch.isin(labels, torch.tensor(classes, dtype=torch.long))
        images, labels = images[keep], labels[keep]
    images = images.float() / 255.0
    if image_size != images.shape[-1]:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images * 2.0 - 1.0, labels

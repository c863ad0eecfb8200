"""The Fashion-MNIST loader reads gzip idx files (synthetic ones here: no Debian package needed)."""

import gzip

import numpy as np
import pytest
import torch

from px_hf import DataError
from px_hf import fashion_mnist
from px_hf.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist

N = 20


def _write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _synthetic(folder, split="train"):
    """N images: image i is filled with the value 10*i (0..190), plus one 255 pixel; label i % 10."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = np.repeat((np.arange(N) * 10).astype(np.uint8)[:, None, None], 28, 1).repeat(28, 2)
    images[:, 0, 0] = 255
    labels = np.arange(N) % 10
    _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 0x803)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x801)
    return images, labels


@pytest.fixture
def folder(tmp_path):
    _synthetic(tmp_path, "train")
    _synthetic(tmp_path, "test")
    return tmp_path


def test_shapes_scaling_and_labels(folder):
    images, labels = _synthetic(folder)
    x, y = load_fashion_mnist("train", root=folder)
    assert x.shape == (N, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.long and y.tolist() == labels.tolist()
    expected = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0 * 2 - 1
    assert torch.allclose(x, expected)
    assert x.min() == -1.0 and x.max() == 1.0  # image 0 is black, with one white pixel
    assert load_fashion_mnist("test", root=str(folder))[0].shape == (N, 1, 28, 28)


def test_classes_keep_labels_unchanged(folder):
    x, y = load_fashion_mnist("train", root=folder, classes=(3, 7))
    assert y.tolist() == [3, 7, 3, 7]
    # Image 13 (label 3) has value 130 everywhere but the corner.
    assert torch.isclose(x[2, 0, 5, 5], torch.tensor(130 / 255 * 2 - 1))


def test_resizing(folder):
    x, _ = load_fashion_mnist("train", root=folder, image_size=32)
    assert x.shape == (N, 1, 32, 32)
    assert x.min() >= -1.0 and x.max() <= 1.0
    # A constant image stays constant away from the bright corner.
    assert torch.allclose(x[5, 0, 10:, 10:], torch.tensor(50 / 255 * 2 - 1))


def test_environment_variable(folder, monkeypatch):
    monkeypatch.setenv("PX_HF_FASHION_MNIST", str(folder))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(folder / "absent"))
    assert load_fashion_mnist("train")[0].shape == (N, 1, 28, 28)


@pytest.mark.parametrize("make", [False, True], ids=["missing", "empty"])
def test_missing_folder_names_package_and_option(tmp_path, monkeypatch, make):
    target = tmp_path / "nothing"
    if make:
        target.mkdir()
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as error:
        load_fashion_mnist("train", root=target)
    assert str(target) in str(error.value) and "root=" in str(error.value)
    # Without root: the environment variable and the package directory are searched, both absent here.
    monkeypatch.setenv("PX_HF_FASHION_MNIST", str(target))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist("test")


def test_truncated_file_is_named(folder):
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # a valid gzip stream with half the pixels
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_fashion_mnist("train", root=folder)
    packed = gzip.compress(raw)
    path.write_bytes(packed[: len(packed) // 2])  # a cut gzip stream
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist("train", root=folder)


def test_wrong_magic_and_bad_split(folder):
    images, _ = _synthetic(folder)
    _write_idx(folder / "train-labels-idx1-ubyte.gz", images, 0x803)  # images where labels belong
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*magic"):
        load_fashion_mnist("train", root=folder)
    with pytest.raises(DataError, match="split"):
        load_fashion_mnist("validation", root=folder)


def test_class_names():
    assert len(FASHION_MNIST_CLASSES) == 10
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and FASHION_MNIST_CLASSES[9] == "Ankle boot"

"""Every supported form of pruning data gives the same class-balanced, seeded pruning set."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from px_hf import PXConfig, PXPruner
from px_hf.data import balanced_indices, build_pruning_set
from px_hf.zoo import small_model


def test_balanced_indices_are_balanced_seeded_and_distinct(digits):
    _, y = digits
    first = balanced_indices(y, 5, seed=0)
    assert len(first) == 50 and len(set(first)) == 50
    assert torch.bincount(y[first], minlength=10).tolist() == [5] * 10
    assert first == balanced_indices(y, 5, seed=0)
    assert first != balanced_indices(y, 5, seed=1)


def test_tensors_and_dataloaders_agree_on_labels_and_balance(digits):
    x, y = digits
    from_tensors = build_pruning_set((x, y), 4, seed=0)
    tuple_loader = DataLoader(TensorDataset(x, y), batch_size=64)
    from_loader = build_pruning_set(tuple_loader, 4, seed=0)
    assert torch.bincount(from_loader.labels).tolist() == [4] * 10
    # Every chosen example really is the one at the recorded index.
    for index, image, label in zip(from_loader.indices, from_loader.inputs, from_loader.labels):
        assert torch.equal(image, x[index]) and int(label) == int(y[index])
    assert from_loader.indices == build_pruning_set(tuple_loader, 4, seed=0).indices
    assert torch.bincount(from_tensors.labels).tolist() == [4] * 10
    assert torch.equal(from_tensors.inputs, x[from_tensors.indices])
    assert from_tensors.indices_sha256 == build_pruning_set((x, y), 4, seed=0).indices_sha256
    assert from_tensors.indices_sha256 != build_pruning_set((x, y), 4, seed=1).indices_sha256


def test_dict_batches_from_a_dataloader(digits):
    x, y = digits
    records = [{"pixel_values": x[i], "labels": y[i]} for i in range(300)]
    loader = DataLoader(records, batch_size=32)
    pruning_set = build_pruning_set(loader, 3, seed=0)
    assert pruning_set.inputs.shape == (30, 1, 32, 32)
    assert torch.bincount(pruning_set.labels).tolist() == [3] * 10


def test_datasets_dataset_with_pil_images_and_a_transform(digits):
    x, y = digits
    images = [Image.fromarray(((x[i, 0].numpy() + 1) * 127.5).astype(np.uint8)) for i in range(200)]
    dataset = Dataset.from_dict({"image": images, "label": y[:200].tolist()})

    def transform(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)[None]

    pruning_set = build_pruning_set(dataset, 2, seed=0, transform=transform)
    assert pruning_set.inputs.shape == (20, 1, 32, 32)
    for index, image in zip(pruning_set.indices, pruning_set.inputs):
        torch.testing.assert_close(image, x[index], atol=1 / 127.5, rtol=0)
    pruner = PXPruner(small_model("vit"), PXConfig(sparsity=0.5, rounds=2, examples_per_class=2))
    pruner.prune(dataset, transform=transform, progress=False)
    assert pruner.summary().density == pytest.approx(0.5, abs=1e-4)


def test_dataset_errors(digits):
    from px_hf import DataError

    x, y = digits
    images = [Image.fromarray(np.zeros((32, 32), dtype=np.uint8)) for _ in range(20)]
    dataset = Dataset.from_dict({"image": images, "label": y[:20].tolist()})
    with pytest.raises(DataError, match="image_processor= .* or transform="):
        build_pruning_set(dataset, None)
    with pytest.raises(DataError, match="no image column 'photo'"):
        build_pruning_set(dataset, None, image_column="photo")
    with pytest.raises(DataError, match="no label column 'target'"):
        build_pruning_set(dataset, None, label_column="target")


def test_batches_are_split_round_robin(digits):
    x, y = digits
    pruning_set = build_pruning_set((x, y), None)
    single = pruning_set.batches(100, torch.device("cpu"))
    shards = [pruning_set.batches(100, torch.device("cpu"), rank=r, world_size=3) for r in range(3)]
    assert sum(len(s) for s in shards) == len(single) == 18
    for rank, shard in enumerate(shards):
        for j, (inputs, labels) in enumerate(shard):
            assert torch.equal(inputs, single[rank + 3 * j][0]) and torch.equal(labels, single[rank + 3 * j][1])

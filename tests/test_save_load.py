"""Saving and restoring pruned models: exact round trips, plain transformers loads, the compact format, and
clear failures for every kind of damaged or mismatched directory."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification
from torch import nn

from px_hf import ConfigError, PXConfig, PXPruner, PrunedModelError
from px_hf.hub.mask_file import file_sha256, save_masks
from px_hf.zoo import small_model


def _pruned(family, digits, sparsity=0.9):
    pruner = PXPruner(small_model(family), PXConfig(sparsity=sparsity, rounds=3, examples_per_class=3))
    pruner.prune(digits, progress=False)
    return pruner


def _assert_identical(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name
        if sa[name].is_floating_point():  # bit-identical, signs of zeros included
            assert torch.equal(torch.signbit(sa[name]), torch.signbit(sb[name])), name


@pytest.mark.parametrize("family", ["vit", "convnext", "resnet"])
def test_round_trip_dense_and_compact(family, digits, tmp_path):
    pruner = _pruned(family, digits)
    dense, compact = tmp_path / "dense", tmp_path / "compact"
    pruner.save_pretrained(dense)
    pruner.save_pretrained(compact, compact=True)

    for directory in (dense, compact):
        loaded = PXPruner.from_pretrained(str(directory))
        _assert_identical(pruner.model, loaded.model)
        assert loaded.masks.keys() == pruner.masks.keys()
        assert all(torch.equal(loaded.masks[n], pruner.masks[n]) for n in pruner.masks)
        assert loaded.config == pruner.config
        assert loaded.summary().density == pruner.summary().density

    # Plain transformers, without px_hf: the zeros are there.
    plain = AutoModelForImageClassification.from_pretrained(dense)
    params = dict(plain.named_parameters())
    for name, mask in pruner.masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0
        assert torch.equal(params[name], dict(pruner.model.named_parameters())[name].detach())

    dense_bytes = os.path.getsize(dense / "model.safetensors")
    compact_bytes = os.path.getsize(compact / "px_compact.safetensors") + os.path.getsize(compact / "px_masks.safetensors")
    assert compact_bytes <= dense_bytes / 4, (compact_bytes, dense_bytes)


def test_saved_files_and_record(digits, tmp_path):
    pruner = _pruned("vit", digits)
    pruner.save_pretrained(tmp_path / "m")
    files = set(os.listdir(tmp_path / "m"))
    assert {"config.json", "model.safetensors", "px_masks.safetensors", "pruning_config.json", "README.md",
            "density_per_layer.png"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]  # no pickle anywhere
    record = json.load(open(tmp_path / "m" / "pruning_config.json"))
    assert record["config"]["scorer"] == "px" and record["rounds_run"] == 3 and record["config"]["schedule"] == "exponential"
    assert record["target_density"] == pytest.approx(0.1) and record["achieved_density"] == pytest.approx(0.1, abs=1e-5)
    assert record["pruning_set"]["examples_per_class"] == 3 and len(record["pruning_set"]["indices_sha256"]) == 64
    assert record["mask_file_sha256"] == file_sha256(tmp_path / "m" / "px_masks.safetensors")
    for key in ("px_hf_version", "torch_version", "transformers_version", "base_model", "architecture"):
        assert key in record
    # Masks take one bit per weight.
    packed = load_file(tmp_path / "m" / "px_masks.safetensors")
    assert sum(t.numel() for t in packed.values()) <= sum(m.numel() for m in pruner.masks.values()) / 8 + len(packed)
    card = open(tmp_path / "m" / "README.md").read()
    assert "library_name: px_hf" in card and "pruning-at-initialization" in card and "| **total** |" in card
    assert open(tmp_path / "m" / "density_per_layer.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_reloaded_model_saves_again_with_its_history(digits, tmp_path):
    pruner = _pruned("resnet", digits)
    pruner.save_pretrained(tmp_path / "a")
    again = PXPruner.from_pretrained(str(tmp_path / "a"))
    again.save_pretrained(tmp_path / "b")
    first = json.load(open(tmp_path / "a" / "pruning_config.json"))
    second = json.load(open(tmp_path / "b" / "pruning_config.json"))
    assert first["pruning_set"] == second["pruning_set"]
    assert first["mask_file_sha256"] == second["mask_file_sha256"]


def test_generic_module_round_trip(digits, tmp_path):
    x, y = digits

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(1024, 32), nn.ReLU(), nn.Linear(32, 10))

    pruner = PXPruner(make(), PXConfig(sparsity=0.8, rounds=2))
    pruner.prune((x, y), progress=False)
    pruner.save_pretrained(tmp_path / "g")
    loaded = PXPruner.from_pretrained(str(tmp_path / "g"), model=make())
    _assert_identical(pruner.model, loaded.model)
    with pytest.raises(PrunedModelError, match="no config.json; pass model="):
        PXPruner.from_pretrained(str(tmp_path / "g"))


def test_config_alone_round_trip_and_newer_keys(tmp_path):
    config = PXConfig(sparsity=0.95, scorer="synflow", include=["mlp"], px_norm="running")
    config.save_pretrained(tmp_path / "c")
    assert PXConfig.from_pretrained(str(tmp_path / "c")) == config
    data = json.load(open(tmp_path / "c" / "px_config.json"))
    data["config"]["future_option"] = 3
    json.dump(data, open(tmp_path / "c" / "px_config.json", "w"))
    with pytest.warns(UserWarning, match="future_option"):
        assert PXConfig.from_pretrained(str(tmp_path / "c")) == config


def test_a_config_saved_next_to_a_model_is_the_one_it_prunes_with(tmp_path):
    # The config-only file has its own name, so it does not make the directory look like a pruned model.
    small_model("resnet").save_pretrained(tmp_path / "m")
    config = PXConfig(sparsity=0.9, scorer="magnitude")
    config.save_pretrained(tmp_path / "m")
    pruner = PXPruner.from_pretrained(str(tmp_path / "m"))
    assert pruner.config == config and not pruner.masks
    assert PXPruner.from_pretrained(str(tmp_path / "m"), PXConfig(sparsity=0.5)).config.sparsity == 0.5


def test_a_record_keeps_each_fact_once_and_fields_it_does_not_know(saved):
    _, saved = saved
    record = json.load(open(saved / "pruning_config.json"))
    assert record["format_version"] == 1
    assert not {"scorer", "schedule", "scope", "rounds", "mask_sha256"} & set(record)  # only inside config
    _rewrite_record(saved, written_by_a_newer_px_hf={"x": 1})
    restored = PXPruner.from_pretrained(str(saved))
    assert restored.pruning_record().extra == {"written_by_a_newer_px_hf": {"x": 1}}
    with pytest.raises(ConfigError, match="annotate cannot set config"):
        restored.annotate(config={})


# ------------------------------------------------------------------------------------------------ failures
@pytest.fixture
def saved(digits, tmp_path):
    pruner = _pruned("vit", digits)
    directory = tmp_path / "saved"
    pruner.save_pretrained(directory)
    return pruner, directory


def _rewrite_record(directory, **changes):
    path = directory / "pruning_config.json"
    record = json.load(open(path))
    record.update(changes)
    json.dump(record, open(path, "w"))


def _truncate(path, keep: float) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


def test_missing_mask_file(saved):
    _, directory = saved
    os.remove(directory / "px_masks.safetensors")
    with pytest.raises(PrunedModelError, match="no px_masks.safetensors"):
        PXPruner.from_pretrained(str(directory))


def test_corrupt_mask_file(saved):
    _, directory = saved
    path = directory / "px_masks.safetensors"
    _truncate(path, keep=0.5)
    _rewrite_record(directory, mask_file_sha256=file_sha256(path))  # the hash alone would catch it; check the parser
    with pytest.raises(PrunedModelError, match="px_masks.safetensors is corrupt or truncated"):
        PXPruner.from_pretrained(str(directory))


def test_mask_hash_mismatch(saved):
    pruner, directory = saved
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    name = next(iter(masks))
    masks[name].reshape(-1)[0] = ~masks[name].reshape(-1)[0]
    save_masks(masks, str(directory / "px_masks.safetensors"))
    with pytest.raises(PrunedModelError, match="sha256 .* but pruning_config.json records"):
        PXPruner.from_pretrained(str(directory))


def test_truncated_weights(saved):
    _, directory = saved
    _truncate(directory / "model.safetensors", keep=0.9)
    with pytest.raises(PrunedModelError, match="cannot load the weights|corrupt or truncated"):
        PXPruner.from_pretrained(str(directory))


def test_weights_missing_a_tensor(saved):
    _, directory = saved
    path = directory / "model.safetensors"
    tensors = load_file(path)
    tensors.pop("classifier.weight")
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(PrunedModelError, match="lack or mis-shape .*classifier.weight"):
        PXPruner.from_pretrained(str(directory))


def test_mask_shape_does_not_fit_the_model(saved):
    pruner, directory = saved
    masks = dict(pruner.masks)
    masks["classifier.weight"] = torch.ones(5, 64, dtype=torch.bool)
    digest = save_masks(masks, str(directory / "px_masks.safetensors"))
    _rewrite_record(directory, mask_file_sha256=digest)
    with pytest.raises(PrunedModelError, match=r"classifier.weight has shape \(5, 64\) but .* shape \(10, 64\)"):
        PXPruner.from_pretrained(str(directory))


def test_pruning_config_for_another_architecture(saved):
    _, directory = saved
    _rewrite_record(directory, architecture="ResNetForImageClassification")
    with pytest.raises(PrunedModelError, match="written for a ResNetForImageClassification, but config.json "
                                               "describes a ViTForImageClassification"):
        PXPruner.from_pretrained(str(directory))


def test_dense_weights_behind_a_pruning_config(saved):
    """A dense model never comes back labelled as pruned."""
    _, directory = saved
    small_model("vit", seed=0).save_pretrained(directory)  # replaces model.safetensors with unpruned weights
    with pytest.raises(PrunedModelError, match="non-zero weights at pruned positions"):
        PXPruner.from_pretrained(str(directory))


def test_unreadable_pruning_config(saved):
    _, directory = saved
    open(directory / "pruning_config.json", "w").write("{not json")
    with pytest.raises(PrunedModelError, match="pruning_config.json is not a readable JSON file"):
        PXPruner.from_pretrained(str(directory))


def test_interrupted_save_leaves_the_previous_directory(saved, monkeypatch):
    pruner, directory = saved
    before = sorted(os.listdir(directory))

    def fail(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption while writing the mask file")

    monkeypatch.setattr("px_hf.hub.save.save_masks", fail)
    with pytest.raises(KeyboardInterrupt):
        pruner.save_pretrained(directory)
    with pytest.raises(KeyboardInterrupt):
        pruner.save_pretrained(directory.parent / "fresh")
    assert sorted(os.listdir(directory)) == before
    assert not (directory.parent / "fresh").exists()
    assert not [p for p in os.listdir(directory.parent) if p.startswith(".px_hf-")]
    PXPruner.from_pretrained(str(directory))  # still loads


def test_unpruned_directory_loads_for_pruning(tmp_path):
    small_model("convnext").save_pretrained(tmp_path / "base")
    pruner = PXPruner.from_pretrained(str(tmp_path / "base"), PXConfig(sparsity=0.5, rounds=1))
    assert pruner.masks == {} and pruner.config.sparsity == 0.5

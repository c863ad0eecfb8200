"""The bad-input sweep: what a new user gets wrong, run through the real `px-hf` entry point and the API. Every
case ends in a clear px_hf error (exit 2 on the command line) or in correct behaviour; no file px_hf did not
write is ever deleted, and no reported density disagrees with the weights."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from px_hf import (
    ConfigError, DataError, PrunedModelError, PXConfig, PXPruner,
)
from px_hf.digits import load_digits
from px_hf.zoo import small_model

PX_HF = os.path.join(os.path.dirname(sys.executable), "px-hf")
FAST = ["--scorer", "random", "--rounds", "1", "--no-progress"]


def px_hf(*args, cwd, expect=0):
    result = subprocess.run([PX_HF, "prune", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    if expect == 2:
        assert "Traceback" not in result.stderr, result.stderr
    return result


def kept_and_nonzero(directory):
    """(kept weights by the masks, non-zero prunable weights, recorded density) of a saved model."""
    pruner = PXPruner.from_pretrained(str(directory))
    params = dict(pruner.model.named_parameters())
    kept = sum(int(m.sum()) for m in pruner.masks.values())
    nonzero = sum(int(torch.count_nonzero(params[n])) for n in pruner.masks)
    record = json.load(open(os.path.join(directory, "pruning_config.json")))
    return kept, nonzero, record["achieved_density"] * record["prunable_params"]


# ------------------------------------------------------------------------------------ the output directory
def test_a_file_as_output_dir_is_refused_and_kept(tmp_path):
    (tmp_path / "f.txt").write_text("notes")
    result = px_hf(*FAST, "--output-dir", "f.txt", cwd=tmp_path, expect=2)
    assert "'f.txt' exists and is not a directory" in result.stderr
    assert (tmp_path / "f.txt").read_text() == "notes"


def test_a_directory_of_other_files_is_refused_before_pruning(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("\\begin{document}")
    result = px_hf("--output-dir", "thesis", cwd=tmp_path, expect=2)  # PX, 100 rounds: refused before them
    assert "thesis.tex" in result.stderr and "never deletes other files" in result.stderr
    assert "px pruning" not in result.stderr and "Pruning" not in result.stdout
    assert os.listdir(tmp_path / "thesis") == ["thesis.tex"]


def test_the_working_directory_is_refused_when_it_holds_files(tmp_path):
    (tmp_path / "notes.md").write_text("keep me")
    result = px_hf(*FAST, "--output-dir", ".", cwd=tmp_path, expect=2)
    assert "notes.md" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["notes.md"]


def test_an_empty_working_directory_is_written_in_place(tmp_path):
    px_hf(*FAST, "--sparsity", "0.5", "--output-dir", ".", cwd=tmp_path)
    assert (tmp_path / "pruning_config.json").is_file() and (tmp_path / "config.json").is_file()
    PXPruner.from_pretrained(str(tmp_path))


def test_a_saved_model_is_replaced_only_with_overwrite(tmp_path):
    px_hf(*FAST, "--sparsity", "0.5", "--output-dir", "out", cwd=tmp_path)
    before = (tmp_path / "out" / "px_masks.safetensors").read_bytes()
    result = px_hf(*FAST, "--sparsity", "0.8", "--output-dir", "out", cwd=tmp_path, expect=2)
    assert "already holds a saved model; pass --overwrite" in result.stderr
    assert (tmp_path / "out" / "px_masks.safetensors").read_bytes() == before
    px_hf(*FAST, "--sparsity", "0.8", "--output-dir", "out", "--overwrite", cwd=tmp_path)
    assert json.load(open(tmp_path / "out" / "pruning_config.json"))["config"]["sparsity"] == 0.8
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".px_hf-")]


def test_overwrite_never_deletes_foreign_files(tmp_path):
    px_hf(*FAST, "--sparsity", "0.5", "--output-dir", "out", cwd=tmp_path)
    (tmp_path / "out" / "results.csv").write_text("mine")
    result = px_hf(*FAST, "--output-dir", "out", "--overwrite", cwd=tmp_path, expect=2)
    assert "results.csv" in result.stderr
    assert (tmp_path / "out" / "results.csv").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; the /proc case below covers root")
def test_an_unwritable_parent_is_found_before_pruning(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        result = px_hf("--output-dir", str(locked / "out"), cwd=tmp_path, expect=2)
    finally:
        locked.chmod(stat.S_IRWXU)
    assert f"{locked} is not writable" in result.stderr and ".px_hf" not in result.stderr


def test_a_place_nobody_can_write_is_found_before_pruning(tmp_path):
    result = px_hf("--output-dir", "/proc/px_hf/out", cwd=tmp_path, expect=2)
    assert "cannot write --output-dir '/proc/px_hf/out'" in result.stderr and ".px_hf" not in result.stderr
    assert "Pruning" not in result.stdout


# ------------------------------------------------------------------------------------ what is saved and loaded
def test_compact_save_from_the_command_line_loads(tmp_path):
    px_hf(*FAST, "--sparsity", "0.9", "--compact", "--output-dir", "c", cwd=tmp_path)
    assert json.load(open(tmp_path / "c" / "config.json"))["architectures"] == ["ViTForImageClassification"]
    kept, nonzero, recorded = kept_and_nonzero(tmp_path / "c")
    assert kept == round(recorded) and nonzero <= kept


def test_pruning_a_pruned_model_starts_from_its_masks(tmp_path):
    px_hf("--scorer", "magnitude", "--sparsity", "0.9", "--output-dir", "p90", "--no-progress", cwd=tmp_path)
    first = PXPruner.from_pretrained(str(tmp_path / "p90")).masks
    result = px_hf("--model", "p90", "--sparsity", "0.5", "--output-dir", "p50", "--no-progress", cwd=tmp_path,
                   expect=2)
    assert "already pruned to 89.99" in result.stderr and "pruned weights stay pruned" in result.stderr
    result = px_hf("--model", "p90", "--scorer", "px", "--rounds", "5", "--sparsity", "0.95", "--output-dir", "p95",
                   "--no-progress", cwd=tmp_path)
    assert "from its masks at 10.00% density" in result.stdout
    assert "achieved density: 0.0500" in result.stdout
    second = PXPruner.from_pretrained(str(tmp_path / "p95"))
    assert all(not (second.masks[n] & ~first[n]).any() for n in first)  # a pruned weight stays pruned
    kept, nonzero, recorded = kept_and_nonzero(tmp_path / "p95")
    assert kept == round(recorded) and nonzero == kept
    record = json.load(open(tmp_path / "p95" / "pruning_config.json"))
    assert [p["config"]["sparsity"] for p in record["previous_pruning"]] == [0.9]
    assert record["previous_pruning"][0]["config"]["scorer"] == "magnitude"


def test_pruning_twice_through_the_api_keeps_the_first_masks(digits, tmp_path):
    pruner = PXPruner(small_model("resnet"), PXConfig(sparsity=0.9, rounds=3))
    first = {n: m.clone() for n, m in pruner.prune(digits, progress=False).items()}
    pruner.config = PXConfig(sparsity=0.5, rounds=3)
    with pytest.raises(ConfigError, match="already pruned to 90.00"):
        pruner.prune(digits, progress=False)
    assert all(torch.equal(pruner.masks[n], first[n]) for n in first)  # a refused call changes nothing
    pruner.config = PXConfig(sparsity=0.97, rounds=3, scorer="snip")
    pruner.prune(digits, progress=False)
    params = dict(pruner.model.named_parameters())
    assert all(not (pruner.masks[n] & ~first[n]).any() for n in first)
    assert pruner.summary().density == pytest.approx(0.03, abs=1e-4)
    assert sum(int(torch.count_nonzero(params[n])) for n in first) == pruner.summary().kept
    pruner.save_pretrained(tmp_path / "twice")
    loaded = PXPruner.from_pretrained(str(tmp_path / "twice"))
    assert loaded.summary().density == pruner.summary().density and loaded.masks_config.sparsity == 0.97


def test_a_sanity_check_on_a_pruned_model_is_refused(digits):
    pruner = PXPruner(small_model("vit"), PXConfig(sparsity=0.5, rounds=1))
    pruner.prune(digits, progress=False)
    pruner.config = PXConfig(sparsity=0.9, rounds=1, sanity_check="shuffle")
    with pytest.raises(ConfigError, match="needs an unpruned model"):
        pruner.prune(digits, progress=False)


@pytest.fixture
def saved(digits, tmp_path):
    pruner = PXPruner(small_model("vit"), PXConfig(sparsity=0.9, rounds=2))
    pruner.prune(digits, progress=False)
    pruner.save_pretrained(tmp_path / "saved")
    return tmp_path / "saved"


def _edit_record(directory, edit):
    path = directory / "pruning_config.json"
    record = json.load(open(path))
    edit(record)
    json.dump(record, open(path, "w"))


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["config"].update(sparsity=0.5), "config.sparsity 0.5 but target_density 0.1"),
    (lambda r: (r["config"].update(sparsity=0.5), r.update(target_density=0.5)), "not the configured density"),
    (lambda r: r.update(achieved_density=0.5), "achieved_density 0.5"),
    (lambda r: r.update(kept_params=10), "records 10 of"),
])
def test_an_edited_record_that_misreports_the_masks_is_refused(saved, edit, message):
    _edit_record(saved, edit)
    with pytest.raises(PrunedModelError, match=message):
        PXPruner.from_pretrained(str(saved))


def test_an_empty_record_names_what_is_missing(saved):
    (saved / "pruning_config.json").write_text("{}")
    with pytest.raises(PrunedModelError, match="pruning_config.json lacks config, architecture, mask_file_sha256"):
        PXPruner.from_pretrained(str(saved))


# ------------------------------------------------------------------------------------ models and data
def test_an_empty_model_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    result = px_hf("--model", "empty", cwd=tmp_path, expect=2)
    assert "'empty' holds no model (no config.json, the directory is empty)" in result.stderr


def test_a_file_or_an_unknown_name_as_model(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"not a model")
    assert "--model 'weights.bin' is a file" in px_hf("--model", "weights.bin", cwd=tmp_path, expect=2).stderr
    result = px_hf("--model", "someone/vit-tiny", cwd=tmp_path, expect=2)
    assert "neither a built-in family (vit, convnext, resnet) nor a local directory, and the Hub is offline" in (
        result.stderr)


@pytest.mark.parametrize("size,message", [
    ("0", "argument --image-size: must be a positive integer, got 0"),
    ("3", "image_size 3 is too small for this vit: its downsampling needs at least 4x4 pixels"),
])
def test_image_sizes_the_model_cannot_take(tmp_path, size, message):
    assert message in px_hf("--image-size", size, cwd=tmp_path, expect=2).stderr


def _image_folder(root, classes, per_class=6):
    x, y = load_digits(image_size=16)
    count = {c: 0 for c in classes}
    for i in range(len(y)):
        c = int(y[i])
        if c in count and count[c] < per_class:
            (root / str(c)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(((x[i, 0].numpy() + 1) * 127.5).astype(np.uint8)).save(root / str(c) / f"{i}.png")
            count[c] += 1
    return root


def test_an_image_folder_with_one_class(tmp_path):
    _image_folder(tmp_path / "one", [3])
    result = px_hf("--data", "one", cwd=tmp_path, expect=2)
    assert "has 1 class sub-directory ['3']" in result.stderr and "--examples-per-class 0" in result.stderr


def test_a_corrupt_image_is_named(tmp_path):
    _image_folder(tmp_path / "two", [1, 2])
    (tmp_path / "two" / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    result = px_hf(*FAST, "--data", "two", "--examples-per-class", "0", cwd=tmp_path, expect=2)
    assert "cannot read the image" in result.stderr and "two/1/broken.png" in result.stderr


def test_a_folder_without_images(tmp_path):
    (tmp_path / "docs" / "a").mkdir(parents=True)
    (tmp_path / "docs" / "a" / "readme.txt").write_text("no images here")
    assert "no image files" in px_hf("--data", "docs", cwd=tmp_path, expect=2).stderr


def test_a_missing_data_folder(tmp_path):
    result = px_hf("--data", "nowhere", cwd=tmp_path, expect=2)
    assert "--data 'nowhere': no such folder" in result.stderr


def test_push_to_hub_while_offline_is_refused_before_pruning(tmp_path):
    result = px_hf("--push-to-hub", "me/model", "--output-dir", "o", cwd=tmp_path, expect=2)
    assert "the Hub is offline" in result.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_pixels(digits, value):
    x, y = digits
    x = x.clone()
    x[5, 0, 3, 3] = value
    with pytest.raises(DataError, match="1 pruning example.*NaN or infinite.*example 5"):
        PXPruner(small_model("vit"), PXConfig(examples_per_class=None)).prune((x[:20], y[:20]), progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_scored_in_float32(digits, dtype, tmp_path):
    model = small_model("vit").to(dtype)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = PXPruner(model, PXConfig(sparsity=0.9, rounds=3))
    masks = pruner.prune(digits, progress=False)
    params = dict(model.named_parameters())
    assert {p.dtype for p in params.values()} == {dtype}
    assert pruner.summary().density == pytest.approx(0.1, abs=1e-4)
    for name, mask in masks.items():
        assert torch.equal(params[name][mask], before[name][mask]) and not params[name][~mask].any()
    pruner.save_pretrained(tmp_path / "half")
    restored = PXPruner.from_pretrained(str(tmp_path / "half"))
    assert all(torch.equal(restored.masks[n], masks[n]) for n in masks)


def test_an_unknown_model_family_or_size_is_a_model_error():
    from px_hf import ModelError

    with pytest.raises(ModelError, match="unknown model family 'vgg'"):
        small_model("vgg")
    with pytest.raises(ModelError, match="image_size must be a positive number"):
        small_model("resnet", image_size=0)

"""The main job: ``px-hf prune``."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageClassification

from px_hf.cli import main
from px_hf.hub.mask_file import load_masks


def _check_saved(directory, density):
    record = json.load(open(os.path.join(directory, "pruning_config.json")))
    assert record["achieved_density"] == pytest.approx(density, abs=1e-4)
    masks = load_masks(os.path.join(directory, "px_masks.safetensors"))
    model = AutoModelForImageClassification.from_pretrained(directory)
    params = dict(model.named_parameters())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == record["kept_params"]
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0)
        assert torch.count_nonzero(params[name][mask]) == int(mask.sum())
    return record


@pytest.mark.parametrize("family", ["resnet", "convnext"])
def test_prune_command_with_options(tmp_path, capsys, family):
    out = tmp_path / "pruned"
    code = main(["prune", "--model", family, "--rounds", "3", "--sparsity", "0.9", "--output-dir", str(out),
                 "--no-progress", "--examples-per-class", "2"])
    assert code == 0
    text = capsys.readouterr().out
    assert re.search(r"achieved density: 0\.1000\d\d \(target 0\.100000\)", text)
    assert re.search(r"time: \d+\.\d+ s for 3 round", text)
    assert "total" in text
    record = _check_saved(out, 0.1)
    assert record["config"]["scorer"] == "px" and record["pruning_set"]["examples"] == 20


def test_prune_command_on_an_image_folder(tmp_path, capsys, image_folder):
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "resnet", "--data", str(image_folder), "--examples-per-class", "3",
                 "--rounds", "2", "--sparsity", "0.8", "--output-dir", str(out), "--no-progress"]) == 0
    assert f"on {image_folder}" in capsys.readouterr().out
    record = _check_saved(out, 0.2)
    assert record["pruning_set"]["examples"] == 30 and record["pruning_set"]["source"] == str(image_folder)


def test_prune_command_reports_bad_input(tmp_path, capsys):
    code = main(["prune", "--sparsity", "1.2", "--output-dir", str(tmp_path / "x")])
    assert code == 2
    assert "px-hf: error: sparsity must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_prune_command_from_a_saved_directory(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["prune", "--model", "vit", "--rounds", "2", "--sparsity", "0.5", "--output-dir", str(first),
                 "--no-progress"]) == 0
    second = tmp_path / "second"
    assert main(["prune", "--model", str(first), "--scorer", "magnitude", "--sparsity", "0.8",
                 "--output-dir", str(second), "--no-progress"]) == 0
    _check_saved(second, 0.2)


@pytest.mark.slow
def test_main_job_with_no_arguments(tmp_path):
    """The README's main job: `px-hf prune` alone prunes a small ViT on digits to 98% sparsity with PX."""
    script = os.path.join(os.path.dirname(sys.executable), "px-hf")
    result = subprocess.run([script, "prune"], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            stdin=subprocess.DEVNULL, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr
    assert "ViTForImageClassification (vit) with px to 98.00% sparsity in 100 round(s)" in result.stdout
    assert "vit.layers.0.attention.q_proj.weight" in result.stdout
    assert "achieved density: 0.0200" in result.stdout
    assert re.search(r"time: \d+\.\d+ s for 100 round", result.stdout)
    _check_saved(tmp_path / "px-hf-output", 0.02)
    # The README's sample of this output: timings and the output path differ between runs, every other line shown
    # must be printed as shown.
    readme = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")).read()
    sample = re.search(r"The main job prints.*?\n```\n(.*?)```", readme, flags=re.S).group(1).splitlines()
    fixed = [line for line in sample if line != "..." and not line.startswith(("time:", "saved to"))]
    assert len(fixed) >= 8
    printed = result.stdout.splitlines()
    assert not [line for line in fixed if line not in printed], "the README's sample output is stale"


def test_prune_command_on_fashion_mnist(tmp_path, capsys, monkeypatch):
    """`--data fashion-mnist` reads the idx files (synthetic here: the tests need no Debian package)."""
    from test_fashion_mnist import _synthetic

    monkeypatch.setenv("PX_HF_FASHION_MNIST", str(tmp_path))
    _synthetic(tmp_path, "train")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "resnet", "--data", "fashion-mnist", "--examples-per-class", "2",
                 "--rounds", "2", "--sparsity", "0.8", "--output-dir", str(out), "--no-progress"]) == 0
    assert "on Fashion-MNIST" in capsys.readouterr().out
    record = _check_saved(out, 0.2)
    assert record["pruning_set"]["examples"] == 20


def test_prune_command_without_fashion_mnist_names_the_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PX_HF_FASHION_MNIST", str(tmp_path))
    monkeypatch.setattr("px_hf.fashion_mnist.DEBIAN_DIR", str(tmp_path / "nowhere"))
    assert main(["prune", "--data", "fashion-mnist", "--output-dir", str(tmp_path / "o")]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


@pytest.mark.parametrize("names", [["cat", "dog", "bird"], None])
def test_a_datasets_name_gives_the_built_model_its_classes(tmp_path, capsys, monkeypatch, names):
    """A datasets name sets the head of a built-in family to the dataset's classes (ClassLabel names, or ids up to
    the largest label). The Hub is unreachable here, so ``load_dataset`` hands back a Dataset made in memory."""
    import datasets
    import numpy as np

    labels = [i % 3 for i in range(12)]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=names) if names else datasets.Value("int64")})
    images = [np.full((8, 8), 40 * label + i, dtype=np.uint8) for i, label in enumerate(labels)]
    made = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: asked.append((a, k)) or made)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "resnet", "--data", "someone/shapes", "--examples-per-class", "2",
                 "--rounds", "1", "--sparsity", "0.5", "--output-dir", str(out), "--no-progress"]) == 0
    assert asked == [(("someone/shapes",), {"split": "train"})]
    config = json.load(open(out / "config.json"))
    assert list(config["id2label"].values()) == (names or ["0", "1", "2"])
    assert _check_saved(out, 0.5)["pruning_set"]["examples"] == 6

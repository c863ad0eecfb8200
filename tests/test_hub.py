"""push_to_hub and from_pretrained(repo_id) end to end, through the real huggingface_hub and transformers clients,
against tests/hub_server.py: a local protocol stand-in for the Hub on 127.0.0.1 (no LFS/xet large-file path)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from hub_server import HubServer

CLIENT = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForImageClassification
    from px_hf import PXConfig, PXPruner
    from px_hf.digits import load_digits
    from px_hf.zoo import small_model

    out = {}
    pruner = PXPruner(small_model("vit"), PXConfig(sparsity=0.9, rounds=3, examples_per_class=3))
    pruner.prune(load_digits(), progress=False, source="digits")
    info = pruner.push_to_hub("px-tests/vit-px", private=True, token="secret", commit_message="first")
    out["commit"] = info.oid
    # Before anything is cached locally (the client falls back to its cache on some errors).
    try:
        PXPruner.from_pretrained("px-tests/vit-px")
        out["private_without_token"] = "loaded"
    except Exception as err:
        out["private_without_token"] = f"{type(err).__name__}: {err}"
    restored = PXPruner.from_pretrained("px-tests/vit-px", token="secret")
    a, b = pruner.model.state_dict(), restored.model.state_dict()
    out["bit_exact"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out["masks_equal"] = all(torch.equal(pruner.masks[n], restored.masks[n]) for n in pruner.masks)
    out["pruning_set_source"] = restored.pruning_record().pruning_set["source"]
    plain = AutoModelForImageClassification.from_pretrained("px-tests/vit-px", token="secret")
    params = dict(plain.named_parameters())
    out["plain_zeros"] = all(int(torch.count_nonzero(params[n][~m])) == 0 for n, m in pruner.masks.items())

    # A second push (compact weights this time) is one more commit; a pinned revision still gives the first.
    pruner.push_to_hub("px-tests/vit-px", token="secret", compact=True, commit_message="compact")
    compact = PXPruner.from_pretrained("px-tests/vit-px", token="secret")
    out["compact_bit_exact"] = all(torch.equal(a[k], compact.model.state_dict()[k]) for k in a)
    pinned = PXPruner.from_pretrained("px-tests/vit-px", token="secret", revision=out["commit"])
    out["pinned_format"] = pinned.pruning_record().weights_format

    config = PXConfig(sparsity=0.95, scorer="snip")
    config.push_to_hub("px-tests/config-only", token="secret")
    out["config_round_trip"] = PXConfig.from_pretrained("px-tests/config-only", token="secret") == config

    # A Hub model without a pruning config loads for pruning.
    small_model("resnet").push_to_hub("px-tests/resnet-base", token="secret")
    base = PXPruner.from_pretrained("px-tests/resnet-base", PXConfig(sparsity=0.5, rounds=1), token="secret")
    out["base_loaded_unpruned"] = base.masks == {} and type(base.model).__name__
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.mark.slow
def test_push_and_pull_through_a_local_hub(hub, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_DISABLE_TELEMETRY="1", DISABLE_SAFETENSORS_CONVERSION="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    result = subprocess.run([sys.executable, "-c", CLIENT], env=env, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["bit_exact"] and out["masks_equal"] and out["plain_zeros"] and out["compact_bit_exact"]
    assert out["pruning_set_source"] == "digits"
    # A private repo without a token: px_hf's HubError, naming the repo and the Hub's answer.
    assert out["private_without_token"].startswith("HubError: fetching 'px-tests/vit-px' from the Hub failed: "
                                                    "RepositoryNotFoundError"), out["private_without_token"]
    assert out["pinned_format"] == "dense"
    assert out["config_round_trip"]
    assert out["base_loaded_unpruned"] == "ResNetForImageClassification"

    repo = hub.repos["px-tests/vit-px"]
    assert repo["private"] is True
    assert [c["message"] for c in repo["commits"]] == ["initial commit", "first", "compact"]  # one commit a push
    first, second = (set(c["files"]) for c in repo["commits"][1:])
    assert {"config.json", "model.safetensors", "px_masks.safetensors", "pruning_config.json", "README.md",
            "density_per_layer.png"} <= first
    assert "px_compact.safetensors" in second
    commits = [r for r in hub.requests if r[0] == "POST" and "/commit/" in r[1] and "vit-px" in r[1]]
    assert len(commits) == 2
    card = repo["commits"][1]["files"]["README.md"].decode()
    assert "library_name: px_hf" in card and 'from_pretrained("px-tests/vit-px")' in card


@pytest.mark.slow
def test_finetune_recipe_pushes_the_model_with_its_masks(hub, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_DISABLE_TELEMETRY="1", DISABLE_SAFETENSORS_CONVERSION="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    result = subprocess.run(
        [sys.executable, os.path.join(root, "recipes", "finetune.py"), "--model_name_or_path", "resnet",
         "--dataset_name", "digits", "--px_sparsity", "0.8", "--px_rounds", "3", "--output_dir",
         str(tmp_path / "out"), "--do_train", "--do_eval", "--max_steps", "4", "--use_cpu", "--report_to", "none",
         "--push_to_hub", "--hub_model_id", "px-tests/resnet-ft", "--hub_token", "secret"],
        env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.repos["px-tests/resnet-ft"]["commits"][-1]["files"]
    assert {"model.safetensors", "px_masks.safetensors", "pruning_config.json", "README.md"} <= set(files)
    record = json.loads(files["pruning_config.json"])
    assert "eval_accuracy" in record["finetuning"]["metrics"] and record["pruning_set"]["source"] == "digits"

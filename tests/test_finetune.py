"""recipes/finetune.py end to end: sparsity kept exactly through training, checkpoints and resuming, under
`accelerate launch` with two processes; new label sets; and clear errors for bad input."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from px_hf import PXConfig, PXError, PXPruner
from px_hf.digits import load_digits
from px_hf.zoo import small_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "finetune.py")
BIN = os.path.dirname(sys.executable)
TRAIN = ["--use_cpu", "--report_to", "none", "--per_device_train_batch_size", "32", "--learning_rate", "3e-3",
         "--weight_decay", "0.05", "--logging_steps", "50", "--disable_tqdm", "true", "--seed", "0"]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(args, launcher=(sys.executable,), expect=0):
    result = subprocess.run([*launcher, RECIPE, *args], env=_env(), capture_output=True, text=True, timeout=1200,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _assert_pruned_everywhere(directory, masks):
    """The final model and every checkpoint: weights exactly 0 where pruned, masks and hash intact."""
    places = [directory] + sorted(os.path.join(directory, d) for d in os.listdir(directory)
                                  if d.startswith("checkpoint-"))
    assert len(places) >= 2
    for place in places:
        restored = PXPruner.from_pretrained(place)  # verifies the mask hash and the zeros
        assert all(torch.equal(restored.masks[n], masks[n]) for n in masks), place
        weights = dict(restored.model.named_parameters())
        for name, mask in masks.items():
            assert torch.count_nonzero(weights[name][~mask]) == 0, (place, name)
    return places


@pytest.mark.slow
def test_two_processes_keep_the_sparsity_and_learn(tmp_path):
    out = tmp_path / "out"
    launcher = [os.path.join(BIN, "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
                "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", _port()]
    result = _run(["--model_name_or_path", "vit", "--dataset_name", "digits", "--px_sparsity", "0.9",
                   "--px_rounds", "10", "--output_dir", str(out), "--do_train", "--do_eval",
                   "--num_train_epochs", "6", "--eval_strategy", "epoch", "--save_strategy", "epoch",
                   "--gradient_accumulation_steps", "2", *TRAIN], launcher=[*launcher])
    results = json.load(open(out / "all_results.json"))
    assert results["eval_accuracy"] > 0.3, results  # chance is 0.1
    record = json.load(open(out / "pruning_config.json"))
    assert record["finetuning"]["metrics"]["eval_accuracy"] == pytest.approx(results["eval_accuracy"])
    masks = PXPruner.from_pretrained(str(out)).masks
    assert sum(int(m.sum()) for m in masks.values()) == record["kept_params"]
    _assert_pruned_everywhere(out, masks)
    assert "| eval_accuracy |" in open(out / "README.md").read()
    assert result.stdout.count("eval_accuracy") >= 1


def _weights(directory):
    """Every tensor of a saved model, under the loaded model's names."""
    return {k: v.clone() for k, v in PXPruner.from_pretrained(str(directory)).model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "convnext", "resnet"])
def test_resuming_continues_exactly_where_the_checkpoint_left_off(tmp_path, family):
    """Six steps in one run, and three steps resumed from the run's checkpoint-3, give the same model bit for bit
    (restoring a tensor wrongly, or training from the initial weights, would not)."""
    x, y = load_digits()
    pruner = PXPruner(small_model(family), PXConfig(sparsity=0.9, rounds=3))
    pruner.prune((x, y), progress=False)
    pruner.save_pretrained(tmp_path / "pruned")
    common = ["--model_name_or_path", str(tmp_path / "pruned"), "--dataset_name", "digits", "--do_train",
              "--save_steps", "3", "--max_steps", "6", *TRAIN]
    _run([*common, "--output_dir", str(tmp_path / "straight")])
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    _run([*common, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", str(checkpoint)])
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert any(not torch.equal(_weights(checkpoint)[k], v) for k, v in straight.items())  # steps 4-6 changed it
    assert resumed.keys() == straight.keys()
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
    _assert_pruned_everywhere(tmp_path / "resumed", pruner.masks)


@pytest.mark.parametrize("family", ["vit", "convnext", "resnet"])
def test_the_trainer_restores_every_tensor_of_a_checkpoint(tmp_path, family):
    """PXTrainer's checkpoint loading, tensor by tensor; transformers 5 writes ViT under legacy key names, which
    the stock Trainer's load_state_dict skips."""
    from safetensors.torch import load_file
    from transformers import TrainingArguments

    from px_hf.training import PXTrainer

    trained = small_model(family, seed=1)
    trained.save_pretrained(tmp_path / "ckpt")
    legacy = not set(load_file(tmp_path / "ckpt" / "model.safetensors")) <= set(trained.state_dict())
    assert legacy == (family == "vit")
    model = small_model(family, seed=2)
    trainer = PXTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True,
                                                            report_to="none"))
    trainer._load_from_checkpoint(str(tmp_path / "ckpt"))
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_loading_a_checkpoint_of_another_model_is_refused(tmp_path):
    from px_hf.training import load_checkpoint_weights

    small_model("vit").save_pretrained(tmp_path / "ckpt")
    with pytest.raises(PXError, match="holds a ViTForImageClassification, but the model is a ResNet"):
        load_checkpoint_weights(small_model("resnet"), str(tmp_path / "ckpt"))


@pytest.mark.slow
def test_resuming_with_other_pruning_options_or_model_is_refused(tmp_path):
    common = ["--dataset_name", "digits", "--output_dir", str(tmp_path / "out"), "--do_train", "--save_steps", "2",
              *TRAIN]
    _run(["--model_name_or_path", "vit", "--px_sparsity", "0.9", "--px_rounds", "2", "--max_steps", "2", *common])
    checkpoint = str(tmp_path / "out" / "checkpoint-2")
    result = _run(["--model_name_or_path", "vit", "--px_sparsity", "0.5", "--px_scorer", "random", "--max_steps",
                   "4", "--resume_from_checkpoint", checkpoint, *common], expect=2)
    assert "pruned with other options (sparsity: asked 0.5, checkpoint 0.9; scorer: asked random" in result.stderr
    result = _run(["--model_name_or_path", "resnet", "--px_sparsity", "0.9", "--px_rounds", "2", "--max_steps", "4",
                   "--resume_from_checkpoint", checkpoint, *common], expect=2)
    assert "holds a ViTForImageClassification, but this run trains a ResNetForImageClassification" in result.stderr
    # The same options resume with the checkpoint's masks, without pruning again.
    _run(["--model_name_or_path", "vit", "--px_sparsity", "0.9", "--px_rounds", "2", "--max_steps", "4",
          "--resume_from_checkpoint", checkpoint, *common])
    masks = PXPruner.from_pretrained(checkpoint).masks
    places = _assert_pruned_everywhere(tmp_path / "out", masks)
    assert any(str(p).endswith("checkpoint-4") for p in places)


@pytest.mark.slow
def test_transfer_to_a_new_label_set_with_a_dense_head(tmp_path):
    """The paper's pre-trained scenario in small: train dense on digits 0-4, prune with PX, transfer to others."""
    _run(["--model_name_or_path", "resnet", "--dataset_name", "digits", "--digits_classes", "0,1,2,3,4",
          "--px_dense", "--output_dir", str(tmp_path / "dense"), "--do_train", "--num_train_epochs", "2", *TRAIN])
    pruner = PXPruner.from_pretrained(str(tmp_path / "dense"), PXConfig(sparsity=0.9, rounds=10))
    x, y = load_digits(classes=(0, 1, 2, 3, 4))
    pruner.prune((x, y), progress=False)
    pruner.save_pretrained(tmp_path / "pruned")
    out = tmp_path / "transfer"
    # Four new classes: the 5-way head cannot fit, so it is re-initialized and trained dense.
    _run(["--model_name_or_path", str(tmp_path / "pruned"), "--dataset_name", "digits", "--digits_classes",
          "5,6,7,8", "--ignore_mismatched_sizes", "--output_dir", str(out), "--do_train", "--do_eval",
          "--num_train_epochs", "2", *TRAIN])
    record = json.load(open(out / "pruning_config.json"))
    assert record["dense_parameters"] == ["classifier.1.weight"]
    assert json.load(open(out / "all_results.json"))["eval_accuracy"] > 0.5  # chance is 0.25
    restored = PXPruner.from_pretrained(str(out))
    assert "classifier.1.weight" not in restored.masks and restored.model.config.num_labels == 4
    assert "trained dense" in open(out / "README.md").read()


def test_bad_inputs_get_clear_errors(tmp_path, image_folder):
    small_model("vit").save_pretrained(tmp_path / "dense")
    pruner = PXPruner(small_model("vit"), PXConfig(sparsity=0.5, rounds=1))
    pruner.prune(load_digits(), progress=False)
    pruner.save_pretrained(tmp_path / "pruned")
    cases = [
        (["--model_name_or_path", str(tmp_path / "pruned"), "--dataset_name", "digits", "--digits_classes", "1,2"],
         "ignore_mismatched_sizes"),
        (["--model_name_or_path", "vit", "--dataset_name", str(tmp_path / "missing"), "--px_dense"],
         "cannot load dataset"),
        (["--model_name_or_path", "vit", "--train_dir", str(tmp_path / "nowhere"), "--px_dense"],
         "--train_dir .* is not a directory"),
        (["--model_name_or_path", "vit", "--train_dir", str(image_folder),
          "--image_column_name", "photo", "--px_dense"], "no column 'photo'"),
        (["--model_name_or_path", str(tmp_path / "dense"), "--dataset_name", "digits"], "has no pruning config"),
    ]
    for args, message in cases:
        result = _run([*args, "--output_dir", str(tmp_path / "o"), "--do_train", "--max_steps", "1", *TRAIN],
                      launcher=[sys.executable], expect=2)
        assert "finetune.py: error:" in result.stderr and __import__("re").search(message, result.stderr), (
            message, result.stderr[-1500:])

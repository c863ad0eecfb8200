"""Fine-tune a pruned model on an image classification task with the transformers Trainer, keeping its sparsity.

Arguments follow transformers' examples/pytorch/image-classification/run_image_classification.py (every
TrainingArguments option works), plus px_hf's own ``--px_*`` options:

    # a model pruned with px_hf (its pruning_config.json and masks are used)
    accelerate launch recipes/finetune.py --model_name_or_path me/vit-px-98 --dataset_name cifar10 \\
        --output_dir vit-px-98-cifar10 --do_train --do_eval --ignore_mismatched_sizes
    # prune on the fly, at initialization, then train (offline, on the bundled digits)
    python recipes/finetune.py --model_name_or_path vit --dataset_name digits --px_sparsity 0.9 \\
        --output_dir out --do_train --do_eval --num_train_epochs 5 --use_cpu

``--model_name_or_path`` is a Hub id, a local directory, or ``vit``/``convnext``/``resnet`` (small models built
from configs). ``--dataset_name digits`` uses scikit-learn's digits (offline); ``--digits_classes 5,6,7,8,9``
keeps some digits and renumbers them from 0. A model without a pruning config is refused unless ``--px_sparsity``
prunes it here or ``--px_dense`` trains it dense (the reference run).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from transformers import HfArgumentParser, TrainingArguments

from px_hf import PXConfig, PXPruner
from px_hf.distributed import shutdown_distributed
from px_hf.cli.shared import add_config_options, config_from_args, image_transform, load_pruner
from px_hf.errors import DataError, PXError
from px_hf.metrics import load_metric
from px_hf.training import PXMaskCallback, PXTrainer

logger = logging.getLogger("px_hf.finetune")


@dataclass
class DataTrainingArguments:
    dataset_name: Optional[str] = field(default=None, metadata={
        "help": "A datasets name, or 'digits' for scikit-learn's digits (bundled, offline)."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "The dataset configuration name."})
    train_dir: Optional[str] = field(default=None, metadata={"help": "An image folder with the training data."})
    validation_dir: Optional[str] = field(default=None, metadata={"help": "An image folder with the validation data."})
    train_val_split: float = field(default=0.15, metadata={
        "help": "Fraction of the training data held out for validation when there is no validation split."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the validation set."})
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column holding the labels."})
    digits_classes: Optional[str] = field(default=None, metadata={
        "help": "With --dataset_name digits: comma-separated digits to keep, renumbered from 0 (e.g. 5,6,7,8,9)."})


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="vit", metadata={
        "help": "A Hub id, a local directory, or vit/convnext/resnet for a small model built from a config."})
    model_revision: str = field(default="main", metadata={"help": "The model revision (branch, tag or commit)."})
    image_processor_name: Optional[str] = field(default=None, metadata={"help": "Image processor name or path."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where to store downloaded models."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "Re-initialize layers whose size differs (a new label set); the new head is trained dense."})


def _digits_names(data_args: DataTrainingArguments) -> list[str]:
    return data_args.digits_classes.split(",") if data_args.digits_classes else [str(c) for c in range(10)]


def _digits(data_args: DataTrainingArguments, channels: int, size: int, seed: int):
    """Train and validation splits of scikit-learn's digits as tensors (``pixel_values``, ``labels``)."""
    from datasets import Dataset

    from px_hf.digits import load_digits

    classes = tuple(int(c) for c in _digits_names(data_args))
    images, labels = load_digits(image_size=size, classes=classes)
    labels = torch.tensor([classes.index(int(c)) for c in labels])  # renumbered from 0
    dataset = Dataset.from_dict({"pixel_values": images.expand(-1, channels, -1, -1).numpy(),
                                 "labels": labels.numpy()}).with_format("torch")
    split = dataset.train_test_split(test_size=data_args.train_val_split, seed=seed)
    return split["train"], split["test"]


def _load_images(data_args: DataTrainingArguments, model_args: ModelArguments, seed: int):
    """(train, validation, label names) from a datasets name or image folders; clear errors for bad input."""
    from datasets import ClassLabel, load_dataset

    if data_args.dataset_name is not None:
        try:
            dataset = load_dataset(data_args.dataset_name, data_args.dataset_config_name,
                                   cache_dir=model_args.cache_dir, token=model_args.token)
        except (FileNotFoundError, ConnectionError, ValueError, OSError) as err:
            raise DataError(f"cannot load dataset {data_args.dataset_name!r}: {err}") from err
    else:
        files = {}
        for split, directory in (("train", data_args.train_dir), ("validation", data_args.validation_dir)):
            if directory is not None:
                if not os.path.isdir(directory):
                    raise DataError(f"--{split}_dir {directory!r} is not a directory")
                files[split] = os.path.join(directory, "**")
        if "train" not in files:
            raise DataError("give --dataset_name, or --train_dir (and optionally --validation_dir)")
        dataset = load_dataset("imagefolder", data_files=files, cache_dir=model_args.cache_dir)
    if "validation" not in dataset:
        split = dataset["train"].train_test_split(test_size=data_args.train_val_split, seed=seed)
        dataset = {"train": split["train"], "validation": split["test"]}
    train, validation = dataset["train"], dataset["validation"]
    for column in (data_args.image_column_name, data_args.label_column_name):
        if column not in train.column_names:
            raise DataError(f"the dataset has no column {column!r}; its columns are {train.column_names} "
                            "(see --image_column_name and --label_column_name)")
    feature = train.features[data_args.label_column_name]
    names = feature.names if isinstance(feature, ClassLabel) else sorted({str(v) for v in train[
        data_args.label_column_name]})
    return train, validation, names


def _processor(model_args: ModelArguments):
    """The model's image processor, or ``None`` when it has none (images are then resized and scaled)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(model_args.image_processor_name or model_args.model_name_or_path,
                                                  cache_dir=model_args.cache_dir, token=model_args.token)
    except (OSError, ValueError):
        return None


def main(argv=None) -> int:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    parser.add_argument("--px_dense", action="store_true", help="Train without masks (the dense reference).")
    # Every PXConfig field as --px_<field>; --px_sparsity prunes the model here, before training.
    add_config_options(parser, prefix="px_", separator="_", defaults=False)
    model_args, data_args, training_args, px_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        return run(model_args, data_args, px_args, training_args)
    except PXError as err:
        print(f"finetune.py: error: {err}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()


def run(model_args, data_args, px_args, training_args) -> int:
    digits = data_args.dataset_name == "digits"
    if digits:
        names = _digits_names(data_args)
    else:
        train, validation, names = _load_images(data_args, model_args, training_args.seed)
    pruner = load_pruner(model_args.model_name_or_path, labels=names, revision=model_args.model_revision,
                         token=model_args.token, cache_dir=model_args.cache_dir,
                         ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, option="--model_name_or_path")
    model = pruner.model
    processor = _processor(model_args)
    to_tensor = image_transform(model, processor)
    image_column, label_column = data_args.image_column_name, data_args.label_column_name
    if digits:
        train, validation = _digits(data_args, model.config.num_channels, model.config.image_size,
                                    training_args.seed)
        image_column, label_column, to_tensor = "pixel_values", "labels", None
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        validation = validation.select(range(min(data_args.max_eval_samples, len(validation))))

    requested = None
    options = sorted(f"--{k}" for k in vars(px_args) if k != "px_dense")
    if options and not hasattr(px_args, "px_sparsity"):
        raise PXError(f"{', '.join(options)} set(s) how to prune here, which only --px_sparsity asks for; add it")
    if hasattr(px_args, "px_sparsity"):
        if pruner.masks:
            raise PXError(f"{model_args.model_name_or_path} is already pruned; drop --px_sparsity")
        requested = config_from_args(px_args, prefix="px_", base=PXConfig(seed=training_args.seed))
    checkpoint = training_args.resume_from_checkpoint if training_args.do_train else None
    if checkpoint is not None:
        pruner = _resumed(checkpoint, pruner, requested, px_args.px_dense)
        model = pruner.model
    elif requested is not None:
        pruner.config = requested
        pruner.prune(train, transform=to_tensor, image_column=image_column, label_column=label_column,
                     source=data_args.dataset_name or data_args.train_dir, progress=training_args.should_log)
    if not pruner.masks and not px_args.px_dense:
        raise PXError(f"{model_args.model_name_or_path} has no pruning config (pruning_config.json) and no masks; "
                      "prune it with px-hf prune or --px_sparsity, or pass --px_dense to train it dense")
    if not digits:
        def transform(batch):
            return {"pixel_values": [to_tensor(im) for im in batch[image_column]], "labels": batch[label_column]}

        train, validation = train.with_transform(transform), validation.with_transform(transform)

    metric = load_metric("accuracy")

    def compute_metrics(prediction):
        return metric.compute(predictions=np.argmax(prediction.predictions, axis=1),
                              references=prediction.label_ids)

    callbacks = [PXMaskCallback(pruner.masks, pruner.pruning_record())] if pruner.masks else []
    push, training_args.push_to_hub = training_args.push_to_hub, False  # px_hf pushes, with masks and card
    training_args.remove_unused_columns = False
    trainer = PXTrainer(model=model, args=training_args, train_dataset=train if training_args.do_train else None,
                      eval_dataset=validation if training_args.do_eval else None, compute_metrics=compute_metrics,
                      processing_class=processor, data_collator=_collate, callbacks=callbacks)
    metrics = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        metrics.update(result.metrics)
    if training_args.do_eval:
        evaluation = trainer.evaluate()
        trainer.log_metrics("eval", evaluation)
        trainer.save_metrics("eval", evaluation)
        metrics.update(evaluation)
    trainer.save_model()
    if trainer.is_world_process_zero() and pruner.masks:
        _write_pruned_outputs(pruner, training_args, data_args, model_args, metrics, push)
    trainer.accelerator.wait_for_everyone()
    return 0


def _resumed(checkpoint: str, pruner: PXPruner, requested: Optional[PXConfig], dense: bool) -> PXPruner:
    """The pruner to resume with: the checkpoint's masks, after checking that they are the ones this run asks
    for. Pruning again at initialization would give masks that disagree with the checkpoint's weights."""
    from px_hf.hub.format import PruningRecord
    from px_hf.hub.load import check_architecture
    from px_hf.masks import mask_digest

    if not os.path.isdir(checkpoint):
        raise PXError(f"--resume_from_checkpoint {checkpoint!r} is not a directory")
    check_architecture(checkpoint, pruner.model, role="this run trains a")
    record = PruningRecord.read(checkpoint)
    if record is None:
        if pruner.masks or requested is not None:
            raise PXError(f"the checkpoint {checkpoint} has no pruning_config.json: it is not from a pruned run")
        return pruner
    if dense:
        raise PXError(f"the checkpoint {checkpoint} is pruned; drop --px_dense to resume it")
    resumed = PXPruner.from_pretrained(checkpoint)  # verifies the mask hash and the zeros in the weights
    if requested is not None:
        fields = ("sparsity", "scorer", "num_rounds", "examples_per_class", "seed")
        differ = [f"{f}: asked {getattr(requested, f)}, checkpoint {getattr(resumed.masks_config, f)}"
                  for f in fields if getattr(requested, f) != getattr(resumed.masks_config, f)]
        if differ:
            raise PXError(f"the checkpoint {checkpoint} was pruned with other options ({'; '.join(differ)}); "
                          "resume with the options it was pruned with, or start a new run")
        logger.info("resuming with the masks of %s (not pruning again)", checkpoint)
        return resumed
    if mask_digest(resumed.masks) != mask_digest(pruner.masks):
        raise PXError(f"the checkpoint {checkpoint} holds other masks than {type(pruner.model).__name__} loaded from "
                      "--model_name_or_path; resume with the model the run started from")
    return pruner


def _collate(examples):
    return {"pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]),
            "labels": torch.tensor([int(e["labels"]) for e in examples])}


def _write_pruned_outputs(pruner: PXPruner, training_args, data_args, model_args, metrics, push: bool) -> None:
    """Next to the model the Trainer saved: masks, the pruning config (recording the fine-tuning and its
    metrics) and the model card; then the push, through px_hf so that the masks travel with the model."""
    from px_hf.training import check_pruned

    check_pruned(pruner.model, pruner.masks, "the fine-tuned model")
    pruner.annotate(finetuning={
        "dataset": data_args.dataset_name or data_args.train_dir,
        "digits_classes": data_args.digits_classes,
        "base": model_args.model_name_or_path,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    })
    pruner.save_pruning_files(training_args.output_dir)
    if push:
        repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
        info = pruner.push_to_hub(repo_id, private=training_args.hub_private_repo, token=training_args.hub_token)
        logger.info("pushed to %s", info.commit_url)


if __name__ == "__main__":
    sys.exit(main())

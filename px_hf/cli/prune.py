"""The ``px-hf`` command line: ``px-hf prune`` prunes a model and saves it."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

from ..errors import DataError, HubError, PXError
from .shared import add_config_options, config_from_args, image_transform, load_pruner, offline

DEFAULT_OUTPUT_DIR = "px-hf-output"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="px-hf", description="PX pruning at initialization for HF vision models")
    commands = parser.add_subparsers(dest="command", required=True)
    prune = commands.add_parser(
        "prune", help="prune a model and save it",
        description="Prune a model with PX (or a baseline) and save it. With no options: a small ViT built from "
                    "a config, pruned to 98%% sparsity on scikit-learn's digits.",
    )
    prune.add_argument("--model", default="vit",
                       help="vit, convnext or resnet (small models built from configs), a local directory, or a "
                            "Hub id (default: vit)")
    prune.add_argument("--data", default="digits",
                       help="'digits' (bundled), 'fashion-mnist' (Debian's dataset-fashion-mnist package, or a "
                            "folder in $PX_HF_FASHION_MNIST), an image folder (class per sub-directory), or a "
                            "datasets name (default: digits)")
    prune.add_argument("--split", default="train", help="dataset split to draw the pruning set from")
    prune.add_argument("--image-size", type=_positive_int, default=32,
                       help="image size of the built-in small models (default 32)")
    prune.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR,
                       help=f"where to save the pruned model (default ./{DEFAULT_OUTPUT_DIR}): a new or empty "
                            "directory, or one holding a saved model with --overwrite; anything else is refused")
    prune.add_argument("--overwrite", action="store_true",
                       help="replace the saved model already in --output-dir (never files px_hf did not write)")
    prune.add_argument("--compact", action="store_true",
                       help="store only the kept weights (smaller; loads with px_hf only)")
    prune.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                       help="also upload the pruned model to this Hub repo (one commit)")
    prune.add_argument("--private", action="store_true", help="create the Hub repo as private")
    prune.add_argument("--hub-token", default=None, help="Hub token (default: the logged-in one)")
    prune.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_options(prune)
    return parser


def _digits(split: str, size: int):
    """All of scikit-learn's digits: they come without splits, so ``split`` is ignored."""
    from ..digits import load_digits

    return load_digits(image_size=size)


def _fashion_mnist(split: str, size: int):
    from ..fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(split, image_size=size)


def _fashion_mnist_classes() -> list[str]:
    from ..fashion_mnist import FASHION_MNIST_CLASSES

    return list(FASHION_MNIST_CLASSES)


class BuiltinData(NamedTuple):
    """A ``--data`` name px_hf reads itself."""

    load: Callable[[str, int], tuple]  # (split, image size) -> (images, labels)
    description: str
    classes: Callable[[], list[str]]


BUILTIN_DATA = {
    "digits": BuiltinData(_digits, "scikit-learn digits", lambda: [str(d) for d in range(10)]),
    "fashion-mnist": BuiltinData(_fashion_mnist, "Fashion-MNIST", _fashion_mnist_classes),
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _open_data(args) -> tuple[Any, Optional[list[str]]]:
    """Check and open ``--data`` before any model is built: ``(dataset, class names)``. The dataset is ``None``
    for the built-in sets (read later at the model's image size); the names are ``None`` for unlabeled data."""
    from ..data import dataset_class_names, image_folder_classes

    if args.data in BUILTIN_DATA:
        return None, BUILTIN_DATA[args.data].classes()
    if os.path.isdir(args.data):
        classes = image_folder_classes(args.data)
        if len(classes) < 2 and args.examples_per_class:
            raise DataError(
                f"the image folder {args.data} has {len(classes)} class sub-director{'y' if classes else 'ies'} "
                f"{classes}; a class-balanced pruning set needs one sub-directory per class (two or more), or "
                "--examples-per-class 0 to use every image without labels")
        return _load_dataset(args, "imagefolder", data_dir=args.data), classes or None
    if os.path.exists(args.data):
        raise DataError(f"--data {args.data!r} is a file; give 'digits', an image folder or a datasets name")
    if offline():
        raise DataError(f"--data {args.data!r}: no such folder, and the Hub is offline (HF_HUB_OFFLINE=1), so it "
                        "cannot be a datasets name either")
    dataset = _load_dataset(args, args.data)
    return dataset, dataset_class_names(dataset)


def _load_dataset(args, *names: str, **kwargs: Any):
    from datasets import load_dataset

    try:
        return load_dataset(*names, split=args.split, **kwargs)
    except (OSError, ValueError, ConnectionError) as err:  # datasets' errors for missing or unreadable data
        raise DataError(f"cannot load --data {args.data!r} (split {args.split!r}): {type(err).__name__}: {err}") from err


def _prepare_data(args, dataset: Any, model):
    """Returns ``(data, prune keyword arguments, description)``."""
    if dataset is None:
        from ..modeling.io import image_input_spec

        channels, size = image_input_spec(model, args.image_size)
        builtin = BUILTIN_DATA[args.data]
        images, labels = builtin.load(args.split, size)
        return (images.expand(-1, channels, -1, -1).contiguous(), labels), {}, builtin.description
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(args.model)
        return dataset, {"image_processor": processor}, args.data
    except (OSError, ValueError):
        return dataset, {"transform": image_transform(model)}, args.data


def prune_command(args: argparse.Namespace) -> int:
    """Prune, report and save; under ``accelerate launch``/``torchrun`` every process scores its shard and only
    the main process prints and writes. Everything that can be checked is checked before pruning starts."""
    from ..distributed import process_state
    from ..hub.directory import check_output_dir

    config = config_from_args(args)
    state = process_state(cpu=config.cpu)
    say = print if state.is_main_process else (lambda *a, **k: None)
    if state.is_main_process:
        check_output_dir(args.output_dir, args.overwrite, "--output-dir")
    if args.push_to_hub and offline():
        raise PXError(f"--push-to-hub {args.push_to_hub}: the Hub is offline (HF_HUB_OFFLINE=1); save locally and "
                      "push later")
    from ..zoo import FAMILIES

    dataset, classes = _open_data(args)
    # A built-in family gets a head for the data's classes; a saved or Hub model keeps its own.
    labels = classes if args.model in FAMILIES else None
    pruner = load_pruner(args.model, config, labels=labels, image_size=args.image_size, seed=config.seed)
    model = pruner.model
    data, data_kwargs, description = _prepare_data(args, dataset, model)
    already = f", from its masks at {pruner.summary().density:.2%} density" if pruner.masks else ""
    say(f"Pruning {type(model).__name__} ({args.model}) with {config.scorer} to {config.sparsity:.2%} sparsity "
        f"in {config.num_rounds} round(s) on {description}{already}"
        + (f", {state.num_processes} processes" if state.num_processes > 1 else ""))
    start = time.perf_counter()
    pruner.prune(data, progress=not args.no_progress, source=description, **data_kwargs)
    elapsed = time.perf_counter() - start
    summary = pruner.summary()
    say(summary)
    say(f"achieved density: {summary.density:.6f} (target {config.density:.6f}), "
        f"{summary.kept:,} of {summary.params:,} prunable weights kept")
    if summary.collapsed:
        say(f"layers pruned to zero: {', '.join(summary.collapsed)}")
    say(f"time: {elapsed:.2f} s for {config.num_rounds} round(s) on {len(pruner.pruning_set)} examples")
    say(f"mask digest: {pruner.mask_digest} (identical on all {state.num_processes} process(es))")
    if state.is_main_process:
        pruner.save_pretrained(args.output_dir, compact=args.compact, overwrite=args.overwrite)
        say(f"saved to {os.path.abspath(args.output_dir)}")
        if args.push_to_hub:
            try:
                info = pruner.push_to_hub(args.push_to_hub, private=args.private, token=args.hub_token,
                                          compact=args.compact)
            except HubError as err:
                raise HubError(f"{err} (the pruned model is saved in {os.path.abspath(args.output_dir)})") from err
            say(f"pushed to {info.commit_url}")
    state.wait_for_everyone()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``px-hf`` console script."""
    args = _parser().parse_args(argv)
    try:
        return prune_command(args)
    except PXError as err:
        print(f"px-hf: error: {err}", file=sys.stderr)
        return 2
    finally:
        from ..distributed import shutdown_distributed

        shutdown_distributed()

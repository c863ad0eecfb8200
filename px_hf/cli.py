"""The ``px-hf`` command line: ``px-hf prune`` prunes a model and saves it."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from .config import SCORERS, PXConfig
from .errors import DataError, HubError, PXError

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
    prune.add_argument("--sparsity", type=float, default=0.98, help="fraction of weights removed (default 0.98)")
    prune.add_argument("--scorer", default="px", choices=SCORERS, help="scoring method (default px)")
    prune.add_argument("--rounds", type=int, default=None,
                       help="pruning rounds (default: 100 for px/synflow, 1 for the others)")
    prune.add_argument("--schedule", default="exponential", choices=("exponential", "linear"))
    prune.add_argument("--scope", default="global", choices=("global", "layer"))
    prune.add_argument("--examples-per-class", type=int, default=10,
                       help="class-balanced pruning set size per class; 0 uses every example (default 10)")
    prune.add_argument("--batch-size", type=int, default=32)
    prune.add_argument("--seed", type=int, default=0)
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
    prune.add_argument("--mixed-precision", default=None, choices=("no", "fp16", "bf16"),
                       help="precision of the real pass (default: accelerate launch's setting)")
    prune.add_argument("--cpu", action="store_true", help="score on the CPU even where a GPU is present")
    prune.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _digits(split: str, size: int):
    """All of scikit-learn's digits: they come without splits, so ``split`` is ignored."""
    from .digits import load_digits

    return load_digits(image_size=size)


def _fashion_mnist(split: str, size: int):
    from .fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(split, image_size=size)


# --data names px_hf reads itself: (loader(split, image size) -> (images, labels), description). Both have 10 classes.
BUILTIN_DATA = {"digits": (_digits, "scikit-learn digits"), "fashion-mnist": (_fashion_mnist, "Fashion-MNIST")}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _load_pruner(args, config: PXConfig, num_labels: int):
    """A PXPruner around ``--model``: a built-in family, or a local directory or Hub id (a pruned model comes back
    with its masks, and is pruned further from them)."""
    from .pruner import PXPruner
    from .zoo import FAMILIES, small_model

    name = args.model
    if name in FAMILIES:
        return PXPruner(small_model(name, num_labels=num_labels, image_size=args.image_size, seed=args.seed), config)
    if not os.path.isdir(name):
        if os.path.exists(name):
            raise PXError(f"--model {name!r} is a file; give a directory holding a model, a Hub id, or "
                          f"{', '.join(FAMILIES)}")
        if _offline():
            raise PXError(f"--model {name!r} is neither a built-in family ({', '.join(FAMILIES)}) nor a local "
                          "directory, and the Hub is offline (HF_HUB_OFFLINE=1)")
    return PXPruner.from_pretrained(name, config)


def _model_input_spec(model, default_size: int) -> tuple[int, int]:
    config = getattr(model, "config", None)
    size = getattr(config, "image_size", default_size)
    return getattr(config, "num_channels", 3), size if isinstance(size, int) else size[0]


def _check_data(args) -> int:
    """Check ``--data`` before any model is built; return its number of classes (10 when unknown)."""
    from .data import image_folder_classes

    if args.data in BUILTIN_DATA:
        return 10
    if os.path.isdir(args.data):
        classes = image_folder_classes(args.data)
        if len(classes) < 2 and args.examples_per_class:
            raise DataError(
                f"the image folder {args.data} has {len(classes)} class sub-director{'y' if classes else 'ies'} "
                f"{classes}; a class-balanced pruning set needs one sub-directory per class (two or more), or "
                "--examples-per-class 0 to use every image without labels")
        return max(len(classes), 1)
    if os.path.exists(args.data):
        raise DataError(f"--data {args.data!r} is a file; give 'digits', an image folder or a datasets name")
    if _offline():
        raise DataError(f"--data {args.data!r}: no such folder, and the Hub is offline (HF_HUB_OFFLINE=1), so it "
                        "cannot be a datasets name either")
    return 10


def _load_data(args, model):
    """Returns ``(data, prune keyword arguments, description)``."""
    channels, size = _model_input_spec(model, args.image_size)
    if args.data in BUILTIN_DATA:
        images, labels = BUILTIN_DATA[args.data][0](args.split, size)
        return (images.expand(-1, channels, -1, -1).contiguous(), labels), {}, BUILTIN_DATA[args.data][1]
    from datasets import load_dataset

    try:
        if os.path.isdir(args.data):
            dataset = load_dataset("imagefolder", data_dir=args.data, split=args.split)
        else:
            dataset = load_dataset(args.data, split=args.split)
    except (OSError, ValueError, ConnectionError) as err:  # datasets' errors for missing or unreadable data
        raise DataError(f"cannot load --data {args.data!r} (split {args.split!r}): {type(err).__name__}: {err}") from err
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(args.model)
        return dataset, {"image_processor": processor}, args.data
    except (OSError, ValueError):
        return dataset, {"transform": _basic_transform(channels, size)}, args.data


def _basic_transform(channels: int, size: int):
    import numpy as np
    import torch
    import torch.nn.functional as F

    def transform(image):
        mode = "L" if channels == 1 else "RGB"
        array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)
        tensor = F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        return tensor * 2.0 - 1.0

    return transform


def prune_command(args: argparse.Namespace) -> int:
    """Prune, report and save; under ``accelerate launch``/``torchrun`` every process scores its shard and only
    the main process prints and writes. Everything that can be checked is checked before pruning starts."""
    from .distributed import process_state
    from .hub.directory import check_output_dir

    config = PXConfig(
        sparsity=args.sparsity, scorer=args.scorer, rounds=args.rounds, schedule=args.schedule, scope=args.scope,
        examples_per_class=args.examples_per_class or None, seed=args.seed, batch_size=args.batch_size,
        mixed_precision=args.mixed_precision, cpu=args.cpu,
    )
    state = process_state(cpu=args.cpu)
    say = print if state.is_main_process else (lambda *a, **k: None)
    if state.is_main_process:
        check_output_dir(args.output_dir, args.overwrite, "--output-dir")
    if args.push_to_hub and _offline():
        raise PXError(f"--push-to-hub {args.push_to_hub}: the Hub is offline (HF_HUB_OFFLINE=1); save locally and "
                      "push later")
    num_labels = _check_data(args)
    pruner = _load_pruner(args, config, num_labels)
    model = pruner.model
    data, data_kwargs, description = _load_data(args, model)
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
    say(f"masks sha256: {pruner.masks_sha256} (identical on all {state.num_processes} process(es))")
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
        shutdown_distributed()


def shutdown_distributed() -> None:
    """Tear down torch.distributed after a launched run. Collecting the model's memory before destroying the
    process group avoids an abort at interpreter exit seen in about 1 of 7 two-process runs."""
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

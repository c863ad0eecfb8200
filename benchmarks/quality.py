"""Quality of pruning at initialization: PX against the baselines on small ResNet, ConvNeXt and ViT, on digits.

For every family, sparsity (90%, 98%, 99.5%), method (dense; px, random, magnitude, snip, grasp, synflow; px with
the shuffle and re-init sanity checks) and seed: prune at initialization on a class-balanced pruning set drawn
from the training split, then train with the transformers Trainer and px_hf's PXMaskCallback for a fixed short
schedule, and record
- test accuracy (held-out 20% of digits),
- layers collapsed to zero,
- the empirical NTK trace of the sparse initialization relative to the dense one (8 test images, BatchNorm on
  batch statistics as in training).

Writes benchmarks/results/quality.{json,md} and docs/quality_<family>.png (accuracy vs sparsity).

    python benchmarks/quality.py                 # the full grid, 3 seeds (about 27 minutes on 2 cores)
    python benchmarks/quality.py --quick         # one seed, one sparsity, 1 epoch: a smoke run
    python benchmarks/quality.py --methods px --px px_branch_share=null   # a PX variant alone
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import save_results  # noqa: E402

METHODS = ["dense", "px", "random", "magnitude", "snip", "grasp", "synflow", "px+shuffle", "px+reinit"]


def _splits():
    from px_hf.digits import load_digits

    x, y = load_digits(image_size=32)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))  # fixed test split
    test, train = order[: len(y) // 5], order[len(y) // 5:]
    return (x[train], y[train]), (x[test], y[test])


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def _single_threaded() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(1)


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` for a PXConfig field; the value is parsed as JSON when it can be (numbers, true/false)."""
    import dataclasses

    from px_hf import PXConfig

    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    fields = [f.name for f in dataclasses.fields(PXConfig)]
    if key not in fields:
        raise argparse.ArgumentTypeError(f"{key!r} is not a PXConfig field; choose from {', '.join(fields)}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def run_one(family: str, method: str, sparsity: float, seed: int, epochs: float, px_options: dict) -> dict:
    from transformers import Trainer, TrainingArguments

    from px_hf import PXConfig, PXPruner
    from px_hf.ntk import ntk_trace
    from px_hf.training import PXMaskCallback
    from px_hf.zoo import small_model

    (x, y), (xt, yt) = _splits()
    model = small_model(family, seed=seed)
    probe = xt[:8]
    dense_trace = ntk_trace(model, probe)
    start = time.perf_counter()
    masks, collapsed, trace = {}, 0, dense_trace
    if method != "dense":
        scorer, _, check = method.partition("+")
        options = px_options if scorer == "px" else {}
        pruner = PXPruner(model, PXConfig(sparsity=sparsity, scorer=scorer, seed=seed, sanity_check=check or None,
                                          **options))
        masks = pruner.prune((x, y), progress=False)
        collapsed = len(pruner.summary().collapsed)
        trace = ntk_trace(model, probe, masks)
    prune_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=32,
                                 learning_rate=2e-3, weight_decay=0.05, use_cpu=True,
                                 report_to="none", save_strategy="no", logging_strategy="no", seed=seed,
                                 disable_tqdm=True, dataloader_num_workers=0)
        callbacks = [PXMaskCallback(masks)] if masks else []
        trainer = Trainer(model=model, args=args, train_dataset=_Tensors(x, y), callbacks=callbacks)
        trainer.train()
        logits = trainer.predict(_Tensors(xt, yt)).predictions
    accuracy = float((np.argmax(logits, axis=1) == yt.numpy()).mean())
    return {"family": family, "method": method, "sparsity": sparsity, "seed": seed, "accuracy": accuracy,
            "collapsed": collapsed, "ntk_ratio": trace / dense_trace, "prune_s": prune_seconds}


def _summarize(rows: list[dict], families, sparsities) -> str:
    def cell(values, fmt):
        if len(values) == 1:
            return format(values[0], fmt)
        return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"

    lines = ["| family | method | " + " | ".join(f"{s:.1%} acc / collapsed / NTK ratio" for s in sparsities) + " |",
             "|---|---|" + "---|" * len(sparsities)]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    for family in families:
        for method in methods:
            cells = []
            for sparsity in sparsities:
                sel = [r for r in rows if r["family"] == family and r["method"] == method
                       and (method == "dense" or r["sparsity"] == sparsity)]
                if not sel:
                    cells.append("-")
                    continue
                cells.append(f"{cell([r['accuracy'] for r in sel], '.3f')} / "
                             f"{cell([float(r['collapsed']) for r in sel], '.1f')} / "
                             f"{cell([r['ntk_ratio'] for r in sel], '.3g')}")
            lines.append(f"| {family} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], family: str, sparsities, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        points = [(s, [r["accuracy"] for r in rows if r["family"] == family and r["method"] == method
                       and (method == "dense" or r["sparsity"] == s)]) for s in sparsities]
        points = [(s, v) for s, v in points if v]
        if not points:
            continue
        xs = [100 * s for s, _ in points]
        means = [statistics.mean(v) for _, v in points]
        errors = [statistics.stdev(v) if len(v) > 1 else 0 for _, v in points]
        style = "k--" if method == "dense" else ("-o" if method == "px" else "-.")
        axis.errorbar(xs, means, yerr=errors, fmt=style, label=method, capsize=3, linewidth=2 if method == "px" else 1)
    axis.set_xlabel("sparsity (%)")
    axis.set_ylabel("test accuracy")
    axis.set_title(f"{family}: digits, pruned at initialization")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["resnet", "convnext", "vit"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.98, 0.995])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--px", nargs="*", type=_option, default=[], metavar="KEY=VALUE",
                        help="PXConfig fields for the PX runs (for trying variants)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel (one thread each)")
    parser.add_argument("--quick", action="store_true", help="one seed, 98%% only, one epoch")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--plots", default=os.path.join(ROOT, "docs"))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.sparsities, args.epochs = [0], [0.98], 1
    runs = [(family, method, sparsity or 0.0, seed, args.epochs, dict(args.px))
            for family in args.families for seed in args.seeds for method in args.methods
            for sparsity in ([None] if method == "dense" else args.sparsities)]
    started = time.perf_counter()
    # The models are tiny: one thread per run and one run per core beats all cores on one run by about 2x.
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_single_threaded) as pool:
        futures = [pool.submit(run_one, *run) for run in runs]
        for future in as_completed(futures):
            print(json.dumps(future.result()), flush=True)
        rows = [future.result() for future in futures]
    table = _summarize(rows, args.families, args.sparsities)
    minutes = (time.perf_counter() - started) / 60
    header = (f"Test accuracy / layers collapsed / NTK trace of the sparse init relative to dense (mean ± std over "
              f"seeds {args.seeds}), {args.epochs} epochs, {minutes:.0f} minutes in all"
              + (f"; PX options {dict(args.px)}" if args.px else "") + "\n\n")
    save_results(args.out, "quality", rows, header + table)
    os.makedirs(args.plots, exist_ok=True)
    for family in args.families:
        _plot(rows, family, args.sparsities, os.path.join(args.plots, f"quality_{family}.png"))


if __name__ == "__main__":
    main()

"""Speed and memory of pruning: time per round and peak extra memory for PX and every baseline, and how they grow
with the number of pruning examples and with model size.

Random-init models, float32, all CPU threads, 224 px, batches of 8. Five tables:

- scorers: ResNet-50, ConvNeXt-Tiny and ViT-Base, every scorer, pruning on one batch;
- examples: PX and SNIP on ResNet-50 with 8, 16, 32 and 64 pruning examples, under glibc's default allocator, with
  a fixed 64 KiB mmap threshold (``mmap``) and with freed memory kept for reuse (``heap``);
- allocators: PX on the models of the scorers table under glibc's default allocator and ``heap``;
- sizes: PX on ResNet-18/34/50/101 and ViT-Small/Base (``--sizes vit-large`` adds ViT-Large, about 3 minutes);
- the main job: the pruning of ``px-hf prune`` with its defaults, rounds per second and where the time goes.

Every row gives the time of a round (the median gap between successive rounds: scoring, selection, masking),
that time over one no-grad forward pass of one batch, and the extra resident memory of the whole pruning over
the memory held before it (model, data), sampled every 2 ms, also over the parameters plus one forward pass's
activations (the extra memory of a forward with autograd on). Targets: a PX round costs at most 2.5
forward passes (``speed_types.py``: at most 4 on every covered model type), and its extra memory is at most one copy of the parameters plus one forward pass's activations.

Each measurement runs in its own spawned process so that one's peak memory does not hide another's; a
measurement shared by two tables runs once. Measurements are stored in ``<out>/speed_measurements/``, keyed by
their settings and the git version of ``px_hf/``, and skipped when present, so an interrupted run resumes and a new
table measures only its new rows (nothing is stored while ``px_hf/`` has uncommitted changes). The defaults take
about 27 minutes on 2 CPU cores; ``--quick`` (64 px, ResNet-50 and ResNet-18, 2 rounds) a few minutes, for smoke
tests.

    python benchmarks/speed.py [--quick] [--models resnet-50 ...] [--scorers px snip ...] [--examples 8 16 ...]
                               [--sizes resnet-18 ...] [--batch 8] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import multiprocessing as mp
import os
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from _report import code_version, save_results, write_json

from px_hf.scoring import scorer_names

NUM_LABELS = 1000
SPARSITY = 0.5
_RESNET_BASIC = dict(layer_type="basic", hidden_sizes=[64, 128, 256, 512])
# CLI name -> (table name, px_hf.zoo family, config overrides of px_hf.zoo.imagenet_model).
MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "resnet-18": ("ResNet-18", "resnet", dict(_RESNET_BASIC, depths=[2, 2, 2, 2])),
    "resnet-34": ("ResNet-34", "resnet", dict(_RESNET_BASIC, depths=[3, 4, 6, 3])),
    "resnet-50": ("ResNet-50", "resnet", {}),
    "resnet-101": ("ResNet-101", "resnet", dict(depths=[3, 4, 23, 3])),
    "convnext-tiny": ("ConvNeXt-Tiny", "convnext", {}),
    "vit-small": ("ViT-Small/16", "vit", dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536)),
    "vit-base": ("ViT-Base/16", "vit", {}),
    "vit-large": ("ViT-Large/16", "vit", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                              intermediate_size=4096)),
}
# Settings that --quick replaces, unless given explicitly.
FULL = dict(models=["resnet-50", "convnext-tiny", "vit-base"], image_size=224, repeats=3, examples=[8, 16, 32, 64],
            sizes=["resnet-18", "resnet-34", "resnet-50", "resnet-101", "vit-small", "vit-base"])
QUICK = dict(models=["resnet-50"], image_size=64, repeats=1, examples=[8, 16], sizes=["resnet-18", "resnet-50"])


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak`` is the largest sample."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self._process, self._interval = psutil.Process(), interval
        self.peak, self._running = 0, False

    def __enter__(self) -> "PeakRSS":
        self.peak, self._running = self._process.memory_info().rss, True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __exit__(self, *exc: Any) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


@dataclass(frozen=True)
class Measurement:
    """One measurement. ``kind`` is ``"forward"`` (autograd forward's memory, then no-grad forward's time, on one
    batch) or a scorer name (``repeats + 1`` pruning rounds on ``examples`` images)."""

    kind: str
    model: str
    examples: int
    batch: int
    image_size: int
    repeats: int
    threads: int
    allocator: str = "glibc"


# glibc's mallopt parameters, by the environment variable that sets each at start-up. Setting either one turns off
# glibc's own adjustment of both.
_MALLOPT = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}
ALLOCATORS: dict[str, dict[str, int]] = {
    # The default: blocks of 128 KiB or more are mapped and returned when freed, until frees of larger mapped blocks
    # raise that threshold (up to 32 MiB) and later blocks stay in the heap; the heap's free top is returned to the
    # system above twice the threshold.
    "glibc": {},
    # Every block of 64 KiB or more is mapped and returned when freed: memory follows what is live, page faults on
    # every large allocation.
    "mmap": {"MALLOC_MMAP_THRESHOLD_": 65536},
    # Blocks up to 32 MiB come from the heap and freed memory is kept for reuse up to 1 GiB: fewer page faults.
    "heap": {"MALLOC_MMAP_THRESHOLD_": 32 << 20, "MALLOC_TRIM_THRESHOLD_": 1 << 30},
}


def _env(allocator: str) -> str:
    """The environment that gives ``allocator`` to a process, as markdown."""
    return "`" + " ".join(f"{name}={value}" for name, value in ALLOCATORS[allocator].items()) + "`"


def _set_allocator(allocator: str) -> None:
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    for name, value in ALLOCATORS[allocator].items():
        if not libc.mallopt(_MALLOPT[name], value):
            raise OSError(f"mallopt({_MALLOPT[name]}, {value}) failed ({name})")


TYPE_PREFIX = "type:"  # a Measurement's model "type:<model_type>": that transformers type's default config


def model_label(model: str) -> str:
    return model[len(TYPE_PREFIX):] if model.startswith(TYPE_PREFIX) else MODELS[model][0]


def _build(model: str, image_size: int):
    from px_hf.zoo import image_classifier, imagenet_model

    if model.startswith(TYPE_PREFIX):
        return image_classifier(model[len(TYPE_PREFIX):], NUM_LABELS, image_size=image_size)[0]
    _, family, overrides = MODELS[model]
    return imagenet_model(family, num_labels=NUM_LABELS, image_size=image_size, **overrides)


def _measure(m: Measurement) -> dict[str, float]:
    """Runs in a fresh process: seconds (median), extra peak bytes, parameter count and bytes."""
    import psutil
    import torch

    from px_hf import PXConfig, PXPruner
    from px_hf.modeling.io import forward

    torch.set_num_threads(m.threads)
    _set_allocator(m.allocator)
    model = _build(m.model, m.image_size)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(m.examples, 3, m.image_size, m.image_size, generator=generator)
    labels = torch.randint(NUM_LABELS, (m.examples,), generator=generator)
    before = psutil.Process().memory_info().rss
    times: list[float] = []
    if m.kind == "forward":
        model.eval()
        # Memory first: memory freed afterwards may stay resident, which would hide part of a later peak.
        with PeakRSS() as peak:
            forward(model, x).sum().item()
        with torch.no_grad():
            forward(model, x)  # warm-up
            for _ in range(m.repeats):
                start = time.perf_counter()
                forward(model, x)
                times.append(time.perf_counter() - start)
    else:
        pruner = PXPruner(model, PXConfig(sparsity=SPARSITY, scorer=m.kind, rounds=m.repeats + 1,
                                          examples_per_class=None, batch_size=m.batch))
        stamps: list[float] = []
        with PeakRSS() as peak:
            pruner.prune((x, labels), progress=False, callback=lambda *_: stamps.append(time.perf_counter()))
        times = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"seconds": statistics.median(times), "extra_bytes": peak.peak - before,
            "params": sum(p.numel() for p in model.parameters()),
            "params_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def _main_job(threads: int) -> dict[str, float]:
    """Runs in a fresh process: the pruning of ``px-hf prune`` with its defaults (the small ViT, 10 digits per
    class, PXConfig()), against a plain forward pass over its pruning set in batches of the config's size."""
    import torch

    from px_hf import PXConfig, PXPruner
    from px_hf.digits import load_digits
    from px_hf.modeling.io import forward
    from px_hf.zoo import small_model

    torch.set_num_threads(threads)
    config = PXConfig()
    pruner = PXPruner(small_model("vit"), config)
    start = time.perf_counter()
    pruner.prune(load_digits(), progress=False)
    pruning = time.perf_counter() - start
    model, inputs = small_model("vit").eval(), pruner.pruning_set.inputs
    times = []
    with torch.no_grad():
        for _ in range(6):
            start = time.perf_counter()
            for batch in inputs.split(config.batch_size):
                forward(model, batch)
            times.append(time.perf_counter() - start)
    rounds = pruner.history
    return {"examples": len(inputs), "rounds": len(rounds), "pruning_s": pruning, "rounds_per_s": len(rounds) / pruning,
            "round_s": statistics.median(r["seconds"] for r in rounds), "first_round_s": rounds[0]["seconds"],
            "forward_s": statistics.median(times[1:]),
            "outside_scoring": 1 - sum(r["scoring_seconds"] for r in rounds) / sum(r["seconds"] for r in rounds)}


def main_job_row(threads: int) -> dict[str, Any]:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        row = pool.submit(_main_job, threads).result()
    print(json.dumps(row), flush=True)
    return {**row, "round_over_forward": row["round_s"] / row["forward_s"]}


@functools.cache
def _run(m: Measurement, store: str) -> dict[str, float]:
    """``m``'s result: stored in ``store`` under its settings and the version of px_hf, else measured (and stored
    when px_hf has no uncommitted changes)."""
    version = code_version()
    path = None
    if version is not None:
        key = hashlib.sha256(json.dumps({**asdict(m), "px_hf": version}, sort_keys=True).encode()).hexdigest()[:12]
        path = os.path.join(store, f"{model_label(m.model).replace('/', '-')}-{m.kind}-{key}.json")
        if os.path.exists(path):
            with open(path) as handle:
                return json.load(handle)["result"]
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        result = pool.submit(_measure, m).result()
    print(json.dumps({**asdict(m), **result}), flush=True)  # progress: the full run takes minutes
    if path is not None:
        os.makedirs(store, exist_ok=True)
        write_json(path, {"measurement": asdict(m), "px_hf": version, "result": result})
    return result


def round_row(args: argparse.Namespace, model: str, scorer: str, examples: int,
              allocator: str = "glibc") -> dict[str, Any]:
    """A table row: ``scorer``'s round on ``model`` with ``examples`` pruning images, against a forward pass under
    the same allocator."""
    store = os.path.join(args.out, "speed_measurements")
    fwd = _run(Measurement("forward", model, args.batch, args.batch, args.image_size, args.repeats, args.threads,
                           allocator), store)
    run = _run(Measurement(scorer, model, examples, args.batch, args.image_size, args.repeats, args.threads,
                           allocator), store)
    mb = 2**20
    return {
        "model": model_label(model), "params_m": fwd["params"] / 1e6, "scorer": scorer, "examples": examples,
        "allocator": allocator,
        "batches": math.ceil(examples / args.batch), "forward_s": fwd["seconds"], "round_s": run["seconds"],
        "round_over_forward": run["seconds"] / fwd["seconds"], "params_mb": fwd["params_bytes"] / mb,
        "activations_mb": fwd["extra_bytes"] / mb, "extra_mb": run["extra_bytes"] / mb,
        "extra_over_budget": run["extra_bytes"] / (fwd["params_bytes"] + fwd["extra_bytes"]),
    }


def markdown(title: str, columns: dict[str, str], rows: list[dict[str, Any]], note: str) -> str:
    """``columns`` maps each header to a format string over a row, e.g. ``"{round_s:.2f}"``."""
    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f.format(**row) for f in columns.values()) + " |" for row in rows]
    return "\n".join(lines + ["", note])


_ROUND = {"round (s)": "{round_s:.2f}", "round / forward": "{round_over_forward:.2f}"}
_MEMORY = {"params + activations (MB)": "{params_mb:.0f} + {activations_mb:.0f}", "extra (MB)": "{extra_mb:.0f}",
           "extra / (params + activations)": "{extra_over_budget:.2f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (about a minute)")
    models = dict(choices=list(MODELS), metavar="MODEL")
    scorers = dict(choices=scorer_names(), metavar="SCORER")
    parser.add_argument("--models", nargs="+", **models,
                        help=f"models of the scorers table, from: {', '.join(MODELS)}")
    parser.add_argument("--scorers", nargs="+", **scorers, default=list(scorer_names()),
                        help=f"scorers of the scorers table, from: {', '.join(scorer_names())} (default: all)")
    parser.add_argument("--examples", nargs="+", type=int, help="pruning set sizes of the examples table")
    parser.add_argument("--example-scorers", nargs="+", **scorers, default=["px", "snip"],
                        help="scorers of the examples table (grasp is about 3 times slower than snip)")
    parser.add_argument("--example-model", **models, default="resnet-50", help="model of the examples table")
    parser.add_argument("--sizes", nargs="+", **models, help="models of the sizes table (PX only)")
    parser.add_argument("--image-size", type=int, help="pixels per side (default: 224; --quick: 64)")
    parser.add_argument("--batch", type=int, default=8, help="batch size, and the pruning set of the scorers table")
    parser.add_argument("--repeats", type=int, help="rounds timed per measurement (one more is run)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.batch, args.repeats, args.image_size, args.threads, *args.examples) < 1:
        parser.error("--batch, --repeats, --image-size, --threads and --examples must be positive")

    results = {
        "settings": {"image_size": args.image_size, "batch": args.batch, "repeats": args.repeats,
                     "threads": args.threads, "sparsity": SPARSITY, "dtype": "float32", "px_hf": code_version()},
        "scorers": [round_row(args, m, s, args.batch) for m in args.models for s in args.scorers],
        "examples": [round_row(args, args.example_model, s, n, allocator) for allocator in ("glibc", "mmap", "heap")
                     for s in args.example_scorers for n in args.examples],
        "allocators": [round_row(args, m, "px", args.batch, allocator) for m in args.models
                       for allocator in ("glibc", "heap")],
        "sizes": [round_row(args, m, "px", args.batch) for m in args.sizes],
        "main_job": [main_job_row(args.threads)],
    }
    setting = f"{args.image_size} px, batch {args.batch}, float32, CPU threads: {args.threads}"
    image_mb = 3 * args.image_size**2 * 4 / 2**20
    tables = [
        markdown(
            f"Time per round and peak extra memory of every scorer, pruning on one batch ({setting})",
            {"model": "{model}", "params": "{params_m:.1f} M", "forward (s)": "{forward_s:.2f}",
             "scorer": "{scorer}", **_ROUND, **_MEMORY}, results["scorers"],
            f"Round: median of {args.repeats} gap(s) between successive rounds (scoring, selection, masking). "
            "Forward: one no-grad forward pass of the same batch.\nExtra: peak resident memory of the whole "
            "pruning over that before it. Activations: extra memory of one forward pass with autograd on.",
        ),
        markdown(
            f"Cost against the number of pruning examples, {MODELS[args.example_model][0]} ({setting})",
            {"allocator": "{allocator}", "scorer": "{scorer}", "examples": "{examples}", "batches": "{batches}",
             **_ROUND, "extra (MB)": "{extra_mb:.0f}"}, results["examples"],
            "Each round scores the batches one after another, so time is expected to grow linearly with them and "
            f"memory to stay flat\napart from the pruning set itself ({image_mb:.2f} MB per image). Forward: one "
            "batch. Allocator: glibc's default, which keeps freed large blocks\nresident for reuse once it has "
            "raised its mmap threshold; `mmap`: every block of 64 KiB or more mapped and returned when freed "
            f"({_env('mmap')});\n`heap`: blocks up to 32 MiB from the heap, freed memory kept up to 1 GiB "
            f"({_env('heap')}).",
        ),
        markdown(
            f"PX under two allocators ({setting})",
            {"model": "{model}", "allocator": "{allocator}", "forward (s)": "{forward_s:.2f}", **_ROUND,
             **_MEMORY}, results["allocators"],
            "Forward and round measured under the same allocator; glibc's default rows are the first table's. "
            f"`heap`: {_env('heap')} in the environment\n(or the same mallopt calls) before the process starts "
            "its work.",
        ),
        markdown(
            f"PX against model size ({setting})",
            {"model": "{model}", "params": "{params_m:.1f} M", "forward (s)": "{forward_s:.2f}", **_ROUND,
             **_MEMORY}, results["sizes"],
            "Same measurements as the first table, PX only.",
        ),
        markdown(
            f"The main job: `px-hf prune` with its defaults (CPU threads: {args.threads})",
            {"examples": "{examples}", "rounds": "{rounds}", "pruning (s)": "{pruning_s:.2f}",
             "rounds / s": "{rounds_per_s:.1f}", "round (s)": "{round_s:.3f}", "first round (s)": "{first_round_s:.3f}",
             "forward over the examples (s)": "{forward_s:.4f}", "round / forward": "{round_over_forward:.2f}",
             "outside scoring": "{outside_scoring:.1%}"}, results["main_job"],
            "The small ViT (133k prunable weights) on 10 digits per class, PX, 100 rounds to 98% sparsity. Round: "
            "median. Forward: one no-grad pass over\nthe examples in batches of 32. Outside scoring: the share of "
            "the rounds spent selecting and applying masks rather than in the scorer's passes.\nThe first round "
            "also checks that the data pass is linear.",
        ),
    ]
    save_results(args.out, "speed", results, "\n\n".join(tables))


if __name__ == "__main__":
    main()

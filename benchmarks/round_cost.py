"""Cost of one PX round against one plain forward pass on the same batch, with peak memory.

For ResNet-50, ConvNeXt-Tiny and ViT-Base sized configs (random init, 224 px, batch 8 by default), measures:
- the time of one no-grad forward pass in eval mode (median of several);
- the time of one PX round (scoring, selection, masking), as the median gap between successive rounds;
- the extra resident memory of each over the memory held before it (model, data), sampled every 2 ms, and of a
  forward pass with autograd on (the memory one forward pass's activations take);
and prints and saves the ratios. Targets (issue #2): a round costs at most 3.5 forward passes, and its extra memory
is at most one copy of the parameters plus one forward pass's extra memory.

Each measurement runs in its own process so that one's peak does not hide another's.

    python benchmarks/round_cost.py [--models resnet vit convnext] [--batch 8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import threading
import time

from _report import save_results

FAMILY_NAMES = {"resnet": "ResNet-50", "convnext": "ConvNeXt-Tiny", "vit": "ViT-Base/16"}


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak`` is the largest sample."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self._process, self._interval = psutil.Process(), interval
        self.peak, self._running = 0, False

    def __enter__(self):
        self.peak, self._running = self._process.memory_info().rss, True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _setup(family: str, batch: int):
    import torch

    from px_hf.zoo import small_model

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = small_model(family, size="base", image_size=224, num_channels=3, num_labels=1000)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return model, x


def _measure(kind: str, family: str, batch: int, repeats: int, queue) -> None:
    import psutil
    import torch

    from px_hf import PXConfig, PXPruner
    from px_hf.modeling.io import forward

    model, x = _setup(family, batch)
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    before = psutil.Process().memory_info().rss
    if kind in ("forward", "forward_grad"):
        # "forward": inference, activations freed as it goes; "forward_grad": the activations autograd keeps.
        model.eval()
        times = []
        with PeakRSS() as peak, torch.set_grad_enabled(kind == "forward_grad"):
            out = forward(model, x)  # warm-up
            for _ in range(repeats):
                del out
                start = time.perf_counter()
                out = forward(model, x)
                times.append(time.perf_counter() - start)
    else:
        stamps = []
        pruner = PXPruner(model, PXConfig(sparsity=0.5, rounds=repeats + 1, examples_per_class=None,
                                          batch_size=batch))
        with PeakRSS() as peak:
            pruner.prune(x, progress=False, callback=lambda *_: stamps.append(time.perf_counter()))
        times = [b - a for a, b in zip(stamps, stamps[1:])]
    queue.put({"seconds": statistics.median(times), "extra_bytes": peak.peak - before,
               "params_bytes": params_bytes, "params": sum(p.numel() for p in model.parameters())})


def _run(kind: str, family: str, batch: int, repeats: int) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(kind, family, batch, repeats, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet", "convnext", "vit"], choices=sorted(FAMILY_NAMES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    rows = []
    for family in args.models:
        fwd = _run("forward", family, args.batch, args.repeats)
        fwd_grad = _run("forward_grad", family, args.batch, 1)
        px = _run("round", family, args.batch, args.repeats)
        budget = fwd["params_bytes"] + fwd_grad["extra_bytes"]
        rows.append({
            "model": FAMILY_NAMES[family], "params": fwd["params"], "batch": args.batch,
            "forward_s": fwd["seconds"], "px_round_s": px["seconds"],
            "round_over_forward": px["seconds"] / fwd["seconds"],
            "forward_extra_mb": fwd["extra_bytes"] / 2**20, "activations_mb": fwd_grad["extra_bytes"] / 2**20,
            "px_extra_mb": px["extra_bytes"] / 2**20,
            "params_mb": fwd["params_bytes"] / 2**20,
            "px_extra_over_budget": px["extra_bytes"] / budget,
        })
        print(json.dumps(rows[-1]), flush=True)

    lines = [
        f"One PX round vs one forward pass (224 px, batch {args.batch}, float32, {os.cpu_count()} CPU threads)",
        "",
        "| model | params | forward (s) | PX round (s) | round / forward | params (MB) | inference peak (MB) "
        "| activations (MB) | PX extra (MB) | PX extra / (params + activations) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['forward_s']:.2f} | {r['px_round_s']:.2f} | "
            f"{r['round_over_forward']:.2f} | {r['params_mb']:.0f} | {r['forward_extra_mb']:.0f} | "
            f"{r['activations_mb']:.0f} | {r['px_extra_mb']:.0f} | {r['px_extra_over_budget']:.2f} |"
        )
    lines += [
        "",
        "Inference peak: extra memory of a no-grad forward (activations freed as it goes). Activations: extra memory",
        "of a forward with autograd on, which keeps every activation. PX extra: extra memory of a whole PX round.",
    ]
    save_results(args.out, "round_cost", rows, "\n".join(lines))

if __name__ == "__main__":
    main()

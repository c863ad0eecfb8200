"""Where a PX round goes: the real, data and path passes, the path pass's backward, selection and masking, each
in plain forward passes of the same batch.

Random-init models, float32, 224 px, one batch of 8 as the pruning set, PX at 50% in 4 rounds; the first round
(which also checks linearity and the scores' signs) is left out and the other three averaged. A pass is timed from
entering its mode to leaving it; ``backward and rest`` is the round minus the timed parts (mostly the path pass's
backward; also the weight buffers and the score checks). Each model runs in its own process.

    python benchmarks/round_breakdown.py [--models resnet-50 convnext-tiny vit-base] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

from _report import code_version, save_results
from speed import MODELS, _build

PARTS = ("real", "data", "path", "select_masks", "apply_masks")


def breakdown(model_name: str, threads: int, rounds: int = 3) -> dict:
    """Runs in a fresh process: forward seconds and, per part of a round, seconds averaged over ``rounds``."""
    import torch

    import px_hf.rounds as rounds_module
    from px_hf import PXConfig, PXPruner
    from px_hf.modeling.passes import LinearizedPasses

    torch.set_num_threads(threads)
    model = _build(model_name, 224)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 224, 224, generator=generator)
    labels = torch.randint(1000, (8,), generator=generator)
    with torch.no_grad():
        model.eval()
        model(pixel_values=x)  # warm-up
        forwards = []
        for _ in range(3):
            start = time.perf_counter()
            model(pixel_values=x)
            forwards.append(time.perf_counter() - start)
    spent: dict[str, float] = defaultdict(float)
    timing = [False]  # from the end of the first round on
    run = LinearizedPasses.run

    @contextlib.contextmanager
    def timed_run(passes, mode, record=True):
        start = time.perf_counter()
        with run(passes, mode, record) as entered:
            yield entered
        if timing[0]:
            spent[mode] += time.perf_counter() - start

    def timed(name):
        function = getattr(rounds_module, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = function(*args, **kwargs)
            if timing[0]:
                spent[name] += time.perf_counter() - start
            return out
        return wrapper

    stamps: list[float] = []

    def callback(*_):
        stamps.append(time.perf_counter())
        timing[0] = True

    with contextlib.ExitStack() as stack:
        LinearizedPasses.run = timed_run
        stack.callback(setattr, LinearizedPasses, "run", run)
        for name in ("select_masks", "apply_masks"):
            stack.callback(setattr, rounds_module, name, getattr(rounds_module, name))
            setattr(rounds_module, name, timed(name))
        pruner = PXPruner(model, PXConfig(sparsity=0.5, rounds=rounds + 1, batch_size=8, examples_per_class=None))
        pruner.prune((x, labels), progress=False, callback=callback)
    round_seconds = (stamps[-1] - stamps[0]) / rounds
    parts = {name: spent[name] / rounds for name in PARTS}
    parts["backward and rest"] = round_seconds - sum(parts.values())
    return {"model": model_name, "threads": threads, "forward": min(forwards), "round": round_seconds, "parts": parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["resnet-50", "convnext-tiny", "vit-base"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    rows = []
    for name in args.models:  # a fresh process per model: nothing warm or allocated carries over
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            rows.append(pool.submit(breakdown, name, args.threads).result())
    columns = list(rows[0]["parts"])
    lines = [f"Where a PX round goes, in plain forward passes of the same batch (224 px, batch 8, CPU threads: "
             f"{args.threads}; px_hf tree {code_version()}; `python benchmarks/round_breakdown.py --threads "
             f"{args.threads}`)", "",
             "| model | forward (s) | round (s) | round / forward | " + " | ".join(columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]
    for row in rows:
        lines.append(f"| {MODELS[row['model']][0]} | {row['forward']:.2f} | {row['round']:.2f} | "
                     f"{row['round'] / row['forward']:.2f} | "
                     + " | ".join(f"{row['parts'][c] / row['forward']:.2f}" for c in columns) + " |")
    save_results(args.out, f"round_breakdown_t{args.threads}", rows, "\n".join(lines))


if __name__ == "__main__":
    main()

"""Does the pruning data change PX's masks? The quality benchmark's networks (``quality.py``), pruned to 98% with
the default PXConfig on 10 images per class, on 100 per class, and on Gaussian noise of the same shape and scale;
each mask set is compared with the first (the fraction of its kept weights the other also keeps).

PX's bound pairs a data term ``Z1`` and a weight term ``z2`` only at the outputs, through a K-vector. A dense last
layer sums every unit into every output, so ``Z1`` is the same for every output and the data is left with one
common factor; what remains data-dependent is the normalizations' statistics in the path pass. A network whose
norms use running statistics (ResNet's BatchNorm, ``px_norm="running"``) and whose head is not pruned (the
transfer scenario) gets masks that do not depend on the data at all. This script measures it.

    python benchmarks/data_dependence.py     # about a minute with the pre-trained networks cached by quality.py
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _report import save_results  # noqa: E402
from fashion_schedule import SCHEDULE  # noqa: E402


def _masks(scenario: str, family: str, seed: int, data, examples_per_class: int) -> dict[str, torch.Tensor]:
    import quality
    from px_hf import PXConfig, PXPruner

    num_labels = int(data[1].max()) + 1
    if scenario == "scratch":
        model = quality._model(family, num_labels, SCHEDULE, seed)
    else:
        model, _ = quality._transferred(scenario, family, seed, SCHEDULE, num_labels)
    config = PXConfig(sparsity=0.98, seed=seed, examples_per_class=examples_per_class,
                      exclude=None if scenario == "scratch" else [quality.HEAD])
    pruner = PXPruner(model, config)
    pruner.prune(data, progress=False)
    return pruner.masks


def _shared(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    kept = sum(int(m.sum()) for m in reference.values())
    return sum(int((m & other[n]).sum()) for n, m in reference.items()) / kept


def main() -> None:
    import quality
    from px_hf.masks import mask_digest

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=["transfer", "scratch"], choices=["transfer", "scratch"])
    parser.add_argument("--families", nargs="+", default=["resnet", "convnext", "vit"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for scenario in args.scenarios:
        train, _ = quality._task(scenario, SCHEDULE, "target")
        x, y = train
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(args.seed)) * x.std() + x.mean()
        for family in args.families:
            reference = _masks(scenario, family, args.seed, train, 10)
            for label, data, per_class in (("100 images per class", train, 100), ("noise", (noise, y), 10)):
                masks = _masks(scenario, family, args.seed, data, per_class)
                rows.append({"scenario": scenario, "family": family, "against": label,
                             "identical": mask_digest(masks) == mask_digest(reference),
                             "shared": _shared(reference, masks)})
    table = "\n".join(
        [f"PX masks at 98% (default PXConfig, seed {args.seed}) against those from 10 images per class: the fraction "
         "of the kept weights both keep (`python benchmarks/data_dependence.py`).", "",
         "| scenario | family | pruned on | same masks | kept weights shared |", "|---|---|---|---|---|"]
        + [f"| {r['scenario']} | {r['family']} | {r['against']} | {'yes' if r['identical'] else 'no'} | "
           f"{r['shared']:.3f} |" for r in rows])
    save_results(args.out, "data_dependence", rows, table)


if __name__ == "__main__":
    main()

"""Where each method spends its weights: kept weights per layer after pruning one network of the quality benchmark.

Prunes the network a run of ``benchmarks/quality.py`` would prune (same scenario, family, seed and pruning set; the
pre-trained networks come from its cache) with each method, and prints a table of kept weights per layer, one
column per method. PX variants are given as ``px:KEY=VALUE``.

    python benchmarks/layer_budget.py --scenario transfer --family convnext --seed 0 --sparsity 0.98 \\
        --methods px synflow px:px_branch_share=1.0
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
from _report import save_results  # noqa: E402


def kept_per_layer(scenario: str, family: str, seed: int, sparsity: float, method: str) -> dict[str, list[int]]:
    """Parameter name -> [kept, total] after pruning with ``method`` (``scorer`` or ``px:KEY=VALUE``), on the
    network and pruning set of the matching ``quality.py`` run."""
    from px_hf import PXConfig, PXPruner
    from px_hf.config import parse_override

    scorer, _, option = method.partition(":")
    spec = quality.run_spec(scenario, family, scorer, sparsity, seed, dict(quality.SCHEDULE),
                            dict([parse_override(option)]) if option else {})
    model, _, train_data, _ = quality.network_to_prune(spec)
    masks = PXPruner(model, PXConfig.from_dict(spec["config"])).prune(train_data, progress=False)
    return {name: [int(mask.sum()), mask.numel()] for name, mask in masks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="transfer", choices=quality.SCENARIOS)
    parser.add_argument("--family", default="convnext")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparsity", type=float, default=0.98)
    parser.add_argument("--methods", nargs="+", default=["px", "synflow"])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    from px_hf.config import parse_override
    from px_hf.errors import ConfigError
    from px_hf.scoring import scorer_names

    for method in args.methods:
        scorer, _, option = method.partition(":")
        if scorer not in scorer_names():
            parser.error(f"--methods: {scorer!r} is not a scorer; choose from {', '.join(scorer_names())}")
        try:
            if option:
                parse_override(option)
        except ConfigError as err:
            parser.error(f"--methods {method}: {err}")
    torch.set_num_threads(1)
    kept = {m: kept_per_layer(args.scenario, args.family, args.seed, args.sparsity, m) for m in args.methods}
    layers = list(kept[args.methods[0]])
    lines = [f"Kept weights per layer: {args.scenario} {args.family}, seed {args.seed}, {args.sparsity:.1%} sparsity "
             f"(`python benchmarks/layer_budget.py --scenario {args.scenario} --family {args.family} --seed "
             f"{args.seed} --sparsity {args.sparsity} --methods {' '.join(args.methods)}`)", "",
             "| layer | weights | " + " | ".join(args.methods) + " |", "|---|---|" + "---|" * len(args.methods)]
    lines += [f"| {n} | {kept[args.methods[0]][n][1]} | " + " | ".join(str(kept[m][n][0]) for m in args.methods) + " |"
              for n in layers]
    lines.append("| total | " + str(sum(kept[args.methods[0]][n][1] for n in layers)) + " | "
                 + " | ".join(str(sum(kept[m][n][0] for n in layers)) for m in args.methods) + " |")
    name = f"layer_budget_{args.scenario}_{args.family}_s{args.seed}_{args.sparsity}"
    save_results(args.out, name, {"args": vars(args), "kept": kept}, "\n".join(lines))


if __name__ == "__main__":
    main()

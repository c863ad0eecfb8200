"""Where each method spends its weights: kept weights per layer after pruning one network of the quality benchmark.

Prunes the network a run of ``benchmarks/quality.py`` would prune (same scenario, family, seed and pruning set; the
pre-trained networks come from its cache) with each method, and prints a table of kept weights per layer, one
column per method. PX variants are given as ``px:KEY=VALUE``. For PX with a share rule (``floored``, ``initial``) a
second table gives each residual branch's share in the first path pass, and the floor it was raised to.

    python benchmarks/layer_budget.py --scenario transfer --family convnext --seed 0 --sparsity 0.98 \\
        --methods px synflow px:px_branch_share=1.0
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
from _report import save_results  # noqa: E402


class _ShareRecorder(logging.Handler):
    """Keeps the branch shares px_hf logs (at DEBUG) after PX's first path pass."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.shares: dict[str, float] = {}
        self.floor = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "branch_shares"):
            self.shares, self.floor = record.branch_shares, record.share_floor


def kept_per_layer(scenario: str, family: str, seed: int, sparsity: float,
                   method: str) -> tuple[dict[str, list[int]], dict[str, float], float]:
    """Parameter name -> [kept, total] after pruning with ``method`` (``scorer`` or ``px:KEY=VALUE``), on the
    network and pruning set of the matching ``quality.py`` run; with the first-round branch shares (branch name ->
    share; empty unless PX follows a share rule) and the floor they were raised to (0: none)."""
    from px_hf import PXConfig, PXPruner
    from px_hf.config import parse_override

    scorer, _, option = method.partition(":")
    spec = quality.run_spec(scenario, family, scorer, sparsity, seed, dict(quality.SCHEDULE),
                            dict([parse_override(option)]) if option else {})
    model, _, train_data, _ = quality.network_to_prune(spec)
    recorder, residual_log = _ShareRecorder(), logging.getLogger("px_hf.modeling.passes.residual")
    level = residual_log.level
    residual_log.addHandler(recorder)
    residual_log.setLevel(logging.DEBUG)
    try:
        masks = PXPruner(model, PXConfig.from_dict(spec["config"])).prune(train_data, progress=False)
    finally:
        residual_log.removeHandler(recorder)
        residual_log.setLevel(level)
    return {name: [int(mask.sum()), mask.numel()] for name, mask in masks.items()}, recorder.shares, recorder.floor


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
    measured = {m: kept_per_layer(args.scenario, args.family, args.seed, args.sparsity, m) for m in args.methods}
    kept = {m: result[0] for m, result in measured.items()}
    shares = {m: {"shares": result[1], "floor": result[2]} for m, result in measured.items() if result[1]}
    layers = list(kept[args.methods[0]])
    lines = [f"Kept weights per layer: {args.scenario} {args.family}, seed {args.seed}, {args.sparsity:.1%} sparsity "
             f"(`python benchmarks/layer_budget.py --scenario {args.scenario} --family {args.family} --seed "
             f"{args.seed} --sparsity {args.sparsity} --methods {' '.join(args.methods)}`)", "",
             "| layer | weights | " + " | ".join(args.methods) + " |", "|---|---|" + "---|" * len(args.methods)]
    lines += [f"| {n} | {kept[args.methods[0]][n][1]} | " + " | ".join(str(kept[m][n][0]) for m in args.methods) + " |"
              for n in layers]
    lines.append("| total | " + str(sum(kept[args.methods[0]][n][1] for n in layers)) + " | "
                 + " | ".join(str(sum(kept[m][n][0] for n in layers)) for m in args.methods) + " |")
    if shares:
        ruled = list(shares)
        lines += ["", "Residual branch shares in PX's first path pass (the mean magnitude of the branch's output over "
                  "that of the stream entering its block), and the floor they are raised to:", "",
                  "| branch | " + " | ".join(ruled) + " |", "|---|" + "---|" * len(ruled)]
        lines += [f"| {b} | " + " | ".join(f"{shares[m]['shares'].get(b, float('nan')):.3g}" for m in ruled) + " |"
                  for b in shares[ruled[0]]["shares"]]
        lines.append("| floor | " + " | ".join(f"{shares[m]['floor']:.3g}" if shares[m]["floor"] else "none"
                                               for m in ruled) + " |")
    name = f"layer_budget_{args.scenario}_{args.family}_s{args.seed}_{args.sparsity}"
    save_results(args.out, name, {"args": vars(args), "kept": kept, "branch_shares": shares}, "\n".join(lines))


if __name__ == "__main__":
    main()

"""Round cost of PX on every transformers image classifier type it prunes: the time of a PX round over the time of
one forward pass, each type at its default config (the real architecture, randomly initialized), 224 px.

Target: at most 4 forward passes per round on every covered type. The types are those whose PX data pass is
linear in ``benchmarks/results/coverage.json`` (regenerate it with ``python benchmarks/coverage.py``). Each type
runs in its own spawned process (see ``speed.py`` for how a round and a forward pass are timed, and stored: each
measurement is kept under ``benchmarks/results/speed_measurements/``, keyed by its settings and the version of
``px_hf/``, and skipped when present, so an interrupted run resumes). Writes
``benchmarks/results/speed_types.{md,json}``. About 27 minutes on 2 CPU cores.

    python benchmarks/speed_types.py [--types vit resnet ...] [--batch 8] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os

from _report import code_version, save_results
from speed import TYPE_PREFIX, markdown, round_row

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = 4.0


def covered_types() -> list[str]:
    """The types whose PX data pass the coverage test found linear."""
    with open(os.path.join(HERE, "results", "coverage.json")) as handle:
        coverage = json.load(handle)
    return sorted(t for t, checks in coverage.items() if checks["test_px_data_pass_is_linear"][0] == "passed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", help="model types (default: every type PX covers)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8, help="batch size, and the pruning set")
    parser.add_argument("--repeats", type=int, default=2, help="rounds timed per type (one more is run)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    types = args.types or covered_types()
    rows = [round_row(args, TYPE_PREFIX + model_type, "px", args.batch) for model_type in types]
    over = [r["model"] for r in rows if r["round_over_forward"] > TARGET]
    table = markdown(
        f"PX round cost per model type, default configs ({args.image_size} px, batch {args.batch}, float32, CPU "
        f"threads: {args.threads}, px_hf version {code_version() or 'uncommitted'})",
        {"type": "{model}", "params": "{params_m:.1f} M", "forward (s)": "{forward_s:.3f}", "round (s)": "{round_s:.3f}",
         "round / forward": "{round_over_forward:.2f}", "extra / (params + activations)": "{extra_over_budget:.2f}"},
        rows,
        f"Round: median of {args.repeats} gap(s) between successive PX rounds; forward: one no-grad forward pass of "
        f"the same batch. Target: round / forward <= {TARGET:g}; over it: {', '.join(over) or 'none'}.\n"
        "`python benchmarks/speed_types.py`",
    )
    save_results(args.out, "speed_types", rows, table)


if __name__ == "__main__":
    main()

"""The paper's pre-trained scenario, in small and offline: pre-train dense on digits 0-4, prune the pre-trained
network, transfer it to digits 5-9 with the Trainer, and compare with transferring the dense network.

    python recipes/transfer_digits.py [--families resnet vit] [--sparsities 0.9 0.98] [--epochs 8]
        [--out transfer-digits] [--px px_branch_share=initial]

Prints a markdown table (also written to OUT/results.md): accuracy on 5-9 after transfer for the dense network and
for PX and random pruning of it at each sparsity. Same seed, same training for every row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import finetune  # noqa: E402  (the recipe next to this file)

from px_hf import PXConfig, PXPruner  # noqa: E402
from px_hf.config import parse_override  # noqa: E402
from px_hf.digits import load_digits  # noqa: E402


def _train(args: list[str]) -> float:
    """Run recipes/finetune.py in this process; return its eval accuracy."""
    code = finetune.main(args)
    if code != 0:
        raise SystemExit(code)
    output_dir = args[args.index("--output_dir") + 1]
    return json.load(open(os.path.join(output_dir, "all_results.json")))["eval_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["resnet", "vit"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.98])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default="transfer-digits")
    parser.add_argument("--px", nargs="*", default=[], metavar="KEY=VALUE",
                        help="PXConfig fields for the PX runs, e.g. px_branch_share=initial")
    args = parser.parse_args()
    px_options = dict(parse_override(item) for item in args.px)
    training = ["--do_train", "--do_eval", "--num_train_epochs", str(args.epochs), "--use_cpu", "--report_to",
                "none", "--per_device_train_batch_size", "32", "--learning_rate", "2e-3", "--weight_decay", "0.05",
                "--disable_tqdm", "true", "--save_strategy", "no", "--seed", "0"]
    source = ("--dataset_name", "digits", "--digits_classes", "0,1,2,3,4")
    target = ("--dataset_name", "digits", "--digits_classes", "5,6,7,8,9")
    pretrain_data = load_digits(classes=(0, 1, 2, 3, 4))
    rows = []
    for family in args.families:
        dense = os.path.join(args.out, family, "dense-0-4")
        accuracy = _train(["--model_name_or_path", family, *source, "--px_dense", "--output_dir", dense, *training])
        rows.append((family, "dense, pre-training on 0-4", "-", accuracy, "-"))
        transfer = _train(["--model_name_or_path", dense, *target, "--px_dense", "--output_dir",
                           os.path.join(args.out, family, "dense-5-9"), *training])
        rows.append((family, "dense, transferred to 5-9", "0%", transfer, "-"))
        for sparsity in args.sparsities:
            for scorer in ("px", "random"):
                options = px_options if scorer == "px" else {}
                pruner = PXPruner.from_pretrained(dense, PXConfig(sparsity=sparsity, scorer=scorer, **options))
                pruner.prune(pretrain_data, progress=False, source="digits 0-4")
                pruned = os.path.join(args.out, family, f"{scorer}-{sparsity}")
                pruner.save_pretrained(pruned)
                accuracy = _train(["--model_name_or_path", pruned, *target, "--output_dir", pruned + "-5-9",
                                   *training])
                rows.append((family, f"{scorer} pruned on 0-4, transferred to 5-9", f"{sparsity:.0%}", accuracy,
                             len(pruner.summary().collapsed)))
    lines = ["| model | network | sparsity | accuracy on held-out digits | layers pruned to zero |",
             "|---|---|---|---|---|"]
    lines += [f"| {f} | {n} | {s} | {a:.3f} | {c} |" for f, n, s, a, c in rows]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write(table + "\n")


if __name__ == "__main__":
    main()

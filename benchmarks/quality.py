"""Quality of pruning: PX against the baselines on Fashion-MNIST, from scratch and in pre-trained transfer.

Scenarios (small ResNet, ConvNeXt and ViT; sparsities 90%, 98%, 99.5%; seeds 0-2):
- ``scratch``: prune at initialization on a class-balanced pruning set (10 per class) of the training split, train
  with the converged schedule of ``fashion_schedule.py`` (AdamW, warm-up + cosine, flips), test on the 10k test set.
  Methods: dense, px, random, magnitude, snip, grasp, synflow, the PX sanity checks ``px+shuffle`` and
  ``px+reinit``, and ``px+noise`` (PX scored on Gaussian noise instead of images: does the data matter?). Named
  with ``--methods`` only: ``snip+shuffle``, and in the two transfer scenarios ``px+shuffle`` and ``snip+shuffle``
  (each layer's kept positions redrawn, the pre-trained values kept: budget or choice of weights?).
- ``transfer``: pre-train dense on classes 0-4 with the same schedule, put a new 5-way head on it, prune the
  pre-trained network with each method on a pruning set of classes 5-9 (the new head stays dense), fine-tune on
  classes 5-9 with the same schedule and test on them; ``dense`` transfers the unpruned network.
- ``cross``: pre-train dense on all ten Fashion-MNIST classes, prune on digits, fine-tune on scikit-learn's digits
  for ``CROSS_TARGET_EPOCHS`` epochs (digits is small: the schedule's epochs are too few steps for pruned networks).

Every run's result is stored in ``benchmarks/results/quality/<key>.json``, the key hashing everything that
determines it (scenario, family, method, sparsity, seed, schedule, architecture, the full PXConfig), and skipped
when present: the grid (several hours on 2 cores) resumes where it stopped. Pre-trained networks are cached in
``benchmarks/.cache`` (not in git). Writes ``benchmarks/results/quality.{md,json}`` and
``docs/quality_<family>.png`` (accuracy vs sparsity, one panel per scenario) from whatever runs are stored.

    python benchmarks/quality.py                      # the full grid (resumable), one run per core
    python benchmarks/quality.py --quick              # a smoke run: 1 seed, 98%, few methods, 1 epoch, 2k images
    python benchmarks/quality.py --report             # only rebuild tables and plots from the stored runs
    python benchmarks/quality.py --scenarios cross --target-epochs 10   # fine-tune 10 epochs (stored apart)
    python benchmarks/quality.py --scenarios transfer --methods dense px magnitude --px px_branch_share=null

Needs Fashion-MNIST: ``apt-get install dataset-fashion-mnist`` (``./run.sh bench`` installs it when run as root).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _report import replace_between, save_results, write_json  # noqa: E402
from fashion_schedule import ARCH, SCHEDULE, balanced_subset, evaluate, train  # noqa: E402

SCENARIOS = ("scratch", "transfer", "cross")
SCRATCH_METHODS = ["dense", "px", "random", "magnitude", "snip", "grasp", "synflow", "px+shuffle", "px+reinit",
                   "px+noise", "snip+shuffle"]
DEFAULT_METHODS = [m for m in SCRATCH_METHODS if m != "snip+shuffle"]  # the grid without --methods
TRANSFER_METHODS = ["dense", "px", "random", "magnitude", "snip", "grasp", "synflow"]
# Re-initializing a pre-trained network throws its training away, so the default grid runs no check on one.
# Shuffling only moves each layer's kept positions (the pre-trained values stay): asked for with --methods, it
# tells whether a method wins by its layer budget or by the weights it picks inside the layers.
PRETRAINED_CHECKS = ["px+shuffle", "snip+shuffle"]
SPARSITIES = [0.9, 0.98, 0.995]
HEAD = r"^classifier\."  # the new head of a transferred network is trained dense, as in recipes/finetune.py
CACHE = os.path.join(HERE, ".cache")
PROTOCOL = 1  # bump when the protocol changes in a way the key does not see
# Digits has 1,437 training images, 1/42 of Fashion-MNIST: at the schedule's 5 epochs (115 steps) the pruned networks
# are far from converged, and at 20 they still gain 1-2.5 points from doubling (docs/quality.md).
CROSS_TARGET_EPOCHS = 40
# From scratch the small ConvNeXt is not converged at the schedule's 5 epochs: dense, 5 -> 10 epochs gains 1.15 points
# (seeds 0-2), 10 -> 20 -0.13 and +0.02 (seeds 0 and 1; docs/quality.md). It trains 10; ResNet and ViT gain 0.63
# and 0.71 points from 5 to 10 and keep 5.
SCRATCH_TARGET_EPOCHS = {"convnext": 10}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------- data
def _task(scenario: str, schedule: dict, stage: str):
    """(train, test) tensors of a scenario's ``stage``: "source" (pre-training) or "target"."""
    from px_hf.digits import load_digits
    from px_hf.fashion_mnist import load_fashion_mnist

    size = schedule["image_size"]
    if scenario == "cross" and stage == "target":
        x, y = load_digits(image_size=size)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))  # fixed 20% test split
        test, train_ = order[: len(y) // 5], order[len(y) // 5:]
        return (x[train_], y[train_]), (x[test], y[test])
    classes = None
    if scenario == "transfer":
        classes = (0, 1, 2, 3, 4) if stage == "source" else (5, 6, 7, 8, 9)
    x, y = load_fashion_mnist("train", image_size=size, classes=classes)
    xt, yt = load_fashion_mnist("test", image_size=size, classes=classes)
    if classes is not None:  # renumber from 0
        y, yt = y - classes[0], yt - classes[0]
    # The same number of images per class in every scenario.
    keep = balanced_subset(y, schedule["subset"] * len(y.unique()) // 10, schedule["subset_seed"])
    return (x[keep], y[keep]), (xt, yt)


# ---------------------------------------------------------------------------------------------------- runs
def _model(family: str, num_labels: int, schedule: dict, seed: int):
    from px_hf.zoo import small_model

    return small_model(family, num_labels=num_labels, image_size=schedule["image_size"], seed=seed, **ARCH[family])


def _masked_training(model, masks):
    """Keep the pruned weights at exactly zero while training: gradients masked, weights re-zeroed every step."""
    from px_hf.masks import apply_masks

    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].register_hook(lambda grad, keep=mask: grad * keep)
    return lambda: apply_masks(params, masks)


def _pretrained(scenario: str, family: str, seed: int, schedule: dict) -> str:
    """Path of the dense network pre-trained on the scenario's source task (trained and cached on first use)."""
    from safetensors.torch import save_file

    spec = {"scenario": scenario, "family": family, "seed": seed, "schedule": schedule, "arch": ARCH[family]}
    path = os.path.join(CACHE, f"pretrained-{scenario}-{family}-s{seed}-{_digest(spec)}.safetensors")
    if not os.path.exists(path):
        train_data, test_data = _task(scenario, schedule, "source")
        model = _model(family, int(train_data[1].max()) + 1, schedule, seed)
        result = train(model, train_data, schedule, seed, test_data, eval_points=1)
        os.makedirs(CACHE, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path + ".tmp",
                  metadata={"accuracy": str(result["curve"][-1][1])})
        os.replace(path + ".tmp", path)
    return path


def _transferred(scenario: str, family: str, seed: int, schedule: dict, num_labels: int):
    """The pre-trained network with a new, freshly initialized ``num_labels``-way head."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = _pretrained(scenario, family, seed, schedule)
    model = _model(family, num_labels, schedule, seed + 1000)  # the new head's initialization
    state = {k: v for k, v in load_file(path).items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    with safe_open(path, "pt") as handle:
        source_accuracy = float(handle.metadata()["accuracy"])
    return model, source_accuracy


def target_epochs_of(scenario: str, family: str, given: Optional[int]) -> Optional[int]:
    """Epochs of the training after pruning: ``given``, else the scenario's and family's own (``None``: the
    schedule's)."""
    if given is not None:
        return given
    if scenario == "cross":
        return CROSS_TARGET_EPOCHS
    return SCRATCH_TARGET_EPOCHS.get(family) if scenario == "scratch" else None


def epochs_after_pruning(scenario: str, family: str, given: Optional[int], schedule: dict) -> int:
    """What :func:`target_epochs_of` resolves to, the schedule's epochs where it gives none."""
    return target_epochs_of(scenario, family, given) or schedule["epochs"]


def trained_epochs(spec: dict) -> int:
    """Epochs a run trains after pruning (runs stored without ``target_epochs`` train the schedule's)."""
    return spec.get("target_epochs", spec["schedule"]["epochs"])


def network_to_prune(spec: dict):
    """The network a run prunes (fresh from scratch, or pre-trained with a new head), the source task's accuracy
    (``None`` from scratch) and the target task's (train, test) data."""
    scenario, family, seed, schedule = spec["scenario"], spec["family"], spec["seed"], spec["schedule"]
    train_data, test_data = _task(scenario, schedule, "target")
    num_labels = int(train_data[1].max()) + 1
    if scenario == "scratch":
        return _model(family, num_labels, schedule, seed), None, train_data, test_data
    model, source_accuracy = _transferred(scenario, family, seed, schedule, num_labels)
    return model, source_accuracy, train_data, test_data


def run_spec(scenario: str, family: str, method: str, sparsity: float, seed: int, schedule: dict,
             px_options: dict, target_epochs: Optional[int] = None) -> dict:
    """Everything that determines a run (its key is a hash of this). ``target_epochs`` changes only the epochs of
    the training after pruning (the pre-trained network stays the schedule's); ``None`` keeps the scenario's."""
    from px_hf import PXConfig

    spec = {"protocol": PROTOCOL, "scenario": scenario, "family": family, "method": method, "seed": seed,
            "schedule": schedule, "arch": ARCH[family]}
    target_epochs = target_epochs_of(scenario, family, target_epochs)
    if target_epochs is not None:
        spec["target_epochs"] = target_epochs
    if method != "dense":
        scorer, _, variant = method.partition("+")
        config = PXConfig(sparsity=sparsity, scorer=scorer, seed=seed,
                          sanity_check=variant if variant in ("shuffle", "reinit") else None,
                          exclude=None if scenario == "scratch" else [HEAD], **(px_options if scorer == "px" else {}))
        spec.update(sparsity=sparsity, config=config.to_dict(), noise=variant == "noise")
    return spec


def grid(scenarios: list[str], families: list[str], seeds: list[int], methods: list[str], sparsities: list[float],
         schedule: dict, px_options: dict, target_epochs: Optional[int], explicit_methods: bool) -> list[dict]:
    """The specs of every run asked for; a pre-trained network gets the checks only when they are named."""
    pretrained_methods = TRANSFER_METHODS + (PRETRAINED_CHECKS if explicit_methods else [])
    return [run_spec(scenario, family, method, sparsity, seed, schedule, px_options, target_epochs)
            for scenario in scenarios for family in families for seed in seeds
            for method in methods if scenario == "scratch" or method in pretrained_methods
            for sparsity in ([0.0] if method == "dense" else sparsities)]


def method_label(spec: dict) -> str:
    """The method's name in tables: a PX variant shows the options that differ from the default PXConfig."""
    from px_hf import PXConfig

    if "config" not in spec or not spec["method"].startswith("px"):
        return spec["method"]
    default = PXConfig(sparsity=spec["config"]["sparsity"], seed=spec["seed"]).to_dict()
    changed = [f"{k}={v}" for k, v in spec["config"].items()
               if k not in ("scorer", "sanity_check", "exclude") and v != default[k]]
    return spec["method"] + (f" ({', '.join(changed)})" if changed else "")


def _competes(method: str) -> bool:
    """Whether ``method`` is a contender for the best sparse method: the sanity checks (``px+shuffle``, ...) and
    PX variants (``px (option=value)``) are shown beside PX, not ranked against it."""
    return method != "dense" and "+" not in method and " (" not in method


def _ordered(methods: set[str]) -> list[str]:
    """Methods in SCRATCH_METHODS order, each followed by its variants."""
    return sorted(methods, key=lambda m: (SCRATCH_METHODS.index(m.split(" ")[0]), m))


def run_key(spec: dict) -> str:
    sparsity = f"-{spec['sparsity']}" if "sparsity" in spec else ""
    return f"{spec['scenario']}-{spec['family']}-{spec['method']}{sparsity}-s{spec['seed']}-{_digest(spec)}"


def stored_rows(store: str, families: list[str], schedule: dict, target_epochs: Optional[int]) -> list[dict]:
    """Every run stored in ``store`` that the report counts, whichever invocation made it (PX variants included):
    those of ``families`` trained with ``schedule`` and the epochs it now prescribes, on the current
    architectures (superseded runs stay stored but are left out)."""
    rows = []
    for entry in sorted(os.listdir(store)) if os.path.isdir(store) else []:
        if entry.endswith(".json"):
            with open(os.path.join(store, entry)) as handle:
                row = json.load(handle)
            if (row["spec"]["schedule"] == schedule and row["family"] in families
                    and trained_epochs(row["spec"])
                    == epochs_after_pruning(row["scenario"], row["family"], target_epochs, schedule)
                    and row["spec"]["arch"] == ARCH[row["family"]]):
                rows.append(row)
    return rows


def run_one(spec: dict, store: str) -> dict:
    """Prune, train and test one run; the result is stored under its key."""
    from px_hf import PXConfig, PXPruner
    from px_hf.ntk import ntk_trace

    path = os.path.join(store, run_key(spec) + ".json")
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    scenario, family, seed, schedule = spec["scenario"], spec["family"], spec["seed"], spec["schedule"]
    model, source_accuracy, train_data, test_data = network_to_prune(spec)
    probe = test_data[0][:8]
    dense_trace = ntk_trace(model, probe)
    masks, collapsed, trace, prune_seconds = {}, [], dense_trace, 0.0
    if "config" in spec:
        x, y = train_data
        if spec["noise"]:  # same shape, scale and labels; no image content
            x = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * x.std() + x.mean()
        started = time.perf_counter()
        pruner = PXPruner(model, PXConfig.from_dict(spec["config"]))
        masks = pruner.prune((x, y), progress=False)
        prune_seconds = time.perf_counter() - started
        collapsed = pruner.summary().collapsed
        trace = ntk_trace(model, probe, masks)
    target_schedule = dict(schedule, epochs=trained_epochs(spec))
    result = train(model, train_data, target_schedule, seed, test_data, after_step=_masked_training(model, masks))
    params = dict(model.named_parameters())
    assert all(not params[n][~m].any() for n, m in masks.items()), "a pruned weight moved"
    row = {"key": run_key(spec), "scenario": scenario, "family": family, "method": method_label(spec),
           "sparsity": spec.get("sparsity", 0.0), "seed": seed, "accuracy": evaluate(model, *test_data),
           "curve": result["curve"], "collapsed": len(collapsed), "collapsed_layers": collapsed,
           "ntk_ratio": trace / dense_trace, "source_accuracy": source_accuracy, "prune_seconds": prune_seconds,
           "train_seconds": result["train_seconds"], "spec": spec}
    os.makedirs(store, exist_ok=True)
    write_json(path, row, indent=1)
    return row


# ---------------------------------------------------------------------------------------------------- report
def _cell(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def _spearman(a: list[float], b: list[float]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        for rank, index in enumerate(order):
            out[index] = float(rank)
        return out

    ra, rb = ranks(a), ranks(b)
    return statistics.correlation(ra, rb) if len(a) > 2 else float("nan")


def _within_one_std(values: list[float], best: list[float]) -> bool:
    """Whether the mean of ``values`` is at most one standard deviation of ``best`` (over its seeds) below the
    mean of ``best``. The best's spread, not the method's own: a method that varies a lot between seeds (one that
    collapses on some) must not count as tied for that reason."""
    spread = statistics.stdev(best) if len(best) > 1 else 0.0
    return statistics.mean(values) >= statistics.mean(best) - spread


def summarize(rows: list[dict], sparsities: list[float]) -> str:
    """One table per scenario (accuracy / collapsed layers / NTK-trace ratio, mean ± std over seeds; the best
    sparse method per column in bold, with those within one std of it; sanity checks and PX variants shown but not
    ranked), and the NTK-accuracy rank correlation."""
    parts = []
    for scenario in SCENARIOS:
        chosen = [r for r in rows if r["scenario"] == scenario]
        if not chosen:
            continue
        methods = _ordered({r["method"] for r in chosen})
        lines = [f"### {scenario}", "",
                 "| family | method | " + " | ".join(f"{s:.1%}: acc / collapsed / NTK ratio" for s in sparsities)
                 + " |", "|---|---|" + "---|" * len(sparsities)]
        correlations = []
        for family in ARCH:
            fam = [r for r in chosen if r["family"] == family]
            if not fam:
                continue
            for method in methods:
                cells = []
                for sparsity in sparsities:
                    sel = [r for r in fam if r["method"] == method and (method == "dense" or r["sparsity"] == sparsity)]
                    if not sel:
                        cells.append("-")
                        continue
                    accuracy = [r["accuracy"] for r in sel]
                    rivals = {m: [r["accuracy"] for r in fam if r["method"] == m and r["sparsity"] == sparsity]
                              for m in methods if _competes(m)}
                    # (dense has no rivals in a column where no sparse run is stored yet)
                    best = max((v for v in rivals.values() if v), key=statistics.mean, default=None)
                    tied = method != "dense" and best is not None and _within_one_std(accuracy, best)
                    text = _cell(accuracy, ".3f")
                    cells.append(f"{'**' + text + '**' if tied else text} / "
                                 f"{_cell([float(r['collapsed']) for r in sel], '.1f')} / "
                                 f"{_cell([r['ntk_ratio'] for r in sel], '.3g')}")
                if " (" in method and all(cell == "-" for cell in cells):
                    continue  # a PX variant tried on other families only
                lines.append(f"| {family} | {method} | " + " | ".join(cells) + " |")
            sparse = [r for r in fam if r["method"] != "dense"]
            if len(sparse) > 2:
                rho = _spearman([r["ntk_ratio"] for r in sparse], [r["accuracy"] for r in sparse])
                correlations.append(f"{family} {rho:+.2f} ({len(sparse)} runs)")
        lines += ["", "Spearman correlation of NTK-trace ratio and accuracy over the pruned runs: "
                  + (", ".join(correlations) or "too few runs")]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


GOAL_SPARSITIES = (0.98, 0.995)
GOAL_SEEDS = 3
GOAL_MARKERS = ("<!-- goal-check:start -->", "<!-- goal-check:end -->")
BASELINES = [m for m in TRANSFER_METHODS if m not in ("dense", "px")]


def goal_check(rows: list[dict]) -> str:
    """The benchmark's goal, cell by cell: is the default PX best or within one std of the best baseline (the best's
    spread, as in the tables), with no layer collapsed, at 98% and 99.5% in every scenario and family? A cell with
    fewer than ``GOAL_SEEDS`` seeds of PX or of any baseline is ``incomplete``, whatever its figures say."""
    lines = ["| scenario | family | sparsity | PX | best baseline | PX - best (points) | verdict |",
             "|---|---|---|---|---|---|---|"]
    verdicts = []
    for scenario in SCENARIOS:
        for family in ARCH:
            cell_rows = [r for r in rows if r["scenario"] == scenario and r["family"] == family]
            if not cell_rows:
                continue
            for sparsity in GOAL_SPARSITIES:
                runs = {m: [r for r in cell_rows if r["method"] == m and r["sparsity"] == sparsity]
                        for m in ["px"] + BASELINES}
                accuracy = {m: [r["accuracy"] for r in sel] for m, sel in runs.items()}
                short = [f"{m} {len(v)}" for m, v in accuracy.items() if len(v) < GOAL_SEEDS]
                stored = {m: v for m, v in accuracy.items() if v and m != "px"}
                best = max(stored, key=lambda m: statistics.mean(stored[m]), default=None)
                px, gap = accuracy["px"], ""
                if px and best is not None:
                    gap = f"{100 * (statistics.mean(px) - statistics.mean(stored[best])):+.2f}"
                if short:
                    verdict = "incomplete (seeds: " + ", ".join(short) + ")"
                elif any(r["collapsed"] for r in runs["px"]):
                    verdict = "PX collapses a layer"
                elif statistics.mean(px) >= statistics.mean(stored[best]):
                    verdict = "**PX best**"
                elif _within_one_std(px, stored[best]):
                    verdict = "**tied**"
                else:
                    verdict = "behind"
                verdicts.append(verdict)
                lines.append(f"| {scenario} | {family} | {sparsity:.1%} | {_cell(px, '.3f') if px else '-'} | "
                             + (f"{best} {_cell(stored[best], '.3f')}" if best else "-") + f" | {gap} | {verdict} |")
    met = sum(v.startswith("**") for v in verdicts)
    lines += ["", f"Goal met in {met} of {len(verdicts)} cells ({verdicts.count('behind')} behind, "
              f"{verdicts.count('PX collapses a layer')} with a layer collapsed by PX, "
              f"{sum(v.startswith('incomplete') for v in verdicts)} incomplete)."]
    return "\n".join(lines)


def plot(rows: list[dict], family: str, sparsities: list[float], path: str) -> None:
    """Accuracy vs sparsity for ``family``, one panel per scenario."""
    import matplotlib.pyplot as plt

    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s and r["family"] == family for r in rows)]
    if not scenarios:
        return
    figure, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 4), squeeze=False)
    for axis, scenario in zip(axes[0], scenarios):
        chosen = [r for r in rows if r["scenario"] == scenario and r["family"] == family]
        for method in _ordered({r["method"] for r in chosen}):
            points = [(s, [r["accuracy"] for r in chosen if r["method"] == method
                           and (method == "dense" or r["sparsity"] == s)]) for s in sparsities]
            points = [(s, v) for s, v in points if v]
            if not points:
                continue
            style = "k--" if method == "dense" else ("-o" if method.startswith("px") else "-.")
            axis.errorbar([100 * s for s, _ in points], [statistics.mean(v) for _, v in points],
                          yerr=[statistics.stdev(v) if len(v) > 1 else 0 for _, v in points], fmt=style,
                          label=method, capsize=3, linewidth=2 if method.startswith("px") else 1)
        axis.set_xlabel("sparsity (%)")
        axis.set_ylabel("test accuracy")
        axis.set_title(f"{family}: {scenario}")
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------- main
def _single_threaded() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(1)


def _option(text: str) -> tuple[str, object]:
    from px_hf.config import parse_override
    from px_hf.errors import ConfigError

    try:
        return parse_override(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--families", nargs="+", default=["resnet", "convnext", "vit"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=None, choices=SCRATCH_METHODS,
                        help="default: every method but snip+shuffle; checks on pre-trained networks only when named")
    parser.add_argument("--px", nargs="*", type=_option, default=[], metavar="KEY=VALUE",
                        help="PXConfig fields for the PX runs (variants are stored apart: the key includes them)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel, one thread each")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 98%%, dense/px/magnitude, 1 epoch on 2,000 images, also after pruning (results kept apart)")
    parser.add_argument("--target-epochs", type=int, default=None,
                        help="epochs of the training after pruning only, to check that it converges (results kept "
                             "apart, in quality-target-epochs-N; no plots)")
    parser.add_argument("--report", action="store_true", help="only rebuild the tables and plots")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--plots", default=os.path.join(ROOT, "docs"))
    args = parser.parse_args()
    explicit_methods = args.methods is not None
    args.methods = args.methods or DEFAULT_METHODS
    schedule, name, target_epochs = dict(SCHEDULE), "quality", args.target_epochs
    if args.quick:
        args.seeds, args.sparsities, name = [0], [0.98], "quality-quick"
        args.methods = [m for m in args.methods if m in ("dense", "px", "magnitude")]
        schedule.update(epochs=1, subset=2000)
        # A smoke run: the cross scenario's longer fine-tuning is cut to the schedule's epoch too.
        target_epochs = schedule["epochs"] if target_epochs is None else target_epochs
    if args.target_epochs is not None:
        name += f"-target-epochs-{args.target_epochs}"
    store = os.path.join(args.out, name)
    specs = grid(args.scenarios, args.families, args.seeds, args.methods, args.sparsities, schedule, dict(args.px),
                 target_epochs, explicit_methods)
    todo = [s for s in specs if not os.path.exists(os.path.join(store, run_key(s) + ".json"))]
    print(f"{len(specs)} runs, {len(specs) - len(todo)} stored, {len(todo)} to do", flush=True)
    if todo and not args.report:
        # Pre-trained networks first, one per (scenario, family, seed), so that no two jobs train the same one.
        sources = sorted({(s["scenario"], s["family"], s["seed"]) for s in todo if s["scenario"] != "scratch"})
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_single_threaded) as pool:
            for future in as_completed([pool.submit(_pretrained, *source, schedule) for source in sources]):
                future.result()
            futures = {pool.submit(run_one, spec, store): spec for spec in todo}
            for future in as_completed(futures):
                row = future.result()
                print(f"{row['key']}: accuracy {row['accuracy']:.4f}, collapsed {row['collapsed']}, "
                      f"{row['train_seconds']:.0f} s", flush=True)
    rows = stored_rows(store, args.families, schedule, target_epochs)
    epochs = {s: {f: epochs_after_pruning(s, f, target_epochs, schedule) for f in args.families} for s in SCENARIOS}
    command = ("python benchmarks/quality.py" + (" --quick" if args.quick else "")
               + (f" --target-epochs {args.target_epochs}" if args.target_epochs else ""))
    header = (f"Fashion-MNIST, schedule {schedule}, architectures {ARCH}; training after pruning (epochs): {epochs}; "
              f"{len(rows)} runs stored (`{command}`). Accuracy / layers collapsed / NTK trace of the pruned network "
              "relative to the unpruned one at the start of training, mean ± std over seeds; bold: best sparse method "
              "(sanity checks and PX variants excluded), or within one std of it.\n\n")
    goal = goal_check(rows)
    save_results(args.out, name, [{k: v for k, v in r.items() if k != "spec"} for r in rows],
                 header + "### goal check\n\n" + goal + "\n\n" + summarize(rows, args.sparsities))
    if name == "quality" and set(args.families) == set(ARCH):  # the full report: the docs show its goal check
        replace_between(os.path.join(ROOT, "docs", "quality.md"), *GOAL_MARKERS, goal)
        replace_between(os.path.join(ROOT, "README.md"), *GOAL_MARKERS, goal.splitlines()[-1])
    if not args.quick and args.target_epochs is None:
        import matplotlib

        matplotlib.use("Agg")
        os.makedirs(args.plots, exist_ok=True)
        for family in args.families:
            plot(rows, family, args.sparsities, os.path.join(args.plots, f"quality_{family}.png"))


if __name__ == "__main__":
    main()

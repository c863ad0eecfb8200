"""The speed benchmark runs end to end on its quick settings."""

import json
import math
import os
import subprocess
import sys

import pytest

from px_hf.scoring import scorer_names

SPEED = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "speed.py")


@pytest.mark.slow
def test_speed_quick_reports_every_scorer(tmp_path):
    # One thread: the test checks the script, not the speed, and a busy machine slows multi-threaded runs most.
    subprocess.run([sys.executable, SPEED, "--quick", "--threads", "1", "--out", str(tmp_path)], check=True,
                   env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900, stdout=subprocess.DEVNULL)
    results = json.loads((tmp_path / "speed.json").read_text())
    assert sorted(row["scorer"] for row in results["scorers"]) == sorted(scorer_names())
    assert {row["examples"] for row in results["examples"]} == {8, 16}
    assert len(results["sizes"]) == 2
    for row in results["scorers"] + results["examples"] + results["sizes"]:
        for field in ("forward_s", "round_s", "round_over_forward", "params_mb", "activations_mb", "extra_mb",
                      "extra_over_budget"):
            assert math.isfinite(row[field]) and row[field] > 0, (row["model"], row["scorer"], field, row[field])
    assert [(row["model"], row["allocator"]) for row in results["allocators"]] == [
        ("ResNet-50", "glibc"), ("ResNet-50", "heap")]
    assert {row["allocator"] for row in results["examples"]} == {"glibc", "mmap", "heap"}
    assert "| grasp |" in (tmp_path / "speed.md").read_text()


def _benchmark_module(name):
    import importlib.util

    here = os.path.dirname(SPEED)
    if here not in sys.path:  # the scripts import their shared helpers (_report) as top-level modules
        sys.path.insert(0, here)
    path = os.path.join(here, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_speed_measurements_are_stored_under_the_px_hf_version_and_reused(tmp_path, monkeypatch):
    """A measurement is taken once per px_hf version; with uncommitted changes (no version) nothing is stored."""
    speed = _benchmark_module("speed")
    taken = []

    class Pool:  # stands in for the spawned process: counts the measurements actually taken
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, m):
            taken.append(m)
            return type("Done", (), {"result": lambda _: {"seconds": 0.5 + len(taken), "extra_bytes": 1}})()

    monkeypatch.setattr(speed, "ProcessPoolExecutor", Pool)
    m = speed.Measurement("px", "vit-base", 8, 8, 64, 1, 1)  # its label, ViT-Base/16, holds a slash
    results = []
    for version in ("v1", "v1", "v2", None, None):
        monkeypatch.setattr(speed, "code_version", lambda v=version: v)
        speed._run.cache_clear()
        results.append(speed._run(m, str(tmp_path))["seconds"])
    assert results == [1.5, 1.5, 2.5, 3.5, 4.5]  # v1 reused; v2, and each unversioned run, measured anew
    assert len(os.listdir(tmp_path)) == 2


def _quality_module():
    return _benchmark_module("quality")


def test_quality_tables_mark_the_best_and_ties_and_label_px_variants():
    quality = _quality_module()
    rows = []
    # The sanity check and the variant beat PX by more than a std: shown, but not ranked.
    for method, accuracies, ratio in [("dense", [0.9, 0.9], 1.0), ("px", [0.80, 0.78], 0.5),
                                      ("magnitude", [0.79, 0.77], 0.2), ("random", [0.30, 0.32], 0.01),
                                      ("synflow", [0.95, 0.25], 0.3),
                                      ("px (px_branch_share=initial)", [0.85, 0.86], 0.3),
                                      ("px+shuffle", [0.84, 0.85], 0.4)]:
        for seed, accuracy in enumerate(accuracies):
            rows.append({"scenario": "transfer", "family": "vit", "method": method, "seed": seed,
                         "sparsity": 0.0 if method == "dense" else 0.98, "accuracy": accuracy, "collapsed": 0,
                         "ntk_ratio": ratio})
    table = quality.summarize(rows, [0.98])
    lines = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| vit")}
    assert "**0.790 ± 0.014**" in lines["px"]  # best
    assert "**0.780 ± 0.014**" in lines["magnitude"]  # within one std of the best
    assert "**" not in lines["random"] and "**" not in lines["dense"]
    # Within its own std of the best, but one collapsed seed is not a tie: the best's spread decides.
    assert "0.600 ± 0.495" in lines["synflow"] and "**" not in lines["synflow"]
    assert list(lines) == ["dense", "px", "px (px_branch_share=initial)", "random", "magnitude", "synflow",
                           "px+shuffle"]
    assert "over the pruned runs: vit " in table and "(12 runs)" in table
    # A variant run on another family only gets no row here; a method without runs still shows its row.
    other = dict(rows[0], family="resnet", method="px (px_norm=batch)", sparsity=0.98)
    table = quality.summarize(rows + [other], [0.98])
    assert "| vit | px (px_norm=batch) |" not in table and "| resnet | px (px_norm=batch) |" in table
    assert quality._spearman([0.1, 0.5, 0.2, 0.9], [1, 3, 2, 4]) == pytest.approx(1.0)
    assert quality._spearman([0.1, 0.5, 0.2, 0.9], [4, 2, 3, 1]) == pytest.approx(-1.0)

    from px_hf import PXConfig

    spec = {"method": "px", "seed": 0, "config": PXConfig(sparsity=0.98, px_branch_share="initial").to_dict()}
    assert quality.method_label(spec) == "px (px_branch_share=initial)"
    spec["config"] = PXConfig(sparsity=0.98, exclude=[quality.HEAD]).to_dict()
    assert quality.method_label(spec) == "px"


def test_quality_goal_check_gives_each_cell_a_verdict_and_needs_three_seeds_of_every_method():
    quality = _quality_module()
    rows = []

    def add(scenario, family, sparsity, method, accuracies, collapsed=0):
        rows.extend({"scenario": scenario, "family": family, "method": method, "sparsity": sparsity, "seed": seed,
                     "accuracy": accuracy, "collapsed": collapsed} for seed, accuracy in enumerate(accuracies))

    for sparsity, px in [(0.98, [0.90, 0.91, 0.92]), (0.995, [0.80, 0.80, 0.80])]:
        add("transfer", "vit", sparsity, "px", px)
        for method in quality.BASELINES:
            add("transfer", "vit", sparsity, method, [0.85, 0.86, 0.87])
    # transfer ResNet: PX behind at 98%, tied at 99.5% (within the best's spread, not its own); a PX variant and a
    # sanity check that beat everything are not the best baseline.
    for sparsity, px, best in [(0.98, [0.70, 0.70, 0.70], [0.80, 0.80, 0.81]),
                               (0.995, [0.79, 0.79, 0.79], [0.78, 0.80, 0.82])]:
        add("transfer", "resnet", sparsity, "px", px)
        for method in quality.BASELINES:
            add("transfer", "resnet", sparsity, method, best if method == "grasp" else [0.5, 0.5, 0.5])
        add("transfer", "resnet", sparsity, "px (px_branch_share=initial)", [0.99, 0.99, 0.99])
        add("transfer", "resnet", sparsity, "px+shuffle", [0.99, 0.99, 0.99])
    # From scratch: the best at 98%, but one seed collapses a layer; two seeds of SynFlow at 99.5%.
    add("scratch", "vit", 0.98, "px", [0.9, 0.9], collapsed=0)
    add("scratch", "vit", 0.98, "px", [0.9], collapsed=1)
    for method in quality.BASELINES:
        add("scratch", "vit", 0.98, method, [0.5, 0.5, 0.5])
        add("scratch", "vit", 0.995, method, [0.5, 0.5] if method == "synflow" else [0.5, 0.5, 0.5])
    add("scratch", "vit", 0.995, "px", [0.9, 0.9, 0.9])

    table = quality.goal_check(rows)
    verdicts = {tuple(line.split(" | ")[:3]): line.split(" | ")[-1].rstrip(" |") for line in table.splitlines()
                if line.startswith("| ") and "%" in line}
    assert verdicts == {
        ("| scratch", "vit", "98.0%"): "PX collapses a layer",
        ("| scratch", "vit", "99.5%"): "incomplete (seeds: synflow 2)",
        ("| transfer", "resnet", "98.0%"): "behind",
        ("| transfer", "resnet", "99.5%"): "**tied**",
        ("| transfer", "vit", "98.0%"): "**PX best**",
        ("| transfer", "vit", "99.5%"): "behind",
    }
    assert "| transfer | resnet | 98.0% | 0.700 ± 0.000 | grasp 0.803 ± 0.006 | -10.33 | behind |" in table
    assert table.endswith("Goal met in 2 of 6 cells (2 behind, 1 with a layer collapsed by PX, 1 incomplete).")


def test_quality_goal_check_in_the_docs_and_readme_is_the_one_of_the_stored_runs():
    """docs/quality.md and the README show the goal check that `python benchmarks/quality.py --report` makes from
    the runs in benchmarks/results/quality: a run stored without re-running the report fails here."""
    quality = _quality_module()
    store = os.path.join(quality.ROOT, "benchmarks", "results", "quality")
    rows = quality.stored_rows(store, list(quality.ARCH), dict(quality.SCHEDULE), None)
    assert len(rows) > 100
    goal = quality.goal_check(rows)
    start, end = quality.GOAL_MARKERS
    for document, expected in [("docs/quality.md", goal), ("README.md", goal.splitlines()[-1])]:
        with open(os.path.join(quality.ROOT, document)) as handle:
            content = handle.read()
        assert content.split(start)[1].split(end)[0].strip() == expected, document


def test_generated_parts_of_a_document_are_replaced_between_their_markers_only(tmp_path):
    report = _benchmark_module("_report")
    path = tmp_path / "doc.md"
    path.write_text("intro\n<!-- a:start -->\nold\nlines\n<!-- a:end -->\nrest\n")
    assert report.replace_between(str(path), "<!-- a:start -->", "<!-- a:end -->", "new")
    assert path.read_text() == "intro\n<!-- a:start -->\nnew\n<!-- a:end -->\nrest\n"
    assert not report.replace_between(str(path), "<!-- b:start -->", "<!-- b:end -->", "other")
    assert path.read_text() == "intro\n<!-- a:start -->\nnew\n<!-- a:end -->\nrest\n"


def test_quality_run_keys_see_the_target_epochs_only_where_they_differ_from_the_schedule():
    quality = _quality_module()
    args = ("transfer", "resnet", "px", 0.98, 0, dict(quality.SCHEDULE), {})
    default = quality.run_spec(*args)
    assert "target_epochs" not in default  # the keys of the runs stored before the option existed are unchanged
    assert quality.run_key(quality.run_spec(*args, None)) == quality.run_key(default)
    longer = quality.run_spec(*args, 10)
    assert longer["target_epochs"] == 10 and quality.run_key(longer) != quality.run_key(default)
    cross = quality.run_spec("cross", *args[1:])  # digits is small: the cross scenario fine-tunes longer
    assert cross["target_epochs"] == quality.CROSS_TARGET_EPOCHS > quality.SCHEDULE["epochs"]
    # From scratch only the small ConvNeXt trains longer than the schedule (it is not converged at 5 epochs).
    assert "target_epochs" not in quality.run_spec("scratch", *args[1:])
    convnext = quality.run_spec("scratch", "convnext", *args[2:])
    assert quality.trained_epochs(convnext) == quality.SCRATCH_TARGET_EPOCHS["convnext"] > quality.SCHEDULE["epochs"]
    assert quality.trained_epochs(default) == quality.SCHEDULE["epochs"]


def test_quality_grid_runs_checks_on_pretrained_networks_only_when_named():
    quality = _quality_module()
    common = (["cross"], ["resnet"], [0])
    rest = ([0.995], dict(quality.SCHEDULE), {}, None)
    default = {s["method"] for s in quality.grid(*common, quality.DEFAULT_METHODS, *rest, False)}
    assert default == set(quality.TRANSFER_METHODS)
    named = quality.grid(*common, ["snip", "snip+shuffle", "px+shuffle", "px+reinit"], *rest, True)
    assert [s["method"] for s in named] == ["snip", "snip+shuffle", "px+shuffle"]  # no re-init of a trained network
    shuffled = named[1]
    assert shuffled["config"]["scorer"] == "snip" and shuffled["config"]["sanity_check"] == "shuffle"
    scratch = quality.grid(["scratch"], ["resnet"], [0], quality.DEFAULT_METHODS, *rest, False)
    assert {s["method"] for s in scratch} == set(quality.DEFAULT_METHODS)

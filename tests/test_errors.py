"""Bad input gets a px_hf error that names the problem, raised before any deep torch traceback."""

import re

import pytest
import torch
from torch import nn

from px_hf import ConfigError, DataError, ModelError, PXConfig, PXPruner
from px_hf.zoo import small_model


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, "0.9", True])
def test_sparsity_outside_range(sparsity):
    with pytest.raises(ConfigError, match="sparsity"):
        PXConfig(sparsity=sparsity)


@pytest.mark.parametrize("rounds", [0, -3, 2.5])
def test_rounds_below_one(rounds):
    with pytest.raises(ConfigError, match="rounds"):
        PXConfig(rounds=rounds)


def test_unknown_scorer_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown scorer 'snap'.*'snip'"):
        PXConfig(scorer="snap")


@pytest.mark.parametrize("field,value", [("schedule", "cosine"), ("scope", "block"), ("px_norm", "live"),
                                         ("sanity_check", "permute"), ("examples_per_class", 0),
                                         ("batch_size", 0), ("px_branch_share", 0), ("px_branch_share", -1.0),
                                         ("px_branch_share", "1"), ("px_branch_share", float("nan"))])
def test_other_bad_options(field, value):
    with pytest.raises(ConfigError, match=field):
        PXConfig(**{field: value})


def test_a_saved_config_with_the_earlier_px_norm_name_loads():
    assert PXConfig.from_dict({"px_norm": "gated"}).px_norm == "batch"


def test_model_without_prunable_layers():
    model = nn.Sequential(nn.LayerNorm(4), nn.ReLU())
    with pytest.raises(ModelError, match="no prunable layer"):
        PXPruner(model)


@pytest.mark.parametrize("option", ["include", "exclude"])
def test_pattern_matching_nothing(option):
    with pytest.raises(ModelError, match=re.escape(f"{option} pattern 'attention\\.qkv' matches no")):
        PXPruner(small_model("vit"), PXConfig(**{option: [r"attention\.qkv"]}))


def test_include_and_exclude_select_by_name(digits):
    pruner = PXPruner(small_model("vit"), PXConfig(include=[r"mlp\."], exclude=[r"layers\.0\."], rounds=2))
    assert pruner.prunable and all("mlp." in n and "layers.0." not in n for n in pruner.prunable)
    pruner.prune(digits, progress=False)
    assert set(pruner.masks) == set(pruner.prunable)


def test_invalid_regular_expression():
    with pytest.raises(ModelError, match="not a valid regular expression"):
        PXPruner(small_model("vit"), PXConfig(include=["(fc"]))


def test_data_without_labels_when_balancing(digits):
    x, _ = digits
    with pytest.raises(DataError, match="no labels.*examples_per_class=10"):
        PXPruner(small_model("vit")).prune(x, progress=False)


def test_unlabeled_data_works_without_balancing(digits):
    x, _ = digits
    pruner = PXPruner(small_model("vit"), PXConfig(examples_per_class=None, rounds=2, sparsity=0.5))
    pruner.prune(x[:16], progress=False)
    assert len(pruner.pruning_set) == 16


def test_too_few_examples_of_a_class(digits):
    x, y = digits
    keep = torch.cat([torch.nonzero(y == c).flatten()[: (3 if c == 7 else 12)] for c in range(10)])
    with pytest.raises(DataError, match="class 7 has only 3 example"):
        PXPruner(small_model("vit")).prune((x[keep], y[keep]), progress=False)


def test_inputs_that_do_not_fit_the_model(digits):
    x, y = digits
    with pytest.raises(DataError, match=r"inputs of shape \(3, 32, 32\).*expects 1 channel"):
        PXPruner(small_model("vit")).prune((x.repeat(1, 3, 1, 1), y), progress=False)
    with pytest.raises(DataError, match=r"inputs of shape \(32, 32\)"):
        PXPruner(small_model("resnet")).prune((x[:, 0], y), progress=False)


def test_mismatched_inputs_and_labels(digits):
    x, y = digits
    with pytest.raises(DataError, match="100 inputs but 99 labels"):
        PXPruner(small_model("vit")).prune((x[:100], y[:99]), progress=False)


def test_float_labels_rejected(digits):
    x, y = digits
    with pytest.raises(DataError, match="integer class ids"):
        PXPruner(small_model("vit")).prune((x, y.float()), progress=False)


def test_labels_outside_the_head_for_gradient_scorers(digits):
    x, y = digits
    with pytest.raises(DataError, match=r"labels must be in \[0, 5\)"):
        PXPruner(small_model("vit", num_labels=5), PXConfig(scorer="snip")).prune((x, y), progress=False)


def test_unsupported_data_type():
    with pytest.raises(DataError, match="cannot prune on a str"):
        PXPruner(small_model("vit")).prune("digits", progress=False)


def test_data_free_scorers_run_without_data_but_px_does_not():
    pruner = PXPruner(small_model("vit"), PXConfig(scorer="magnitude", sparsity=0.5))
    pruner.prune(progress=False)
    assert pruner.summary().density == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(DataError, match="needs pruning data"):
        PXPruner(small_model("vit")).prune(progress=False)


def test_summary_before_pruning():
    with pytest.raises(RuntimeError, match="call prune"):
        PXPruner(small_model("vit")).summary()


def test_command_line_overrides_of_config_fields():
    from px_hf.config import parse_override

    assert parse_override("px_branch_share=null") == ("px_branch_share", None)
    assert parse_override("px_branch_share=initial") == ("px_branch_share", "initial")
    assert parse_override("sparsity=0.9") == ("sparsity", 0.9)
    assert PXConfig(**dict([parse_override("px_branch_share=initial")])).px_branch_share == "initial"
    with pytest.raises(ConfigError, match="KEY a PXConfig field"):
        parse_override("branch_share=1")
    with pytest.raises(ConfigError, match="px_branch_share must be"):
        PXConfig(px_branch_share="largest")

"""Every model type transformers registers for image classification, built tiny from a config: every scorer runs
with finite scores and the exact density, PX's data pass is linear (or PX refuses, naming the module without a pass
rule), PX removes no whole layer at 90% sparsity, and a pruned model saves and loads back bit for bit. ``benchmarks/coverage.py`` turns these results into docs/supported_models.md.

Known failures are strict xfails carrying the measured symptom: when one is fixed the test fails until its entry
is removed, so the list of supported models cannot go stale.
"""

from typing import Optional

import pytest
import torch

from px_hf import PXConfig, PXPruner
from px_hf.scoring import scorer_info, scorer_names
from px_hf.errors import ModelError
from px_hf.modeling.passes import LinearizedPasses, check_data_pass_linear, pass_parameters
from px_hf.modeling.structure import parameter_roles
from tiny_models import NOT_BUILDABLE, model_types, tiny_model

SPARSITY = 0.9
ROUNDS = 3  # for the iterative scorers; 10% density in 3 rounds removes about half the weights a round
# The collapse test prunes in 20 rounds (11% of the weights a round; PX's default, 100, removes 2.3%): PX holds the
# branches at floored shares from its second round on, and a first round that removes half the network on the raw
# shares is not how PX prunes.
COLLAPSE_ROUNDS = 20

# model type -> measured symptom, per check (8 random images; see the module docstring)
FAILS_TO_SCORE: dict[str, str] = {}
# model type -> the module PX's linearity check names: it computes a non-linearity without a pass rule, so PX
# refuses the model (the baselines still prune it). Measured with the check of px_hf.modeling.passes.linearity.
NOT_LINEAR: dict[str, str] = {}
# "Starts almost silent": the branches' first-round shares of their block's stream (docs/px_generalization.md)
# are tiny for weights of std 0.02 with no normalization inside the branch.
COLLAPSES: dict[str, str] = {
    "hgnet_v2": "6 of 15 layers (the stem's convolution branch beside its max pool, and the aggregated layers of "
                "the first two stages, which feed concatenations and are not balanced as residual branches)",
    "swiftformer": "8 of 49 layers (the first MLP of stage 2 and the local representations of stages 3 and 4: with "
                   "weights of std 0.02 their first-round shares are 1.5e-8 to 1.5e-4 of the stream, against 3.5e-3 "
                   "to 0.12 for the attention, and the floor of 1e-3 does not keep them; a floor of 3e-2 keeps all)",
    "pvt": "7 of 16 layers (the first block, which starts almost silent: shares 4e-5 and 8e-5 against 1e-2 and "
           "2e-2 in the second; the share floor of 1e-3 is too little for it, 1e-2 keeps it)",
    "textnet": "1 of 14 layers (a convolution of the first stage's re-parameterizable block, whose BatchNorm identity "
               "branch carries the stream: zeroing the block's parameters zeroes that branch too, so the block is not "
               "recognized as residual and its convolutions are not balanced against it)",
}


def _cases(known: dict[str, str], skip: Optional[dict[str, str]] = None) -> list:
    cases, skip = [], skip or {}
    for model_type in model_types():
        marks = []
        if model_type in NOT_BUILDABLE:
            marks.append(pytest.mark.skip(reason=f"not buildable here: {NOT_BUILDABLE[model_type]}"))
        elif model_type in skip:
            marks.append(pytest.mark.skip(reason=skip[model_type]))
        elif model_type in known:
            marks.append(pytest.mark.xfail(strict=True, reason=known[model_type]))
        cases.append(pytest.param(model_type, marks=marks, id=model_type))
    return cases


def _data(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, *shape, generator=generator), torch.arange(8) % 4


def _prune(model_type, scorer, iterative_rounds=ROUNDS):
    model, shape = tiny_model(model_type)
    rounds = iterative_rounds if scorer_info(scorer).default_rounds > 1 else 1
    pruner = PXPruner(model, PXConfig(sparsity=SPARSITY, scorer=scorer, rounds=rounds, examples_per_class=None))
    pruner.prune(_data(shape), progress=False)
    return pruner


@pytest.mark.slow
@pytest.mark.parametrize("model_type", _cases(FAILS_TO_SCORE))
def test_every_scorer_runs(model_type):
    """PX where its data pass is linear (see the next tests), every baseline everywhere."""
    for scorer in scorer_names():
        if scorer == "px" and model_type in NOT_LINEAR:
            continue
        pruner = _prune(model_type, scorer)
        params = dict(pruner.model.named_parameters())
        total = sum(m.numel() for m in pruner.masks.values())
        assert total > 0, "no prunable layer found"
        assert sum(int(m.sum()) for m in pruner.masks.values()) == round((1 - SPARSITY) * total), scorer
        for name, score in pruner.scores.items():
            assert torch.isfinite(score).all(), f"{scorer}: non-finite scores in {name}"
            assert not params[name][~pruner.masks[name]].any(), f"{scorer}: a pruned weight of {name} is not zero"


@pytest.mark.slow
@pytest.mark.parametrize("model_type", _cases({**FAILS_TO_SCORE, **NOT_LINEAR}))
def test_px_data_pass_is_linear(model_type):
    # float64, as PX scores a long chain whose float32 data pass overflows (the check cannot judge infinities)
    model, shape = tiny_model(model_type)
    model.double()
    x = _data(shape)[0].double()
    config = PXConfig()
    with LinearizedPasses(model, norm=config.px_norm, branch_share=config.px_branch_share) as passes:
        params = pass_parameters(parameter_roles(model), dict(model.named_parameters()), "data")
        check_data_pass_linear(passes, model, x, params)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(NOT_LINEAR))
def test_px_refuses_a_non_linear_data_pass_naming_the_module(model_type):
    with pytest.raises(ModelError, match=NOT_LINEAR[model_type].split(" ")[0]):
        _prune(model_type, "px")


@pytest.mark.slow
@pytest.mark.parametrize("model_type", _cases({**FAILS_TO_SCORE, **COLLAPSES},
                                              skip={t: f"PX refuses: {r}" for t, r in NOT_LINEAR.items()}))
def test_px_collapses_no_layer(model_type):
    pruner = _prune(model_type, "px", COLLAPSE_ROUNDS)
    collapsed = pruner.summary().collapsed
    assert not collapsed, f"{len(collapsed)} of {len(pruner.masks)} layers collapsed, e.g. {collapsed[:2]}"


@pytest.mark.slow
@pytest.mark.parametrize("model_type", _cases({}))  # magnitude pruning: independent of the scoring failures
def test_save_load_round_trip(model_type, tmp_path):
    pruner = _prune(model_type, "magnitude")
    pruner.save_pretrained(str(tmp_path))
    loaded = PXPruner.from_pretrained(str(tmp_path))
    assert type(loaded.model) is type(pruner.model)
    original, restored = pruner.model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, restored[name]), name
    assert loaded.masks.keys() == pruner.masks.keys()
    assert all(torch.equal(loaded.masks[n], pruner.masks[n]) for n in pruner.masks)


def test_readme_list_matches_these_results():
    """The README's generated list (benchmarks/coverage.py) agrees with the outcomes this module asserts."""
    import os
    import re

    with open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")) as handle:
        readme = handle.read()
    labels = ("Supported", "Prunes and saves, but PX removes whole layers", "PX refuses", "Not supported yet")
    found = {label: re.search(rf"\*\*{label}\*\* [^:]*: ([^\n]*)\.\n", readme).group(1) for label in labels}
    listed = {label: set() if names == "none" else set(names.split(", ")) for label, names in found.items()}
    unsupported = set(NOT_BUILDABLE) | set(FAILS_TO_SCORE)
    assert listed["Not supported yet"] == unsupported
    assert listed["PX refuses"] == set(NOT_LINEAR) - unsupported
    assert listed["Prunes and saves, but PX removes whole layers"] == set(COLLAPSES) - unsupported - set(NOT_LINEAR)
    assert listed["Supported"] == set(model_types()) - unsupported - set(COLLAPSES) - set(NOT_LINEAR)


def test_an_image_size_override_fits_configs_that_keep_height_and_width():
    from px_hf.zoo import image_classifier

    model, shape = image_classifier("hiera", image_size=224)  # its config holds [height, width]
    assert shape == (3, 224, 224) and list(model.config.image_size) == [224, 224]

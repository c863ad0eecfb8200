"""Every scorer on small ViT, ConvNeXt and ResNet: finite scores, exact density, zeros that stay zeros."""

import pytest
import torch

from px_hf import ConfigError, PXConfig, PXPruner
from px_hf.scoring import scorer_info, scorer_names
from px_hf.zoo import small_model

ROUNDS = {"px": 4, "synflow": 4}


def _prune(model, digits, scorer, sparsity=0.9, seed=0, callback=None, **config):
    x, y = digits
    cfg = PXConfig(sparsity=sparsity, scorer=scorer, rounds=ROUNDS.get(scorer, 1), examples_per_class=3,
                   seed=seed, **config)
    pruner = PXPruner(model, cfg)
    pruner.prune((x, y), progress=False, callback=callback)
    return pruner


@pytest.mark.parametrize("scorer", scorer_names())
def test_scorer_contract(model, digits, scorer):
    params = dict(model.named_parameters())
    history = []

    def check_round(index, density, masks):
        # Masked weights are exactly zero after every round, and nothing pruned comes back.
        for name, mask in masks.items():
            assert torch.all(params[name][~mask] == 0)
            if history:
                assert not torch.any(mask & ~history[-1][name]), f"{name} revived a pruned weight"
        history.append({n: m.clone() for n, m in masks.items()})

    pruner = _prune(model, digits, scorer, callback=check_round)
    assert len(history) == pruner.config.num_rounds
    total = sum(m.numel() for m in pruner.masks.values())
    kept = sum(int(m.sum()) for m in pruner.masks.values())
    assert kept == round(0.1 * total)
    assert pruner.summary().density == pytest.approx(0.1, abs=1 / total)
    for name, score in pruner.scores.items():
        assert torch.isfinite(score).all()
        if scorer_info(scorer).nonnegative:
            assert (score >= 0).all(), name
        assert torch.all(params[name][~pruner.masks[name]] == 0)
        # Pruned weights report score 0; sign bits too: a pruned weight is +0.0, not -0.0.
        assert torch.all(torch.signbit(params[name][~pruner.masks[name]]) == 0)
    assert set(pruner.masks) == set(pruner.prunable)


@pytest.mark.parametrize("scorer", scorer_names())
def test_same_seed_same_masks(family, digits, scorer):
    first = _prune(small_model(family, seed=0), digits, scorer, seed=5).masks
    second = _prune(small_model(family, seed=0), digits, scorer, seed=5).masks
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_different_seed_changes_random_masks(digits):
    first = _prune(small_model("vit"), digits, "random", seed=1).masks
    second = _prune(small_model("vit"), digits, "random", seed=2).masks
    assert any(not torch.equal(first[n], second[n]) for n in first)


def test_px_keeps_every_layer_at_90_percent(model, digits):
    pruner = PXPruner(model, PXConfig(sparsity=0.9))  # the default: 100 rounds, 10 examples per class
    pruner.prune(digits, progress=False)
    summary = pruner.summary()
    assert summary.collapsed == []
    assert summary.kept == round(0.1 * summary.params)


def test_layer_scope_keeps_density_in_every_layer(model, digits):
    pruner = _prune(model, digits, "px", scope="layer")
    for layer in pruner.summary().layers:
        assert abs(layer.kept - 0.1 * layer.params) <= 1, layer


@pytest.mark.parametrize("family,norm,name", [
    ("resnet", "batch", "resnet.encoder.stages.1.layers.0.layer.0.convolution.weight"),
    ("vit", "running", "vit.layers.1.mlp.fc1.weight"),  # LayerNorm always uses the sample's statistics
])
def test_px_scores_depend_on_data(digits, family, norm, name):
    """Data enters the first round through the normalizations' statistics: different pruning examples give
    different PX scores. (With BatchNorm's running statistics at initialization it enters only in later rounds,
    through the masked data term.)"""
    x, y = digits
    a = PXPruner(small_model(family), PXConfig(sparsity=0.5, rounds=1, examples_per_class=None, px_norm=norm))
    a.prune((x[:20], y[:20]), progress=False)
    b = PXPruner(small_model(family), PXConfig(sparsity=0.5, rounds=1, examples_per_class=None, px_norm=norm))
    b.prune((x[20:40], y[20:40]), progress=False)
    assert not torch.allclose(a.scores[name], b.scores[name])


def test_query_and_key_follow_value_density(digits):
    model = small_model("vit")
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = _prune(model, digits, "px", sparsity=0.95)
    for block in range(4):
        prefix = f"vit.layers.{block}.attention."
        value = int(pruner.masks[prefix + "v_proj.weight"].sum())
        assert value > 0
        for proj in ("q_proj", "k_proj"):
            name = prefix + f"{proj}.weight"
            mask = pruner.masks[name]
            assert abs(int(mask.sum()) - value) <= 2
            # The kept entries are the largest-magnitude ones of the initial weights.
            magnitude = initial[name].abs()
            assert magnitude[mask].min() >= magnitude[~mask].max()
    raw = _prune(small_model("vit"), digits, "px", sparsity=0.95, qk_scores="px")
    assert int(raw.masks["vit.layers.0.attention.q_proj.weight"].sum()) == 0


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_mixed_precision_real_pass_keeps_float32_scores(family, digits):
    full = _prune(small_model(family), digits, "px", sparsity=0.9)
    half = _prune(small_model(family), digits, "px", sparsity=0.9, mixed_precision="bf16")
    assert all(s.dtype == torch.float32 and torch.isfinite(s).all() for s in half.scores.values())
    assert half.summary().kept == full.summary().kept
    shared = sum(int((half.masks[n] & full.masks[n]).sum()) for n in full.masks)
    assert shared > 0.9 * full.summary().kept  # bf16 gates move only weights near the threshold


def test_device_placement_follows_accelerate(digits):
    from accelerate import PartialState

    pruner = _prune(small_model("vit"), digits, "px", cpu=True)
    assert next(pruner.model.parameters()).device == PartialState().device == torch.device("cpu")
    assert pruner.history and all(h["bytes_reduced"] == 0 for h in pruner.history)  # one process: no traffic


@pytest.mark.parametrize("scorer", ["snip", "grasp"])
def test_gradient_baselines_score_with_batch_statistics_whatever_px_norm(digits, scorer):
    # px_norm is PX's option; SNIP and GraSP see the network as it trains (running statistics at initialization
    # would leave a deep ResNet unnormalized).
    scores = []
    for norm in ("running", "batch"):
        pruner = PXPruner(small_model("resnet"), PXConfig(sparsity=0.5, scorer=scorer, examples_per_class=2,
                                                          px_norm=norm))
        pruner.prune(digits, progress=False)
        scores.append(pruner.scores)
    for name in scores[0]:
        torch.testing.assert_close(scores[0][name], scores[1][name])


def test_px_falls_back_to_float64_when_float32_overflows(caplog):
    # 40 plain layers of width 64 and no residual block to rescale: the data pass grows like 64**40 ~ 1e72.
    torch.manual_seed(0)
    layers = [layer for _ in range(40) for layer in (torch.nn.Linear(64, 64), torch.nn.ReLU())]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(64, 3))
    x, y = torch.randn(12, 64), torch.arange(12) % 3
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = PXPruner(model, PXConfig(sparsity=0.9, rounds=2, examples_per_class=None))
    with caplog.at_level("WARNING", logger="px_hf.pruner"):
        pruner.prune((x, y), progress=False)
    assert "overflowed" in caplog.text and "float64" in caplog.text
    total = sum(m.numel() for m in pruner.masks.values())
    assert sum(int(m.sum()) for m in pruner.masks.values()) == round(0.1 * total)
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32  # given back in its own dtype, kept weights unchanged
        mask = pruner.masks.get(name, torch.ones_like(param, dtype=torch.bool))
        assert torch.equal(param[mask], before[name][mask]) and not param[~mask].any()
    assert all(torch.isfinite(s).all() and s.dtype == torch.float32 for s in pruner.scores.values())


def _largest_first_layer(ctx):
    """A user's scorer: magnitude, doubled in the first prunable layer."""
    params = ctx.parameters()
    first = ctx.prunable[0]
    return {n: p.detach().abs() * (2.0 if n == first else 1.0) for n, p in params.items()}


def test_a_registered_scorer_prunes_and_is_recorded(digits):
    import px_hf
    from px_hf.scoring import registry

    px_hf.register_scorer("first_heavy", _largest_first_layer, needs_data=False, uses_passes=False)
    try:
        with pytest.raises(ConfigError, match="already registered"):
            px_hf.register_scorer("first_heavy", _largest_first_layer)
        pruner = PXPruner(small_model("resnet"), PXConfig(sparsity=0.9, scorer="first_heavy"))
        masks = pruner.prune(progress=False)  # needs_data=False: no data asked for
        assert pruner.pruning_record().config["scorer"] == "first_heavy"
        assert len(pruner.history) == 1  # default_rounds
        magnitude = PXPruner(small_model("resnet"), PXConfig(sparsity=0.9, scorer="magnitude"))
        reference = magnitude.prune(progress=False)
        first = pruner.prunable[0]
        assert masks[first].sum() > reference[first].sum()  # the doubled layer keeps more
    finally:
        registry._REGISTRY.pop("first_heavy", None)
    with pytest.raises(ConfigError, match="unknown scorer 'first_heavy'.*register_scorer"):
        PXConfig(scorer="first_heavy")


@pytest.mark.parametrize("qk_scores", ["value", "px"])
def test_weights_on_no_path_keep_the_overall_density_by_magnitude(qk_scores):
    # SwinV2's continuous position-bias MLP only biases the attention logits: no path of the bound runs through
    # it, so its raw PX scores are 0. qk_scores="value" keeps about the network's density of it, the largest
    # entries; "px" (as published) removes it whole.
    from tiny_models import tiny_model

    model, shape = tiny_model("swinv2")
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    data = (torch.randn(8, *shape, generator=generator), torch.randint(4, (8,), generator=generator))
    pruner = PXPruner(model, PXConfig(sparsity=0.9, rounds=20, examples_per_class=None, qk_scores=qk_scores))
    pruner.prune(data, progress=False)
    names = [n for n in pruner.masks if "continuous_position_bias_mlp" in n]
    assert len(names) == 4
    for name in names:
        mask = pruner.masks[name]
        if qk_scores == "px":
            assert not mask.any()
            continue
        assert 0.05 <= mask.float().mean() <= 0.2, (name, float(mask.float().mean()))
        magnitude = initial[name].abs()
        assert magnitude[mask].min() >= magnitude[~mask].max()
    assert abs(pruner.summary().density - 0.1) < 1e-3

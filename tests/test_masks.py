"""Mask operations: exact counts under ties, schedules, shuffling, sanity checks."""

import pytest
import torch

from px_hf import PXConfig, PXPruner, density_schedule, select_masks, shuffle_masks, top_k_mask
from px_hf.zoo import small_model


def test_top_k_is_exact_under_ties(rng):
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 1.0, 0.5, 2.0])
    mask = top_k_mask(scores, 4, rng)
    assert int(mask.sum()) == 4
    assert mask[0] and mask[6] and not mask[5]
    assert int(mask[1:5].sum()) == 2


def test_all_equal_scores_keep_exactly_k(rng):
    assert int(top_k_mask(torch.zeros(1000), 123, rng).sum()) == 123


def test_global_selection_keeps_pruned_weights_pruned(rng):
    masks = {"a": torch.tensor([True, False, True]), "b": torch.tensor([True, True])}
    scores = {"a": torch.tensor([0.1, 100.0, 0.2]), "b": torch.tensor([0.3, 0.4])}
    new = select_masks(scores, masks, density=0.4, generator=rng)
    assert new["a"].tolist() == [False, False, False] and new["b"].tolist() == [True, True]


def test_per_layer_selection(rng):
    masks = {"a": torch.ones(10, dtype=torch.bool), "b": torch.ones(30, dtype=torch.bool)}
    scores = {"a": torch.arange(10.0), "b": torch.arange(30.0) * 100}
    new = select_masks(scores, masks, density=0.5, scope="layer", generator=rng)
    assert int(new["a"].sum()) == 5 and int(new["b"].sum()) == 15
    assert new["a"][5:].all()


def test_exponential_schedule_matches_the_paper():
    schedule = density_schedule(0.02, 100)
    assert schedule[0] == pytest.approx(0.02 ** 0.01)
    assert schedule[-1] == pytest.approx(0.02)
    assert all(a > b for a, b in zip(schedule, schedule[1:]))
    assert density_schedule(0.5, 4, "linear") == pytest.approx([0.875, 0.75, 0.625, 0.5])


def test_shuffle_changes_positions_but_keeps_layer_density(rng):
    masks = {"w": torch.rand(8, 8, generator=rng) > 0.7, "full": torch.ones(5, dtype=torch.bool)}
    shuffled = shuffle_masks(masks, rng)
    assert not torch.equal(shuffled["w"], masks["w"])
    assert int(shuffled["w"].sum()) == int(masks["w"].sum())
    assert torch.equal(shuffled["full"], masks["full"])


def test_shuffle_sanity_check_in_the_pruner(digits):
    model = small_model("resnet")
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    plain = PXPruner(small_model("resnet"), PXConfig(sparsity=0.9, rounds=3))
    plain.prune(digits, progress=False)
    pruner = PXPruner(model, PXConfig(sparsity=0.9, rounds=3, sanity_check="shuffle"))
    pruner.prune(digits, progress=False)
    params = dict(model.named_parameters())
    for name, mask in pruner.masks.items():
        assert int(mask.sum()) == int(plain.masks[name].sum())
        if 0 < int(mask.sum()) < mask.numel():
            assert not torch.equal(mask, plain.masks[name]), name
        # Kept positions carry the initial weights; the rest are exact zeros.
        assert torch.equal(params[name][mask], initial[name][mask])
        assert torch.all(params[name][~mask] == 0)


def test_reinit_sanity_check_draws_new_weights_and_keeps_the_mask(digits):
    plain = PXPruner(small_model("convnext"), PXConfig(sparsity=0.9, rounds=3))
    plain.prune(digits, progress=False)
    pruner = PXPruner(small_model("convnext"), PXConfig(sparsity=0.9, rounds=3, sanity_check="reinit"))
    pruner.prune(digits, progress=False)
    reference = dict(plain.model.named_parameters())
    params = dict(pruner.model.named_parameters())
    changed = 0
    for name, mask in pruner.masks.items():
        assert torch.equal(mask, plain.masks[name])
        assert torch.all(params[name][~mask] == 0)
        changed += int((params[name][mask] != reference[name][mask]).sum())
    assert changed > 0.9 * sum(int(m.sum()) for m in pruner.masks.values())


def test_large_tensor_selection_is_exact_and_matches_a_full_sort(rng):
    """Above a million entries the threshold is bracketed from a sample; the count must still be exact."""
    scores = torch.randn(3_000_000, generator=rng)
    scores[::7] = 0.25  # many ties, some of them at the threshold
    for k in (1, 17, 1_234_567, 2_999_999):
        mask = top_k_mask(scores, k, rng)
        assert int(mask.sum()) == k
        threshold = torch.sort(scores, descending=True).values[k - 1]
        assert bool((scores[mask] >= threshold).all()) and bool((scores[~mask] <= threshold).all())


@pytest.mark.parametrize("size", [5_000, 2_000_000])  # the exact path and the sampled one
def test_float64_scores_below_float32_range_keep_the_exact_count(size):
    # float64 scores (the float64 fallback, float64 models) compared in float32 would all round to 0 here.
    generator = torch.Generator().manual_seed(0)
    scores = {"a": -torch.rand(size, dtype=torch.float64, generator=generator) * 1e-300,
              "b": torch.rand(30, dtype=torch.float64, generator=generator) * 1e-300}
    masks = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    chosen = select_masks(scores, masks, 0.46, generator=generator)
    assert sum(int(m.sum()) for m in chosen.values()) == round(0.46 * (size + 30))
    assert bool(chosen["b"].all())  # the 30 positive scores are the largest


def test_selection_writes_into_the_scores_only_when_allowed():
    scores = {"a": torch.tensor([3.0, 1.0, 2.0, 0.5]), "b": torch.tensor([[4.0, 0.1]])}
    masks = {"a": torch.tensor([True, True, False, True]), "b": torch.tensor([[True, True]])}
    kept = select_masks(dict(scores), masks, 0.5)
    assert torch.equal(scores["a"], torch.tensor([3.0, 1.0, 2.0, 0.5]))  # untouched by default
    written = select_masks(scores, masks, 0.5, overwrite_scores=True)
    assert all(torch.equal(kept[n], written[n]) for n in masks)
    assert scores["a"][2] == -float("inf") and scores["a"][0] == 3.0


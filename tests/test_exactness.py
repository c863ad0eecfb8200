"""PX scores equal the explicit sum over input-output paths on a network small enough to enumerate them."""

import itertools

import torch
from torch import nn

from px_hf import PXConfig, PXPruner


def _mlp(sizes, seed):
    torch.manual_seed(seed)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out, bias=False))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double()


def _explicit_scores(model, x):
    """S_j = sum_n sum_k z1_k(x_n) * sum over paths p through j ending at k of v_p**2, by enumeration."""
    weights = [m.weight.detach() for m in model if isinstance(m, nn.Linear)]
    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    # ReLU gates of every hidden unit for every sample, from the real network.
    gates, h = [], x
    for w in weights[:-1]:
        h = h @ w.T
        gates.append((h > 0).double())
        h = torch.relu(h)
    paths = list(itertools.product(*[range(s) for s in sizes]))
    z1 = torch.zeros(sizes[-1], dtype=torch.float64)
    for p in paths:
        active = torch.ones(x.shape[0], dtype=torch.float64)
        for layer, unit in enumerate(p[1:-1]):
            active = active * gates[layer][:, unit]
        z1[p[-1]] += (active * x[:, p[0]] ** 2).sum()
    scores = [torch.zeros_like(w) for w in weights]
    for p in paths:
        value2 = torch.tensor(1.0, dtype=torch.float64)
        for layer in range(len(weights)):
            value2 = value2 * weights[layer][p[layer + 1], p[layer]] ** 2
        for layer in range(len(weights)):
            scores[layer][p[layer + 1], p[layer]] += z1[p[-1]] * value2
    return scores


def test_px_scores_equal_the_explicit_path_sum():
    model = _mlp([3, 4, 3, 2], seed=0)
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = _explicit_scores(model, x)
    pruner = PXPruner(model, PXConfig(sparsity=0.0, rounds=1, examples_per_class=None))
    pruner.prune(x, progress=False)
    got = [pruner.scores[f"{i}.weight"] for i in (0, 2, 4)]
    ratio = got[0].flatten()[0] / expected[0].flatten()[0]
    assert ratio > 0
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e * ratio, rtol=1e-10, atol=0.0)
    # Not a trivial agreement: the scores differ across weights by orders of magnitude.
    flat = torch.cat([e.flatten() for e in expected])
    assert flat.max() > 10 * flat[flat > 0].min()


def test_px_scores_match_the_path_sum_across_batches_and_with_masks():
    """Several batches and zero weights: still the explicit sums, and a zero weight scores exactly 0."""
    model = _mlp([3, 4, 3, 2], seed=2)
    with torch.no_grad():
        model[0].weight[1, 2] = 0.0
        model[2].weight[0, 3] = 0.0
    x = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = _explicit_scores(model, x)
    pruner = PXPruner(model, PXConfig(sparsity=0.0, rounds=1, examples_per_class=None, batch_size=4))
    pruner.prune(x, progress=False)
    ratio = pruner.scores["0.weight"][0, 0] / expected[0][0, 0]
    for name, e in zip(("0.weight", "2.weight", "4.weight"), expected):
        torch.testing.assert_close(pruner.scores[name], e * ratio, rtol=1e-10, atol=1e-300)
    assert pruner.scores["0.weight"][1, 2] == 0 and pruner.scores["2.weight"][0, 3] == 0

"""The empirical NTK trace utility."""

import torch
from torch import nn

from px_hf import PXConfig, PXPruner
from px_hf.ntk import ntk_trace
from px_hf.zoo import small_model


def test_linear_model_trace_is_exact():
    """For f(x) = W x, d f_k / d W_kj = x_j: the trace is sum_n sum_kj m_kj x_nj**2."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3, bias=False)
    x = torch.randn(7, 5)
    mask = torch.rand(3, 5) > 0.5
    assert abs(ntk_trace(model, x) - 3 * float((x.double() ** 2).sum())) < 1e-6
    expected = float(((x.double() ** 2) @ mask.double().T).sum())
    assert abs(ntk_trace(model, x, {"weight": mask}, chunk=4) - expected) < 1e-6


def test_trace_of_pruned_transformers_models(family, digits):
    x, y = digits
    model = small_model(family)
    dense = ntk_trace(model, x[:6])
    pruner = PXPruner(model, PXConfig(sparsity=0.9, rounds=5))
    pruner.prune((x, y), progress=False)
    sparse = ntk_trace(pruner.model, x[:6], pruner.masks)
    assert 0 < sparse < float("inf") and 0 < dense < float("inf")
    assert sparse != dense

"""Pass rules for module kinds that a naive linearization gets wrong, and the guard that catches the ones no rule
covers: weight-standardized convolutions (all-zero scores without a rule), PoolFormer's ``pool(x) - x`` (negative
scores without one)."""

import pytest
import torch
from torch import nn

from px_hf import PXConfig, PXPruner
from px_hf.errors import ModelError
from tiny_models import tiny_model


class _StandardizedConv(nn.Conv2d):
    """A weight-standardized convolution written as BiT writes it (its own forward, an ``eps``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = 1e-6

    def forward(self, x):
        w = self.weight
        flat = w.reshape(w.shape[0], -1)
        mean = flat.mean(1).reshape(-1, 1, 1, 1)
        var = flat.var(1, unbiased=False).reshape(-1, 1, 1, 1)
        return self._conv_forward(x, (w - mean) / torch.sqrt(var + self.eps), self.bias)


def _net(first: nn.Module) -> nn.Sequential:
    return nn.Sequential(first, nn.ReLU(), nn.Conv2d(4, 4, 3, bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3, bias=False)).double()


def _scores(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    pruner = PXPruner(model, PXConfig(sparsity=0.0, rounds=1, examples_per_class=None))
    pruner.prune((x, torch.arange(len(x)) % 3), progress=False)
    return pruner.scores


def test_weight_standardization_is_scored_as_its_effective_weight():
    # With a zero-mean weight per output channel, standardizing only divides by the channel's std, so PX of the
    # standardized convolution must equal PX of a plain convolution holding the effective weight.
    torch.manual_seed(0)
    standardized = _net(_StandardizedConv(1, 4, 3, bias=False))
    with torch.no_grad():
        w = standardized[0].weight
        w -= w.reshape(4, -1).mean(1).reshape(-1, 1, 1, 1)
        effective = w / torch.sqrt(w.reshape(4, -1).var(1, unbiased=False).reshape(-1, 1, 1, 1) + 1e-6)
    plain = _net(nn.Conv2d(1, 4, 3, bias=False))
    plain.load_state_dict(standardized.state_dict())
    with torch.no_grad():
        plain[0].weight.copy_(effective)
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(standardized(x), plain(x))  # the same network
    ours, reference = _scores(standardized, x), _scores(plain, x)
    assert all(reference[n].abs().max() > 0 for n in reference)
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-9, atol=0)


@pytest.mark.parametrize("model_type", ["bit", "poolformer", "data2vec-vision"])
def test_models_with_these_modules_get_non_negative_scores(model_type):
    # Without their rules: BiT's scores were all zero, PoolFormer's and Data2Vec-vision's (attention kernel called
    # directly, saturated on these inputs) partly negative.
    model, shape = tiny_model(model_type)
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(0))
    scores = torch.cat([s.flatten() for s in _scores(model, x).values()])
    assert scores.min() >= 0 and scores.max() > 0


def test_pruning_weight_standardized_convolutions_warns_that_kernels_stay_dense():
    model, shape = tiny_model("bit")
    with pytest.warns(UserWarning, match="effective kernels are not"):
        PXPruner(model, PXConfig(sparsity=0.5, scorer="magnitude"))


class _Difference(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x) - x  # paths of opposite signs, no rule for them


class _Centred(nn.Module):
    def forward(self, x):
        return x - x.mean(1, keepdim=True)  # one channel: zero in every pass


@pytest.mark.parametrize("module, message", [(_Difference(), "negative"), (_Centred(), "all zero")])
def test_scores_that_cannot_be_px_saliencies_are_refused(module, message):
    model = nn.Sequential(module, nn.Flatten(), nn.Linear(64, 3, bias=False))
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ModelError, match=message):
        _scores(model, x)


class _NotPoolMinusInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)

    def forward(self, x):
        return 2 * self.pool(x)


def test_a_module_holding_an_average_pool_must_return_pool_minus_input():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), _NotPoolMinusInput(), nn.Flatten(), nn.Linear(72, 3))
    with pytest.raises(ModelError, match="pool\\(x\\) - x"):
        _scores(model, torch.rand(6, 1, 8, 8))


class _Attention(nn.Module):
    """One head of self-attention over the rows of an 8x8 input, softmax written out (``kernel=False``, its
    probabilities through ``self.dropout`` as CvT's are) or left to ``scaled_dot_product_attention``."""

    def __init__(self, kernel: bool):
        super().__init__()
        self.kernel = kernel
        self.query, self.key, self.value = (nn.Linear(8, 8, bias=False) for _ in range(3))
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        if self.kernel:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.dropout(torch.softmax(q @ k.transpose(-2, -1) * 8 ** -0.5, dim=-1)) @ v


def _attention_net(kernel: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(1, 2), _Attention(kernel), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3, bias=False))


def test_attention_kernel_called_directly_is_scored_as_written_out_attention():
    # Caught at the call, the kernel's probabilities are recorded, replayed and made uniform as a written-out
    # softmax's are (Data2Vec-vision's SDPA attention calls it so).
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 30
    kernel, written = _scores(_attention_net(True), x), _scores(_attention_net(False), x)
    for name in written:
        torch.testing.assert_close(kernel[name], written[name], rtol=1e-5, atol=1e-12)
    assert kernel["1.value.weight"].max() > 0


def test_linear_layers_get_contiguous_inputs_in_the_linear_passes_only():
    """ConvNeXt's data pass hands its pointwise linear layers a permuted (strided) tensor; without a bias, as in
    the linear passes, torch runs that as a batched matmul against an expanded weight, much slower than the plain
    matmul a contiguous copy allows. The copy changes no value."""
    from px_hf.modeling.io import forward
    from px_hf.modeling.passes import LinearizedPasses
    from px_hf.zoo import small_model

    model = small_model("convnext", image_size=16)
    linear = model.convnext.encoder.stages[0].layers[0].pwconv1
    given, received = [], []
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad(), LinearizedPasses(model) as passes:
        # One hook before the passes' own (what the layer is given), one after them (what it computes on).
        handles = [linear.register_forward_pre_hook(lambda m, args: given.append(args[0].is_contiguous()),
                                                    prepend=True),
                   linear.register_forward_pre_hook(lambda m, args: received.append(args[0].is_contiguous()))]
        for mode, inputs in (("real", x), ("data", x * x)):
            with passes.run(mode):
                forward(model, inputs)
        for handle in handles:
            handle.remove()
    assert given == [True, False] and received == [True, True]

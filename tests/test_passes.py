"""The linearized passes: rescaling is exact, attention backends agree, the model is left as it was."""

import logging

import pytest
import torch
from torch import nn

from px_hf import PXConfig, PXPruner
from px_hf.errors import ModelError
from px_hf.modeling.passes import LinearizedPasses, check_data_pass_linear, pass_parameters
from px_hf.modeling.structure import parameter_roles, residual_blocks
from px_hf.zoo import image_classifier, imagenet_model, small_model


def _scores(model, digits, **config):
    x, y = digits
    pruner = PXPruner(model, PXConfig(sparsity=0.0, rounds=1, examples_per_class=2, **config))
    pruner.prune((x, y), progress=False)
    return torch.cat([s.flatten() for s in pruner.scores.values()])


def test_block_rescaling_changes_scores_by_one_common_factor(family, digits):
    x, y = digits
    data = (x.double(), y)
    assert residual_blocks(small_model(family))
    scaled = _scores(small_model(family).double(), data, batch_size=7)
    plain = _scores(small_model(family).double(), data, batch_size=7, px_rescale_blocks=False)
    assert plain.abs().max() > 0
    ratio = scaled[plain.argmax()] / plain.max()
    torch.testing.assert_close(scaled, plain * ratio, rtol=1e-7, atol=1e-12 * float(scaled.max()))


def test_sdpa_and_eager_attention_give_the_same_scores(digits):
    eager = _scores(small_model("vit", attn_implementation="eager"), digits)
    sdpa = _scores(small_model("vit", attn_implementation="sdpa"), digits)
    torch.testing.assert_close(eager, sdpa)


def test_pruning_leaves_the_model_as_it_was(digits):
    model = small_model("vit", attn_implementation="sdpa")
    model.train()
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    PXPruner(model, PXConfig(sparsity=0.5, rounds=2)).prune(digits, progress=False)
    assert model.config._attn_implementation == "sdpa"
    assert all(m.training for m in model.modules())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks_before


def test_batchnorm_running_statistics_untouched(digits):
    model = small_model("resnet")
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    PXPruner(model, PXConfig(sparsity=0.5, rounds=2)).prune(digits, progress=False)
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name


def test_real_pass_batchnorm_uses_batch_statistics():
    """In the real pass a BatchNorm normalizes with the batch's statistics while the model stays in eval mode."""
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(nn.Linear(4, 3), bn, nn.ReLU())
    x = torch.randn(16, 4) * 5 + 2
    with LinearizedPasses(model, norm="batch", branch_share=None) as passes, passes.run("real"), torch.no_grad():
        out = model(x)
    expected = torch.relu(nn.functional.batch_norm(model[0](x), None, None, bn.weight, bn.bias, training=True))
    torch.testing.assert_close(out, expected.detach())


def test_inplace_relu_keeps_its_gate():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 2))
    x = torch.randn(8, 4)
    with LinearizedPasses(model, norm="batch", branch_share=None) as passes, torch.no_grad():
        with passes.run("real"):
            model(x)
        with passes.run("data"):
            out = model(x)
    # With the recorded gates the data pass equals the real network.
    torch.testing.assert_close(out, model(x))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "resnet", "convnext"])
def test_px_scores_finite_in_float32_at_imagenet_size(family):
    """ViT-Base, ResNet-50 and ConvNeXt-Tiny configs at 224 px: one PX round, float32, finite non-zero scores."""
    model = imagenet_model(family)
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    pruner = PXPruner(model, PXConfig(sparsity=0.5, rounds=1, examples_per_class=None))
    pruner.prune(x, progress=False)
    for name, score in pruner.scores.items():
        assert torch.isfinite(score).all(), name
    assert pruner.summary().collapsed == []
    assert sum(int((s > 0).sum()) for s in pruner.scores.values()) > 0.4 * pruner.summary().params


@pytest.mark.slow
def test_swiftformer_blocks_are_rescaled_so_its_default_config_scores_in_float32(caplog):
    """SwiftFormer's convolutional blocks (``SwiftFormerConvEncoder`` in a ModuleList) are residual blocks: unless
    each is rescaled, the data pass of its default config (depths 3, 3, 6, 4) overflows float32 and PX falls back to
    float64, about twice as slow."""
    model = image_classifier("swiftformer", 10, image_size=224)[0]
    assert sum(type(b).__name__ == "SwiftFormerConvEncoder" for b in residual_blocks(model)) == 12
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="px_hf"):
        PXPruner(model, PXConfig(sparsity=0.5, rounds=1, examples_per_class=None)).prune(x, progress=False)
    assert "float64" not in caplog.text


class _InlineGate(nn.Module):
    """A multiplicative gate computed inline (as in focal modulation): no pass rule knows it."""

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x * self.fc(x)


def test_px_refuses_a_module_without_a_pass_rule_and_names_it():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), _InlineGate(8), nn.Linear(8, 3))
    data = (torch.randn(12, 6), torch.arange(12) % 3)
    with pytest.raises(ModelError, match=r"not linear.*The first module that breaks linearity is 2 \(_InlineGate\)"):
        PXPruner(model, PXConfig(sparsity=0.5, rounds=1, examples_per_class=None)).prune(data, progress=False)
    # The baselines do not rely on the linear passes and still prune it.
    PXPruner(model, PXConfig(sparsity=0.5, scorer="snip", examples_per_class=None)).prune(data, progress=False)


def test_linearity_check_accepts_a_network_the_rules_cover():
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3))
    with LinearizedPasses(model, norm="batch", branch_share=None) as passes:
        params = pass_parameters(parameter_roles(model), dict(model.named_parameters()), "data")
        check_data_pass_linear(passes, model, torch.randn(4, 6), params)  # raises if not linear


class _SqueezeExcite(nn.Module):
    """``x * sigmoid(conv(relu(conv(pool(x)))))``, as in EfficientNet and RegNet; ``broken`` adds the gate."""

    def __init__(self, channels: int, broken: bool = False):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.gate = nn.Sequential(nn.Conv2d(channels, 2, 1), nn.ReLU(), nn.Conv2d(2, channels, 1), nn.Sigmoid())
        self.broken = broken

    def forward(self, x):
        gate = self.gate(self.pool(x))
        return x + gate if self.broken else x * gate


def _gated_net(broken: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), _SqueezeExcite(4, broken), nn.Flatten(), nn.LazyLinear(3))


def test_squeeze_excitation_gate_is_replayed_in_the_data_pass():
    model = _gated_net()
    x = torch.randn(5, 3, 6, 6)
    model(x)  # materializes the lazy layer
    # No rescaling: the block's output would get a common factor.
    with LinearizedPasses(model, norm="batch", rescale_blocks=False, branch_share=None) as passes:
        params = pass_parameters(parameter_roles(model), dict(model.named_parameters()), "data")
        check_data_pass_linear(passes, model, x, params)
        with torch.no_grad(), passes.run("real"):
            features = model[:2](x)
            gate = model[2].gate(model[2].pool(features))
            model(x)
        with torch.no_grad(), passes.run("data"):
            replayed = model[2](features)
    torch.testing.assert_close(replayed, features * gate)


def test_squeeze_excitation_layers_get_path_scores():
    model = _gated_net()
    data = (torch.randn(12, 3, 6, 6), torch.arange(12) % 3)
    model(data[0])
    pruner = PXPruner(model, PXConfig(sparsity=0.5, rounds=1, examples_per_class=None))
    pruner.prune(data, progress=False)
    for name in ("2.gate.0.weight", "2.gate.2.weight"):  # on the paths through the block, not a constant
        assert pruner.scores[name].gt(0).float().mean() > 0.5, name
    assert pruner.summary().collapsed == []


def test_a_gate_that_is_not_a_product_is_refused_by_name():
    model = _gated_net(broken=True)
    data = (torch.randn(12, 3, 6, 6), torch.arange(12) % 3)
    model(data[0])
    with pytest.raises(ModelError, match="_SqueezeExcite"):
        PXPruner(model, PXConfig(sparsity=0.5, rounds=1, examples_per_class=None)).prune(data, progress=False)


def _focal_net(broken: bool = False) -> nn.Module:
    """A conv stem, transformers' FocalNet modulation (two focal levels) and a head; ``broken`` adds the modulator
    to the query instead of multiplying by it."""
    from transformers import FocalNetConfig
    from transformers.models.focalnet.modeling_focalnet import FocalNetModulation

    class Added(FocalNetModulation):
        def forward(self, hidden_state):
            x = self.projection_in(hidden_state).permute(0, 3, 1, 2)
            q, ctx, _ = torch.split(x, (self.dim, self.dim, self.focal_level + 1), 1)
            return self.projection_out((q + self.projection_context(ctx)).permute(0, 2, 3, 1))

    class ChannelsLast(nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1)

    torch.manual_seed(0)
    config = FocalNetConfig(focal_levels=[2], focal_windows=[3])
    modulation = (Added if broken else FocalNetModulation)(config, 0, dim=8)
    return nn.Sequential(nn.Conv2d(3, 8, 3), ChannelsLast(), modulation, nn.Flatten(), nn.Linear(8 * 4 * 4, 3))


def test_focal_modulation_is_linear_in_the_data_pass_only_with_its_rule(monkeypatch):
    from px_hf.modeling.passes import engine

    model, x = _focal_net(), torch.randn(5, 3, 6, 6)
    with LinearizedPasses(model, norm="batch", branch_share=None) as passes:
        params = pass_parameters(parameter_roles(model), dict(model.named_parameters()), "data")
        check_data_pass_linear(passes, model, x, params)  # the modulator is replayed as a gate
    monkeypatch.setattr(engine, "RULES", tuple(r for r in engine.RULES if r.__name__ != "ModulatorRule"))
    with LinearizedPasses(model, norm="batch", branch_share=None) as passes:
        with pytest.raises(ModelError, match="FocalNetModulation"):
            check_data_pass_linear(passes, model, x, params)


def test_focal_modulation_layers_get_path_scores_and_survive_pruning():
    model = _focal_net()
    data = (torch.randn(12, 3, 6, 6), torch.arange(12) % 3)
    pruner = PXPruner(model, PXConfig(sparsity=0.0, rounds=1, examples_per_class=None))
    pruner.prune(data, progress=False)
    # The context layers and the modulator's projection are on the paths through the product, not constants.
    for name in ("2.focal_layers.0.0.weight", "2.focal_layers.1.0.weight", "2.projection_context.weight",
                 "2.projection_in.weight"):
        assert pruner.scores[name].gt(0).float().mean() > 0.9, name
    pruner = PXPruner(model, PXConfig(sparsity=0.9, rounds=20, examples_per_class=None))
    pruner.prune(data, progress=False)
    assert pruner.summary().collapsed == []  # the second focal level's longer paths are not emptied


def test_a_modulator_that_is_not_a_factor_is_refused_by_name():
    data = (torch.randn(12, 3, 6, 6), torch.arange(12) % 3)
    with pytest.raises(ModelError, match="projection_context"):  # where the replayed modulator enters
        PXPruner(_focal_net(broken=True), PXConfig(sparsity=0.5, rounds=1, examples_per_class=None)).prune(
            data, progress=False)


class _Tokens(nn.Module):
    """(batch, channels, height, width) -> (batch, tokens, channels), SwiftFormer's layout for its attention."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


def _linear_attention_net(kind: str, broken: bool = False) -> tuple[nn.Module, str]:
    """A conv stem, one of transformers' linear-cost attentions (8 channels) and a head, with the name of the
    attention module in it; ``broken`` makes the attention add where it multiplies."""
    if kind == "separable":
        from transformers import MobileViTV2Config
        from transformers.models.mobilevitv2.modeling_mobilevitv2 import MobileViTV2LinearSelfAttention as Attention

        class Added(Attention):
            def forward(self, hidden_states):
                query, key, value = torch.split(self.qkv_proj(hidden_states), [1, self.embed_dim, self.embed_dim], 1)
                return self.out_proj(value + (key * torch.softmax(query, -1)).sum(-1, keepdim=True))

        attention = (Added if broken else Attention)(MobileViTV2Config(), embed_dim=8)
        layout = []  # the module takes (batch, channels, pixels, patches): a feature map as it is
    else:
        from transformers import SwiftFormerConfig
        from transformers.models.swiftformer.modeling_swiftformer import (
            SwiftFormerEfficientAdditiveAttention as Attention)

        class Added(Attention):
            def forward(self, x):
                query = torch.nn.functional.normalize(self.to_query(x), dim=-1)
                key = torch.nn.functional.normalize(self.to_key(x), dim=-1)
                return self.final(self.proj(query.sum(1, keepdim=True) + key) + query)

        attention = (Added if broken else Attention)(SwiftFormerConfig(), dim=8)
        layout = [_Tokens()]
    torch.manual_seed(0)
    for module in attention.modules():  # transformers' initialization (std 0.02), not torch's
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.02)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), *layout, attention, nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    return net, str(len(layout) + 1)


@pytest.mark.parametrize("kind", ["separable", "additive"])
def test_linear_cost_attention_is_linear_in_the_data_pass_only_with_its_rule(kind, monkeypatch):
    from px_hf.modeling.passes import engine

    model, name = _linear_attention_net(kind)
    x = torch.randn(5, 3, 6, 6)
    params = pass_parameters(parameter_roles(model), dict(model.named_parameters()), "data")
    with LinearizedPasses(model, norm="batch", branch_share=None) as passes:
        check_data_pass_linear(passes, model, x, params)  # the context replayed as a gate
    rule = "SeparableAttentionRule" if kind == "separable" else "AdditiveAttentionRule"
    monkeypatch.setattr(engine, "RULES", tuple(r for r in engine.RULES if r.__name__ != rule))
    with LinearizedPasses(model, norm="batch", branch_share=None) as passes:
        with pytest.raises(ModelError, match=type(model[int(name)]).__name__):
            check_data_pass_linear(passes, model, x, params)


@pytest.mark.parametrize("kind", ["separable", "additive"])
def test_linear_cost_attention_keeps_every_projection_on_paths(kind):
    model, name = _linear_attention_net(kind)
    data = (torch.randn(12, 3, 6, 6), torch.arange(12) % 3)
    pruner = PXPruner(model, PXConfig(sparsity=0.0, rounds=1, examples_per_class=None, qk_scores="px"))
    pruner.prune(data, progress=False)
    if kind == "separable":  # one fused projection: the query row, the key rows and the value rows
        fused = pruner.scores[f"{name}.qkv_proj.convolution.weight"].flatten(1)
        parts = {"query": fused[:1], "key": fused[1:9], "value": fused[9:]}
    else:
        parts = {p: pruner.scores[f"{name}.{p}.weight"] for p in ("to_query", "to_key", "proj", "final")}
    for part, scores in parts.items():
        assert scores.gt(0).float().mean() > 0.9, part  # raw PX scores (qk_scores="px"): no fallback fills them


@pytest.mark.parametrize("kind", ["separable", "additive"])
def test_an_attention_that_does_not_compute_what_its_rule_assumes_is_refused_by_name(kind):
    model, _ = _linear_attention_net(kind, broken=True)
    with pytest.raises(ModelError, match="Added does not compute what px_hf's pass rule"):
        PXPruner(model, PXConfig(sparsity=0.5, rounds=1, examples_per_class=None)).prune(
            (torch.randn(12, 3, 6, 6), torch.arange(12) % 3), progress=False)


class _InlineAttention(nn.Module):
    """Softmax attention computed inline, its probabilities through ``self.dropout`` (as CvT, PVT, Donut-Swin)."""

    def __init__(self, width: int, dropout: bool = True):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.dropout = nn.Dropout(0.1) if dropout else None

    def forward(self, x):
        probs = torch.softmax(self.query(x) @ self.key(x).transpose(1, 2), dim=-1)
        return (self.dropout(probs) if self.dropout is not None else probs) @ self.value(x)


def test_inline_attention_probabilities_are_replayed_through_their_dropout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), _InlineAttention(8), nn.Flatten(), nn.Linear(40, 3))
    x = torch.randn(6, 5, 4)
    with LinearizedPasses(model, norm="batch", rescale_blocks=False, branch_share=None) as passes:
        params = pass_parameters(parameter_roles(model), dict(model.named_parameters()), "data")
        check_data_pass_linear(passes, model, x, params)
        with torch.no_grad(), passes.run("real"):
            hidden = model[0](x)
            probs = torch.softmax(model[1].query(hidden) @ model[1].key(hidden).transpose(1, 2), dim=-1)
            model(x)
        with torch.no_grad(), passes.run("data"):
            replayed = model[1](hidden * 3)  # other inputs, same probabilities
    torch.testing.assert_close(replayed, probs @ model[1].value(hidden * 3))


def test_the_passes_default_to_pxconfig_defaults():
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(LinearizedPasses).parameters.items()}
    config = PXConfig()
    assert (defaults["norm"], defaults["activation"], defaults["rescale_blocks"], defaults["branch_share"]) == (
        config.px_norm, config.px_activation, config.px_rescale_blocks, config.px_branch_share)


def test_an_inline_softmax_without_dropout_is_caught_at_the_call():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), _InlineAttention(8, dropout=False), nn.Flatten(), nn.Linear(40, 3))
    x = torch.randn(6, 5, 4)
    with LinearizedPasses(model, norm="batch", rescale_blocks=False, branch_share=None) as passes:
        params = pass_parameters(parameter_roles(model), dict(model.named_parameters()), "data")
        check_data_pass_linear(passes, model, x, params)  # raises unless the softmax calls are caught
        assert passes.inline_softmax is not None
        with torch.no_grad(), passes.run("real"):
            hidden = model[0](x)
            probs = torch.softmax(model[1].query(hidden) @ model[1].key(hidden).transpose(1, 2), dim=-1)
            model(x)
        with torch.no_grad(), passes.run("data"):
            model[0](x)  # the softmax calls are matched by order: the data pass replays the real pass's
            replayed = model[1](hidden * 3)
        with torch.no_grad(), passes.run("path"):
            uniform = torch.softmax(torch.randn(2, 5, 5), dim=-1)
    torch.testing.assert_close(replayed, probs @ model[1].value(hidden * 3))
    assert torch.equal(uniform, torch.full((2, 5, 5), 0.2))
    with LinearizedPasses(model, norm="batch", rescale_blocks=False, branch_share=None) as passes:
        passes.enable_inline_softmax()
        with torch.no_grad(), passes.run("data"), pytest.raises(RuntimeError, match="reached InlineSoftmax more often"):
            model(x)  # no real pass recorded the probabilities to replay
    data = (torch.randn(12, 5, 4), torch.arange(12) % 3)
    pruner = PXPruner(model, PXConfig(sparsity=0.5, rounds=2, examples_per_class=None))
    pruner.prune(data, progress=False)
    assert all(torch.isfinite(s).all() for s in pruner.scores.values()) and not pruner.summary().collapsed


def test_the_softmax_catcher_stays_off_where_rules_suffice(digits):
    model = small_model("vit", attn_implementation="eager")
    with LinearizedPasses(model) as passes:
        params = pass_parameters(parameter_roles(model), dict(model.named_parameters()), "data")
        check_data_pass_linear(passes, model, digits[0][:2], params)
        assert passes.inline_softmax is None

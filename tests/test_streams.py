"""The test on data that admits nested blocks to rescaling (``px_hf/modeling/passes/streams.py``): blocks that carry
the whole stream are admitted, blocks that feed a concatenation are not, and admitting changes PX's scores by one
common factor only."""

import torch

from px_hf import PXConfig, PXPruner
from px_hf.modeling.passes import LinearizedPasses, admit_stream_blocks, pass_parameters, streams
from px_hf.modeling.structure import nested_blocks, parameter_roles
from tiny_models import tiny_model


def _admitted(model_type: str, bias: str = "zero") -> tuple[list[str], list[str]]:
    """(candidate class names, admitted class names) for the tiny model of ``model_type``."""
    model, shape = tiny_model(model_type)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(0))
    with LinearizedPasses(model) as passes:
        candidates = [type(m).__name__ for m in passes.residual.candidates]
        params = pass_parameters(parameter_roles(model), dict(model.named_parameters()), "data", bias=bias)
        admitted = [type(m).__name__ for m in admit_stream_blocks(passes, model, x, params)]
        assert len(passes.residual.candidates) == len(candidates) - len(admitted)
    return candidates, admitted


def test_blocks_nested_in_stages_are_admitted_when_they_carry_the_stream():
    # PVT-v2: transformer blocks inside each stage; the stage alone was rescaled before, and float32 overflowed.
    candidates, admitted = _admitted("pvt_v2")
    assert candidates and admitted == candidates
    # HGNet-v2: the layers of an aggregation block are concatenated, so none carries the stream.
    candidates, admitted = _admitted("hgnet_v2")
    assert candidates and admitted == []
    # MobileViT: the inverted residuals of its MobileNet stages carry the stream; the transformer layers of its
    # MobileViT stages are fused with the stage's input by a concatenation, a bypass of about 1e-15 of the output.
    candidates, admitted = _admitted("mobilevit")
    assert "MobileViTTransformerLayer" in candidates
    assert admitted and set(admitted) == {"MobileViTInvertedResidual"}


def test_models_without_nested_blocks_pay_nothing():
    for model_type in ("vit", "resnet", "convnext"):
        model, _ = tiny_model(model_type)
        assert nested_blocks(model) == []


def test_biases_as_constant_units_admit_nothing():
    # With px_bias="path" a bias adds a constant after any block, so zeroing a block never zeroes the output.
    assert _admitted("pvt_v2", bias="path")[1] == []


def _scores(model_type: str, rescale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """PX scores of the float64 tiny model with and without rescaling (branch balancing off: on admitted blocks
    it is meant to change the scores)."""
    model, shape = tiny_model(model_type)
    model = model.double()
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(8) % 4
    pruner = PXPruner(model, PXConfig(sparsity=0.0, rounds=1, examples_per_class=None, px_branch_share=None,
                                      px_rescale_blocks=rescale))
    pruner.prune((x, y), progress=False)
    return torch.cat([s.flatten() for s in pruner.scores.values()])


def _deviation_from_common_factor(model_type: str) -> float:
    scaled, plain = _scores(model_type, True), _scores(model_type, False)
    assert plain.abs().max() > 0
    ratio = scaled[plain.argmax()] / plain.max()
    return float((scaled - plain * ratio).abs().max() / scaled.abs().max())


def test_admitted_blocks_change_scores_by_one_common_factor():
    for model_type in ("pvt_v2", "mobilevit"):
        assert _deviation_from_common_factor(model_type) < 1e-10


def test_admitting_a_bypassed_block_would_not_be_a_common_factor(monkeypatch):
    # What the zero test guards against: MobileViT's transformer layers, admitted although a concatenation
    # bypasses them, change the scores by far more than a factor.
    monkeypatch.setattr(streams, "_bypassed", lambda passes, model, x, params, candidates: torch.zeros(len(candidates)))
    assert _deviation_from_common_factor("mobilevit") > 0.01


def test_every_process_admits_the_same_blocks():
    # A process without data contributes nothing and admits what the others found; the all-reduce takes the
    # largest flag, so one process seeing a bypass keeps the block out everywhere.
    model, _ = tiny_model("pvt_v2")
    found_elsewhere = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def all_reduce(tensors, op):
        assert op == "max"
        tensors[0].copy_(torch.maximum(tensors[0], found_elsewhere))

    with LinearizedPasses(model) as passes:
        first, second = passes.residual.candidates
        params = pass_parameters(parameter_roles(model), dict(model.named_parameters()), "data")
        assert admit_stream_blocks(passes, model, None, params, all_reduce) == [first]
        assert passes.residual.candidates == [second]

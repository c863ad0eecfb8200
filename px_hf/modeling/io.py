"""Calling a model the same way whatever it is: a transformers model or a plain torch module."""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Optional

import torch
from torch import nn
from torch.func import functional_call


def _main_input_name(model: nn.Module) -> Optional[str]:
    # transformers models take their image as a keyword (pixel_values); plain modules take it positionally.
    return getattr(model, "main_input_name", None)


def image_input_spec(model: nn.Module, default_size: int = 32) -> tuple[int, int]:
    """``(channels, side)`` of the images ``model`` takes, read from its config (the vision config of a model that
    has one, as CLIP's); 3 channels and ``default_size`` where the config says nothing."""
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", config)
    size = getattr(config, "image_size", None) or default_size
    return getattr(config, "num_channels", 3), size if isinstance(size, int) else size[0]


def output_tensor(output) -> torch.Tensor:
    """The logits (or the only tensor) of a model's output: ModelOutput, tuple or tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        output = tuple(output.values())
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find an output tensor in a {type(output).__name__}")


@contextlib.contextmanager
def floating_weights(
    model: nn.Module, dtype: torch.dtype, replace: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16),
) -> Iterator[None]:
    """Hold ``model``'s parameters and buffers of the ``replace`` dtypes in ``dtype`` inside the block, and give
    them back their own dtype after it (by default: half precision held in float32).

    Scores are products of many weights and activations: in half precision they overflow or underflow, and in
    float32 they can overflow on long chains of layers. Widening is exact (every half value is a float32 value,
    every float32 value a float64 value), and zeros written inside stay zeros when narrowed back.
    """
    changed = [(module, key, tensor.dtype, kind) for module in model.modules()
               for kind, tensors in (("param", module._parameters), ("buffer", module._buffers))
               for key, tensor in tensors.items() if tensor is not None and tensor.dtype in replace]
    for module, key, _, kind in changed:
        _set(module, key, kind, dtype)
    try:
        yield
    finally:
        for module, key, original, kind in changed:
            _set(module, key, kind, original)


def _set(module: nn.Module, key: str, kind: str, dtype: torch.dtype) -> None:
    if kind == "param":
        # .data keeps the Parameter object, so optimizers and dicts holding it stay valid.
        module._parameters[key].data = module._parameters[key].data.to(dtype)
    else:
        module._buffers[key] = module._buffers[key].to(dtype)


def forward(
    model: nn.Module, inputs: torch.Tensor, parameters: Optional[Mapping[str, torch.Tensor]] = None
) -> torch.Tensor:
    """Run ``model`` on ``inputs`` and return its output tensor.

    ``parameters`` temporarily replaces the named parameters (``torch.func.functional_call``), which is how the
    PX passes run on transformed weights without copying the model.
    """
    name = _main_input_name(model)
    args, kwargs = ((), {name: inputs}) if name else ((inputs,), {})
    if parameters is None:
        return output_tensor(model(*args, **kwargs))
    return output_tensor(functional_call(model, dict(parameters), args, kwargs))


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every module's own mode restored after it."""
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, flag in training.items():
            module.train(flag)

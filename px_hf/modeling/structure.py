"""Find the parts of a model that PX treats specially, by module type rather than by parameter-name rules."""

from __future__ import annotations

import enum
import inspect
import warnings
from dataclasses import dataclass
from typing import Optional

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..targets import PRUNABLE_LAYER_TYPES

# Modules in torch.nn.modules.activation that are not element-wise activations.
_NOT_ELEMENTWISE = ("Softmax", "Softmin", "LogSoftmax", "Softmax2d", "MultiheadAttention", "GLU", "Threshold")
# Parameters added to the token stream (zero in the PX passes) and multiplicative per-channel scales (one).
_ADDITIVE_NAMES = ("cls_token", "class_embedding", "position_embeddings", "mask_token", "pos_embed", "dist_token",
                   "distillation_token", "register_tokens", "relative_position_bias_table")
_SCALE_NAMES = ("layer_scale", "lambda", "ls1", "ls2")
_QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"),
              ("projection_query", "projection_key", "projection_value"))
# Children of a residual block that form its skip connection rather than a branch.
_SHORTCUT_NAMES = ("shortcut", "downsample", "skip")
_PROJECTION_SKIP_NAMES = ("proj",)


class Role(enum.Enum):
    """How a parameter enters PX's data and path passes."""

    PATH_WEIGHT = "path_weight"  # Linear/Conv weight: a factor on every path through it
    BIAS = "bias"  # bias of a Linear/Conv layer: a weight on a constant unit
    ADDITIVE = "additive"  # class token, position embeddings: dropped from the passes
    SCALE = "scale"  # layer scale: set to 1 in the passes
    NORM = "norm"  # normalization affine parameters: handled by the norm hooks
    OTHER = "other"  # unknown: left at its value, with a warning


def is_activation(module: nn.Module) -> bool:
    """Element-wise activation modules of torch and transformers."""
    cls = type(module)
    if cls.__module__ == "torch.nn.modules.activation":
        return cls.__name__ not in _NOT_ELEMENTWISE
    return cls.__module__ == "transformers.activations"


def is_norm(module: nn.Module) -> bool:
    """BatchNorm, LayerNorm (and subclasses such as ConvNeXt's) and GroupNorm."""
    return isinstance(module, (_BatchNorm, nn.LayerNorm, nn.GroupNorm))


_GATE_ACTIVATIONS = (nn.Sigmoid, nn.Hardsigmoid)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_GATE_PARTS = (*_GLOBAL_POOLS, nn.Sequential, nn.ModuleList, *PRUNABLE_LAYER_TYPES)


def gate_activation(module: nn.Module) -> Optional[nn.Module]:
    """The sigmoid of a squeeze-excitation block, or ``None`` when ``module`` is not one.

    A squeeze-excitation block is recognized by what it is built from: a global average pool (output size 1),
    layers, element-wise activations, and a last sigmoid-like activation, and nothing else.
    """
    parts = list(module.modules())[1:]
    pools = [m for m in parts if isinstance(m, _GLOBAL_POOLS)]
    gates = [m for m in parts if isinstance(m, _GATE_ACTIVATIONS)]
    if not pools or not gates or any(not isinstance(m, _GATE_PARTS) and not is_activation(m) for m in parts):
        return None
    sizes = [p.output_size if isinstance(p.output_size, tuple) else (p.output_size,) for p in pools]
    if any(s != 1 for size in sizes for s in size):
        return None
    return gates[-1]


def is_focal_modulation(module: nn.Module) -> bool:
    """Whether ``module`` is a focal modulation: a chain of ``focal_layers`` whose contexts a ``projection_context``
    layer turns into the modulator of a query (FocalNet)."""
    return (isinstance(getattr(module, "projection_context", None), PRUNABLE_LAYER_TYPES)
            and isinstance(getattr(module, "focal_layers", None), nn.ModuleList))


def is_separable_attention(module: nn.Module) -> bool:
    """Whether ``module`` is a separable self-attention (MobileViTV2): one fused projection to a one-channel query,
    keys and values (``qkv_proj``, ``1 + 2 * embed_dim`` channels), and ``out_proj``."""
    fused = getattr(module, "qkv_proj", None)
    layer = getattr(fused, "convolution", fused)
    return (isinstance(layer, PRUNABLE_LAYER_TYPES) and isinstance(getattr(module, "embed_dim", None), int)
            and getattr(layer, "out_channels", None) == 1 + 2 * module.embed_dim
            and isinstance(getattr(module, "out_proj", None), nn.Module))


def is_additive_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an efficient additive attention (SwiftFormer): ``to_query`` and ``to_key`` layers, a
    learned query weighting ``w_g`` and the ``proj`` and ``final`` layers."""
    return (all(isinstance(getattr(module, name, None), PRUNABLE_LAYER_TYPES)
                for name in ("to_query", "to_key", "proj", "final"))
            and isinstance(getattr(module, "w_g", None), nn.Parameter))


def is_max_pool(module: nn.Module) -> bool:
    return isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))


def uses_attention_interface(module: nn.Module) -> bool:
    """Attention modules that dispatch through transformers' AttentionInterface (ViT, DeiT, ... in 5.x)."""
    config = getattr(module, "config", None)
    return config is not None and hasattr(config, "_attn_implementation") and has_qkv(module)


def has_qkv(module: nn.Module) -> bool:
    """Whether ``module`` holds Linear query, key and value projections (``q_proj``/``k_proj``/``v_proj``, ...)."""
    return any(all(isinstance(getattr(module, n, None), nn.Linear) for n in names) for names in _QKV_NAMES)


def is_attention_dropout(module: nn.Module, parent: Optional[nn.Module]) -> bool:
    """The dropout an attention module computing its softmax inline applies to the probabilities (``self.dropout``
    of CvT, Donut-Swin, PVT, Perceiver, ...): the one place their probabilities pass through a module."""
    return (isinstance(module, nn.Dropout) and parent is not None and has_qkv(parent)
            and not uses_attention_interface(parent) and getattr(parent, "dropout", None) is module)


@dataclass(frozen=True)
class AttentionWeights:
    """Parameter names of one attention block's query, key and value projection weights."""

    query: str
    key: str
    value: str


def attention_blocks(model: nn.Module) -> list[AttentionWeights]:
    """Every module with Linear query/key/value children (``q_proj``/``k_proj``/``v_proj`` or ``query``/...)."""
    blocks = []
    for name, module in model.named_modules():
        for names in _QKV_NAMES:
            if all(isinstance(getattr(module, n, None), nn.Linear) for n in names):
                prefix = f"{name}." if name else ""
                blocks.append(AttentionWeights(*(f"{prefix}{n}.weight" for n in names)))
    return blocks


def _has_path_weights(module: nn.Module) -> bool:
    return any(isinstance(m, PRUNABLE_LAYER_TYPES) for m in module.modules())


# Class names of the blocks transformers iterates in a ModuleList (MobileNetV2's are ...InvertedResidual,
# SwiftFormer's convolutional blocks ...ConvEncoder).
_BLOCK_SUFFIXES = ("Layer", "Block", "Residual", "Encoder")


def _block_candidates(model: nn.Module) -> dict[str, tuple[nn.Module, bool]]:
    """Composite children of ``nn.Sequential`` containers, and ``nn.ModuleList`` children whose class name ends in
    one of ``_BLOCK_SUFFIXES``, which transformers iterates in sequence: name -> (module, whether its container is a
    ModuleList)."""
    found: dict[str, tuple[nn.Module, bool]] = {}
    for name, container in model.named_modules():
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        listed = not isinstance(container, nn.Sequential)
        for child_name, child in container.named_children():
            composite = not isinstance(child, PRUNABLE_LAYER_TYPES) and _has_path_weights(child)
            if composite and (not listed or type(child).__name__.endswith(_BLOCK_SUFFIXES)):
                found[f"{name}.{child_name}" if name else child_name] = (child, listed)
    return found


def _inside(name: str, names) -> bool:
    return any(name.startswith(other + ".") for other in names)


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """Modules whose output is the whole stream passed to the next one, so rescaling it is a common factor.

    These are the outermost block candidates (composite children of ``nn.Sequential`` containers, and
    ``nn.ModuleList`` children named like blocks, see ``_BLOCK_SUFFIXES``): a Sequential inside a block is a
    residual branch, and scaling a branch alone is not a common factor. Blocks nested in these may carry
    the whole stream as well; :func:`nested_blocks` lists them for a test on data to decide.
    """
    found = _block_candidates(model)
    return [m for n, (m, _) in found.items() if not _inside(n, found)]


def nested_blocks(model: nn.Module) -> list[nn.Module]:
    """``nn.ModuleList`` blocks inside a :func:`residual_blocks` block (PVT-v2's blocks inside its stages),
    outermost first. Whether one carries the whole stream or feeds a concatenation or a skip (HGNet-v2's
    aggregation, MobileViT's fusion) cannot be read from the structure; the linear passes test it on data
    (``passes/streams.py``)."""
    found = _block_candidates(model)
    return [m for n, (m, listed) in found.items() if listed and _inside(n, found)]


@dataclass(frozen=True)
class ResidualBlock:
    """A residual block and the branches that add into its stream.

    ``branches`` are the block's composite children with path weights (a transformer layer's attention and MLP, a
    ResNet layer's convolution stack). When the block holds its path weights directly (ConvNeXt), ``branches`` is
    empty and the whole block, minus its identity skip, is one branch.
    """

    module: nn.Module
    branches: tuple[nn.Module, ...]
    # Branches that may add the stream themselves (``output(hidden_states, input_tensor)``); checked on data.
    closing: tuple[nn.Module, ...] = ()


def residual_block(block: nn.Module) -> ResidualBlock:
    """``block`` with its residual branches."""
    children = [(n, c) for n, c in block.named_children() if _has_path_weights(c)]
    direct = {n for n, c in children if isinstance(c, PRUNABLE_LAYER_TYPES)}
    # A layer held by the block itself makes the whole block one branch (ConvNeXt), unless it is the projection of
    # the skip beside composite branches (Hiera's ``proj``, when a block changes width).
    if direct and (direct - set(_PROJECTION_SKIP_NAMES) or len(direct) == len(children)):
        return ResidualBlock(block, ())
    children = [(n, c) for n, c in children if n not in direct]
    branches = {n: c for n, c in children if n not in _SHORTCUT_NAMES}
    # BERT-style transformers layers (CvT) end their MLP in ``output(intermediate(x), input_tensor)``, which may add
    # the stream: the MLP branch then ends in ``output``, and ``intermediate`` is only its first half.
    output = branches.get("output")
    closes = output is not None and "input_tensor" in inspect.signature(output.forward).parameters
    if closes and "intermediate" in branches:
        del branches["intermediate"]
        return ResidualBlock(block, tuple(branches.values()), (output,))
    return ResidualBlock(block, tuple(branches.values()))


def residual_branches(model: nn.Module) -> list[ResidualBlock]:
    """Every block of :func:`residual_blocks` with its residual branches."""
    return [residual_block(block) for block in residual_blocks(model)]


def parameter_roles(model: nn.Module) -> dict[str, Role]:
    """The :class:`Role` of every parameter of ``model``."""
    roles: dict[str, Role] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for pname, _ in module.named_parameters(recurse=False):
            full = prefix + pname
            if is_norm(module):
                roles[full] = Role.NORM
            elif isinstance(module, PRUNABLE_LAYER_TYPES):
                roles[full] = Role.PATH_WEIGHT if pname == "weight" else Role.BIAS
            elif isinstance(module, nn.Embedding):  # looked-up vectors added to the stream (positions, classes)
                roles[full] = Role.ADDITIVE
            elif any(key in pname for key in _ADDITIVE_NAMES) or pname.endswith("bias"):
                roles[full] = Role.ADDITIVE
            elif any(key in pname for key in _SCALE_NAMES):
                roles[full] = Role.SCALE
            else:
                roles[full] = Role.OTHER
    unknown = [n for n, r in roles.items() if r is Role.OTHER]
    if unknown:
        warnings.warn(
            f"px_hf does not know how the parameters {unknown[:5]} enter the network's paths; the PX passes leave "
            "them at their values", stacklevel=3,
        )
    return roles

"""Models built from configs (no download), for demos, tests and benchmarks: small ViT, ConvNeXt and ResNet
models, and any image classifier type transformers registers."""

from __future__ import annotations

from transformers import (
    ConvNextConfig, ConvNextForImageClassification, PreTrainedModel, ResNetConfig, ResNetForImageClassification,
    ViTConfig, ViTForImageClassification,
)

# The tiny models used on digits: 26, 13 and 16 prunable layers.
_SMALL = {
    "vit": dict(patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128),
    "convnext": dict(patch_size=2, num_stages=3, hidden_sizes=[16, 32, 64], depths=[1, 1, 1]),
    "resnet": dict(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[2, 2, 2], layer_type="basic",
                   downsample_in_first_stage=False),
}
_CLASSES = {"vit": (ViTConfig, ViTForImageClassification), "convnext": (ConvNextConfig, ConvNextForImageClassification),
            "resnet": (ResNetConfig, ResNetForImageClassification)}
FAMILIES = tuple(_CLASSES)


def small_model(family: str, num_labels: int = 10, image_size: int = 32, num_channels: int = 1, seed: int = 0,
                **overrides) -> PreTrainedModel:
    """A tiny randomly initialized image classifier of ``family`` (``vit``, ``convnext`` or ``resnet``), sized for
    digits and tests. ``overrides`` are passed to the config."""
    return _family_model(family, {**_SMALL.get(family, {}), **overrides}, num_labels, image_size, num_channels, seed)


def imagenet_model(family: str, num_labels: int = 1000, image_size: int = 224, num_channels: int = 3, seed: int = 0,
                   **overrides) -> PreTrainedModel:
    """A randomly initialized ViT-Base/16, ConvNeXt-Tiny or ResNet-50 (the configs' defaults), for benchmarks.
    ``overrides`` are passed to the config."""
    return _family_model(family, overrides, num_labels, image_size, num_channels, seed)


def _family_model(family: str, arch: dict, num_labels: int, image_size: int, num_channels: int,
                  seed: int) -> PreTrainedModel:
    import torch

    from .errors import ModelError

    if family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ModelError(f"image_size must be a positive number of pixels, got {image_size!r}")
    config_cls, model_cls = _CLASSES[family]
    config = config_cls(num_labels=num_labels, num_channels=num_channels, image_size=image_size, **arch)
    smallest = _smallest_image(family, config)
    if image_size < smallest:
        raise ModelError(f"image_size {image_size} is too small for this {family}: its downsampling needs at least "
                         f"{smallest}x{smallest} pixels (patch_size {config.patch_size})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config)


def _smallest_image(family: str, config) -> int:
    """The smallest image side the family's stem and downsampling layers accept."""
    if family == "vit":
        return config.patch_size
    if family == "convnext":  # a patchify stem, then a stride-2 downsampling before every later stage
        return config.patch_size * 2 ** (config.num_stages - 1)
    return 1  # ResNet's padded strided convolutions accept any size, so the check above never fails for it


def image_classifier(model_type: str, num_labels: int = 10, seed: int = 0,
                     **overrides) -> tuple[PreTrainedModel, tuple[int, int, int]]:
    """A randomly initialized ``AutoModelForImageClassification`` of ``model_type`` (eval mode) and the shape of
    one input image (32 pixels per side when the config sets none). ``overrides`` are passed to the type's default
    config."""
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as NAMES

    from .errors import ModelError

    if model_type not in NAMES:
        raise ModelError(f"{model_type!r} is not an image classification model type of transformers; choose one of "
                         f"{', '.join(sorted(NAMES))}")
    size = overrides.get("image_size")
    if isinstance(size, int) and isinstance(getattr(AutoConfig.for_model(model_type), "image_size", None),
                                            (list, tuple)):
        overrides["image_size"] = [size, size]  # configs that keep (height, width) reject a single number
    config = AutoConfig.for_model(model_type, **overrides)
    config.num_labels = num_labels
    names = NAMES[model_type]
    # Built from the class: from_config needs config.architectures, which some default configs lack.
    model_cls = getattr(transformers, names if isinstance(names, str) else names[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    from .modeling.io import image_input_spec

    channels, size = image_input_spec(model)
    return model, (channels, size, size)

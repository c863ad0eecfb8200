"""Tiny configs of every model type transformers registers for ``AutoModelForImageClassification``.

Used by ``tests/test_model_types.py`` and, through it, by ``benchmarks/coverage.py``, which writes the list of
supported models in ``docs/supported_models.md``. A type is either built from ``TINY`` (a few thousand
parameters, 32x32 images unless ``image_size`` says otherwise) or listed in ``NOT_BUILDABLE`` with the reason.
"""

from __future__ import annotations

import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from px_hf.zoo import image_classifier

_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64)
_SWIN = dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)
_TOWERS = dict(vision_config=_VIT, text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=64))
_PYRAMID = dict(hidden_sizes=[16, 32], depths=[1, 1], num_attention_heads=[1, 2], sr_ratios=[2, 1],
                patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], num_encoder_blocks=2)

TINY: dict[str, dict] = {
    "beit": _VIT,
    "bit": dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], num_groups=8),
    "clip": _TOWERS,
    "convnext": dict(image_size=32, patch_size=2, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1]),
    "convnextv2": dict(image_size=32, patch_size=2, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1]),
    # depth[i] > i: transformers indexes stage i's drop-path rates by i.
    "cvt": dict(embed_dim=[16, 24, 32], num_heads=[1, 1, 2], depth=[1, 2, 3]),
    "data2vec-vision": _VIT,
    "deit": _VIT,
    "dinov2": _VIT,
    "dinov2_with_registers": _VIT,
    "donut-swin": _SWIN,
    "efficientnet": dict(image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320),
    "focalnet": dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], hidden_sizes=[16, 32]),
    "hgnet_v2": dict(stem_channels=[3, 8, 16], stage_in_channels=[16, 32], stage_mid_channels=[8, 16],
                     stage_out_channels=[32, 64], stage_num_blocks=[1, 1], stage_downsample=[False, True],
                     stage_light_block=[False, False], stage_kernel_size=[3, 3], stage_numb_of_layers=[2, 2],
                     depths=[1, 1], hidden_sizes=[32, 64]),
    "hiera": dict(image_size=[32, 32], patch_size=[3, 3], patch_stride=[4, 4], patch_padding=[1, 1], embed_dim=16,
                  depths=[1, 1], num_heads=[1, 2], num_query_pool=1, query_stride=[2, 2], masked_unit_size=[4, 4],
                  masked_unit_attention=[True, False], mlp_ratio=2.0),
    "ijepa": _VIT,
    "levit": dict(image_size=32, patch_size=16, hidden_sizes=[32, 48], num_attention_heads=[2, 2], depths=[1, 1],
                  key_dim=[8, 8], mlp_ratio=[2, 2], attention_ratio=[2, 2], down_ops=[["Subsample", 8, 2, 4, 2, 2]]),
    "metaclip_2": _TOWERS,
    "mobilenet_v1": dict(image_size=32, depth_multiplier=0.25),
    "mobilenet_v2": dict(image_size=32, depth_multiplier=0.25),
    "mobilevit": dict(image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32],
                      num_attention_heads=2),
    "mobilevitv2": dict(image_size=64, width_multiplier=0.25),
    "perceiver": dict(image_size=8, num_latents=8, d_latents=32, d_model=32, num_blocks=1,
                      num_self_attends_per_block=1, num_self_attention_heads=2, num_cross_attention_heads=1),
    "poolformer": dict(depths=[1, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1],
                       num_encoder_blocks=2, mlp_ratio=2.0),
    "pp_lcnet": dict(scale=0.25),
    "pvt": dict(_PYRAMID, image_size=32, sequence_reduction_ratios=[2, 1], patch_sizes=[4, 2]),
    "pvt_v2": dict(_PYRAMID, image_size=32),
    "regnet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8),
    "resnet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
    "segformer": dict(_PYRAMID, decoder_hidden_size=32),
    "siglip": _TOWERS,
    "swiftformer": dict(image_size=32, depths=[2, 1, 2, 1], embed_dims=[8, 16, 24, 32]),
    "swin": _SWIN,
    "swinv2": _SWIN,
    "textnet": dict(image_size=[32, 32], hidden_sizes=[16, 16, 32, 32, 64], stem_out_channels=16,
                    conv_layer_kernel_sizes=[[[3, 3]]] * 4, conv_layer_strides=[[1], [2], [2], [2]],
                    depths=[1, 1, 1, 1]),
    "vit": _VIT,
    "vit_msn": _VIT,
}

NOT_BUILDABLE: dict[str, str] = {
    "dinat": "its code needs the natten package, which has no CPU wheel for this torch",
    "timm_wrapper": "its code needs timm, which needs torchvision; PyPI's torchvision does not import beside "
                    "torch 2.13 here",
    "imagegpt": "takes colour-cluster token ids, not pixel values",
    "siglip2": "takes pre-patchified pixel values with spatial shapes, not images",
    "shieldgemma2": "a Gemma 3 vision-language classifier that takes text prompts with images",
}


def model_types() -> list[str]:
    return sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)


def tiny_model(model_type: str, num_labels: int = 4, seed: int = 0) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """The tiny model of ``model_type`` (eval mode) and the shape of one input image."""
    return image_classifier(model_type, num_labels, seed, **TINY[model_type])

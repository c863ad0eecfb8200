"""What the ``px-hf`` command and the recipes share: one command-line option per :class:`~px_hf.PXConfig` field
(generated from the dataclass and its docstring, so every option is reachable from both), the model to prune, and
the image transform for datasets without an image processor."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from typing import Any, Callable, Optional

from ..config import PXConfig, parse_value
from ..errors import PXError

# Fields where 0 means None ("use every example").
_ZERO_IS_NONE = ("examples_per_class",)


def config_field_help() -> dict[str, str]:
    """Each PXConfig field's description, from the ``Args:`` section of its docstring."""
    text = PXConfig.__doc__.split("Args:", 1)[1]
    entries = re.findall(r"^ {8}(\w+): (.*?)(?=^ {8}\w+: |\Z)", text, flags=re.S | re.M)
    return {name: " ".join(body.split()) for name, body in entries}


def _option_name(field: str, prefix: str) -> str:
    """``prefix + field``, unless the field already starts with the prefix (``px_norm`` stays ``px_norm``)."""
    return field if field.startswith(prefix) else prefix + field


def _value(field: dataclasses.Field) -> Callable[[str], Any]:
    """Parses one option value for ``field`` (:func:`~px_hf.config.parse_value`; 0 is None where it means "all")."""

    def parse(text: str) -> Any:
        return None if field.name in _ZERO_IS_NONE and text == "0" else parse_value(text)

    parse.__name__ = field.name  # argparse names the field in "invalid value" errors
    return parse


def add_config_options(parser: argparse.ArgumentParser, prefix: str = "", separator: str = "-",
                       defaults: bool = True) -> None:
    """Add ``--<prefix><field>`` for every PXConfig field (``separator`` replaces ``_`` in the option name;
    a field already starting with ``prefix`` is not prefixed twice). With ``defaults=False`` an option left out
    is absent from the namespace, so :func:`config_from_args` keeps its ``base`` value."""
    helps = config_field_help()
    group = parser.add_argument_group("pruning (PXConfig)")
    for field in dataclasses.fields(PXConfig):
        name = _option_name(field.name, prefix)
        option = "--" + name.replace("_", separator)
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        shown = helps.get(field.name, "").replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": name, "default": default if defaults else argparse.SUPPRESS}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif field.name in ("include", "exclude"):
            kwargs.update(nargs="+", metavar="REGEX")
        else:
            kwargs.update(type=_value(field), metavar=field.name.upper())
        group.add_argument(option, help=f"{shown} (default: {default})" if defaults else shown, **kwargs)


def config_from_args(args: argparse.Namespace, prefix: str = "", base: Optional[PXConfig] = None) -> PXConfig:
    """The PXConfig the options of :func:`add_config_options` describe: ``base`` (default ``PXConfig()``) with
    every option in ``args`` applied."""
    values = (base or PXConfig()).to_dict()
    for field in dataclasses.fields(PXConfig):
        name = _option_name(field.name, prefix)
        if hasattr(args, name):
            values[field.name] = getattr(args, name)
    return PXConfig(**values)


def offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_pruner(name: str, config: Optional[PXConfig] = None, labels: Optional[list[str]] = None,
                image_size: int = 32, seed: int = 0, option: str = "--model", **from_pretrained: Any):
    """A :class:`~px_hf.PXPruner` around ``name``: ``vit``/``convnext``/``resnet`` (a small model built from a
    config), a local directory or a Hub id (a pruned model comes back with its masks). ``labels`` names the classes
    (a new label set for a pre-trained model needs ``ignore_mismatched_sizes=True``); ``option`` names the
    command-line option in errors. A built model without ``labels`` gets a 10-way head."""
    from ..pruner import PXPruner
    from ..zoo import FAMILIES, small_model

    heads = {} if labels is None else {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                                       "label2id": {n: i for i, n in enumerate(labels)}}
    if name in FAMILIES:
        return PXPruner(small_model(name, image_size=image_size, seed=seed, **heads), config)
    if not os.path.isdir(name):
        if os.path.exists(name):
            raise PXError(f"{option} {name!r} is a file; give a directory holding a model, a Hub id, or "
                          f"{', '.join(FAMILIES)}")
        if offline():
            raise PXError(f"{option} {name!r} is neither a built-in family ({', '.join(FAMILIES)}) nor a local "
                          "directory, and the Hub is offline (HF_HUB_OFFLINE=1)")
    return PXPruner.from_pretrained(name, config, **from_pretrained, **heads)


def image_transform(model, processor: Any = None) -> Callable:
    """One PIL image -> the model's pixel tensor: through ``processor`` when given, else converted to the model's
    channels, resized to its image size and scaled to [-1, 1]."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ..modeling.io import image_input_spec

    channels, size = image_input_spec(model)
    mode = "L" if channels == 1 else "RGB"

    def transform(image):
        image = image.convert(mode)
        if processor is not None:
            return processor(images=image, return_tensors="pt")["pixel_values"][0]
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        tensor = torch.from_numpy(array).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)
        return F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False)[0]

    return transform

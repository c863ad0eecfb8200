"""`PXPruner`: wraps a model, runs the pruning rounds with a scorer, and keeps the resulting masks."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import PXConfig
from .data import PruningSet, build_pruning_set
from .errors import DataError
from .masks import apply_masks, density_schedule, select_masks, shuffle_masks
from .modeling.io import forward
from .modeling.passes import LinearizedPasses
from .modeling.structure import parameter_roles
from .scoring import DATA_SCORERS, LABEL_SCORERS, SCORERS, ScoringContext
from .summary import PruningSummary
from .targets import resolve_prunable

RoundCallback = Callable[[int, float, dict[str, torch.Tensor]], None]


class PXPruner:
    """Prune a vision model at initialization (or a pre-trained one) with PX or a baseline.

    Example::

        pruner = PXPruner(model, PXConfig(sparsity=0.98))
        masks = pruner.prune((images, labels))
        print(pruner.summary())

    Args:
        model: any ``nn.Module`` made of Linear/Conv layers; transformers image models are handled fully
            (GELU, LayerNorm, BatchNorm, attention).
        config: the run's :class:`PXConfig` (default: PX at 98% sparsity).
    """

    def __init__(self, model: nn.Module, config: Optional[PXConfig] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"PXPruner needs a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = config if config is not None else PXConfig()
        self.prunable: list[str] = resolve_prunable(model, self.config.include, self.config.exclude)
        self.masks: dict[str, torch.Tensor] = {}
        self.scores: dict[str, torch.Tensor] = {}
        self.pruning_set: Optional[PruningSet] = None

    @classmethod
    def from_pretrained(cls, name_or_path: str, config: Optional[PXConfig] = None, **model_kwargs: Any) -> "PXPruner":
        """Load a model with ``AutoModelForImageClassification`` (Hub id or local directory) and wrap it."""
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(name_or_path, **model_kwargs)
        return cls(model, config)

    # --------------------------------------------------------------------------------------------- pruning
    def _device_and_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = dict(self.model.named_parameters())[self.prunable[0]]
        return param.device, param.dtype

    def _check_fit(self, pruning_set: PruningSet) -> int:
        """Run the model once on two examples; return its number of outputs. Bad shapes become a DataError."""
        device, dtype = self._device_and_dtype()
        sample = pruning_set.inputs[:2].to(device=device, dtype=dtype)
        try:
            with torch.no_grad():
                out = forward(self.model, sample)
        except Exception as err:  # any failure here means the inputs do not fit this model
            expected = ""
            cfg = getattr(self.model, "config", None)
            if cfg is not None and hasattr(cfg, "image_size"):
                expected = (f" (it expects {getattr(cfg, 'num_channels', '?')} channel(s) of "
                            f"{cfg.image_size}x{cfg.image_size} pixels)")
            raise DataError(
                f"inputs of shape {tuple(pruning_set.inputs.shape[1:])} per example do not fit "
                f"{type(self.model).__name__}{expected}: {type(err).__name__}: {err}"
            ) from err
        outputs = out.flatten(1).shape[1]
        if self.config.scorer in LABEL_SCORERS:
            if pruning_set.labels is None:
                raise DataError(f"scorer {self.config.scorer!r} needs labels; pass (inputs, labels)")
            top = int(pruning_set.labels.max())
            if top >= outputs or int(pruning_set.labels.min()) < 0:
                raise DataError(f"labels must be in [0, {outputs}) for a model with {outputs} outputs; got "
                                f"labels up to {top}")
        return outputs

    def prune(
        self,
        data: Any = None,
        *,
        image_processor: Any = None,
        transform: Optional[Callable] = None,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        callback: Optional[RoundCallback] = None,
        progress: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Compute the masks and zero the pruned weights of ``self.model`` in place.

        Args:
            data: ``(inputs, labels)`` tensors, a DataLoader yielding ``(inputs, labels)`` or dicts with
                ``pixel_values``/``labels``, or a ``datasets.Dataset`` (with ``image_processor`` or
                ``transform``). Only ``"random"`` and ``"magnitude"`` may run without data.
            image_processor, transform, image_column, label_column: how to read a ``datasets.Dataset``.
            callback: called after each round as ``callback(round, density, masks)``.
            progress: show a progress bar over the rounds.

        Returns:
            A dict from parameter name to a bool mask (True = kept).
        """
        config = self.config
        if data is None:
            if config.scorer in DATA_SCORERS or config.scorer == "synflow":
                raise DataError(f"scorer {config.scorer!r} needs pruning data; pass (inputs, labels)")
            pruning_set = None
        else:
            pruning_set = build_pruning_set(data, config.examples_per_class, config.seed, image_processor,
                                            transform, image_column, label_column)
        self.pruning_set = pruning_set
        device, dtype = self._device_and_dtype()
        params = dict(self.model.named_parameters())
        initial = ({n: params[n].detach().clone() for n in self.prunable}
                   if config.sanity_check == "shuffle" else None)
        masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in self.prunable}
        generator = torch.Generator().manual_seed(config.seed)
        batches = [] if pruning_set is None else [
            (x.to(dtype=dtype), y) for x, y in pruning_set.batches(config.batch_size, device)
        ]
        scorer = SCORERS[config.scorer]
        schedule = density_schedule(config.density, config.num_rounds, config.schedule)
        passes = LinearizedPasses(self.model, norm=config.px_norm, activation=config.px_activation,
                                  rescale_blocks=config.px_rescale_blocks)
        with passes:  # eval mode from here on: no dropout, no BatchNorm buffer updates
            if pruning_set is not None:
                self._check_fit(pruning_set)
            ctx = ScoringContext(
                model=self.model, prunable=self.prunable, masks=masks, batches=batches,
                sample_shape=tuple(pruning_set.inputs.shape[1:]) if pruning_set is not None else (),
                passes=passes, config=config, generator=generator, roles=parameter_roles(self.model),
            )
            bar = tqdm(schedule, desc=f"{config.scorer} pruning", unit="round", disable=not progress)
            for round_index, density in enumerate(bar):
                ctx.masks = masks
                scores = None  # free the previous round's scores before computing new ones
                scores = scorer(ctx)
                self._check_scores(scores, round_index)
                masks = select_masks(scores, masks, density, config.scope, generator)
                apply_masks(params, masks)
                bar.set_postfix(density=f"{density:.4f}")
                if callback is not None:
                    callback(round_index, density, masks)
        self.scores = {n: s.detach().masked_fill(~masks[n], 0.0) for n, s in scores.items()}
        self.masks = self._sanity_check(masks, params, initial, generator)
        return self.masks

    def _check_scores(self, scores: dict[str, torch.Tensor], round_index: int) -> None:
        for name, score in scores.items():
            if not torch.isfinite(score).all():
                raise FloatingPointError(
                    f"{self.config.scorer} scores of {name} are not finite in round {round_index}; "
                    "the model may be too deep for its dtype (keep px_rescale_blocks=True)"
                )

    def _sanity_check(self, masks, params, initial, generator) -> dict[str, torch.Tensor]:
        check = self.config.sanity_check
        if check == "shuffle":
            masks = shuffle_masks(masks, generator)
            with torch.no_grad():
                for name, value in initial.items():
                    params[name].copy_(value)
        elif check == "reinit":
            reinitialize(self.model, self.config.seed)
        if check is not None:
            apply_masks(params, masks)
        return masks

    # -------------------------------------------------------------------------------------------- reporting
    def summary(self) -> PruningSummary:
        """Per prunable layer: parameters, kept, density; plus totals. ``print()`` it for a table."""
        if not self.masks:
            raise RuntimeError("nothing pruned yet: call prune() first")
        return PruningSummary.from_masks(self.masks)

    def pruning_record(self) -> dict[str, Any]:
        """What was done: the config, the achieved density, the pruning set and the software versions."""
        import transformers

        from . import __version__

        summary = self.summary()
        pruning_set = self.pruning_set
        return {
            "px_hf_version": __version__,
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "config": self.config.to_dict(),
            "rounds": self.config.num_rounds,
            "target_density": self.config.density,
            "achieved_density": summary.density,
            "prunable_params": summary.params,
            "kept_params": summary.kept,
            "base_model": getattr(getattr(self.model, "config", None), "_name_or_path", None) or None,
            "architecture": type(self.model).__name__,
            "pruning_set": None if pruning_set is None else {
                "source": pruning_set.source,
                "examples": len(pruning_set),
                "examples_per_class": self.config.examples_per_class,
                "seed": self.config.seed,
                "indices_sha256": pruning_set.indices_sha256,
            },
        }

    def save_pretrained(self, directory: str) -> None:
        """Save the pruned model (transformers layout, exact zeros), ``px_masks.safetensors`` (one bit per
        weight) and ``pruning_config.json`` to ``directory``."""
        from .hub.save import save_pruned

        save_pruned(self.model, self.masks, self.pruning_record(), directory)

    def __repr__(self) -> str:
        state = f"density={self.summary().density:.4f}" if self.masks else "not pruned"
        return f"PXPruner({type(self.model).__name__}, scorer={self.config.scorer!r}, {state})"


def reinitialize(model: nn.Module, seed: int) -> None:
    """Draw fresh initial weights: transformers' own initialization for its models, ``reset_parameters`` else."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        init = getattr(model, "_init_weights", None)
        for module in model.modules():
            if init is not None:
                init(module)
            elif hasattr(module, "reset_parameters") and module is not model:
                module.reset_parameters()

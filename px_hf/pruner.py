"""`PXPruner`: wraps a model, runs the pruning rounds with a scorer, and keeps the resulting masks."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import nn

from .config import PXConfig
from .data import PruningSet, build_pruning_set
from .distributed import ProcessContext
from .errors import ConfigError, DataError, ModelError
from .masks import apply_masks
from .rounds import RoundCallback, run_rounds
from .scoring import scorer_info
from .summary import PruningSummary
from .targets import resolve_prunable

if TYPE_CHECKING:
    from .hub.format import PruningRecord

logger = logging.getLogger(__name__)



# PruningRecord fields that are not recomputed from the masks and config when a record is written.
_CARRIED = ("base_model", "pruning_set", "previous_pruning", "finetuning", "dense_parameters", "extra")


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
        self.masks: dict[str, torch.Tensor] = {}
        # The config that produced self.masks (self.config is the one the next prune() uses).
        self.masks_config: Optional[PXConfig] = None
        self.scores: dict[str, torch.Tensor] = {}
        self.pruning_set: Optional[PruningSet] = None
        # Record fields carried over from a loaded model, an earlier pruning or annotate() (PruningRecord names).
        self._carried: dict[str, Any] = {}
        # Per round: density, seconds (all of it, and the scorer's share: its passes), bytes all-reduced by this
        # process.
        self.history: list[dict[str, float]] = []
        # px_hf.masks.mask_digest of self.masks (names, shapes and bits; not the mask file's sha256, which the
        # record holds as mask_file_sha256).
        self.mask_digest: Optional[str] = None

    @property
    def config(self) -> PXConfig:
        """The config of the next :meth:`prune`; setting it re-resolves :attr:`prunable`."""
        return self._config

    @config.setter
    def config(self, config: PXConfig) -> None:
        if not isinstance(config, PXConfig):
            raise TypeError(f"config must be a PXConfig, got {type(config).__name__}")
        self.prunable: list[str] = resolve_prunable(self.model, config.include, config.exclude)
        self._config = config

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, config: Optional[PXConfig] = None, *, model: Optional[nn.Module] = None,
        revision: Optional[str] = None, token: Optional[str] = None, **model_kwargs: Any,
    ) -> "PXPruner":
        """Load a model from a local directory or a Hub repo.

        When it holds a pruned model (a ``pruning_config.json``), the model and its masks are restored exactly:
        the mask file's hash is verified, the weights must be zero wherever the masks prune, and the record must
        agree with the masks; ``config`` (for a further :meth:`prune`) defaults to the saved one. Otherwise the
        model is loaded with transformers' ``AutoModelForImageClassification``, ready to prune with ``config``
        (default: a ``px_config.json`` saved next to it by :meth:`PXConfig.save_pretrained`, else ``PXConfig()``).

        Args:
            model: a module to load the saved weights into (needed for models that are not transformers models).
            revision, token: Hub revision and token.
            model_kwargs: passed to transformers' ``from_pretrained``.
        """
        from .hub.format import CONFIG_ONLY_FILE, PruningRecord
        from .hub.load import load_pruned
        from .hub.remote import local_directory

        directory = local_directory(name_or_path, revision=revision, token=token)
        record = PruningRecord.read(directory) if directory is not None else None
        if record is None:
            if config is None and directory is not None and os.path.isfile(os.path.join(directory, CONFIG_ONLY_FILE)):
                config = PXConfig.from_pretrained(directory)  # a config saved next to the model, to prune with
            if model is not None:
                raise ModelError(f"{name_or_path} holds no pruned model (no pruning_config.json)")
            if directory is not None and not os.path.isfile(os.path.join(directory, "config.json")):
                raise ModelError(f"{name_or_path!r} holds no model (no config.json" +
                                 (", the directory is empty)" if not os.listdir(directory) else ")"))
            from transformers import AutoModelForImageClassification

            model = AutoModelForImageClassification.from_pretrained(
                name_or_path, revision=revision, token=token, **model_kwargs)
            return cls(model, config)
        model, masks, record = load_pruned(directory, record, model=model, **model_kwargs)
        saved_config = PXConfig.from_dict(record.config)
        pruner = cls(model, config if config is not None else saved_config)
        pruner.masks, pruner.masks_config = masks, saved_config
        pruner._carried = {k: getattr(record, k) for k in _CARRIED}
        return pruner

    # --------------------------------------------------------------------------------------------- pruning
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
        source: Optional[str] = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the masks and zero the pruned weights of ``self.model`` in place.

        The model is moved to the device Accelerate picks for this process (``config.cpu=True``: the CPU) and
        stays there: move it back yourself if you need it elsewhere.

        An already pruned model (loaded with :meth:`from_pretrained`, or pruned before) is pruned further from its
        masks: a pruned weight stays pruned, the density falls from the current one to ``config.density``, and the
        earlier pruning is kept in the record under ``previous_pruning``. Half-precision models are scored in
        float32 and keep their dtype. If a round fails (an exception), the model's weights are left partly pruned
        while :attr:`masks` stays as it was: reload or re-create the model before trying again.

        Args:
            data: ``(inputs, labels)`` tensors, a DataLoader yielding ``(inputs, labels)`` or dicts with
                ``pixel_values``/``labels``, or a ``datasets.Dataset`` (with ``image_processor`` or
                ``transform``). Only ``"random"`` and ``"magnitude"`` may run without data.
            image_processor, transform, image_column, label_column: how to read a ``datasets.Dataset``.
            callback: called after each round as ``callback(round, density, masks)``.
            progress: show a progress bar over the rounds.
            source: a name for the pruning data, recorded in the pruning config (e.g. ``"cifar10"``).

        Returns:
            A dict from parameter name to a bool mask (True = kept).
        """
        config = self.config
        if data is None:
            if scorer_info(config.scorer).needs_data:
                raise DataError(f"scorer {config.scorer!r} needs pruning data; pass (inputs, labels)")
            pruning_set = None
        else:
            pruning_set = build_pruning_set(data, config.examples_per_class, config.seed, image_processor,
                                            transform, image_column, label_column)
            if source is not None:
                pruning_set.source = source
        process = ProcessContext(cpu=config.cpu, mixed_precision=config.mixed_precision)
        if any(p.device != process.device for p in self.model.parameters()):
            logger.info("moving %s to %s to score it", type(self.model).__name__, process.device)
        self.model.to(process.device)
        params = dict(self.model.named_parameters())
        masks, start = self._starting_masks(params)
        outcome = run_rounds(self.model, self.prunable, masks, start, pruning_set, config, process, callback,
                             progress)
        masks, self.scores, self.history = outcome.masks, outcome.scores, outcome.history
        if self.masks:
            self._move_to_history()
        self.pruning_set, self.masks, self.masks_config = pruning_set, masks, config
        self.mask_digest = process.check_identical(self.masks)
        return self.masks

    def _starting_masks(self, params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
        """All-True masks for an unpruned model; else its masks (checked against this config) and density."""
        if not self.masks:
            return {n: torch.ones_like(params[n], dtype=torch.bool) for n in self.prunable}, 1.0
        config = self.config
        outside = [n for n in self.masks if n not in self.prunable]
        if outside:
            raise ConfigError(f"the model is already pruned in {len(outside)} tensor(s) this config leaves out (e.g. "
                              f"{outside[:2]}); a pruned weight stays pruned, so include/exclude must cover them")
        if config.sanity_check is not None:
            raise ConfigError(f"sanity_check={config.sanity_check!r} needs an unpruned model, and this one is "
                              "already pruned; start from the unpruned model")
        masks = {n: self.masks[n].to(params[n].device).clone() if n in self.masks
                 else torch.ones_like(params[n], dtype=torch.bool) for n in self.prunable}
        density = sum(int(torch.count_nonzero(m)) for m in masks.values()) / sum(m.numel() for m in masks.values())
        if config.density > density + 1e-12:
            raise ConfigError(
                f"the model is already pruned to {1 - density:.4%} sparsity (density {density:.6f}) and pruned "
                f"weights stay pruned, so sparsity={config.sparsity} cannot be reached; ask for at least "
                f"{1 - density:.6f}, or start from the unpruned model")
        apply_masks(params, masks)
        return masks, density

    def _move_to_history(self) -> None:
        """Keep what the current masks record under ``previous_pruning`` before they are pruned further."""
        record = self.pruning_record()
        entry = {k: getattr(record, k) for k in ("config", "achieved_density", "kept_params", "pruning_set",
                                                 "finetuning", "dense_parameters") if getattr(record, k) is not None}
        self._carried = {"base_model": record.base_model, "previous_pruning": [*record.previous_pruning, entry]}

    # -------------------------------------------------------------------------------------------- reporting
    def summary(self) -> PruningSummary:
        """Per prunable layer: parameters, kept, density; plus totals. ``print()`` it for a table."""
        if not self.masks:
            raise RuntimeError("nothing pruned yet: call prune() first")
        return PruningSummary.from_masks(self.masks)

    def pruning_record(self) -> "PruningRecord":
        """What was done: the config, the achieved density, the pruning set, the base model and the versions (the
        :class:`~px_hf.hub.format.PruningRecord` that :meth:`save_pretrained` writes)."""
        import transformers

        from . import __version__
        from .hub.format import PruningRecord

        summary = self.summary()
        config = self.masks_config or self.config
        carried = dict(self._carried)  # a loaded model keeps what was recorded when it was pruned
        record = PruningRecord(
            config=config.to_dict(), architecture=type(self.model).__name__, rounds_run=config.num_rounds,
            target_density=round(config.density, 12), achieved_density=summary.density,
            prunable_params=summary.params, kept_params=summary.kept, px_hf_version=__version__,
            torch_version=torch.__version__, transformers_version=transformers.__version__,
            **{k: v for k, v in carried.items() if v is not None},
        )
        if record.base_model is None:
            model_config = getattr(self.model, "config", None)
            record.base_model = {"name": getattr(model_config, "_name_or_path", None) or None,
                                 "revision": getattr(model_config, "_commit_hash", None)}
        if self.pruning_set is not None:
            record.pruning_set = {
                "source": self.pruning_set.source,
                "split": self.pruning_set.split,
                "examples": len(self.pruning_set),
                "examples_per_class": config.examples_per_class,
                "seed": config.seed,
                "indices_sha256": self.pruning_set.indices_sha256,
            }
        return record

    def annotate(self, **fields: Any) -> None:
        """Add fields to the record that :meth:`save_pretrained` and :meth:`push_to_hub` write (e.g.
        ``finetuning={...}`` with the results of fine-tuning, or fields of your own); they survive loading and
        saving again. Fields px_hf computes (``config``, densities, ...) cannot be set."""
        from .hub.format import PruningRecord

        computed = {f.name for f in dataclasses.fields(PruningRecord)} - set(_CARRIED)
        fixed = sorted(set(fields) & computed)
        if fixed:
            raise ConfigError(f"annotate cannot set {', '.join(fixed)}: px_hf computes them from the masks and config")
        for key, value in fields.items():
            if key in _CARRIED:
                self._carried[key] = value
            else:
                self._carried["extra"] = {**(self._carried.get("extra") or {}), key: value}

    def save_pretrained(self, directory: str, compact: bool = False, overwrite: bool = True) -> None:
        """Save the pruned model to ``directory``.

        Writes the transformers layout (``config.json``, ``model.safetensors`` with exact zeros, loadable by plain
        ``AutoModelForImageClassification``), ``px_masks.safetensors`` (one bit per weight),
        ``pruning_config.json`` and a model card with a density plot. ``compact=True`` stores only the kept
        values (``px_compact.safetensors``, a quarter of the dense size or less at 90% sparsity), which only
        px_hf loads. The directory is written elsewhere first and moved into place when complete.

        ``directory`` may be new, empty, or hold a saved model, which is replaced when ``overwrite`` is true;
        a file, or a directory holding anything else, raises :class:`~px_hf.OutputDirError` (px_hf never
        deletes files it did not write).
        """
        from .hub.directory import save_atomically
        from .hub.save import write_pruned

        record = self.pruning_record()
        save_atomically(directory, lambda folder: write_pruned(folder, self.model, self.masks, record, compact),
                        overwrite=overwrite)

    def save_pruning_files(self, directory: str) -> None:
        """Write the masks, ``pruning_config.json`` and the model card into ``directory``, next to weights saved
        there by something else (a Trainer's ``output_dir``): the directory then loads with
        :meth:`from_pretrained`, which checks that the weights are zero wherever the masks prune."""
        from .hub.save import write_pruning_files

        write_pruning_files(directory, self.masks, self.pruning_record(), card=True)

    def push_to_hub(
        self, repo_id: str, private: Optional[bool] = None, commit_message: Optional[str] = None,
        token: Optional[str] = None, compact: bool = False, revision: Optional[str] = None,
    ):
        """Upload everything :meth:`save_pretrained` writes to ``repo_id`` in one commit, creating the repo if
        needed. Returns huggingface_hub's ``CommitInfo``."""
        from .hub.remote import push_folder
        from .hub.save import write_pruned

        record = self.pruning_record()
        return push_folder(
            lambda folder: write_pruned(folder, self.model, self.masks, record, compact, repo_id=repo_id),
            repo_id, private=private, commit_message=commit_message, token=token, revision=revision,
        )

    def __repr__(self) -> str:
        state = f"density={self.summary().density:.4f}" if self.masks else "not pruned"
        return f"PXPruner({type(self.model).__name__}, scorer={self.config.scorer!r}, {state})"

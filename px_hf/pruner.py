"""`PXPruner`: wraps a model, runs the pruning rounds with a scorer, and keeps the resulting masks."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import PXConfig
from .data import PruningSet, build_pruning_set
from .distributed import ProcessContext
from .errors import ConfigError, DataError, ModelError
from .masks import apply_masks, density_schedule, select_masks, shuffle_masks
from .modeling.io import floating_weights, forward
from .modeling.passes import LinearizedPasses
from .modeling.structure import parameter_roles
from .scoring import DATA_SCORERS, LABEL_SCORERS, SCORERS, ScoringContext
from .summary import PruningSummary
from .targets import resolve_prunable

logger = logging.getLogger(__name__)

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
        self.masks: dict[str, torch.Tensor] = {}
        # The config that produced self.masks (self.config is the one the next prune() uses).
        self.masks_config: Optional[PXConfig] = None
        self.scores: dict[str, torch.Tensor] = {}
        self.pruning_set: Optional[PruningSet] = None
        self._saved_record: dict[str, Any] = {}
        # Per round: density, seconds (all of it, and the scorer's share: its passes), bytes all-reduced by this
        # process.
        self.history: list[dict[str, float]] = []
        self.masks_sha256: Optional[str] = None

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
        model is loaded with transformers' ``AutoModelForImageClassification``, ready to prune with ``config``.

        Args:
            model: a module to load the saved weights into (needed for models that are not transformers models).
            revision, token: Hub revision and token.
            model_kwargs: passed to transformers' ``from_pretrained``.
        """
        from .hub.load import load_pruned, read_record
        from .hub.remote import local_directory

        directory = local_directory(name_or_path, revision=revision, token=token)
        record = read_record(directory) if directory is not None else None
        if record is None:
            if model is not None:
                raise ModelError(f"{name_or_path} holds no pruned model (no pruning_config.json)")
            if directory is not None and not os.path.isfile(os.path.join(directory, "config.json")):
                raise ModelError(f"{name_or_path!r} holds no model (no config.json" +
                                 (", the directory is empty)" if not os.listdir(directory) else ")"))
            from transformers import AutoModelForImageClassification

            model = AutoModelForImageClassification.from_pretrained(
                name_or_path, revision=revision, token=token, **model_kwargs)
            return cls(model, config)
        model, masks = load_pruned(directory, record, model=model, **model_kwargs)
        saved_config = PXConfig.from_dict(record["config"])
        pruner = cls(model, config if config is not None else saved_config)
        pruner.masks, pruner.masks_config = masks, saved_config
        pruner._saved_record = record
        return pruner

    # --------------------------------------------------------------------------------------------- pruning
    def _device_and_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = dict(self.model.named_parameters())[self.prunable[0]]
        return param.device, param.dtype

    def _check_fit(self, pruning_set: PruningSet) -> None:
        """Run the model once on two examples; bad shapes, and labels outside the head, become a DataError."""
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
            if config.scorer in DATA_SCORERS or config.scorer == "synflow":
                raise DataError(f"scorer {config.scorer!r} needs pruning data; pass (inputs, labels)")
            pruning_set = None
        else:
            pruning_set = build_pruning_set(data, config.examples_per_class, config.seed, image_processor,
                                            transform, image_column, label_column)
            if source is not None:
                pruning_set.source = source
        process = ProcessContext(cpu=config.cpu, mixed_precision=config.mixed_precision)
        self.model.to(process.device)
        params = dict(self.model.named_parameters())
        masks, start = self._starting_masks(params)
        with floating_weights(self.model, torch.float32):
            masks = self._run_rounds(pruning_set, masks, start, params, process, callback, progress)
        if self.masks:
            self._move_to_history()
        self.pruning_set, self.masks, self.masks_config = pruning_set, masks, config
        self.masks_sha256 = process.check_identical(self.masks)
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
        entry = {k: record[k] for k in ("config", "achieved_density", "kept_params", "pruning_set", "finetuning",
                                        "dense_parameters") if record.get(k) is not None}
        self._saved_record = {"base_model": record.get("base_model"),
                              "previous_pruning": [*(record.get("previous_pruning") or []), entry]}

    def _run_rounds(self, pruning_set, masks, start, params, process, callback, progress) -> dict[str, torch.Tensor]:
        config = self.config
        device, dtype = self._device_and_dtype()
        initial = ({n: params[n].detach().clone() for n in self.prunable}
                   if config.sanity_check == "shuffle" else None)
        generator = torch.Generator().manual_seed(config.seed)
        batches = [] if pruning_set is None else [
            (x.to(dtype=dtype), y)
            for x, y in pruning_set.batches(config.batch_size, device, process.rank, process.world_size)
        ]
        scorer = SCORERS[config.scorer]
        schedule = density_schedule(config.density, config.num_rounds, config.schedule, start)
        # px_norm is PX's choice; the gradient baselines score the network as it trains, BatchNorm on batch
        # statistics (with running statistics at initialization a deep ResNet's logits overflow GraSP's Hessian).
        norm = config.px_norm if config.scorer == "px" else "gated"
        passes = LinearizedPasses(self.model, norm=norm, activation=config.px_activation,
                                  rescale_blocks=config.px_rescale_blocks,
                                  branch_share=config.px_branch_share)
        with passes:  # eval mode from here on: no dropout, no BatchNorm buffer updates
            if pruning_set is not None:
                self._check_fit(pruning_set)
            ctx = ScoringContext(
                model=self.model, prunable=self.prunable, masks=masks, batches=batches,
                sample_shape=tuple(pruning_set.inputs.shape[1:]) if pruning_set is not None else (),
                passes=passes, config=config, generator=generator, roles=parameter_roles(self.model),
                all_reduce=process.all_reduce, autocast=process.autocast,
            )
            self.history = []
            bar = tqdm(schedule, desc=f"{config.scorer} pruning", unit="round",
                       disable=not (progress and process.is_main_process))
            widened = contextlib.ExitStack()
            for round_index, density in enumerate(bar):
                started, sent = time.perf_counter(), process.bytes_reduced
                ctx.masks = masks
                scores = None  # free the previous round's scores before computing new ones
                try:
                    scores = self._check_scores(scorer(ctx), round_index)
                except FloatingPointError as err:
                    if dtype != torch.float32:
                        raise
                    # Long chains of layers without residual blocks to rescale overflow float32's range in the
                    # linear passes; float64's is 10**270 times wider. The weights are kept exactly.
                    logger.warning("%s; scoring in float64 from round %d on (about twice as slow)", err, round_index)
                    widened.enter_context(floating_weights(self.model, torch.float64, (torch.float32,)))
                    dtype = torch.float64
                    ctx.batches = [(x.to(dtype), y) for x, y in ctx.batches]
                    ctx.cache.clear()
                    scores = self._check_scores(scorer(ctx), round_index)
                scored = time.perf_counter()
                masks = select_masks(scores, masks, density, config.scope, generator)
                apply_masks(params, masks)
                self.history.append({"round": round_index, "density": density,
                                     "seconds": time.perf_counter() - started, "scoring_seconds": scored - started,
                                     "bytes_reduced": process.bytes_reduced - sent})
                bar.set_postfix(density=f"{density:.4f}")
                if callback is not None:
                    callback(round_index, density, masks)
            widened.close()
        self.scores = {n: s.detach().to(params[n].dtype).masked_fill(~masks[n], 0.0) for n, s in scores.items()}
        return self._sanity_check(masks, params, initial, generator)

    def _check_scores(self, scores: dict[str, torch.Tensor], round_index: int) -> dict[str, torch.Tensor]:
        """``scores``, once every one is finite."""
        for name, score in scores.items():
            # One reduction, no temporary: the extremes are NaN or infinite whenever any entry is.
            if score.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(score))).all()):
                raise FloatingPointError(
                    f"{self.config.scorer} scores of {name} are not finite in round {round_index}; "
                    "the model may be too deep for its dtype (keep px_rescale_blocks=True)"
                )
        return scores

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
        """What was done: the config, the achieved density, the pruning set, the base model and the versions."""
        import transformers

        from . import __version__

        summary = self.summary()
        model_config = getattr(self.model, "config", None)
        config = self.masks_config or self.config
        record = dict(self._saved_record)  # a loaded model keeps what was recorded when it was pruned
        record.update({
            "px_hf_version": __version__,
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "config": config.to_dict(),
            "scorer": config.scorer,
            "schedule": config.schedule,
            "scope": config.scope,
            "rounds": config.num_rounds,
            "target_density": round(config.density, 12),
            "achieved_density": summary.density,
            "prunable_params": summary.params,
            "kept_params": summary.kept,
            "architecture": type(self.model).__name__,
        })
        record.setdefault("base_model", {
            "name": getattr(model_config, "_name_or_path", None) or None,
            "revision": getattr(model_config, "_commit_hash", None),
        })
        if self.pruning_set is not None:
            record["pruning_set"] = {
                "source": self.pruning_set.source,
                "split": self.pruning_set.split,
                "examples": len(self.pruning_set),
                "examples_per_class": config.examples_per_class,
                "seed": config.seed,
                "indices_sha256": self.pruning_set.indices_sha256,
            }
        record.setdefault("pruning_set", None)
        return record

    def annotate(self, **fields: Any) -> None:
        """Add fields to the record that :meth:`save_pretrained` and :meth:`push_to_hub` write (e.g. the results
        of fine-tuning); they survive loading and saving again."""
        self._saved_record.update(fields)

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

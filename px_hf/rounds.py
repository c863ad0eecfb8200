"""The round loop of a pruning run: score, select, mask, as many times as the schedule says."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import PXConfig
from .data import PruningSet
from .distributed import ProcessContext
from .errors import DataError
from .masks import apply_masks, density_schedule, select_masks
from .modeling.io import evaluating, floating_weights, forward
from .modeling.passes import LinearizedPasses
from .modeling.structure import parameter_roles
from .sanity import apply_sanity_check
from .scoring import ScoringContext, scorer_info

logger = logging.getLogger(__name__)

RoundCallback = Callable[[int, float, dict[str, torch.Tensor]], None]


@dataclass
class RoundsOutcome:
    """What the rounds leave: the final masks, the last round's scores (0 where pruned) and, per round, the
    density, the seconds (all of it, and the scorer's share: its passes) and the bytes all-reduced."""

    masks: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)


def check_fit(model: nn.Module, pruning_set: PruningSet, config: PXConfig, device: torch.device,
              dtype: torch.dtype) -> None:
    """Run the model once on two examples; bad shapes, and labels outside the head, become a DataError."""
    sample = pruning_set.inputs[:2].to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            out = forward(model, sample)
    except Exception as err:  # any failure here means the inputs do not fit this model
        expected = ""
        cfg = getattr(model, "config", None)
        if cfg is not None and hasattr(cfg, "image_size"):
            expected = (f" (it expects {getattr(cfg, 'num_channels', '?')} channel(s) of "
                        f"{cfg.image_size}x{cfg.image_size} pixels)")
        raise DataError(
            f"inputs of shape {tuple(pruning_set.inputs.shape[1:])} per example do not fit "
            f"{type(model).__name__}{expected}: {type(err).__name__}: {err}"
        ) from err
    outputs = out.flatten(1).shape[1]
    if scorer_info(config.scorer).needs_labels:
        if pruning_set.labels is None:
            raise DataError(f"scorer {config.scorer!r} needs labels; pass (inputs, labels)")
        top = int(pruning_set.labels.max())
        if top >= outputs or int(pruning_set.labels.min()) < 0:
            raise DataError(f"labels must be in [0, {outputs}) for a model with {outputs} outputs; got "
                            f"labels up to {top}")


def run_rounds(model: nn.Module, prunable: list[str], masks: dict[str, torch.Tensor], start: float,
               pruning_set: Optional[PruningSet], config: PXConfig, process: ProcessContext,
               callback: Optional[RoundCallback] = None, progress: bool = True) -> RoundsOutcome:
    """Prune ``model`` in place from ``masks`` (at density ``start``) to ``config.density`` over the config's
    rounds; the weights are float32 while scoring and get their dtype back after."""
    with floating_weights(model, torch.float32):
        return _rounds(model, prunable, masks, start, pruning_set, config, process, callback, progress)


def _rounds(model, prunable, masks, start, pruning_set, config, process, callback, progress) -> RoundsOutcome:
    params = dict(model.named_parameters())
    device, dtype = params[prunable[0]].device, params[prunable[0]].dtype
    initial = ({n: params[n].detach().clone() for n in prunable}
               if config.sanity_check == "shuffle" else None)
    generator = torch.Generator().manual_seed(config.seed)
    batches = [] if pruning_set is None else [
        (x.to(dtype=dtype), y)
        for x, y in pruning_set.batches(config.batch_size, device, process.rank, process.world_size)
    ]
    info = scorer_info(config.scorer)
    scorer = info.load()
    schedule = density_schedule(config.density, config.num_rounds, config.schedule, start)
    # px_norm is PX's choice; the gradient baselines score the network as it trains, BatchNorm on batch
    # statistics (with running statistics at initialization a deep ResNet's logits overflow GraSP's Hessian).
    norm = config.px_norm if info.batchnorm == "px_norm" else "batch"
    passes = LinearizedPasses(model, norm=norm, activation=config.px_activation,
                              rescale_blocks=config.px_rescale_blocks,
                              branch_share=config.px_branch_share) if info.uses_passes else None
    # Eval mode from here on: no dropout, no BatchNorm buffer updates.
    with passes if passes is not None else evaluating(model):
        if pruning_set is not None:
            check_fit(model, pruning_set, config, device, dtype)
        ctx = ScoringContext(
            model=model, prunable=prunable, masks=masks, batches=batches,
            sample_shape=tuple(pruning_set.inputs.shape[1:]) if pruning_set is not None else (),
            passes=passes, config=config, generator=generator, roles=parameter_roles(model),
            all_reduce=process.all_reduce, autocast=process.autocast,
        )
        history = []
        bar = tqdm(schedule, desc=f"{config.scorer} pruning", unit="round",
                   disable=not (progress and process.is_main_process))
        widened = contextlib.ExitStack()
        for round_index, density in enumerate(bar):
            started, sent = time.perf_counter(), process.bytes_reduced
            ctx.masks = masks
            scores = None  # free the previous round's scores before computing new ones
            try:
                scores = _check_scores(config, scorer(ctx), round_index)
            except FloatingPointError as err:
                if dtype != torch.float32:
                    raise
                # Long chains of layers without residual blocks to rescale overflow float32's range in the
                # linear passes; float64's is 10**270 times wider. The weights are kept exactly.
                logger.warning("%s; scoring in float64 from round %d on (about twice as slow)", err, round_index)
                widened.enter_context(floating_weights(model, torch.float64, (torch.float32,)))
                dtype = torch.float64
                ctx.batches = [(x.to(dtype), y) for x, y in ctx.batches]
                ctx.cache.clear()
                scores = _check_scores(config, scorer(ctx), round_index)
            scored = time.perf_counter()
            # Writing -inf into the scores of pruned weights saves a copy of all scores. It is safe even where a
            # scorer hands back a parameter's own memory: those weights are zero from apply_masks on.
            masks = select_masks(scores, masks, density, config.scope, generator, overwrite_scores=True)
            apply_masks(params, masks)
            history.append({"round": round_index, "density": density,
                            "seconds": time.perf_counter() - started, "scoring_seconds": scored - started,
                            "bytes_reduced": process.bytes_reduced - sent})
            bar.set_postfix(density=f"{density:.4f}")
            if callback is not None:
                callback(round_index, density, masks)
        widened.close()
    scores = {n: s.detach().to(params[n].dtype).masked_fill(~masks[n], 0.0) for n, s in scores.items()}
    masks = apply_sanity_check(model, config, masks, params, initial, generator)
    return RoundsOutcome(masks, scores, history)


def _check_scores(config: PXConfig, scores: dict[str, torch.Tensor], round_index: int) -> dict[str, torch.Tensor]:
    """``scores``, once every one is finite."""
    for name, score in scores.items():
        # One reduction, no temporary: the extremes are NaN or infinite whenever any entry is.
        if score.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(score))).all()):
            raise FloatingPointError(
                f"{config.scorer} scores of {name} are not finite in round {round_index}; "
                "the model may be too deep for its dtype (keep px_rescale_blocks=True)"
            )
    return scores


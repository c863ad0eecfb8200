"""Training pruned models with the transformers Trainer: the masks are kept exactly, and every checkpoint carries
them."""

from __future__ import annotations

import os
from typing import Mapping, Optional

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback

from .errors import PrunedModelError
from .hub.format import PruningRecord
from .hub.load import check_architecture, load_pruned
from .hub.save import write_pruning_files
from .masks import apply_masks, check_masks


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP and similar wrappers keep the real module in .module.
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def check_pruned(model: nn.Module, masks: Mapping[str, torch.Tensor], where: str = "the model") -> None:
    """Raise if any masked weight of ``model`` is not exactly zero."""
    check_masks(dict(_unwrap(model).named_parameters()), masks, where)


def load_checkpoint_weights(model: nn.Module, checkpoint: str) -> None:
    """Load the weights of a checkpoint written by ``save_pretrained`` (or the Trainer) into ``model`` in place.

    Goes through transformers' own loading, which maps the key names a checkpoint was saved under to the
    model's: transformers 5 saves some models (ViT among them) under legacy names that a plain
    ``load_state_dict`` silently skips. Every tensor must be restored; anything missing is an error.
    """
    target = _unwrap(model)
    check_architecture(checkpoint, target)
    loaded, info = type(target).from_pretrained(checkpoint, output_loading_info=True)
    missing = list(info.get("missing_keys") or []) + [k for k, *_ in info.get("mismatched_keys") or []]
    if missing:
        raise PrunedModelError(f"the checkpoint {checkpoint} lacks or mis-shapes {len(missing)} tensor(s) of "
                               f"{type(target).__name__} (e.g. {sorted(missing)[:3]})")
    target.load_state_dict(loaded.state_dict(), strict=True)


class PXTrainer(Trainer):
    """transformers' ``Trainer``, except that resuming from a checkpoint (and ``load_best_model_at_end``)
    restores every weight of a transformers model, through :func:`load_checkpoint_weights`.

    The stock Trainer reads the checkpoint with a plain ``load_state_dict``; for models that transformers 5 saves
    under legacy key names (ViT) most tensors are skipped with only a warning, and training silently restarts
    from the initial weights. Use it with :class:`PXMaskCallback` to fine-tune pruned models.
    """

    def _restores_itself(self, model: nn.Module) -> bool:
        # DeepSpeed and FSDP shard the weights: their own loaders must run.
        return (isinstance(_unwrap(model), PreTrainedModel) and not self.is_deepspeed_enabled
                and not self.is_fsdp_enabled)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[nn.Module] = None) -> None:
        model = model if model is not None else self.model
        if self._restores_itself(model):
            load_checkpoint_weights(model, resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if self._restores_itself(self.model):
            load_checkpoint_weights(self.model, self.state.best_model_checkpoint)
        else:
            super()._load_best_model()


class PXMaskCallback(TrainerCallback):
    """A ``TrainerCallback`` that keeps pruned weights exactly zero, for any Trainer.

    - The gradients of pruned weights are zeroed as they are computed, so optimizer states (AdamW's moments)
      never move them; after every optimizer step (once per accumulated batch) the pruned weights are set back to
      +0.0 anyway, which also undoes weight decay and any other update. Each DDP process does the same on its
      replica.
    - Every checkpoint gets ``px_masks.safetensors`` and ``pruning_config.json`` next to its weights, so it loads
      with ``PXPruner.from_pretrained`` and resuming keeps the sparsity. The main process then loads the
      checkpoint back the way ``PXPruner.from_pretrained`` does (one model load per save), which checks that the
      saved weights are zero wherever the masks prune; a violation stops training with an error.

    Args:
        masks: parameter name -> bool mask (True = kept), e.g. ``PXPruner.masks``.
        record: the pruning record written into checkpoints (``PXPruner.pruning_record()``).
    """

    def __init__(self, masks: Mapping[str, torch.Tensor], record: PruningRecord):
        self.masks = dict(masks)
        self.record = record
        self._device_masks: dict[str, torch.Tensor] = {}
        self._hooks: list = []

    def _params(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(_unwrap(model).named_parameters())
        check_masks(params, self.masks, "the model", zeros=False)
        return params

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        params = self._params(model)
        self._device_masks = {n: m.to(params[n].device) for n, m in self.masks.items()}
        apply_masks(params, self._device_masks)
        for handle in self._hooks:
            handle.remove()
        self._hooks = [params[n].register_hook(lambda grad, keep=m: grad * keep)
                       for n, m in self._device_masks.items() if params[n].requires_grad]

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        apply_masks(dict(_unwrap(model).named_parameters()), self._device_masks)

    def on_save(self, args, state, control, model=None, **kwargs):
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        check_pruned(model, self.masks, f"the model at step {state.global_step}")
        if state.is_world_process_zero and os.path.isdir(checkpoint):
            record = write_pruning_files(checkpoint, self.masks, self.record)
            # Load the checkpoint back as a user would: verifies the hash and the zeros in the saved weights
            # (transformers may store them under other names, so the file is not read directly).
            load_pruned(checkpoint, record, model=None if hasattr(_unwrap(model), "config") else _unwrap(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        check_pruned(model, self.masks, "the trained model")
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

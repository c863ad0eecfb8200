"""The model card (README.md) and density plot written next to a pruned model."""

from __future__ import annotations

import os
from typing import Optional

from huggingface_hub import ModelCard, ModelCardData

from ..summary import PruningSummary
from .format import CARD_FILE, DENSITY_PLOT, PruningRecord

TAGS = ["pruning", "pruning-at-initialization", "px", "image-classification"]


def plot_density(summary: PruningSummary, path: str) -> None:
    """A bar chart of the kept fraction of every prunable layer, saved as PNG."""
    # A Figure without pyplot: no global state, and the caller's matplotlib backend is left alone.
    from matplotlib.figure import Figure

    names = [layer.name.removesuffix(".weight") for layer in summary.layers]
    densities = [100 * layer.density for layer in summary.layers]
    figure = Figure(figsize=(8, max(2.5, 0.22 * len(names) + 1)))
    axis = figure.subplots()
    axis.barh(range(len(names)), densities, color="#3b75af")
    axis.axvline(100 * summary.density, color="#c44e52", linestyle="--", label=f"overall {summary.density:.2%}")
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("density (% of weights kept)")
    axis.set_xlim(0, 100)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def model_card(summary: PruningSummary, record: PruningRecord, repo_id: Optional[str] = None) -> ModelCard:
    """A model card: metadata for the Hub (library, tags, base model), what was pruned and how to use it."""
    config = record.config
    base = (record.base_model or {}).get("name")
    data = ModelCardData(library_name="px_hf", tags=list(TAGS), base_model=base if base and "/" in base else None,
                         pipeline_tag="image-classification")
    name = repo_id or "path/to/this/model"
    pruning_set = record.pruning_set or {}
    rows = "\n".join(f"| `{l.name}` | {l.params:,} | {l.kept:,} | {l.density:.2%} |" for l in summary.layers)
    compact = record.weights_format == "compact"
    plain_load = (
        "The weights are stored compactly (kept values and a bitmask), so only px_hf can load them."
        if compact else
        "The weights are stored densely with exact zeros, so plain transformers loads them too:\n\n"
        f"```python\nfrom transformers import AutoModelForImageClassification\n\n"
        f"model = AutoModelForImageClassification.from_pretrained(\"{name}\")\n```"
    )
    content = f"""---
{data.to_yaml()}
---

# {record.architecture} pruned with {config['scorer'].upper()} at {1 - record.achieved_density:.2%} sparsity

This model was pruned with px_hf ({config['scorer']}; PX is Path eXclusion, Iurada et al.,
CVPR 2024){f' from `{base}`' if base else ''}: {record.kept_params:,} of {record.prunable_params:,} prunable
weights are kept (target density {record.target_density:.4f}, achieved {record.achieved_density:.6f}), in
{record.rounds_run} {config['schedule']} round(s) with a {config['scope']} threshold, scored on
{pruning_set.get('examples', 'no')} examples of {pruning_set.get('source', 'no data')}
({pruning_set.get('examples_per_class') or 'all'} per class, seed {config['seed']}).

## Use

```python
from px_hf import PXPruner

pruner = PXPruner.from_pretrained("{name}")   # restores the model and its masks exactly
model, masks = pruner.model, pruner.masks
```

{plain_load}

To fine-tune with the transformers Trainer and keep every pruned weight at exactly 0, add
`px_hf.training.PXMaskCallback(pruner.masks, pruner.pruning_record())` to its callbacks, or run
`accelerate launch recipes/finetune.py --model_name_or_path {name} ...` from px_hf.

## Density per layer

![density per layer]({DENSITY_PLOT})

| layer | weights | kept | density |
|---|---|---|---|
{rows}
| **total** | {summary.params:,} | {summary.kept:,} | {summary.density:.2%} |

{_finetuning(record)}Files: `pruning_config.json` (configuration, pruning set, versions, mask hash), `px_masks.safetensors` (one bit
per weight).
"""
    return ModelCard(content)


def _finetuning(record: PruningRecord) -> str:
    tuned = record.finetuning
    if not tuned:
        return ""
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in sorted(tuned.get("metrics", {}).items()))
    dense = record.dense_parameters
    head = f" The re-initialized {', '.join(dense)} (new label set) was trained dense." if dense else ""
    return (f"## Fine-tuning\n\nFine-tuned from `{tuned.get('base')}` on {tuned.get('dataset')} with the "
            f"transformers Trainer and px_hf's `PXMaskCallback`, which keeps every pruned weight at exactly 0.{head}"
            f"\n\n| metric | value |\n|---|---|\n{rows}\n\n")


def write_card(directory: str, summary: PruningSummary, record: PruningRecord, repo_id: Optional[str] = None) -> None:
    plot_density(summary, os.path.join(directory, DENSITY_PLOT))
    model_card(summary, record, repo_id).save(os.path.join(directory, CARD_FILE))

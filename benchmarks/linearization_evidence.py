"""Evidence for the choices px_hf makes when it linearizes a transformers model for PX.

Prints and saves (benchmarks/results/linearization_evidence.json):
1. Block rescaling: with ``px_rescale_blocks=False`` the float32 data pass of ViT-Base / ResNet-50 sized configs
   overflows; with it the scores are finite.
2. Attention as a gate: the raw PX scores of every query and key weight are exactly zero (they are on no value
   path), so ``qk_scores="px"`` deletes them; ``"value"`` keeps them at the density of the value weights.
3. GELU gates: how much the masks of ``px_activation="gated"`` (``Phi(z)``) and ``"binary"`` (``1[z>0]``) differ.
4. BatchNorm: with ``px_norm="batch"`` the real pass uses batch statistics; ``"running"`` (the published recipe)
   uses running statistics, which at initialization are the identity: how much the masks differ.

    python benchmarks/linearization_evidence.py [--skip-base]
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from px_hf import PXConfig, PXPruner
from px_hf.digits import load_digits
from px_hf.zoo import imagenet_model, small_model


def _overlap(a: dict, b: dict) -> float:
    """Fraction of the kept weights of ``a`` that ``b`` keeps too."""
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    return both / max(1, sum(int(a[n].sum()) for n in a))


def rescaling(results: dict) -> None:
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for family in ("vit", "resnet"):
        for rescale in (False, True):
            model = imagenet_model(family)
            pruner = PXPruner(model, PXConfig(sparsity=0.5, rounds=1, examples_per_class=None,
                                              px_rescale_blocks=rescale))
            try:
                pruner.prune(x, progress=False)
                outcome = "finite" if all(torch.isfinite(s).all() for s in pruner.scores.values()) else "not finite"
            except FloatingPointError as err:
                outcome = f"overflow: {err}"
            results[f"rescale_blocks={rescale} {family}-base float32"] = outcome
            print(f"{family}-base, px_rescale_blocks={rescale}: {outcome}", flush=True)


def attention(results: dict, data) -> None:
    raw = PXPruner(small_model("vit"), PXConfig(sparsity=0.9, rounds=1, qk_scores="px"))
    raw.prune(data, progress=False)
    qk = [n for n in raw.scores if "q_proj" in n or "k_proj" in n]
    v = [n for n in raw.scores if "v_proj" in n]
    results["max raw PX score of Q/K weights"] = max(float(raw.scores[n].max()) for n in qk)
    results["max raw PX score of V weights"] = max(float(raw.scores[n].max()) for n in v)
    kept = PXPruner(small_model("vit"), PXConfig(sparsity=0.9, rounds=20))
    kept.prune(data, progress=False)
    results["Q/K/V densities with qk_scores='value' (90%, block 0)"] = [
        kept.summary().layers[i].density for i in (1, 2, 3)
    ]
    print({k: results[k] for k in list(results)[-3:]}, flush=True)


def gates(results: dict, data) -> None:
    for family, option, values in (("vit", "px_activation", ("gated", "binary")),
                                   ("convnext", "px_activation", ("gated", "binary")),
                                   ("resnet", "px_norm", ("batch", "running"))):
        masks = []
        for value in values:
            pruner = PXPruner(small_model(family), PXConfig(sparsity=0.98, rounds=100, **{option: value}))
            pruner.prune(data, progress=False)
            masks.append(pruner.masks)
        key = f"{family} 98%: kept weights shared by {option}={values[0]} and {values[1]}"
        results[key] = _overlap(*masks)
        print(f"{key}: {results[key]:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-base", action="store_true", help="skip the ImageNet-sized rescaling check")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    data = load_digits(image_size=32)
    results: dict = {}
    if not args.skip_base:
        rescaling(results)
    attention(results, data)
    gates(results, data)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "linearization_evidence.json"), "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()

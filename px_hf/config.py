"""`PXConfig`: every choice a pruning run makes, validated when the config is built."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from .errors import ConfigError
from .scoring.registry import scorer_info

# px_branch_share values that follow the network's own branch shares instead of a fixed one.
BRANCH_SHARE_RULES = ("initial", "floored")

_CHOICES = {
    "schedule": ("exponential", "linear"),
    "scope": ("global", "layer"),
    "px_norm": ("batch", "running"),
    "px_activation": ("gated", "binary"),
    "px_bias": ("zero", "path"),
    "qk_scores": ("value", "px"),
    "sanity_check": (None, "shuffle", "reinit"),
    "mixed_precision": (None, "no", "fp16", "bf16"),
}


def parse_value(text: str) -> Any:
    """A :class:`PXConfig` value as given on a command line: JSON when it reads as JSON (numbers, ``null``,
    ``true``), ``None`` for ``none``, else the text itself."""
    if text.lower() == "none":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_override(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` for a :class:`PXConfig` field (the value read by :func:`parse_value`). Raises
    :class:`ConfigError` for unknown fields."""
    key, sep, value = text.partition("=")
    fields = [f.name for f in dataclasses.fields(PXConfig)]
    if not sep or key not in fields:
        raise ConfigError(f"expected KEY=VALUE with KEY a PXConfig field ({', '.join(fields)}), got {text!r}")
    return key, parse_value(value)


@dataclass
class PXConfig:
    """Configuration of a pruning run.

    Args:
        sparsity: fraction of the prunable weights to remove, in [0, 1). Density is ``1 - sparsity``.
        scorer: ``"px"``, a baseline (``"random"``, ``"magnitude"``, ``"snip"``, ``"grasp"``, ``"synflow"``), or
            a scorer registered with :func:`px_hf.register_scorer`.
        rounds: number of pruning rounds. ``None`` means the scorer's published setting: 100 for the
            iterative scorers (PX, SynFlow), 1 for the one-shot ones (:attr:`ScorerInfo.default_rounds`).
        schedule: how the density falls over the rounds: ``"exponential"`` (round r keeps
            ``density ** ((r + 1) / rounds)``, as published) or ``"linear"``.
        scope: ``"global"`` (one threshold over all layers) or ``"layer"`` (every layer keeps the same fraction).
        examples_per_class: size of the class-balanced pruning set per class; ``None`` uses every example given.
        seed: seeds the choice of the pruning set, random scores, tie breaks and the sanity checks.
        batch_size: examples per forward pass while scoring.
        include: regular expressions; when given, only weights whose parameter name matches one of them are pruned.
        exclude: regular expressions; weights whose parameter name matches one of them are never pruned.
        px_norm: ``"running"`` (default) gives BatchNorm its running statistics in the real pass (eval mode, as
            published; at initialization the identity), ``"batch"`` its batch statistics. LayerNorm and GroupNorm
            always use the sample's own statistics. Either way a norm is a gain in the PX passes, never centred.
            PX only: SNIP and GraSP always score with batch statistics, as the network trains.
        px_activation: ``"gated"`` multiplies by ``phi(z) / z`` recorded on the real pass (Phi(z) for GELU);
            ``"binary"`` uses the ReLU-style pattern ``1[z > 0]`` for every activation.
        px_bias: ``"zero"`` drops biases and additive embeddings in the PX passes (exact path bound, default);
            ``"path"`` treats a bias as a weight on a constant unit (1 in the data pass, ``b**2`` in the path pass).
        qk_scores: how weights on no path of the bound are scored (their raw PX scores are 0). ``"value"`` gives
            each attention block's query and key weights the density PX gives its value weights, and every other
            weight tensor with no path at all on the unpruned network (a projection that feeds only a softmax or an
            additive position bias, a module the forward does not use) about the network's overall density; either
            way the largest-magnitude entries are kept. ``"px"``: the raw scores, as published (such weights are
            pruned whole first).
        px_rescale_blocks: divide each residual block's output by a detached scalar in the PX passes, which
            keeps deep models finite in float32 and changes the scores only by one common positive factor.
        px_branch_share: in the path pass, scale every residual branch (attention, MLP, convolution stack) to a
            share of the magnitude of the stream entering its block and hold it there while the branch is pruned.
            ``"floored"`` (default): the share each branch has in the first round (the network's own balance, e.g. a
            pre-trained one's), raised to the median of those shares, and to at least 1e-3, where it is below (so
            a branch that starts almost silent, as under a layer scale of 1e-6, is not starved). ``"initial"``: the
            first-round shares as they are. A number: that fixed share for every branch. ``None``: branches as they are, as
            published; iterative PX then removes whole branches at high sparsity (docs/px_generalization.md).
        sanity_check: ``"shuffle"`` permutes each layer's mask after pruning (same per-layer density);
            ``"reinit"`` re-initializes the weights after pruning and keeps the mask.
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` for the real pass (scores stay float32); ``None``
            follows ``accelerate launch --mixed_precision``.
        cpu: score on the CPU even where Accelerate would pick an accelerator.
    """

    sparsity: float = 0.98
    scorer: str = "px"
    rounds: Optional[int] = None
    schedule: str = "exponential"
    scope: str = "global"
    examples_per_class: Optional[int] = 10
    seed: int = 0
    batch_size: int = 32
    include: Optional[list[str]] = None
    exclude: Optional[list[str]] = None
    px_norm: str = "running"
    px_activation: str = "gated"
    px_bias: str = "zero"
    qk_scores: str = "value"
    px_rescale_blocks: bool = True
    px_branch_share: Optional[Union[float, str]] = "floored"
    sanity_check: Optional[str] = None
    mixed_precision: Optional[str] = None
    cpu: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ConfigError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}")
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ConfigError(
                f"sparsity must be in [0, 1) (the fraction of weights removed), got {self.sparsity}; "
                "for 98% sparsity pass 0.98"
            )
        self.sparsity = float(self.sparsity)
        scorer_info(self.scorer)  # a ConfigError naming the registered scorers if unknown
        if self.px_norm == "gated":  # the earlier name of "batch": configs saved with it still load
            self.px_norm = "batch"
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                shown = ", ".join(repr(a) for a in allowed)
                raise ConfigError(f"unknown {name} {value!r}; choose one of {shown}")
        if self.rounds is not None and (isinstance(self.rounds, bool) or not isinstance(self.rounds, int)
                                        or self.rounds < 1):
            raise ConfigError(f"rounds must be an integer >= 1 (or None for the scorer's default), got {self.rounds!r}")
        if self.examples_per_class is not None and (
            not isinstance(self.examples_per_class, int) or self.examples_per_class < 1
        ):
            raise ConfigError(
                f"examples_per_class must be a positive integer or None (use all data), got {self.examples_per_class!r}"
            )
        share = self.px_branch_share
        fixed = not isinstance(share, bool) and isinstance(share, (int, float)) and math.isfinite(share) and share > 0
        if share is not None and share not in BRANCH_SHARE_RULES and not fixed:
            raise ConfigError(f"px_branch_share must be {' or '.join(repr(r) for r in BRANCH_SHARE_RULES)}, a positive "
                              f"number (a fixed share), or None to turn branch balancing off, got {share!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
            elif value is not None and not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of regular expressions, got {value!r}")

    @property
    def density(self) -> float:
        """Fraction of prunable weights kept."""
        return 1.0 - self.sparsity

    @property
    def num_rounds(self) -> int:
        """Rounds actually run: ``rounds`` or the scorer's published default."""
        return self.rounds if self.rounds is not None else scorer_info(self.scorer).default_rounds

    @classmethod
    def published(cls, **overrides: Any) -> "PXConfig":
        """The recipe of Iurada et al. (CVPR 2024) for ReLU CNNs: 100 exponential rounds, one global threshold,
        10 examples per class, eval-mode BatchNorm and binary ReLU gates in the PX passes."""
        settings = dict(
            scorer="px", rounds=100, schedule="exponential", scope="global", examples_per_class=10,
            px_norm="running", px_activation="binary", px_bias="zero", qk_scores="px",
            px_branch_share=None,
        )
        settings.update(overrides)
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-serializable values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PXConfig":
        """Build a config from :meth:`to_dict` output; keys this version does not know are ignored with a warning
        (a config written by a newer px_hf still loads)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            from . import __version__

            warnings.warn(f"ignoring PXConfig keys unknown to px_hf {__version__}: {unknown} "
                          "(written by a newer px_hf?)", stacklevel=2)
        return cls(**{k: v for k, v in values.items() if k in known})

    def save_pretrained(self, directory: str) -> None:
        """Write the config alone to ``directory/px_config.json`` (a pruned model's ``pruning_config.json``
        holds it too, in its record)."""
        from . import __version__
        from .hub.format import CONFIG_ONLY_FILE

        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_ONLY_FILE), "w") as handle:
            json.dump({"px_hf_version": __version__, "config": self.to_dict()}, handle, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, name_or_path: str, revision: Optional[str] = None,
                        token: Optional[str] = None) -> "PXConfig":
        """Read the config from a directory or Hub repo: a ``px_config.json`` written by :meth:`save_pretrained`,
        else a pruned model's ``pruning_config.json``."""
        from .hub.format import CONFIG_ONLY_FILE, PRUNING_CONFIG_FILE

        if os.path.isdir(name_or_path):
            candidates = [os.path.join(name_or_path, n) for n in (CONFIG_ONLY_FILE, PRUNING_CONFIG_FILE)]
            path = next((c for c in candidates if os.path.isfile(c)), None)
        else:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                path = hf_hub_download(name_or_path, CONFIG_ONLY_FILE, revision=revision, token=token)
            except EntryNotFoundError:
                path = hf_hub_download(name_or_path, PRUNING_CONFIG_FILE, revision=revision, token=token)
        if path is None:
            raise ConfigError(f"{name_or_path} has neither {CONFIG_ONLY_FILE} nor {PRUNING_CONFIG_FILE}")
        try:
            with open(path) as handle:
                data = json.load(handle)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(data.get("config", data))

    def push_to_hub(self, repo_id: str, private: Optional[bool] = None, commit_message: Optional[str] = None,
                    token: Optional[str] = None):
        """Upload the config alone to ``repo_id`` (created if needed) in one commit; returns the CommitInfo."""
        from .hub.remote import push_folder

        return push_folder(self.save_pretrained, repo_id, private=private, token=token,
                           commit_message=commit_message or "Upload px_hf pruning config")

"""The scorers px_hf knows, each registered once with the facts the rest of px_hf needs about it.

Torch-free, so that :class:`~px_hf.PXConfig` can validate a scorer name (and ``px-hf --help`` list them) without
importing torch: a built-in scorer's function is named as ``"module:function"`` and imported on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import Scorer

DEFAULT_ITERATIVE_ROUNDS = 100


@dataclass(frozen=True)
class ScorerInfo:
    """A registered scorer and what px_hf needs to know about it.

    Attributes:
        name: the name ``PXConfig(scorer=...)`` takes.
        function: the scorer (a callable from :class:`~px_hf.scoring.ScoringContext` to scores), or
            ``"module:function"`` to import on first use.
        needs_data: refuses to run without pruning data (for its values, or only for the input shape).
        needs_labels: reads the pruning set's labels.
        default_rounds: the rounds of its published form, used when ``PXConfig.rounds`` is ``None``.
        uses_passes: runs the model through :class:`~px_hf.modeling.passes.LinearizedPasses` (its real pass
            included); a scorer that reads only the weights does not, and gets ``ctx.passes = None``.
        batchnorm: ``"px_norm"``: BatchNorm as ``PXConfig.px_norm`` says; ``"batch"``: on batch statistics, as
            the network trains (the gradient baselines).
        nonnegative: its scores are never negative.
    """

    name: str
    function: Union[str, Callable]
    needs_data: bool = True
    needs_labels: bool = False
    default_rounds: int = 1
    uses_passes: bool = True
    batchnorm: str = "batch"
    nonnegative: bool = False

    def load(self) -> "Scorer":
        """The scoring function."""
        if callable(self.function):
            return self.function
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)


_REGISTRY: dict[str, ScorerInfo] = {}


def register_scorer(name: str, function: Callable, *, needs_data: bool = True, needs_labels: bool = False,
                    default_rounds: int = 1, uses_passes: bool = True, batchnorm: str = "batch",
                    nonnegative: bool = False, replace: bool = False) -> ScorerInfo:
    """Make ``function`` available as ``PXConfig(scorer=name)``.

    ``function(ctx)`` receives a :class:`~px_hf.scoring.ScoringContext` and returns a score tensor per name in
    ``ctx.prunable`` (larger is kept; the round loop sets the returned scores of pruned weights to ``-inf`` in
    place). The keyword arguments are the facts of :class:`ScorerInfo`. A model pruned
    with it records ``name``; loading that model's config elsewhere needs the same registration.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"a scorer name must be an identifier, got {name!r}")
    if name in _REGISTRY and not replace:
        raise ConfigError(f"scorer {name!r} is already registered; pass replace=True to replace it")
    if not (callable(function) or isinstance(function, str)):
        raise ConfigError(f"scorer {name!r}: expected a callable, got {type(function).__name__}")
    if batchnorm not in ("px_norm", "batch"):
        raise ConfigError(f"batchnorm must be 'px_norm' or 'batch', got {batchnorm!r}")
    if isinstance(default_rounds, bool) or not isinstance(default_rounds, int) or default_rounds < 1:
        raise ConfigError(f"default_rounds must be a positive integer, got {default_rounds!r}")
    info = ScorerInfo(name, function, needs_data, needs_labels, default_rounds, uses_passes, batchnorm, nonnegative)
    _REGISTRY[name] = info
    return info


def scorer_info(name: str) -> ScorerInfo:
    """The registered scorer ``name``; a :class:`~px_hf.ConfigError` listing the known ones if there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown scorer {name!r}; choose one of {', '.join(repr(n) for n in _REGISTRY)}, or "
                          "register your own with px_hf.register_scorer") from None


def scorer_names() -> tuple[str, ...]:
    """Every registered scorer, built-in ones first."""
    return tuple(_REGISTRY)


_HERE = __name__.rpartition(".")[0]
register_scorer("px", f"{_HERE}.px:px_scores", default_rounds=DEFAULT_ITERATIVE_ROUNDS, batchnorm="px_norm",
                nonnegative=True)
register_scorer("random", f"{_HERE}.baselines:random_scores", needs_data=False, uses_passes=False,
                nonnegative=True)
register_scorer("magnitude", f"{_HERE}.baselines:magnitude_scores", needs_data=False, uses_passes=False,
                nonnegative=True)
register_scorer("snip", f"{_HERE}.baselines:snip_scores", needs_labels=True, nonnegative=True)
register_scorer("grasp", f"{_HERE}.baselines:grasp_scores", needs_labels=True)
# SynFlow reads no data values, only the input shape.
register_scorer("synflow", f"{_HERE}.baselines:synflow_scores", default_rounds=DEFAULT_ITERATIVE_ROUNDS,
                nonnegative=True)

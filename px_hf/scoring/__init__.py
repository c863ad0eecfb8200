"""Scorers: one function per method, from a :class:`ScoringContext` to a score per prunable weight.

``px.py`` holds the PX math, ``baselines.py`` the methods PX is compared against, ``registry.py`` the name and
facts of each (torch-free, so this package imports torch only when a scorer or the context is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .registry import ScorerInfo, register_scorer, scorer_info, scorer_names

if TYPE_CHECKING:
    from .base import Scorer, Scores, ScoringContext

_LAZY = {"Scorer": "base", "Scores": "base", "ScoringContext": "base"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ScorerInfo", "register_scorer", "scorer_info", "scorer_names", "Scorer", "Scores", "ScoringContext"]

"""The ``px-hf`` command line (``prune.py``) and what it shares with the recipes (``shared.py``)."""

from .prune import main

__all__ = ["main"]

"""Scorers: one function per method, from a :class:`ScoringContext` to a score per prunable weight."""

from .base import Scorer, Scores, ScoringContext
from .baselines import grasp_scores, magnitude_scores, random_scores, snip_scores, synflow_scores
from .px import px_scores

SCORERS: dict[str, Scorer] = {
    "px": px_scores,
    "random": random_scores,
    "magnitude": magnitude_scores,
    "snip": snip_scores,
    "grasp": grasp_scores,
    "synflow": synflow_scores,
}
# Scorers that read the pruning data; the others need only the weights (and SynFlow the input shape).
DATA_SCORERS = ("px", "snip", "grasp")
LABEL_SCORERS = ("snip", "grasp")
# Scores these scorers guarantee to be >= 0.
NONNEGATIVE_SCORERS = ("px", "random", "magnitude", "snip", "synflow")

__all__ = ["SCORERS", "DATA_SCORERS", "LABEL_SCORERS", "NONNEGATIVE_SCORERS", "Scorer", "Scores", "ScoringContext"]

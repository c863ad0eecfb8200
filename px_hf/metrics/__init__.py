"""Metric modules shipped with px_hf, loadable offline by path with ``evaluate.load``."""

import os

METRICS_DIR = os.path.dirname(os.path.abspath(__file__))


def metric_path(name: str) -> str:
    """Directory of a shipped metric, for ``evaluate.load(metric_path("accuracy"))``."""
    path = os.path.join(METRICS_DIR, name)
    if not os.path.isfile(os.path.join(path, f"{name}.py")):
        available = sorted(d for d in os.listdir(METRICS_DIR) if os.path.isdir(os.path.join(METRICS_DIR, d))
                           and not d.startswith("_"))
        raise ValueError(f"px_hf ships no metric {name!r}; available: {available}")
    return path


def load_metric(name: str = "accuracy"):
    """``evaluate.load`` of a metric shipped inside px_hf: works without the Hub."""
    import evaluate

    return evaluate.load(metric_path(name))

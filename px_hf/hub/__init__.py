"""Saving, loading and sharing pruned models: the mask file, the pruning config, and the Hub."""

"""Exceptions raised by px_hf for bad input: each message names the problem and how to fix it."""


class PXError(ValueError):
    """Base class of px_hf's user-facing errors."""


class ConfigError(PXError):
    """An invalid :class:`~px_hf.PXConfig` value."""


class ModelError(PXError):
    """A model px_hf cannot prune as asked (no prunable layer, pattern matching nothing, ...)."""


class DataError(PXError):
    """Pruning data px_hf cannot use (no labels, too few examples of a class, wrong shape, ...)."""


class OutputDirError(PXError):
    """A place px_hf will not save to: a file, a directory holding other files, or one it cannot write."""


class PrunedModelError(PXError):
    """A saved pruned model that cannot be restored exactly (missing, corrupt or inconsistent files)."""


class HubError(PXError):
    """The Hugging Face Hub could not be reached or refused a request (offline, no token, no access)."""

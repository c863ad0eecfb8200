"""The Hugging Face Hub side: fetching a pruned model's files and pushing a folder in one commit."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable, Iterator, Optional

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.errors import HTTPError as HubHTTPError

from ..errors import HubError
from .format import PRUNING_CONFIG_FILE

# What a pruned model's repo holds that px_hf reads; other files (e.g. pickled weights) are never fetched.
_PATTERNS = ["*.json", "*.safetensors", "*.md"]


def _transport_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub's HTTP client raises its own connection errors, which are not OSErrors.
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, HubHTTPError)
    for module in ("httpx2", "httpx"):
        try:
            errors += (__import__(module).HTTPError,)
        except (ImportError, AttributeError):
            pass
    return errors


@contextlib.contextmanager
def _hub_errors(action: str) -> Iterator[None]:
    try:
        yield
    except EntryNotFoundError:
        raise
    except _transport_errors() as err:
        raise HubError(f"{action} failed: {type(err).__name__}: {err}") from err


def local_directory(name_or_path: str, revision: Optional[str] = None, token: Optional[str] = None,
                    ) -> Optional[str]:
    """A local directory holding a pruned model's files, or ``None`` when ``name_or_path`` is a Hub repo without
    a pruning config (a model to prune, for transformers to load)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    with _hub_errors(f"fetching {name_or_path!r} from the Hub"):
        try:
            hf_hub_download(name_or_path, PRUNING_CONFIG_FILE, revision=revision, token=token)
        except EntryNotFoundError:
            return None
        return snapshot_download(name_or_path, revision=revision, token=token, allow_patterns=_PATTERNS)


def push_folder(
    write: Callable[[str], None], repo_id: str, private: Optional[bool] = None,
    commit_message: Optional[str] = None, token: Optional[str] = None, revision: Optional[str] = None,
):
    """Create ``repo_id`` if needed, let ``write(folder)`` fill a temporary folder, and upload it as one commit.

    Returns the ``CommitInfo`` of the commit; a Hub that cannot be reached or refuses raises :class:`HubError`.
    """
    api = HfApi(token=token)
    with _hub_errors(f"pushing to the Hub repo {repo_id!r}"):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="px_hf-push-") as folder:
        write(folder)
        with _hub_errors(f"pushing to the Hub repo {repo_id!r}"):
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message or
                                     "Upload pruned model with px_hf", revision=revision, repo_type="model")

"""The Hugging Face Hub side: fetching a pruned model's files and pushing a folder in one commit."""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Optional

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError

from .save import PRUNING_CONFIG_FILE

# What a pruned model's repo holds that px_hf reads; other files (e.g. pickled weights) are never fetched.
_PATTERNS = ["*.json", "*.safetensors", "*.md"]


def local_directory(name_or_path: str, revision: Optional[str] = None, token: Optional[str] = None,
                    ) -> Optional[str]:
    """A local directory holding a pruned model's files, or ``None`` when ``name_or_path`` is a Hub repo without
    a pruning config (a model to prune, for transformers to load)."""
    if os.path.isdir(name_or_path):
        return name_or_path
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

    Returns the ``CommitInfo`` of the commit.
    """
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="px_hf-push-") as folder:
        write(folder)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message or
                                 "Upload pruned model with px_hf", revision=revision, repo_type="model")

"""Where a save may write, and how it replaces a directory without ever losing the previous version.

Rules (docs/usage.md states them for users):

- a missing path, or an empty directory, is written;
- a directory that holds only the files of a saved model (px_hf's or transformers') is replaced when
  ``overwrite`` is true, refused otherwise;
- anything else (a file, a directory holding other files) is refused: px_hf never deletes a file it did not write.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import re
import secrets
import shutil
from typing import Callable

from ..errors import OutputDirError
from .format import PRUNING_CONFIG_FILE, PX_HF_FILES

# Names a save of px_hf or transformers' save_pretrained writes into a model directory.
MODEL_FILE_PATTERNS = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin", "preprocessor_config.json",
    "generation_config.json", *PX_HF_FILES,
)
_STAGING = re.compile(r"^\.px_hf-(save|old)-(\d+)-([0-9a-f]+)-(.+)$")


def foreign_entries(directory: str) -> list[str]:
    """Entries of ``directory`` that no model save writes (sorted)."""
    return sorted(e for e in os.listdir(directory)
                  if not (os.path.isfile(os.path.join(directory, e))
                          and any(fnmatch.fnmatchcase(e, p) for p in MODEL_FILE_PATTERNS)))


def check_output_dir(directory: str, overwrite: bool, option: str = "the output directory") -> str:
    """Raise :class:`OutputDirError` unless a save may write ``directory``; return its resolved path.

    Also checks that the place is writable, by creating (and removing) a staging folder beside it, so that a long
    pruning run does not end in a failed save. ``option`` names the setting in messages (e.g. ``--output-dir``).
    """
    target = os.path.realpath(directory)
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise OutputDirError(f"{option} {directory!r} exists and is not a directory; px_hf never replaces a file. "
                             "Choose another path")
    if os.path.isdir(target):
        entries = os.listdir(target)
        foreign = foreign_entries(target)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise OutputDirError(
                f"{option} {directory!r} holds files that are not part of a saved model ({shown}); px_hf replaces "
                "only an empty directory or one holding a saved model, and never deletes other files. Choose a new "
                "or empty directory")
        if entries and not overwrite:
            raise OutputDirError(f"{option} {directory!r} already holds a saved model; pass --overwrite "
                                 "(overwrite=True) to replace it, or choose another directory")
    _probe_writable(target, option, directory)
    return target


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _probe_writable(target: str, option: str, shown: str) -> None:
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        probe = _staging_path(parent, "save", os.path.basename(target))
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as err:
        place = _nearest_existing(parent)
        raise OutputDirError(f"cannot write {option} {shown!r}: {place} is not writable "
                             f"({err.strerror or err})") from None


def _staging_path(parent: str, kind: str, name: str) -> str:
    # The pid lets a later save tell a folder left by a killed save from one still being written.
    return os.path.join(parent, f".px_hf-{kind}-{os.getpid()}-{secrets.token_hex(4)}-{name}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # a PermissionError also means the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def recover_leftovers(target: str) -> None:
    """Tidy what a killed save to ``target`` left beside it: a previous version moved aside comes back to
    ``target`` when ``target`` is missing; staging folders of dead processes are removed."""
    parent, name = os.path.split(target)
    if not os.path.isdir(parent):
        return
    for entry in sorted(os.listdir(parent)):
        match = _STAGING.match(entry)
        if not match or match.group(4) != name or _alive(int(match.group(2))):
            continue
        path = os.path.join(parent, entry)
        if match.group(1) == "old" and not os.path.lexists(target):
            os.replace(path, target)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _umask() -> int:
    try:  # Linux reports it without changing it
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1], 8) for line in handle if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _follow_umask(folder: str) -> None:
    """Give the saved files the mode a plain ``open`` would (safetensors writes its files 0600)."""
    mode = 0o666 & ~_umask()
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if os.path.isfile(path) and not os.path.islink(path):
            os.chmod(path, mode)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if function(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), b)


def _replace(staging: str, target: str) -> None:
    """Put ``staging`` at ``target``, whose previous content is a saved model."""
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now the previous version
        return
    old = _staging_path(os.path.dirname(target), "old", os.path.basename(target))
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        try:
            os.replace(old, target)
        except OSError as err:
            raise OutputDirError(f"the save to {target} failed and the previous version could not be moved back; "
                                 f"it is intact at {old}") from err
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fill(staging: str, target: str) -> None:
    """Move the files of ``staging`` into the existing empty directory ``target`` (kept: it may be the working
    directory, and its owner and mode are the user's). The files that make it load as a model come last."""
    last = (PRUNING_CONFIG_FILE, "config.json")
    for entry in sorted(os.listdir(staging), key=lambda e: last.index(e) + 1 if e in last else 0):
        os.replace(os.path.join(staging, entry), os.path.join(target, entry))
    os.rmdir(staging)


def save_atomically(directory: str, write: Callable[[str], None], overwrite: bool = True) -> None:
    """Call ``write(staging_dir)`` and move the result to ``directory``.

    ``directory`` must pass :func:`check_output_dir`. Everything is written to a staging folder beside it (mode
    from the umask) and moved into place when complete, so an interrupted save never leaves a directory that
    loads as a wrong model. A previous save is swapped out in one atomic step where the OS allows it; otherwise
    it is moved back if the second rename fails, and a save killed in between is repaired by the next save to
    the same place.
    """
    recover_leftovers(os.path.realpath(directory))
    target = check_output_dir(directory, overwrite)
    staging = _staging_path(os.path.dirname(target), "save", os.path.basename(target))
    os.mkdir(staging)
    try:
        write(staging)
        _follow_umask(staging)
        if os.path.isdir(target) and not os.listdir(target):
            _fill(staging, target)
        elif os.path.isdir(target):
            _replace(staging, target)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

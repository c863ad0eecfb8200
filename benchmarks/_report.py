"""Shared by the benchmark scripts: save tables with their raw rows, store single results, name the code measured."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Optional

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_results(out: str, name: str, rows: list | dict, table: str) -> None:
    """Print ``table`` and write ``out/name.json`` (``rows``, or a dict of several tables' rows) and ``out/name.md``
    (``table``, which may hold several tables)."""
    print("\n" + table)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    with open(os.path.join(out, f"{name}.md"), "w") as handle:
        handle.write(table + "\n")


def replace_between(path: str, start: str, end: str, text: str) -> bool:
    """Replace what lies between the marker lines ``start`` and ``end`` in the file ``path`` by ``text`` (the
    generated parts of the README and docs); returns False, changing nothing, when a marker is missing."""
    with open(path) as handle:
        content = handle.read()
    if start not in content or end not in content:
        return False
    head, _, rest = content.partition(start)
    _, _, tail = rest.partition(end)
    with open(path, "w") as handle:
        handle.write(f"{head}{start}\n{text}\n{end}{tail}")
    return True


def write_json(path: str, data: Any, indent: int = 2) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a killed run leaves no half-written result."""
    with open(path + ".tmp", "w") as handle:
        json.dump(data, handle, indent=indent)
    os.replace(path + ".tmp", path)


def code_version() -> Optional[str]:
    """The git tree hash of ``px_hf/`` at HEAD (12 digits): what a stored speed measurement depends on. ``None``
    when ``px_hf/`` has uncommitted changes or git is unavailable; such measurements are not stored."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        if git("status", "--porcelain", "--", "px_hf"):
            return None
        return git("rev-parse", "HEAD:px_hf")[:12]
    except (OSError, subprocess.CalledProcessError):
        return None

"""Shared by the benchmark scripts: print a markdown table and save it with the raw rows."""

from __future__ import annotations

import json
import os


def save_results(out: str, name: str, rows: list | dict, table: str) -> None:
    """Print ``table`` and write ``out/name.json`` (``rows``, or a dict of several tables' rows) and ``out/name.md``
    (``table``, which may hold several tables)."""
    print("\n" + table)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    with open(os.path.join(out, f"{name}.md"), "w") as handle:
        handle.write(table + "\n")

"""Shared by the benchmark scripts: print a markdown table and save it with the raw rows."""

import json
import os


def save_results(out: str, name: str, rows: list, table: str) -> None:
    """Print ``table`` and write ``out/name.json`` (rows) and ``out/name.md`` (table)."""
    print("\n" + table)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    with open(os.path.join(out, f"{name}.md"), "w") as handle:
        handle.write(table + "\n")

"""Start-up time: ``import px_hf`` and ``px-hf --help`` against bare Python and ``import torch``.

Each command runs ``--repeats`` times in a fresh interpreter (wall time, median); bare ``python -c pass`` and
``import torch`` run in the same session, so the ratios hold on a busy machine too. Target: ``px-hf --help``
under 1 s (it must not import torch, transformers, accelerate, datasets or matplotlib).

    python benchmarks/startup.py [--repeats 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from _report import save_results


def _seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    script = shutil.which("px-hf", path=os.path.dirname(sys.executable)) or shutil.which("px-hf")
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import px_hf": [sys.executable, "-c", "import px_hf"],
        "px-hf --help": [script, "--help"] if script else [sys.executable, "-m", "px_hf.cli", "--help"],
        "px-hf prune --help": ([script] if script else [sys.executable, "-m", "px_hf.cli"]) + ["prune", "--help"],
        "import px_hf; px_hf.PXPruner": [sys.executable, "-c", "import px_hf; px_hf.PXPruner"],
        "import torch": [sys.executable, "-c", "import torch"],
    }
    rows = [{"command": name, "seconds": _seconds(command, args.repeats)} for name, command in commands.items()]
    torch_s = next(r["seconds"] for r in rows if r["command"] == "import torch")
    lines = [f"Start-up time (wall, median of {args.repeats} fresh interpreters; `python benchmarks/startup.py`)", "",
             "| command | seconds | / import torch |", "|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['seconds']:.3f} | {r['seconds'] / torch_s:.2f} |" for r in rows]
    save_results(args.out, "startup", rows, "\n".join(lines))


if __name__ == "__main__":
    main()

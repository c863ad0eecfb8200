"""Time per pruning round with 1 and 2 processes, and bytes all-reduced per round, for PX and SNIP.

A mid-size ViT (hidden 192, 6 layers, 32 px) scores all 1797 digits, so the data passes dominate the round. Each
configuration runs as its own job (``torchrun`` for 2 processes); every process uses one thread, so the speedup
shows what sharding buys on this 2-core machine. A 1-process run with 2 threads is reported for reference.

    python benchmarks/distributed.py [--rounds 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys

from _report import save_results

WORKER = """
import json, sys, time
import torch
from px_hf import PXConfig, PXPruner
from px_hf.distributed import shutdown_distributed
from px_hf.digits import load_digits
from px_hf.distributed import process_state
from px_hf.zoo import small_model

scorer, rounds = sys.argv[1], int(sys.argv[2])
state = process_state()
model = small_model("vit", hidden_size=192, num_hidden_layers=6, num_attention_heads=6, intermediate_size=768)
pruner = PXPruner(model, PXConfig(sparsity=0.9, scorer=scorer, rounds=rounds, examples_per_class=None,
                                  batch_size=64))
pruner.prune(load_digits(), progress=False)
if state.is_main_process:
    print("RESULT " + json.dumps({"history": pruner.history, "params": pruner.summary().params,
                                   "sha": pruner.mask_digest}), flush=True)
del pruner
shutdown_distributed()
"""


def _port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def run(processes: int, threads: int, scorer: str, rounds: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    if processes == 1:
        command = [sys.executable, "-c", WORKER, scorer, str(rounds)]
    else:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "_distributed_worker.py")
        os.makedirs(os.path.dirname(script), exist_ok=True)
        with open(script, "w") as handle:
            handle.write(WORKER)
        command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", str(processes),
                   "--master_port", _port(), script, scorer, str(rounds)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    data = json.loads(re.search(r"RESULT (.*)", result.stdout).group(1))
    # The first round includes one-time work (buffers, sorting); the median of the others is the steady cost.
    seconds = [h["seconds"] for h in data["history"][1:]] or [data["history"][0]["seconds"]]
    return {"processes": processes, "threads_per_process": threads, "scorer": scorer,
            "round_s": statistics.median(seconds), "bytes_per_round": data["history"][-1]["bytes_reduced"],
            "params": data["params"], "sha": data["sha"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    rows = []
    for scorer in ("px", "snip"):
        rounds = args.rounds if scorer == "px" else 1
        for processes, threads in ((1, 1), (2, 1), (1, 2)):
            rows.append(run(processes, threads, scorer, rounds))
            print(json.dumps(rows[-1]), flush=True)
    lines = ["Mid-size ViT (hidden 192, 6 layers, 32 px), 1797 digits scored per round, batch 64, CPU (gloo)", "",
             "| scorer | processes x threads | round (s) | speedup vs 1x1 | bytes all-reduced per round "
             "(per process) | prunable params | same masks as 1x1 |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["scorer"] == row["scorer"] and r["processes"] == 1
                    and r["threads_per_process"] == 1)
        lines.append(f"| {row['scorer']} | {row['processes']} x {row['threads_per_process']} | {row['round_s']:.2f} | "
                     f"{base['round_s'] / row['round_s']:.2f} | {row['bytes_per_round']:,} | {row['params']:,} | "
                     f"{'yes' if row['sha'] == base['sha'] else 'NO'} |")
    save_results(args.out, "distributed", rows, "\n".join(lines))

if __name__ == "__main__":
    main()

"""Worker for the distributed tests: prune on digits and write this rank's masks and scores.

    torchrun --nproc_per_node 2 tests/dist_worker.py --family vit --scorer px --examples 37 --out DIR
"""

import argparse
import os

import torch
from safetensors.torch import save_file

from px_hf import PXConfig, PXPruner
from px_hf.distributed import shutdown_distributed
from px_hf.digits import load_digits
from px_hf.distributed import process_state
from px_hf.zoo import small_model


def prune(family: str, scorer: str, examples: int, rounds: int) -> PXPruner:
    x, y = load_digits(image_size=32)
    config = PXConfig(sparsity=0.9, scorer=scorer, rounds=rounds, examples_per_class=None, batch_size=8)
    pruner = PXPruner(small_model(family), config)
    pruner.prune((x[:examples], y[:examples]), progress=False)
    return pruner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", required=True)
    parser.add_argument("--scorer", default="px")
    parser.add_argument("--examples", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    state = process_state()
    try:
        pruner = prune(args.family, args.scorer, args.examples, args.rounds)
        tensors = {f"mask/{n}": m.to(torch.uint8) for n, m in pruner.masks.items()}
        tensors.update({f"score/{n}": s.contiguous() for n, s in pruner.scores.items()})
        save_file(tensors, os.path.join(args.out, f"rank{state.process_index}.safetensors"))
        batches = -(-args.examples // 8)
        mine = len(range(state.process_index, batches, state.num_processes))
        line = (f"RANK {state.process_index}/{state.num_processes} batches={mine} "
                f"bytes_per_round={pruner.history[-1]['bytes_reduced']} sha={pruner.mask_digest}")
        # One file per rank: lines printed by two processes into one pipe can interleave.
        with open(os.path.join(args.out, f"rank{state.process_index}.txt"), "w") as handle:
            handle.write(line + "\n")
        print(line, flush=True)
        del pruner
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()

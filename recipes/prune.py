"""Prune a model with PX (or a baseline), save it, and optionally push it to the Hub.

Runs alone or across processes, with the same options as ``px-hf prune``:

    python recipes/prune.py --model vit --sparsity 0.98
    accelerate launch --multi_gpu --num_processes 2 recipes/prune.py --model google/vit-base-patch16-224 \\
        --data imagenet-1k --examples-per-class 10 --output-dir vit-px-98 --push-to-hub me/vit-px-98
    torchrun --nproc_per_node 2 recipes/prune.py --model resnet

Every process scores its shard of the pruning set; the small per-round statistics are all-reduced, every process
ends with the same masks (checked by hash), and only the main process prints, saves and pushes.
"""

import sys

from px_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["prune", *sys.argv[1:]]))

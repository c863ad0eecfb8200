"""Scoring across processes: two gloo processes on CPU give the masks of one process (same scores to float
tolerance), with uneven and empty shards, for PX and the gradient baselines; launched scripts exit cleanly."""

import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, HERE)

from dist_worker import prune  # noqa: E402


def _free_port() -> str:
    # Port 0 is not accepted by torch.distributed's rendezvous: pick a free port on the loopback interface.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=HERE)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(tmp_path, *args):
    command = [os.path.join(BIN, "torchrun"), "--nproc_per_node", "2", "--master_port", _free_port(),
               os.path.join(HERE, "dist_worker.py"), "--out", str(tmp_path), *args]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def _compare(tmp_path, reference, stdout, expected_batches):
    assert "RANK" in stdout
    reports = "".join(open(tmp_path / f"rank{rank}.txt").read() for rank in (0, 1))
    lines = sorted(re.findall(r"RANK (\d)/2 batches=(\d+) bytes_per_round=(\d+) sha=(\w+)", reports))
    assert [(r, int(b)) for r, b, _, _ in lines] == [("0", expected_batches[0]), ("1", expected_batches[1])]
    assert {sha for *_, sha in lines} == {reference.mask_digest}
    for rank in (0, 1):
        saved = load_file(tmp_path / f"rank{rank}.safetensors")
        for name, mask in reference.masks.items():
            assert torch.equal(saved[f"mask/{name}"].bool(), mask), name
            torch.testing.assert_close(saved[f"score/{name}"], reference.scores[name], rtol=1e-4, atol=1e-12)
    return [int(b) for _, _, b, _ in lines]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_two_processes_match_one_with_uneven_shards(tmp_path, family):
    reference = prune(family, "px", examples=37, rounds=3)  # 5 batches of 8: ranks get 3 and 2
    stdout = _torchrun(tmp_path, "--family", family, "--examples", "37")
    sent = _compare(tmp_path, reference, stdout, (3, 2))
    # PX sends per round O(outputs + norm channels), never O(parameters).
    params = sum(m.numel() for m in reference.masks.values())
    assert 0 < sent[0] < params


@pytest.mark.slow
def test_a_rank_with_an_empty_shard(tmp_path):
    reference = prune("resnet", "px", examples=6, rounds=2)  # one batch: rank 1 scores nothing
    stdout = _torchrun(tmp_path, "--family", "resnet", "--examples", "6", "--rounds", "2")
    _compare(tmp_path, reference, stdout, (1, 0))


@pytest.mark.slow
@pytest.mark.parametrize("scorer", ["snip", "grasp"])
def test_gradient_baselines_reduce_their_gradients(tmp_path, scorer):
    reference = prune("vit", scorer, examples=37, rounds=1)
    stdout = _torchrun(tmp_path, "--family", "vit", "--scorer", scorer, "--examples", "37", "--rounds", "1")
    _compare(tmp_path, reference, stdout, (3, 2))


@pytest.mark.slow
def test_recipe_under_accelerate_launch_exits_cleanly_every_time(tmp_path):
    """`accelerate launch` with two gloo processes: same masks as `python recipes/prune.py`, only rank 0 writes,
    and the run exits 0 with its full output, three times in a row."""
    common = ["--model", "vit", "--rounds", "3", "--sparsity", "0.9", "--examples-per-class", "4",
              "--batch-size", "8", "--no-progress"]
    single = subprocess.run([sys.executable, os.path.join(ROOT, "recipes", "prune.py"), *common,
                             "--output-dir", str(tmp_path / "single")], env=_env(), capture_output=True, text=True,
                            timeout=600, stdin=subprocess.DEVNULL)
    assert single.returncode == 0, single.stderr[-3000:]
    sha = re.search(r"mask digest: (\w+) \(identical on all 1 process", single.stdout).group(1)
    for attempt in range(3):
        out = tmp_path / f"launched{attempt}"
        launched = subprocess.run(
            [os.path.join(BIN, "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", _free_port(),
             os.path.join(ROOT, "recipes", "prune.py"), *common, "--output-dir", str(out)],
            env=_env(), capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert launched.returncode == 0, launched.stderr[-3000:]
        assert f"mask digest: {sha} (identical on all 2 process(es))" in launched.stdout
        assert launched.stdout.count("saved to") == 1  # only the main process writes
        assert "achieved density: 0.1000" in launched.stdout
        assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / "single"))

"""Saving into a directory: what may be replaced, the swap that never loses the previous version, leftovers of
a killed save, and file modes that follow the umask."""

import os
import subprocess
import sys

import pytest

from px_hf import OutputDirError, PXConfig, PXPruner
from px_hf.hub import directory as output_dir
from px_hf.zoo import small_model


@pytest.fixture(scope="module")
def pruner():
    pruner = PXPruner(small_model("resnet"), PXConfig(scorer="magnitude", sparsity=0.5))
    pruner.prune(progress=False)
    return pruner


def _masks_bytes(path):
    return (path / "px_masks.safetensors").read_bytes()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_api_replaces_a_saved_model_but_refuses_foreign_files(pruner, tmp_path):
    pruner.save_pretrained(tmp_path / "m")
    pruner.save_pretrained(tmp_path / "m")  # a saved model is replaced by default in the API
    with pytest.raises(OutputDirError, match="already holds a saved model"):
        pruner.save_pretrained(tmp_path / "m", overwrite=False)
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="notes.txt"):
        pruner.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_a_plain_transformers_model_directory_may_be_replaced(pruner, tmp_path):
    small_model("resnet").save_pretrained(tmp_path / "t")
    pruner.save_pretrained(tmp_path / "t")
    PXPruner.from_pretrained(str(tmp_path / "t"))


@pytest.mark.parametrize("rollback_fails", [False, True])
def test_a_failed_second_rename_keeps_the_previous_version(pruner, tmp_path, monkeypatch, rollback_fails):
    target = tmp_path / "m"
    pruner.save_pretrained(target)
    before = _masks_bytes(target)
    real_replace = os.replace
    calls = []

    def flaky(src, dst):
        calls.append((str(src), str(dst)))
        if len(calls) == 2 or (rollback_fails and len(calls) == 3):
            raise OSError(5, "simulated I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(output_dir, "_exchange", lambda a, b: False)  # the two-rename fallback
    monkeypatch.setattr(output_dir.os, "replace", flaky)
    if rollback_fails:
        with pytest.raises(OutputDirError, match="previous version could not be moved back; it is intact at") as err:
            pruner.save_pretrained(target)
        kept_at = str(err.value).rsplit("intact at ", 1)[1]
        assert _masks_bytes(type(target)(kept_at)) == before
        monkeypatch.setattr(output_dir.os, "replace", real_replace)
        output_dir.recover_leftovers(str(target))  # its own process is alive: nothing moves
        assert os.path.isdir(kept_at) and not target.exists()
    else:
        with pytest.raises(OSError, match="simulated"):
            pruner.save_pretrained(target)
        assert _masks_bytes(target) == before
        assert not [e for e in os.listdir(tmp_path) if e.startswith(".px_hf-")]


def test_a_killed_save_is_repaired_by_the_next_one(pruner, tmp_path):
    target = tmp_path / "m"
    pruner.save_pretrained(target)
    before = _masks_bytes(target)
    pid = _dead_pid()
    # Killed between the two renames: the previous version is aside, the target is gone, a staging folder remains.
    os.replace(target, tmp_path / f".px_hf-old-{pid}-0a1b2c3d-m")
    (tmp_path / f".px_hf-save-{pid}-0a1b2c3e-m").mkdir()
    (tmp_path / f".px_hf-save-{pid}-0a1b2c3f-other").mkdir()  # another target's: left alone
    output_dir.recover_leftovers(str(target))
    assert _masks_bytes(target) == before
    assert sorted(os.listdir(tmp_path)) == [f".px_hf-save-{pid}-0a1b2c3f-other", "m"]
    (tmp_path / f".px_hf-save-{pid}-0a1b2c40-m").mkdir()
    pruner.save_pretrained(target)
    assert sorted(os.listdir(tmp_path)) == [f".px_hf-save-{pid}-0a1b2c3f-other", "m"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o077, 0o700)])
def test_saved_directories_follow_the_umask(pruner, tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        pruner.save_pretrained(tmp_path / "m")
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "m").st_mode & 0o777 == mode
    assert os.stat(tmp_path / "m" / "px_masks.safetensors").st_mode & 0o777 == mode & 0o666


def test_an_empty_directory_keeps_its_identity(pruner, tmp_path):
    (tmp_path / "e").mkdir()
    inode = os.stat(tmp_path / "e").st_ino
    pruner.save_pretrained(tmp_path / "e")
    assert os.stat(tmp_path / "e").st_ino == inode
    PXPruner.from_pretrained(str(tmp_path / "e"))

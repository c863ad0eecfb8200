"""The README's Python example runs as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    text = open(README).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    pruner = namespace["pruner"]
    assert pruner.summary().density == pytest.approx(0.1, abs=1e-5)
    assert pruner.summary().collapsed == []
    assert "total" in capsys.readouterr().out
    assert (tmp_path / "vit-px-90" / "px_masks.safetensors").exists()

"""The documentation is true: every Python block of the README and of docs/ runs as written (the README's sample
output of the main job is checked in test_cli.py, which runs the main job)."""

import os
import re
import subprocess
import sys

import pytest

from hub_server import HubServer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
DOCUMENTS = ["README.md", *(os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
                            if f.endswith(".md"))]


def _python_blocks(document: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", open(os.path.join(ROOT, document)).read(), flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if _python_blocks(d)])
def test_every_python_block_runs(document, tmp_path):
    """A document's blocks run in order in one interpreter, in an empty directory, against the local Hub
    stand-in of tests/hub_server.py (the real Hub is out of reach here)."""
    script = "\n".join(f"# --- {document}, block {i}\n{block}" for i, block in enumerate(_python_blocks(document)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    with HubServer() as hub:
        env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"), HF_TOKEN="secret",
                   HF_HUB_DISABLE_TELEMETRY="1", DISABLE_SAFETENSORS_CONVERSION="1")
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_readme_quick_start_prunes_and_saves(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_python_blocks("README.md")[0], "README.md", "exec"), namespace)
    pruner = namespace["pruner"]
    assert pruner.summary().density == pytest.approx(0.1, abs=1e-5)
    assert pruner.summary().collapsed == []
    assert "total" in capsys.readouterr().out
    assert (tmp_path / "vit-px-90" / "px_masks.safetensors").exists()


def test_usage_config_table_states_the_real_defaults():
    import ast
    import dataclasses

    from px_hf import PXConfig

    defaults = {f.name: f.default for f in dataclasses.fields(PXConfig)}
    text = open(os.path.join(ROOT, "docs", "usage.md")).read()
    table = text.split("## PXConfig", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)`(?: / `(\w+)`)? \| ([^|]+) \|", table, flags=re.M)
    assert {name for row in rows for name in row[:2] if name} == set(defaults), "a field is missing from the table"
    for first, second, shown in rows:
        for name in filter(None, (first, second)):
            assert ast.literal_eval(shown.strip().strip("`")) == defaults[name], name

"""The speed benchmark runs end to end on its quick settings."""

import json
import math
import os
import subprocess
import sys

import pytest

from px_hf.config import SCORERS

SPEED = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "speed.py")


@pytest.mark.slow
def test_speed_quick_reports_every_scorer(tmp_path):
    # One thread: the test checks the script, not the speed, and a busy machine slows multi-threaded runs most.
    subprocess.run([sys.executable, SPEED, "--quick", "--threads", "1", "--out", str(tmp_path)], check=True,
                   env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900, stdout=subprocess.DEVNULL)
    results = json.loads((tmp_path / "speed.json").read_text())
    assert sorted(row["scorer"] for row in results["scorers"]) == sorted(SCORERS)
    assert {row["examples"] for row in results["examples"]} == {8, 16}
    assert len(results["sizes"]) == 2
    for row in results["scorers"] + results["examples"] + results["sizes"]:
        for field in ("forward_s", "round_s", "round_over_forward", "params_mb", "activations_mb", "extra_mb",
                      "extra_over_budget"):
            assert math.isfinite(row[field]) and row[field] > 0, (row["model"], row["scorer"], field, row[field])
    assert "| grasp |" in (tmp_path / "speed.md").read_text()

"""Start-up cost: ``import px_hf`` and ``px-hf --help`` must not import the heavy libraries."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "accelerate", "datasets", "matplotlib", "evaluate")


def _imported_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(m for m in sys.modules if '.' not in m)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(out.splitlines()[-1].split())  # the last line; --help prints above it


def test_import_px_hf_is_light():
    assert _imported_after("import px_hf").isdisjoint(HEAVY)


def test_help_is_light():
    code = ("from px_hf.cli import main\n"
            "try:\n    main(['prune', '--help'])\nexcept SystemExit as stop:\n    assert stop.code == 0")
    assert _imported_after(code).isdisjoint(HEAVY)


def test_public_names_load_on_first_use():
    import px_hf

    assert px_hf.PXPruner.__name__ == "PXPruner"
    assert set(px_hf.__all__) <= set(dir(px_hf))
    namespace: dict = {}
    exec("from px_hf import *", namespace)
    assert callable(namespace["top_k_mask"]) and namespace["PruningSummary"].__name__ == "PruningSummary"

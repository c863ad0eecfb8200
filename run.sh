#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv (torch CPU first), installs px_hf, then runs
#   ./run.sh prune [px-hf prune options]   the main job (defaults: small ViT on digits, 98% sparsity, PX)
#   ./run.sh test  [pytest options]         the whole test suite, slow end-to-end tests included
#   ./run.sh bench                          every benchmark in benchmarks/, results in benchmarks/results and docs
#                                           (installs Debian's dataset-fashion-mnist when run as root)
set -euo pipefail
cd "$(dirname "$0")"

VENV="${PX_HF_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "[run.sh] creating $VENV" >&2
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.px_hf-install"
    local want
    want="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "[run.sh] installing torch==$TORCH_VERSION (CPU) and px_hf into $VENV" >&2
        # torch first: a bare torch requirement on a fresh environment would pull a CUDA build.
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
        echo "$want" > "$stamp"
    fi
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
    prune)
        setup
        exec "$VENV/bin/px-hf" prune "$@"
        ;;
    test)
        setup
        export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
        # pytest exits 5 when it collects nothing; that is a failure here, as any non-zero code.
        exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
        ;;
    bench)
        setup
        export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
        # The quality benchmark trains on Fashion-MNIST, which Debian ships as a package.
        if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${PX_HF_FASHION_MNIST:-}" ]; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                echo "[run.sh] installing dataset-fashion-mnist" >&2
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
            else
                echo "[run.sh] Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (as root), or set PX_HF_FASHION_MNIST to a folder of its idx files" >&2
                exit 2
            fi
        fi
        # Speed first, on an otherwise idle machine; each script prints its tables and saves them.
        for script in startup speed speed_types round_breakdown quality data_dependence distributed linearization_evidence; do
            start=$SECONDS
            "$VENV/bin/python" "benchmarks/$script.py"
            echo "[run.sh] benchmarks/$script.py took $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s" >&2
        done
        echo "[run.sh] all benchmarks took $(( SECONDS / 60 )) min" >&2
        ;;
    *)
        echo "usage: ./run.sh prune [options] | ./run.sh test [pytest options] | ./run.sh bench" >&2
        exit 2
        ;;
esac

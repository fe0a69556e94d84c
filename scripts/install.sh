#!/usr/bin/env bash
# Creates .venv and installs Secateur with its test tools. Safe to re-run: it skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.secateur-installed-$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# torch first, pinned: on these machines 2.13.0 resolves to the local CPU wheel. Anything that depends on
# torch installed before it would pull the registry's newest CUDA build (several GB).
pip install torch==2.13.0
# onnx2torch declares torchvision, which has no CPU build matching this torch and is never needed:
# the engine stubs it (workers/compression/onnx_import.py), so install onnx2torch without its dependencies.
pip install --no-deps onnx2torch==1.5.15
pip install -e '.[dev]'
rm -f .venv/.secateur-installed-*
touch "$stamp"

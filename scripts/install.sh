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
# torch and torchvision first, pinned together: on these machines both lie on disk (a CUDA build that trains
# on the CPU at the CPU build's speed). Anything that depends on torch installed before them would pull the
# registry's newest torch (several GB), and the registry's torchvision cannot import beside another torch.
pip install torch==2.14.1 torchvision==0.29.1
pip install -e '.[engine,service,client,dev]'
rm -f .venv/.secateur-installed-*
touch "$stamp"

#!/usr/bin/env bash
# Installs what the tests need, then runs lint, types and the whole suite (integration and e2e included).
# Integration tests use PostgreSQL on 127.0.0.1:5432 (db `test`), Redis on 127.0.0.1:6379, and a SeaweedFS
# S3 server the tests start themselves; with CI=true a missing service fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The dashboard's browser test drives Debian's Chromium headless; install it where we can (root + apt).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"

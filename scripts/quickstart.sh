#!/usr/bin/env bash
# The README's first command: installs Secateur, starts the embedded service (SQLite, local files, a worker;
# no servers needed) on 127.0.0.1:8000, compresses a real model through the HTTP API, checks the downloaded
# ONNX in onnxruntime against the report, and leaves the service running (Ctrl-C stops it).
#   Real job: ResNet-20 on the CIFAR-10 subset in ../shared/data (L1 filter pruning, ratio 0.5, 1 epoch);
#   without ../shared: LeNet-300-100 trained on scikit-learn's digits (magnitude pruning to 90%).
# QUICKSTART_EXIT=1 stops the service after the check instead of keeping it up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
port=${SECATEUR_PORT:-8000}
export SECATEUR_URL="http://127.0.0.1:$port"
out=out/quickstart
mkdir -p "$out"

.venv/bin/secateur serve --port "$port" --data-dir .secateur >"$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -fsS "$SECATEUR_URL/readyz" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$out/serve.log"; exit 1; }
  sleep 0.5
done
echo "service up at $SECATEUR_URL (dashboard: $SECATEUR_URL/ ; log: $out/serve.log)"

shared=../shared/data
if [ -f "$shared/cifar10_resnet20.safetensors" ] && [ -f "$shared/cifar10_subset.npz" ]; then
  model=$shared/cifar10_resnet20.safetensors dataset=$shared/cifar10_subset.npz
  config='{"method": "l1", "architecture": "resnet20", "target": {"pruning_ratio": 0.5}, "finetune": {"epochs": 1}}'
else
  .venv/bin/python scripts/make_sample.py "$out/sample" >/dev/null
  model=$out/sample/mlp.safetensors dataset=$out/sample/digits.npz
  config='{"method": "magnitude", "architecture": "mlp", "target": {"sparsity": 0.9}, "finetune": {"epochs": 3},
           "data": {"mean": [0.0], "std": [1.0], "augment": false}}'
fi
echo "$config" >"$out/config.json"

job=$(.venv/bin/secateur submit "$model" "$dataset" --config "$out/config.json")
echo "submitted job $job; following it (also live at $SECATEUR_URL/jobs/$job/events)"
.venv/bin/secateur status "$job" --wait
.venv/bin/secateur download "$job" -o "$out/model.onnx"
.venv/bin/secateur download "$job" --name report.json -o "$out/report.json"
.venv/bin/python scripts/verify_onnx.py "$out/model.onnx" "$dataset" --report "$out/report.json"

if [ "${QUICKSTART_EXIT:-0}" = 1 ]; then exit 0; fi
echo "job $job done; the service keeps running at $SECATEUR_URL — Ctrl-C to stop"
wait $server

#!/usr/bin/env bash
# GPU figures for docs/benchmarks.md, in one run on a machine with one CUDA device:
#   1. the service on the GPU, every batch policy side by side (default bundle, then a
#      random-weight base bundle): auto must pick mixed where mixed wins;
#   2. the masked mixed-language forward of xls-r-300m against the dense one.
# Usage: bash bench/gpu.sh [seconds per policy, default 60]   (from the repository root)
# Prints each benchmark's table; the last line of each is its JSON summary.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_POLICY="${1:-60}"
PY="${PYTHON:-.venv/bin/python}"
WORK="${TMPDIR:-/tmp}/lass-gpu-bench"
mkdir -p "$WORK"

"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: these are the GPU figures"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== service, default bundle, cuda (policies side by side)"
"$PY" -m lass bench service --device cuda --bundle model/default_bundle --languages 10 \
  --seconds "$SECONDS_PER_POLICY" --rounds 2 --concurrency 64 \
  --policies auto,mixed,language,none --workdir "$WORK/default" | tee "$WORK/service-default.txt"

echo "== service, random-weight base bundle (10 languages), cuda"
"$PY" -m lass bench service --device cuda --preset base --languages 10 \
  --seconds "$SECONDS_PER_POLICY" --rounds 2 --concurrency 64 \
  --policies auto,mixed,language,none --workdir "$WORK/base" | tee "$WORK/service-base.txt"

echo "== masked forward, xls-r-300m, cuda"
"$PY" -m lass bench masked-forward --device cuda --config xls-r-300m --repeats 10 \
  | tee "$WORK/masked-forward-xlsr300m.txt"

echo "== summary (RTFx per policy; auto's choice)"
for f in "$WORK"/service-*.txt; do
  "$PY" - "$f" <<'PY'
import json, sys
path = sys.argv[1]
summary = json.loads(open(path).read().strip().splitlines()[-1])
rtfx = {p: r["rtfx"] for p, r in summary["policies"].items()}
print(path, "rtfx", rtfx, "vs_best", summary["vs_best"], "auto chose", summary["auto_chose"])
PY
done

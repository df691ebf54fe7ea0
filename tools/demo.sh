#!/usr/bin/env bash
# The main job end to end on the default target: train ResNet-18 on Fashion-MNIST, profile it
# on ONNX Runtime CPU, prune it to half its measured latency, fine-tune, export, report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
OUT=${OUT:-runs/demo}
python3 -m edgeprune.cli measure resnet18 --target ort-cpu --input-size 32 --json | tee /tmp/edgeprune-baseline.json
BUDGET=$(python3 -c "import json; print(round(0.5 * json.load(open('/tmp/edgeprune-baseline.json'))['median_ms'], 4))")
python3 -m edgeprune.cli prune resnet18 --target ort-cpu --data fashion-mnist --input-size 32 \
  --train-samples 8000 --val-samples 1000 --test-samples 2000 --baseline-epochs 2 --epochs 2 \
  --budget-ms "$BUDGET" --out "$OUT"
cat "$OUT/report.md"

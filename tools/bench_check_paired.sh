#!/usr/bin/env bash
# Same-run regression checks (edgeprune check --reference): N checks of an unchanged model and N of
# a really slower one against the original, measured in turn in one run. Uses the models written by
# tools/bench_check.py (base.onnx, slow.onnx). Prints false alarms and detections.
#   bash tools/bench_check_paired.sh runs/bench_check 10
set -u
dir=${1:-runs/bench_check}; n=${2:-10}; fa=0; det=0; t0=$(date +%s)
for i in $(seq 1 "$n"); do
  python -m edgeprune.cli check "$dir/base.onnx" --reference "$dir/base.onnx" --budget-ms 1000 --json > "$dir/paired-unchanged-$i.json"; [ $? -ne 0 ] && fa=$((fa+1))
  python -m edgeprune.cli check "$dir/slow.onnx" --reference "$dir/base.onnx" --budget-ms 1000 --json > "$dir/paired-slowed-$i.json"; [ $? -eq 1 ] && det=$((det+1))
done
echo "checks: $n unchanged + $n slowed; false alarms: $fa/$n; detected: $det/$n; seconds: $(( $(date +%s) - t0 ))"

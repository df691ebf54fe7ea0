#!/usr/bin/env bash
# The one device call of a session lent the H200 (issue 12), the quick correctness tests
# first, each part bounded so the whole ends inside one 600 s call:
#   1. the tests marked gpu (CUDA events, kernel times per layer, AMP fine-tune, scoring on the GPU;
#      the .pt2 on CUDA is left to step 2: its compile outran the test's share twice in session 10)
#   2. tools/gpu_check.py: ResNet-18 224 px on the torch CUDA target, batch 1 and 32 (<= $CHECK_S s)
#   3. the user's path: `edgeprune prune resnet18 --target cuda-gpu --device cuda` (224 px) at 0.6 of the
#      measured latency, with a short baseline and fine-tune on Fashion-MNIST
# Prepared here: wheels the device image lacks in .whl/ (pydantic, pydantic-core, annotated-types,
# typing-inspection, typing-extensions, torch-pruning; README of the device tool says how) and
# Fashion-MNIST in data/fashion-mnist. Run (carry .whl), from the repo root:
#   bash tools/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
CHECK_S=${CHECK_S:-330}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=$PWD:/tmp/site
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw --format=csv > "$OUT/nvidia-smi.csv" 2>&1
nproc >> "$OUT/nvidia-smi.csv"

echo "== 1. tests marked gpu ($(date +%T))"
timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu -k 'not aoti' tests/test_distributed.py \
    tests/test_tensorrt.py tests/test_torch_target.py tests/test_accuracy_search.py -rs > "$OUT/pytest_gpu.log" 2>&1; tail -25 "$OUT/pytest_gpu.log"

echo "== 2. gpu_check ($(date +%T))"
timeout $((CHECK_S + 20)) python3 tools/gpu_check.py --device cuda --size 224 --data-root data/fashion-mnist \
    --cpu-reference tools/gpu_check_cpu_reference.json --budget-s "$CHECK_S" --out "$OUT/gpu_check.json" \
    2>&1 | grep -v -E "^USDT|profiler_st" | tee "$OUT/gpu_check.log" | cut -c1-400

echo "== 3. edgeprune prune on cuda-gpu ($(date +%T))"
base=$(timeout 25 python3 -m edgeprune measure resnet18 --target cuda-gpu --input-size 224 --json \
       | python3 -c "import json,sys; print(json.load(sys.stdin)['median_ms'])")
[ -n "$base" ] || { echo "measure failed: no budget, the prune is not run"; exit 4; }
budget=$(python3 -c "print(round(0.6 * $base, 4))")
echo "unpruned ${base} ms, budget ${budget} ms"
EDGEPRUNE_DEBUG=1 timeout 150 python3 -m edgeprune prune resnet18 --target cuda-gpu --input-size 224 --budget-ms "$budget" \
    --data fashion-mnist --data-root data/fashion-mnist --train-samples 2048 --val-samples 256 \
    --test-samples 512 --baseline-epochs 2 --epochs 1 --device cuda --levels 3 --runs 3 --calibrate 8 \
    --validate 2 --candidates 8 --refine 4 --profiles-dir /tmp/prof --out /tmp/r18cuda > "$OUT/prune_cli.log" 2>&1
echo "prune exit $?" | tee -a "$OUT/prune_cli.log"
tail -30 "$OUT/prune_cli.log"
cp /tmp/r18cuda/report.json "$OUT/prune_report.json" 2>/dev/null
echo "== done ($(date +%T))"

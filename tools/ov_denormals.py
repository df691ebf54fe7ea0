"""Paired check: OpenVINO CPU default against CPU_DENORMALS_OPTIMIZATION (flush to zero), per model.

    python tools/ov_denormals.py 'runs/sbs-r18-ov/onnx/*.onnx'

Each model compiled twice (one thread, latency hint, FP32), then 30 rounds of one 10-inference
block of each, the order swapped every round, pinned to CPU 1; prints the medians and the median
of the per-round ratios. Run it alone on the machine (BENCHMARKS.md, session 6)."""
import glob
import os
import statistics
import sys
import time

import numpy as np
import openvino as ov

os.sched_setaffinity(0, {1})
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
def comp(f, den):
    c = ov.Core()
    props = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": False,
             "INFERENCE_PRECISION_HINT": "f32"}
    if den: props["CPU_DENORMALS_OPTIMIZATION"] = True
    c.set_property("CPU", props)
    return c.compile_model(f, "CPU").create_infer_request()
for f in sorted(glob.glob(sys.argv[1])):
    reqs = [comp(f, False), comp(f, True)]
    t = [[], []]
    for r in range(30):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            req = reqs[i]
            for _ in range(3): req.infer({0: x})
            s = time.perf_counter()
            for _ in range(10): req.infer({0: x})
            t[i].append((time.perf_counter() - s) / 10 * 1e3)
    ratios = [a / b for a, b in zip(t[0], t[1])]
    print(f"{os.path.basename(f):<28} default {statistics.median(t[0]):.3f} ms  ftz {statistics.median(t[1]):.3f} ms  "
          f"paired ratio {statistics.median(ratios):.2f}", flush=True)

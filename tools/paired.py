"""Paired same-run latency ratios of ONNX files on a target: B / A per pair, each read N times.

Absolute latencies on a shared host move by 2x with the neighbours (BENCHMARKS.md); a ratio of
two models in alternating blocks of one run does not. This is how models of different runs or
sessions are compared.

    python tools/paired.py --target ort-cpu --out pairs.json A.onnx:B.onnx [C.onnx:D.onnx ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeprune.runtime.cpus import passive_openmp

passive_openmp()  # before a runtime loads

from edgeprune.artifacts.onnxio import atomic_write  # noqa: E402
from edgeprune.pruning.baselines import paired_ratio  # noqa: E402
from edgeprune.runtime import get_target  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pairs", nargs="+", help="A.onnx:B.onnx (the ratio is B / A)")
    ap.add_argument("--target", default="ort-cpu")
    ap.add_argument("--reads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    target, out = get_target(a.target), {}
    for pair in a.pairs:
        ref, cand = (Path(p) for p in pair.split(":", 1))
        reads = [paired_ratio(target, ref, cand) for _ in range(a.reads)]
        out[pair] = [{"ratio": round(r, 4), "ci": [round(c, 4) for c in ci]} for r, ci in reads]
        print(pair, " ".join(f"{x['ratio']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]" for x in out[pair]), flush=True)
    if a.out:
        with atomic_write(a.out) as tmp:
            tmp.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

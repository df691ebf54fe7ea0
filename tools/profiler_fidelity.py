"""How well ONNX Runtime's per-node profile sums track end-to-end latency, by model and input
size: random pruned configurations, each profiled (sum of node times) and measured end to end
(interleaved, pinned, least-disturbed window). A stable ratio means an in-context table built
from the profiler can be calibrated; a scattered one means it cannot reach ±10%.

    python tools/profiler_fidelity.py resnet18 32 64 96 128 --configs 12
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgeprune.runtime.cpus import passive_openmp

passive_openmp()  # before torch loads

import numpy as np  # noqa: E402
import torch

from edgeprune.artifacts.onnxio import export_onnx
from edgeprune.latency.profile import E2E_TIMING, ProfileConfig, random_widths
from edgeprune.pruning.groups import analyse
from edgeprune.pruning.prune import prune_to_widths
from edgeprune.runtime import get_target
from edgeprune.training.models import build_model


def fidelity(model_name: str, size: int, configs: int, target: str, seed: int = 7) -> dict:
    model = build_model(model_name, num_classes=10).eval()
    shape = (1, 3, size, size)
    structure, rng, t = analyse(model, shape), np.random.default_rng(seed), get_target(target)
    with tempfile.TemporaryDirectory() as tmp:
        paths, sums = [], []
        for k in range(configs):
            pruned = prune_to_widths(model, shape, random_widths(structure, ProfileConfig(), rng))
            paths.append(export_onnx(pruned, shape, Path(tmp) / f"{k}.onnx"))
            sums.append(sum(n.ms for n in t.layer_times(paths[-1], runs=10)))
        e2e = np.array([lat.median_ms for lat in t.measure_many(paths, E2E_TIMING)])
    ratio = e2e / np.array(sums)
    return {"model": model_name, "size": size, "e2e_min_ms": e2e.min(), "e2e_max_ms": e2e.max(),
            "ratio_mean": ratio.mean(), "ratio_std": ratio.std(), "ratio_min": ratio.min(), "ratio_max": ratio.max()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("sizes", nargs="+", type=int)
    p.add_argument("--configs", type=int, default=12)
    p.add_argument("--target", default="ort-cpu")
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| model | input | end-to-end ms | e2e / profiler sum: mean | std | min | max |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        r = fidelity(args.model, size, args.configs, args.target)
        print(f"| {r['model']} | {size} | {r['e2e_min_ms']:.3f}–{r['e2e_max_ms']:.3f} | {r['ratio_mean']:.3f} | "
              f"{r['ratio_std']:.3f} | {r['ratio_min']:.2f} | {r['ratio_max']:.2f} |", flush=True)


if __name__ == "__main__":
    main()

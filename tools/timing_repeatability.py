"""How repeatable one latency measurement is on this machine: random pruned configurations,
each measured twice with edgeprune's protocol (pinned, interleaved, 5 windows, least-disturbed
window) and twice naively (one unpinned window per model, models one after another).

    python tools/timing_repeatability.py resnet18 64 --configs 12
"""
from __future__ import annotations

import argparse
import statistics
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
from edgeprune.runtime.spec import TimingSpec
from edgeprune.runtime.timing import _window
from edgeprune.training.models import build_model

NAIVE = TimingSpec(warmup_s=0.05, min_runs=10, min_time_s=0.2, max_time_s=5, windows=1)


def naive(target, paths) -> list[float]:
    out = []
    for p in paths:
        c = target.compile(p)
        c.run_once()
        out.append(statistics.median(_window(c.run_once, NAIVE)))
    return out


def spread(a, b) -> str:
    d = np.abs(np.array(a) - np.array(b)) / np.array(b)
    return f"{np.median(d):.1%} | {np.quantile(d, 0.9):.1%} | {d.max():.1%}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("size", type=int)
    p.add_argument("--configs", type=int, default=12)
    p.add_argument("--target", default="ort-cpu")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, shape = build_model(args.model, num_classes=10).eval(), (1, 3, args.size, args.size)
    structure, rng, target = analyse(model, shape), np.random.default_rng(3), get_target(args.target)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [export_onnx(prune_to_widths(model, shape, random_widths(structure, ProfileConfig(), rng)),
                             shape, Path(tmp) / f"{k}.onnx") for k in range(args.configs)]
        proto = [[lat.median_ms for lat in target.measure_many(paths, E2E_TIMING)] for _ in range(2)]
        plain = [naive(target, paths) for _ in range(2)]
    print("| method | median repeat difference | p90 | max |")
    print("|---|---|---|---|")
    print(f"| naive (one unpinned window, sequential) | {spread(*plain)} |")
    print(f"| edgeprune protocol | {spread(*proto)} |")


if __name__ == "__main__":
    main()

"""The prepared GPU check of issue 12: ResNet-18 on the torch CUDA target, end to end.

For each batch (1 and 32): profile a latency table on the target (edgeprune's own profiler,
``latency.profile.build_table``), measure the unpruned model, then for budgets of 50% and 35%
of that measured latency search on the table and prune in the closed loop (``search.loop.fit_budget``,
no fine-tune), and measure the pick against the unpruned model in one alternating run (paired
speed-up). Then, optionally, the same pair as AOTInductor packages (engine aoti), and one
distilled fine-tune epoch of the 50% pick on real Fashion-MNIST images at the same size,
compared per image with a CPU figure from ``--cpu-reference``. Every stage is bounded by a
SIGALRM deadline; a stage that fails or runs over is recorded as such and the next one runs.
Results go to ``--out`` (JSON, rewritten atomically after every stage) and stdout.

On the H200 (torch 2.11 + CUDA, nothing downloadable), about 6-8 minutes. Fashion-MNIST goes
with the working tree (31 MB, untracked and not ignored, so the device run copies it):
``mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/``.

    PYTHONPATH=. python tools/gpu_check.py --device cuda --size 224 --data-root data/fashion-mnist \
        --cpu-reference tools/gpu_check_cpu_reference.json --out $OUT/gpu_check.json

CPU rehearsal (this machine, ~3 minutes):

    PYTHONPATH=. nice -n 19 python tools/gpu_check.py --device cpu --size 64 --quick --out /tmp/gpu_check.json

The CPU fine-tune figure at 224 px (one epoch over --train-images, per image):

    PYTHONPATH=. nice -n 19 python tools/gpu_check.py --device cpu --size 224 --only finetune \
        --train-images 64 --out tools/gpu_check_cpu_reference.json
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

from edgeprune.artifacts.onnxio import atomic_write, export_onnx
from edgeprune.errors import BudgetNotMet, InfeasibleBudget
from edgeprune.latency.profile import ProfileConfig, build_table
from edgeprune.pruning.importance import importances
from edgeprune.runtime import get_target
from edgeprune.runtime.spec import TargetSpec, TimingSpec
from edgeprune.search.knapsack import SearchConfig
from edgeprune.search.loop import LoopConfig, fit_budget
from edgeprune.training.models import build_model

FRACTIONS = (0.5, 0.35)
QUICK_TIMING = TimingSpec(warmup_s=0.1, min_runs=5, min_time_s=0.1, windows=2)
FP_KEYS = ("runtime_version", "device", "engine", "batch", "gpu_name", "gpu_driver", "cuda_version",
           "cudnn_version", "gpu_clocks_mhz", "host_cpu")


class StageTimeout(Exception):
    pass


@contextmanager
def deadline(seconds: float):
    """Raise StageTimeout in this (main) thread after ``seconds``."""
    def on_alarm(*_):
        raise StageTimeout(f"ran past its {seconds:.0f} s bound")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def target_for(args, batch: int, engine: str | None = None):
    cuda = args.device.startswith("cuda")
    spec = TargetSpec(name=f"torch-{args.device}-b{batch}", runtime="torch", device=args.device, batch=batch,
                      input_size=args.size, options={"engine": engine or ("cudagraph" if cuda else "eager")},
                      **({"timing": QUICK_TIMING} if args.quick else {}))
    return get_target(spec)


def latency_study(args, batch: int, work: Path, keep: dict) -> dict:
    """Profile, measure the unpruned model, fit each budget, pair each pick with the unpruned model."""
    target = target_for(args, batch)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=1000).eval()
    shape = (batch, 3, args.size, args.size)
    cfg = (ProfileConfig(levels=3, runs=3, calibrate=3, validate=2, progress=False) if args.quick
           else ProfileConfig(levels=3, runs=5, calibrate=12, validate=5, progress=False))
    t0 = time.time()
    table = build_table(model, target, shape, work / f"resnet18-b{batch}.json", "resnet18", cfg)
    out = {"fingerprint": {k: v for k, v in target.fingerprint().items() if k in FP_KEYS},
           "profile_s": round(time.time() - t0, 1), "table_error": _error(table.error)}
    base_onnx = export_onnx(model, shape, work / f"base-b{batch}.onnx")
    base = target.measure(base_onnx)
    out["unpruned"] = {"median_ms": round(base.median_ms, 4), "p90_ms": round(base.p90_ms, 4),
                       "predicted_ms": round(table.full_ms, 4)}
    scores = importances(model, shape)
    keep[batch] = {"model": model, "base_onnx": base_onnx, "shape": shape}
    out["picks"] = {}
    for frac in FRACTIONS:
        budget = frac * base.median_ms
        try:
            fit = fit_budget(model, shape, table, scores, target, budget, SearchConfig(), LoopConfig(max_rounds=args.rounds))
        except (BudgetNotMet, InfeasibleBudget) as e:
            out["picks"][str(frac)] = {"budget_ms": round(budget, 4), "error": str(e)}
            continue
        onnx = export_onnx(fit.model, shape, work / f"pick{frac}-b{batch}.onnx")
        keep[batch][frac] = (fit.model, onnx)
        alt = target.measure_alternating(base_onnx, onnx)
        ratios = [math.exp(r) for w in alt.log_ratios for r in w]
        first = fit.rounds[0]
        out["picks"][str(frac)] = {
            "budget_ms": round(budget, 4), "predicted_ms": round(fit.search.predicted_ms, 4),
            "measured_ms": round(fit.latency.median_ms, 4), "within_budget": fit.latency.median_ms <= budget,
            "measured_over_budget": round(fit.latency.median_ms / budget, 4),
            "table_error_at_pick_pct": round(100 * (fit.search.predicted_ms / fit.latency.median_ms - 1), 2),
            "table_error_first_round_pct": round(100 * (first.predicted_ms / first.measured_ms - 1), 2),
            "paired_speedup": round(1 / statistics.median(ratios), 4),
            "paired_ms": [round(alt.latencies[0].median_ms, 4), round(alt.latencies[1].median_ms, 4)],
            "rounds": [r.to_dict() for r in fit.rounds], "widths": fit.widths}
    return out


def aoti_pair(args, keep: dict) -> dict:
    """The unpruned model and its 50% pick as AOTInductor packages, alternating, at the first
    batch that has a 50% pick (on the H200 batch 1 is launch-bound and has none; batch 32 does)."""
    batch = next((b for b in sorted(keep) if 0.5 in keep[b]), None)
    if batch is None:
        return {"skipped": "no 50% pick at any batch"}
    target = target_for(args, batch, "aoti")
    t0 = time.time()
    target.compile(keep[batch]["base_onnx"])
    compile_s = time.time() - t0
    alt = target.measure_alternating(keep[batch]["base_onnx"], keep[batch][0.5][1])
    ratios = [math.exp(r) for w in alt.log_ratios for r in w]
    return {"batch": batch, "compile_s_unpruned": round(compile_s, 1), "unpruned_ms": round(alt.latencies[0].median_ms, 4),
            "pick_50_ms": round(alt.latencies[1].median_ms, 4), "paired_speedup": round(1 / statistics.median(ratios), 4)}


def finetune_epoch(args, keep: dict) -> dict:
    """One distilled epoch of ResNet-18 (the unpruned model as student and as teacher, so a CPU
    figure from ``--only finetune`` times the same work) on Fashion-MNIST at --size."""
    from edgeprune.training.data import DataConfig, load_data
    from edgeprune.training.finetune import FinetuneConfig, train
    data = load_data(DataConfig(name="fashion-mnist", root=args.data_root, input_size=args.size,
                                train_samples=args.train_images, val_samples=args.batch_size, test_samples=args.batch_size))
    torch.manual_seed(0)
    teacher = keep.get(1, {}).get("model") or build_model("resnet18", num_classes=1000).eval()
    student = copy.deepcopy(teacher)
    teacher, student = teacher.to(args.device), student.to(args.device)
    cfg = FinetuneConfig(epochs=1, batch_size=args.batch_size, threads=torch.get_num_threads(),
                         bn_recalibration_batches=1, progress=False)
    t0 = time.time()
    result = train(student, data, cfg, teacher=teacher)
    _sync(args.device)
    epoch_s = result.history[0].seconds
    out = {"device": args.device, "size": args.size, "train_images": len(data.train), "batch_size": args.batch_size,
           "epoch_s": round(epoch_s, 2), "total_s": round(time.time() - t0, 2),
           "s_per_image": epoch_s / len(data.train), "threads": torch.get_num_threads()}
    if args.cpu_reference:
        ref = json.loads(Path(args.cpu_reference).read_text()).get("finetune", {})
        if ref.get("s_per_image") and ref.get("size") == args.size:
            out["cpu_s_per_image"] = ref["s_per_image"]
            out["speedup_vs_cpu_per_image"] = round(ref["s_per_image"] / out["s_per_image"], 1)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _error(err) -> dict:
    return {"n": err.n, "within_10pct": err.within_10pct, "rmspe": err.rmspe, "max_abs_pct": err.max_abs_pct}


def run_stage(report: dict, name: str, seconds: float, fn, out: Path | None) -> None:
    t0 = time.time()
    try:
        with deadline(seconds):
            report[name] = fn()
    except Exception as e:  # recorded, its traceback to stderr; the next stage still runs
        report[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        traceback.print_exc()
    report["stage_s"][name] = round(time.time() - t0, 1)
    print(json.dumps({name: report[name]}, default=str), flush=True)
    if out is not None:
        with atomic_write(out) as tmp:
            tmp.write_text(json.dumps(report, indent=1, default=str))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", default=None, help="comma-separated (default 1,32; --quick: 1,2)")
    p.add_argument("--quick", action="store_true", help="small profile and short timing windows (CPU rehearsal)")
    p.add_argument("--rounds", type=int, default=None, help="closed-loop rounds per budget (default 3; --quick: 2)")
    p.add_argument("--aoti", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the 50%% pair as AOTInductor packages (default: on for cuda)")
    p.add_argument("--only", choices=("latency", "finetune"), default=None)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST idx files (default: the Debian package's)")
    p.add_argument("--train-images", type=int, default=None, help="default 2048 (--quick or cpu: 64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cpu-reference", default=None, help="JSON of a CPU run with a finetune figure at --size")
    p.add_argument("--budget-s", type=float, default=480, help="the whole run's bound; stages get shares of it")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    cuda = args.device.startswith("cuda")
    batches = [int(b) for b in (args.batches or ("1,2" if args.quick else "1,32")).split(",")]
    args.aoti = cuda if args.aoti is None else args.aoti
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.train_images = args.train_images or (64 if args.quick or not cuda else 2048)
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__,
                    "cuda": torch.version.cuda, "host_cores": os.cpu_count(),
                    "host_load_1min_at_start": round(os.getloadavg()[0], 2), "stage_s": {}}
    t_end = time.time() + args.budget_s
    share = {"latency": 0.3, "aoti": 0.2, "finetune": 0.15}  # of the whole bound, per stage
    keep: dict = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        if args.only in (None, "latency"):
            for b in batches:
                run_stage(report, f"latency_b{b}", min(share["latency"] * args.budget_s, t_end - time.time()),
                          lambda b=b: latency_study(args, b, work, keep), args.out)
            if args.aoti:
                # what the latency stages left, less the fine-tune's share (compiling takes what it gets)
                left = t_end - time.time() - (share["finetune"] * args.budget_s if args.only is None else 0)
                run_stage(report, "aoti", max(min(share["aoti"] * args.budget_s, t_end - time.time()), left),
                          lambda: aoti_pair(args, keep), args.out)
        if args.only in (None, "finetune"):
            bound = t_end - time.time() if args.only == "finetune" else share["finetune"] * args.budget_s
            run_stage(report, "finetune", min(bound, t_end - time.time()),
                      lambda: finetune_epoch(args, keep), args.out)
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    print(f"gpu_check: {len(report['stage_s'])} stages in {sum(report['stage_s'].values()):.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

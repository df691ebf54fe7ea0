"""Regression-check benchmark (issue 4): false alarms on an unchanged model, detection of a real
planted 10% slowdown, and the time one ``edgeprune check`` takes, through the real command line.

    python tools/bench_check.py --repeats 20 --out runs/bench_check4        # the benchmark
    python tools/bench_check.py --repeats 20 --slowdown-kind branch --out runs/bench_check3
    python tools/bench_check.py --repeats 20 --mode absolute --out runs/bench_check_abs
    python tools/bench_check.py --repeats 2 --slow-setting 6 --out /tmp/bc   # a quick smoke run

The model is ResNet-18 (random init) at 32 px exported by edgeprune. ``--slowdown-kind wider``
(the default): the unchanged model has every channel group at 75% of its channels (multiples of
16), the slowed one 16 more channels in each of its S widest groups (round robin): a model
change made of the same kind of work, so its ratio to the base holds however busy the host is.
``branch``: the full network plus an extra branch on the input (two 3x3 convolutions with C
channels, pooled and added to the logits with a small weight, so no runtime can drop it); that ratio shrinks when the host's memory is contended,
since the branch is compute while ResNet-18 at 32 px is weight traffic. The knob (S or C) is
tuned by bisection for an interleaved ratio of about 1.10, and the ratio actually reached
is reported. Each baseline is recorded with ``check --update`` (which keeps a frozen copy of the
model); then unchanged and slowed checks alternate (order shuffled per pair, seeded). ``--mode
paired`` (the default, what `check` does) runs the frozen copy beside the checked model;
``--mode absolute`` judges against the baseline's recorded numbers (``check --absolute``).
Checks pass ``--budget-ms 1000`` so only the regression statistic decides. False alarms are
unchanged checks that exit 1 (a regression, or "inconclusive": too busy to confirm); detections
are slowed checks that report a regression. Both are also given without the confirmation step
(the first measurement's own verdict, from the same runs).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgeprune.runtime.cpus import passive_openmp

passive_openmp()  # before torch loads

import numpy as np  # noqa: E402
import torch
import torch.nn as nn

from edgeprune.artifacts.export import export_artifact
from edgeprune.checks.check import check_timing
from edgeprune.runtime import get_target
from edgeprune.training.models import build_model


class Slowed(nn.Module):
    """``model`` plus real extra work on the input whose result reaches the output."""

    def __init__(self, model: nn.Module, channels: int, classes: int = 10):
        super().__init__()
        self.model = model
        self.extra = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))

    def forward(self, x):
        return self.model(x) + 1e-3 * self.extra(x)


def interleaved_ratio(target, base: Path, slow: Path, rounds: int = 1) -> float:
    """Median over ``rounds`` of the slowed/base latency ratio, measured in alternating blocks."""
    timing = check_timing(target.spec.timing)
    ratios = [float(np.exp(np.median(np.concatenate(target.measure_alternating(base, slow, timing).log_ratios))))
              for _ in range(rounds)]
    return float(statistics.median(ratios))


def make_models(args, out: Path):
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10).eval()
    shape = (1, 3, args.input_size, args.input_size)
    meta = {"model": args.model, "target": args.target}
    target = get_target(args.target)
    if args.slowdown_kind == "wider":
        from edgeprune.pruning.groups import analyse
        from edgeprune.pruning.prune import prune_to_widths
        full = analyse(model, shape).full_widths()
        start = {g: max(16, 16 * round(c * args.base_keep / 16)) for g, c in full.items()}
        order = sorted(full, key=lambda g: (-full[g], g))  # widest groups first, round robin

        def widened(steps: int) -> dict[str, int]:  # `steps` times +16 channels, round robin
            widths = dict(start)
            for k in range(int(steps)):
                g = order[k % len(order)]
                widths[g] = min(full[g], widths[g] + 16)
            return widths

        def at(steps: int, path: Path) -> Path:  # multiples of 16: no alignment cliffs
            return export_artifact(prune_to_widths(model, shape, widened(steps)), "onnx", path, shape, meta).path

        base = at(0, out / "base.onnx")
        lo, hi, knob = 0, 4 * len(order), lambda v: at(v, out / "slow.onnx")
    else:
        base = export_artifact(model, "onnx", out / "base.onnx", shape, meta).path
        lo, hi = 1, 128

        def knob(channels) -> Path:
            torch.manual_seed(1)
            return export_artifact(Slowed(model, int(channels)).eval(), "onnx", out / "slow.onnx", shape, meta).path

    if args.slow_setting:
        setting = args.slow_setting
    else:  # bisection on the knob for the wanted ratio
        for _ in range(args.tune_steps):
            mid = (lo + hi) // 2
            r = interleaved_ratio(target, base, knob(mid))
            print(f"tuning: {args.slowdown_kind} {mid:g} -> ratio {r:.3f}", flush=True)
            lo, hi = (mid, hi) if r < 1 + args.slowdown else (lo, mid)
            if hi - lo <= 1:
                break
        setting = hi if args.slowdown_kind == "wider" else (lo + hi) // 2
    slow = knob(setting)
    ratio = interleaved_ratio(target, base, slow, rounds=args.ratio_rounds)
    print(f"slowed model: {args.slowdown_kind} {setting:g}, interleaved ratio {ratio:.3f}", flush=True)
    return base, slow, setting, ratio


def as_deployed(artifact: Path, out: Path) -> Path:
    """``artifact`` copied to the one path the checks read (``OUT/artifact.onnx``): a baseline
    belongs to an artifact's path (``checks.baseline.check_same_artifact``), and the slowed model
    is a new version of the same artifact, as a user's next build would be."""
    from edgeprune.artifacts.onnxio import atomic_write
    path = Path(out) / "artifact.onnx"
    with atomic_write(path) as tmp:
        shutil.copyfile(artifact, tmp)
    return path


def run_check(args, artifact: Path, baseline: Path, update: bool = False) -> dict:
    artifact = as_deployed(artifact, Path(args.out))
    cmd = [sys.executable, "-m", "edgeprune.cli", "check", str(artifact), "--target", args.target,
           "--baseline", str(baseline), "--budget-ms", "1000", "--tolerance", str(args.tolerance), "--json",
           *(["--absolute"] if args.mode == "absolute" and not update else [])]
    t0 = time.perf_counter()
    r = subprocess.run(cmd + (["--update"] if update else []), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode == 2 or not r.stdout.strip():
        raise SystemExit(f"check failed to run: {r.stderr.strip()}")
    c = json.loads(r.stdout)["checks"][0]
    first = c["attempts"][0].get("comparison") or {}
    return {"exit_code": r.returncode, "wall_s": round(seconds, 2), "check_s": c["seconds"],
            "ratio": (c["comparison"] or {}).get("ratio"), "ci": (c["comparison"] or {}).get("ci"),
            "first_ratio": first.get("ratio"), "first_flagged": bool(first.get("regression")),
            "regression": c["regression"], "status": c["status"], "attempts": len(c["attempts"]),
            "max_cpu_wait": max((a["cpu_wait"] or 0) for a in c["attempts"]), "latency_ms": c["latency_ms"],
            "method": (c["comparison"] or {}).get("method"), "drift": (c.get("drift") or {}).get("ratio")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20, help="checks of each model (unchanged, slowed)")
    p.add_argument("--baselines", type=int, default=2, help="baselines recorded, each used for a block of checks")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--target", default="ort-cpu")
    p.add_argument("--mode", choices=["paired", "absolute"], default="paired",
                   help="paired: checks run the baseline's frozen copy beside the model (the default); "
                        "absolute: checks judge against the baseline's recorded numbers (--absolute)")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--slowdown", type=float, default=0.10, help="planted slowdown to tune for")
    p.add_argument("--slowdown-kind", choices=["wider", "branch"], default="wider",
                   help="wider: the base is the model with every group at --base-keep of its channels, "
                        "the slowed one has more channels everywhere (the same kind of work, so the "
                        "ratio holds however busy the host is); branch: the full model plus an extra "
                        "convolution branch on the input")
    p.add_argument("--base-keep", type=float, default=0.75, help="wider: the base model's share of channels")
    p.add_argument("--slow-setting", type=int, help="skip tuning: wider steps S, or branch channels C")
    p.add_argument("--tune-steps", type=int, default=7)
    p.add_argument("--ratio-rounds", type=int, default=3, help="interleaved measurements of the final ratio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_check")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base, slow, setting, planted = make_models(args, out)
    rng = np.random.default_rng(args.seed)
    rows = []
    blocks = np.array_split(np.arange(args.repeats), max(1, min(args.baselines, args.repeats)))
    for b, block in enumerate(blocks):
        baseline = out / f"baseline-{b}.json"
        upd = run_check(args, base, baseline, update=True)
        print(f"baseline {b}: {upd['latency_ms']:.4f} ms, {upd['wall_s']} s", flush=True)
        for i in block:
            order = ["unchanged", "slowed"] if rng.random() < 0.5 else ["slowed", "unchanged"]
            for kind in order:
                row = {"kind": kind, "repeat": int(i), "baseline": b,
                       **run_check(args, base if kind == "unchanged" else slow, baseline)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    (out / "checks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarise(rows, args, setting, planted)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))


def summarise(rows: list[dict], args, setting: float, planted: float) -> dict:
    same = [r for r in rows if r["kind"] == "unchanged"]
    slow = [r for r in rows if r["kind"] == "slowed"]
    return {
        "model": args.model, "input_size": args.input_size, "target": args.target, "tolerance": args.tolerance,
        "mode": args.mode, "drift_range": _range([r["drift"] for r in rows if r["drift"]]),
        "repeats": args.repeats, "baselines": args.baselines, "slowdown_kind": args.slowdown_kind,
        "slow_setting": setting,
        "planted_ratio_interleaved": round(planted, 4),
        "planted_ratio_median_check": round(statistics.median(r["ratio"] for r in slow), 4) if slow else None,
        "false_alarm_rate": sum(r["exit_code"] == 1 for r in same) / len(same),
        "false_alarm_rate_without_confirm": sum(r["first_flagged"] for r in same) / len(same),
        "inconclusive_unchanged": sum(r["status"] == "inconclusive" for r in same),
        "inconclusive_slowed": sum(r["status"] == "inconclusive" for r in slow),
        "busy_checks": sum(r["max_cpu_wait"] > 0.05 for r in rows),
        "detection_rate": sum(r["regression"] for r in slow) / len(slow),
        "detection_rate_without_confirm": sum(r["first_flagged"] for r in slow) / len(slow),
        "unchanged_ratio_range": [min(r["ratio"] for r in same), max(r["ratio"] for r in same)],
        "check_wall_s_median": statistics.median(r["wall_s"] for r in rows),
        "check_wall_s_unchanged_median": statistics.median(r["wall_s"] for r in same),
        "check_wall_s_slowed_median": statistics.median(r["wall_s"] for r in slow),
        "check_measure_s_median": statistics.median(r["check_s"] for r in rows),
    }


def _range(values: list[float]) -> list[float] | None:
    return [min(values), max(values)] if values else None


def markdown(s: dict) -> str:
    return "\n".join([
        "| mode | checks | false alarms (goal ≤5%) | without confirm | planted slowdown (interleaved / median check) | "
        "detected (goal ≥95%) | without confirm | one check: wall s (unchanged / slowed) | of which measuring s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {s['mode']} | {s['repeats']} + {s['repeats']} | {s['false_alarm_rate']:.0%} | {s['false_alarm_rate_without_confirm']:.0%} | "
        f"{s['planted_ratio_interleaved']:.3f} / {s['planted_ratio_median_check']:.3f} | {s['detection_rate']:.0%} | "
        f"{s['detection_rate_without_confirm']:.0%} | {s['check_wall_s_unchanged_median']:.1f} / "
        f"{s['check_wall_s_slowed_median']:.1f} | {s['check_measure_s_median']:.1f} |",
        "", f"unchanged model's ratios ranged {s['unchanged_ratio_range'][0]:.3f}–{s['unchanged_ratio_range'][1]:.3f}; "
        f"tolerance {s['tolerance']:.0%}, {s['baselines']} baseline(s), slowed model: {s['slowdown_kind']} {s['slow_setting']:g}; "
        f"inconclusive (machine busy): {s['inconclusive_unchanged']} unchanged, {s['inconclusive_slowed']} slowed; "
        f"checks with a measurement waiting >5% for the CPU: {s['busy_checks']}"
        + (f"; the baseline's own artifact read {s['drift_range'][0]:.3f}–{s['drift_range'][1]:.3f}× its recorded "
           f"latency (host drift)." if s.get("drift_range") else "."), ""])


if __name__ == "__main__":
    main()

"""INT8 after pruning (issue 3): FP32 / FP16 / INT8 latency and accuracy of pruned models.

Prunes each model on Fashion-MNIST to a fraction of its measured latency on an OpenVINO target
(or takes existing prune run directories), then runs `edgeprune quantize` on each: the FP32 IR,
the FP16 IR and the NNCF INT8 IR are measured interleaved in one run and evaluated on the same
test images. Writes OUT/precisions-summary.json and OUT/precisions-summary.md.

    python tools/bench_precisions.py --out runs/bench-precisions            # the full benchmark
    python tools/bench_precisions.py --runs runs/bench/resnet18-50 --out runs/bp  # given runs
    python tools/bench_precisions.py --models tiny_resnet --train-samples 600 --val-samples 200 \\
        --test-samples 300 --epochs 1 --baseline-epochs 1 --levels 3 --calibrate 6 --validate 2 \\
        --calibration-samples 64 --out /tmp/bp-small                       # a quick smoke run
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgeprune import api
from edgeprune.latency.profile import ProfileConfig


def prune_run(model: str, args, out: Path) -> Path:
    """A pruned, fine-tuned model at ``fraction`` of the unpruned model's measured latency."""
    run = out / f"{model}-{int(args.fraction * 100)}"
    if (run / "report.json").is_file():  # resumable: a finished run is reused
        return run
    unpruned = api.measure(model, args.target, args.input_size).median_ms
    profile = ProfileConfig(levels=args.levels, calibrate=args.calibrate, validate=args.validate, progress=False)
    api.prune(model, run, round(args.fraction * unpruned, 5), args.target, data=args.data, epochs=args.epochs,
              input_size=args.input_size, progress=False, baseline_epochs=args.baseline_epochs,
              train_samples=args.train_samples, val_samples=args.val_samples, test_samples=args.test_samples,
              profile=profile, profiles_dir=str(out / "profiles"))
    return run


def precision_rows(run: Path, args) -> list[dict]:
    t0 = time.time()
    r = api.quantize(run, args.target, args.data, calibration_samples=args.calibration_samples,
                     test_samples=args.test_samples, preset=args.preset)
    report = json.loads((run / "report.json").read_text())
    base = {"model": r["model"], "run": str(run), "budget_ms": report.get("budget_ms"),
            "unpruned_ms": report.get("baseline_ms"), "test_images": r["test_images"],
            "calibration_images": r["calibration_images"], "quantize_seconds": round(time.time() - t0, 1)}
    return [{**base, **{k: row[k] for k in ("precision", "median_ms", "p90_ms", "speedup_vs_fp32", "accuracy",
                                            "accuracy_delta_vs_fp32", "f1", "size_bytes")}} for row in r["rows"]]


def markdown(rows: list[dict]) -> str:
    lines = ["| model | precision | median ms | p90 ms | speed-up vs FP32 | accuracy | Δ vs FP32 | macro F1 | size MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['precision'].upper()} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
              f"{r['speedup_vs_fp32']:.2f}× | {r['accuracy']:.1%} | {100 * r['accuracy_delta_vs_fp32']:+.1f} pt | "
              f"{r['f1']:.3f} | {r['size_bytes'] / 1e6:.2f} |" for r in rows]
    if rows:
        lines += ["", f"Latency: each model's three IRs measured interleaved in one run. Accuracy on "
                      f"{rows[0]['test_images']} test images; INT8 calibrated on {rows[0]['calibration_images']} "
                      f"training images (NNCF post-training quantization)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18", "efficientnet_lite0"])
    p.add_argument("--runs", nargs="+", type=Path, help="existing prune output directories (no pruning)")
    p.add_argument("--target", default="openvino-cpu")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--fraction", type=float, default=0.5, help="budget as a fraction of the unpruned latency")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--baseline-epochs", type=int, default=6)
    p.add_argument("--train-samples", type=int, default=20000)
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--levels", type=int, default=5, help="profiling: widths per group")
    p.add_argument("--calibrate", type=int, default=60, help="profiling: random configurations to calibrate on")
    p.add_argument("--validate", type=int, default=10, help="profiling: random configurations for the error")
    p.add_argument("--calibration-samples", type=int, default=300, help="INT8: training images to calibrate on")
    p.add_argument("--preset", default="performance", choices=["performance", "mixed"])
    p.add_argument("--out", default="runs/bench-precisions")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = args.runs or [prune_run(m, args, out) for m in args.models]
    rows = []
    for run in runs:
        rows += precision_rows(run, args)
        for row in rows[-3:]:
            print(json.dumps(row), flush=True)
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args_json["runs"] = [str(r) for r in runs]
    (out / "precisions-summary.json").write_text(json.dumps({"args": args_json, "rows": rows}, indent=1))
    (out / "precisions-summary.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()

"""Core benchmark (issue 2): prune ResNet-18 and EfficientNet-Lite0 on Fashion-MNIST to 70%,
50% and 35% of their measured latency on a target, and measure each latency table's prediction
error over random pruning configurations. Writes OUT/summary.json and OUT/summary.md.

    python tools/bench_core.py --out runs/bench                       # the full benchmark
    python tools/bench_core.py --table-only --input-size 128 --out runs/bench128
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgeprune import api
from edgeprune.latency.profile import ProfileConfig


def table_row(model: str, args, out: Path) -> dict:
    t0 = time.time()
    table = api.profile(model, args.target, args.input_size, out=str(out / "profiles" / f"{model}-{args.input_size}px.json"),
                        profile=ProfileConfig(validate=args.validate, progress=False))
    e = table.error
    return {"model": model, "input_size": args.input_size, "profile_seconds": round(time.time() - t0, 1),
            "configs": e.n, "within_10pct": e.within_10pct, "rmspe": e.rmspe, "max_abs_pct": e.max_abs_pct,
            "table": str(table.path)}


def prune_rows(model: str, args, out: Path, table: str) -> list[dict]:
    unpruned = api.measure(model, args.target, args.input_size).median_ms
    rows, weights = [], None
    for frac in args.fractions:
        run = out / f"{model}-{int(frac * 100)}"
        kw = dict(weights=weights) if weights else dict(baseline_epochs=args.baseline_epochs)
        t0 = time.time()
        r = api.prune(model, run, round(frac * unpruned, 5), args.target, data="fashion-mnist",
                      epochs=args.epochs, input_size=args.input_size, table=table, progress=False,
                      train_samples=args.train_samples, val_samples=args.val_samples,
                      test_samples=args.test_samples, **kw)
        weights = weights or str(run / "baseline.pt")
        rows.append({"model": model, "fraction": frac, "budget_ms": r["budget_ms"], "baseline_ms": r["baseline_ms"],
                     "predicted_ms": r["predicted_ms"], "measured_ms": r["measured_ms"], "within_budget": r["within_budget"],
                     "speedup": r["speedup"], "accuracy_before": r["accuracy_before"], "accuracy_after": r["accuracy_after"],
                     "f1_after": r["metrics_after"]["f1"], "macs_ratio": r["macs_before"] / r["macs_after"],
                     "params_after": r["params_after"], "rounds": len(r["rounds"]), "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(tables: list[dict], prunes: list[dict]) -> str:
    lines = ["| model | input | profile s | random configs | within ±10% | RMSPE | max error |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {t['model']} | {t['input_size']} | {t['profile_seconds']} | {t['configs']} | {t['within_10pct']:.0%} | "
              f"{t['rmspe']:.1%} | {t['max_abs_pct']:.1%} |" for t in tables]
    if prunes:
        lines += ["", "| model | budget | unpruned ms | budget ms | predicted ms | measured ms | inside | speed-up | MACs ÷ | acc before | acc after | F1 after | rounds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p['model']} | {p['fraction']:.0%} | {p['baseline_ms']:.3f} | {p['budget_ms']:.3f} | {p['predicted_ms']:.3f} | "
                  f"{p['measured_ms']:.3f} | {'yes' if p['within_budget'] else 'NO'} | {p['speedup']:.2f}× | {p['macs_ratio']:.2f} | "
                  f"{p['accuracy_before']:.1%} | {p['accuracy_after']:.1%} | {p['f1_after']:.3f} | {p['rounds']} |" for p in prunes]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18", "efficientnet_lite0"])
    p.add_argument("--target", default="ort-cpu")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--fractions", nargs="+", type=float, default=[0.7, 0.5, 0.35])
    p.add_argument("--validate", type=int, default=30, help="random configurations for the table error")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--baseline-epochs", type=int, default=6)
    p.add_argument("--train-samples", type=int, default=20000)
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args()
    out = Path(args.out)
    tables, prunes = [], []
    for model in args.models:
        tables.append(table_row(model, args, out))
        print(json.dumps(tables[-1]), flush=True)
        if not args.table_only:
            prunes += prune_rows(model, args, out, tables[-1]["table"])
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "tables": tables, "prunes": prunes}, indent=1))
    (out / "summary.md").write_text(markdown(tables, prunes))
    print(markdown(tables, prunes))


if __name__ == "__main__":
    main()

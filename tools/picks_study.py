"""The latency table where budgets land (issue 9, item 7): models the table puts exactly on a
budget, measured end to end in several interleaved passes, against the table's prediction.

    python tools/picks_study.py --run runs/sbs-r18 --budgets 0.5 0.35 --random 3 --passes 3 --out runs/picks-r18.json

Per budget it builds the shapes a search would pick (edgeprune's chosen shape from the
side-by-side ``plan.json`` when present, the uniform shape, and ``--random`` random shapes),
fits each to the budget with the table, and measures them together with the unpruned model.
It reports three figures, so that the table's error is not confused with the host's:

* noise floor: how far one file's median moves between passes (no table can beat it);
* table error at the picks: prediction against the median over passes;
* the same, with each pass scaled by the unpruned model's latency in that pass (the host's
  level removed: what is left is the table's shape error).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgeprune.runtime.cpus import passive_openmp  # noqa: E402

passive_openmp()  # before torch loads


def build(args) -> tuple[list[dict], list[Path], object]:
    from side_by_side import open_session

    from edgeprune.artifacts.onnxio import export_onnx
    from edgeprune.pruning.prune import prune_to_widths
    from edgeprune.search.knapsack import SearchConfig
    from edgeprune.search.shapes import fit_shape, random_shape, shape_of, uniform
    run = Path(args.run)
    cfg = json.loads((run / "config.json").read_text())
    plan = json.loads((run / "plan.json").read_text()) if (run / "plan.json").exists() else {}
    s = open_session(cfg)
    table, scfg, rng = s.table(), SearchConfig(), np.random.default_rng(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="picks-"))
    full = dict(table.groups)
    rows = [{"budget": None, "shape": "unpruned", "predicted_ms": table.predict(full), "weight_mb": table.weight_mb(full)}]
    paths = [export_onnx(s.model, s.input_shape, tmp / "unpruned.onnx")]
    level = plan.get("baseline", {}).get("median_ms") or rows[0]["predicted_ms"]
    for frac in args.budgets:
        shapes = {"uniform": uniform(table), **{f"random{i}": random_shape(table, rng) for i in range(args.random)}}
        chosen = plan.get("budgets", {}).get(f"{frac:g}", {}).get("methods", {}).get("edgeprune")
        if chosen:
            shapes = {"edgeprune": shape_of(table, chosen["widths"]), **shapes}
        for name, shape in shapes.items():
            w = fit_shape(table, shape, frac * level, scfg)
            rows.append({"budget": frac, "shape": name, "predicted_ms": table.predict(w), "weight_mb": table.weight_mb(w)})
            paths.append(export_onnx(prune_to_widths(s.model, s.input_shape, w), s.input_shape, tmp / f"{frac}-{name}.onnx"))
    return rows, paths, s.target


def measure(rows: list[dict], paths: list[Path], target, passes: int, seed: int) -> None:
    """``passes`` interleaved runs, each in a fresh random order."""
    rng = np.random.default_rng(seed)
    for r in rows:
        r["passes_ms"] = []
    for _ in range(passes):
        order = rng.permutation(len(paths))
        lat = target.measure_many([paths[i] for i in order])
        for i, l in zip(order, lat):
            rows[i]["passes_ms"].append(l.median_ms)


def analyse(rows: list[dict]) -> dict:
    unpruned = rows[0]["passes_ms"]
    for r in rows:
        p = r["passes_ms"]
        r["median_ms"] = statistics.median(p)
        r["pass_spread"] = max(p) / min(p) - 1
        r["error"] = r["predicted_ms"] / r["median_ms"] - 1
        levelled = [m / u * rows[0]["predicted_ms"] for m, u in zip(p, unpruned)]  # the host's level removed
        r["error_levelled"] = r["predicted_ms"] / statistics.median(levelled) - 1
    picks = rows[1:]
    med = lambda k: round(statistics.median(abs(r[k]) for r in picks), 4)
    return {"noise_floor_median_spread": med("pass_spread"), "median_abs_error": med("error"),
            "median_abs_error_levelled": med("error_levelled"),
            "within_10pct": round(sum(abs(r["error"]) <= 0.10 for r in picks) / len(picks), 3),
            "within_5pct_levelled": round(sum(abs(r["error_levelled"]) <= 0.05 for r in picks) / len(picks), 3)}


def main() -> int:
    import torch
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a side-by-side run folder (config.json, plan.json)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.35])
    p.add_argument("--random", type=int, default=3)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rows, paths, target = build(a)
    measure(rows, paths, target, a.passes, a.seed)
    summary = analyse(rows)
    for r in rows:
        print(f"{r['budget']!s:5s} {r['shape']:10s} pred {r['predicted_ms']:.3f}  passes "
              + " ".join(f"{x:.3f}" for x in r["passes_ms"])
              + f"  error {r['error']:+.0%}  levelled {r['error_levelled']:+.0%}  {r['weight_mb']:.1f} MB")
    print(json.dumps(summary))
    Path(a.out).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

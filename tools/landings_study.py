"""Do the loop's own readings put later runs on budget? (landings, issue 9 item 7)

    python tools/landings_study.py --run runs/sbs-r18 --budgets 0.5 0.35 0.25 --out runs/landings/r18

Copies the run's latency table into ``--out`` (so it starts with no landings) and measures the
unpruned model. Pass 1 runs the closed loop (the adaptive-BN search, as ``prune`` does) at each
budget, a fraction of that latency, keeping every round's reading as a landing. Pass 2 runs each
budget times ``--shift`` (a budget near one measured, not on it) twice back to back, without the landings and with them (the order alternating between
budgets, so a drift of the host favours neither), and with the landings of pass 1 only, so the
two differ in nothing else. Written: ``study.json`` (every round) and ``study.md``.
Measure-heavy: run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgeprune.runtime.cpus import passive_openmp  # noqa: E402

passive_openmp()  # before torch loads


def main() -> int:
    import torch
    from side_by_side import open_session, save_json

    from edgeprune.artifacts.onnxio import export_onnx
    from edgeprune.latency.landings import Landings
    from edgeprune.search.accuracy import AbnConfig, AdaptiveBN
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a side-by-side run (its config, baseline and table)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.35, 0.25])
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--refine", type=int, default=8)
    p.add_argument("--shift", type=float, default=0.9,
                   help="pass 2 runs at these budgets times SHIFT (1: the same budgets again)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if not all(0 < b < 1 for b in a.budgets) or not 0 < a.shift <= 1:
        p.error("--budgets are fractions of the unpruned latency, in (0, 1); --shift in (0, 1]")
    run, out = Path(a.run), Path(a.out)
    cfg = json.loads((run / "config.json").read_text())
    src = Path(cfg["profiles_dir"]) / cfg["target"] / f"{cfg['model']}-{cfg['input_size']}px.json"
    dst = out / "profiles" / cfg["target"] / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    Landings.sidecar(dst).unlink(missing_ok=True)
    s = open_session({**cfg, "out": str(run), "profiles_dir": str(out / "profiles")})
    table = s.table()
    scorer = AdaptiveBN(s.model, s.input_shape, s.data, "l1", AbnConfig(samples=a.candidates, refine=a.refine))
    unpruned = sorted(s.target.measure(export_onnx(s.model, s.input_shape, out / "unpruned.onnx")).median_ms
                      for _ in range(3))[1]
    rows = []
    for b in a.budgets:
        rows.append(fit(s, table, scorer, b, b * unpruned, "pass 1 (landings so far)"))
        table.landings.save()
    kept = list(table.landings.items)
    for k, b in enumerate(a.budgets):
        for use in ((False, True) if k % 2 == 0 else (True, False)):
            table.landings = Landings(table.groups, table.calibrated, table.digest, None, kept) if use else None
            rows.append(fit(s, table, scorer, b * a.shift, b * a.shift * unpruned,
                            "pass 2, with landings" if use else "pass 2, profile alone"))
    study = {"run": str(run), "unpruned_ms": unpruned, "landings_kept": len(kept), "fits": rows,
             "candidates": a.candidates, "refine": a.refine}
    save_json(out / "study.json", study)
    (out / "study.md").write_text(render(study))
    print(render(study))
    return 0


def fit(s, table, scorer, frac: float, budget: float, label: str) -> dict:
    from edgeprune.search.accuracy import ShapePlanner
    from edgeprune.search.knapsack import SearchConfig
    from edgeprune.search.loop import fit_budget
    t0 = time.time()
    planner = ShapePlanner(table, scorer, SearchConfig(), s.scores())
    r = fit_budget(s.model, s.input_shape, table, planner, s.target, budget, SearchConfig())
    rounds = [x.to_dict() for x in r.rounds]
    row = {"budget": frac, "budget_ms": budget, "label": label, "rounds": rounds, "seconds": round(time.time() - t0, 1),
           "fits": r.latency.median_ms <= budget, "final_ms": r.latency.median_ms}
    print(f"{frac:g} {label}: {len(rounds)} rounds, errors "
          f"{[round(x['predicted_ms'] / x['measured_ms'] - 1, 3) for x in rounds]}", flush=True)
    return row


def render(study: dict) -> str:
    lines = [f"Unpruned {study['unpruned_ms']:.4f} ms; {study['landings_kept']} landings kept after pass 1.", "",
             "| budget | run | rounds | error at the picks (predicted/measured − 1) | median \\|error\\| | final / budget |",
             "|---|---|---|---|---|---|"]
    for r in study["fits"]:
        errs = [x["predicted_ms"] / x["measured_ms"] - 1 for x in r["rounds"]]
        lines.append(f"| {r['budget']:.0%} | {r['label']} | {len(r['rounds'])} | "
                     f"{', '.join(f'{100 * e:+.1f}%' for e in errs)} | {100 * statistics.median(map(abs, errs)):.1f}% | "
                     f"{r['final_ms'] / r['budget_ms']:.3f} |")
    for label in ("pass 2, profile alone", "pass 2, with landings"):
        fits = [r for r in study["fits"] if r["label"] == label]
        first = [abs(r["rounds"][0]["predicted_ms"] / r["rounds"][0]["measured_ms"] - 1) for r in fits]
        lines.append(f"\n{label}: rounds {[len(r['rounds']) for r in fits]}, first pick's median |error| "
                     f"{100 * statistics.median(first):.1f}%")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

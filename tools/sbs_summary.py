"""The side-by-side study's summary (``tools/side_by_side.py summary``): rows, Markdown, Pareto plot.

Kept apart from the phases that produce the figures, so that reading a study never needs its
models, its target or torch."""
from __future__ import annotations

import statistics
from pathlib import Path


def summary_of(cfg: dict, state: dict, results: list[dict]) -> dict:
    """One row per (budget, method): latency readings, MACs, scores, fine-tuned accuracy over seeds."""
    rows = []
    for key, entry in state["budgets"].items():
        inter = entry.get("interleaved", {})
        for name, m in entry["methods"].items():
            if "failed" in m:
                rows.append({"budget": key, "method": name, "failed": m["failed"]})
                continue
            rs = [r for r in results if r["budget"] == key and r["method"] == name]
            acc = [r["finetuned"] for r in rs]
            readings = paired_readings(m)
            rows.append({"budget": key, "method": name, "paired_vs_edgeprune": statistics.median(readings),
                         "paired_readings": readings,
                         "paired_ci": m["paired_ci"], "interleaved_ms": inter.get(name, {}).get("median_ms"),
                         "macs_m": m["macs"] / 1e6, "proxy_val_accuracy": m["proxy_val_accuracy"],
                         "recalibrated": _mean([r["recalibrated"] for r in rs]),
                         "finetuned_mean": _mean(acc), "finetuned_sd": statistics.stdev(acc) if len(acc) > 1 else None,
                         "seeds": [r["seed"] for r in rs], "finetuned": acc})
    return {"config": cfg, "baseline": state["baseline"], "rows": rows,
            "routes": {k: e.get("routes", {}) for k, e in state["budgets"].items()}}


def paired_readings(m: dict) -> list[float]:
    """Every paired reading of a model against edgeprune's: the matching try that was kept, its
    confirmation, and the reading taken when it was recorded. On a host whose shared cache the
    neighbours fill, one reading of a pair of models with different weight sizes moves by up to
    ±15% (ResNet-18 at 35%); the summary gives their median and all of them, ``recheck``'s
    included. (Plans written
    before the confirmation became the recorded reading list it apart, as ``match_confirmed``.)"""
    kept = [r for k, r in m.get("match_tries") or [] if m.get("knob") is not None and abs(k - m["knob"]) < 1e-5]
    return [round(x, 4) for x in [*kept[:1], m.get("match_confirmed"), m["paired_vs_edgeprune"],
                                  *m.get("paired_rechecks", [])] if x is not None]


def pareto(summary: dict, path: Path) -> None:
    """Fine-tuned accuracy (mean, sd over seeds) against latency, per method. A model's latency
    is edgeprune's interleaved median at that budget times the model's paired ratio to it: on a
    shared host each model's own least-disturbed window can read 20% off the paired ratio."""
    from edgeprune.reports.plots import Point, pareto_png
    series: dict[str, list] = {}
    anchor = {r["budget"]: r["interleaved_ms"] for r in summary["rows"] if r["method"] == "edgeprune"}
    for r in summary["rows"]:
        if r.get("finetuned_mean") is not None and anchor.get(r["budget"]) is not None:
            series.setdefault(r["method"], []).append(
                Point(anchor[r["budget"]] * r["paired_vs_edgeprune"], r["finetuned_mean"], r["finetuned_sd"],
                      f"{float(r['budget']):.0%}"))
    b = summary["baseline"]
    series["unpruned"] = [Point(b["median_ms"], b["test_accuracy"])]
    cfg = summary["config"]
    pareto_png(series, path, f"{cfg['model']} on {cfg['target']}: fine-tuned accuracy at measured latency",
               "latency (ms): edgeprune's interleaved median × each model's paired ratio to it")


def markdown(summary: dict) -> str:
    b = summary["baseline"]
    lines = [f"Unpruned: {b['median_ms']:.4f} ms, test accuracy {b['test_accuracy']:.2%}", "",
             "| budget | method | latency vs edgeprune (paired: median; readings) | interleaved median | MACs (M) | val acc after BN re-est. | test acc after BN re-est. | after fine-tune, mean ± sd (n) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        if "failed" in r:
            lines.append(f"| {float(r['budget']):.0%} | {r['method']} | failed: {r['failed']} |||||| ")
            continue
        ft = "—" if r["finetuned_mean"] is None else (
            f"{r['finetuned_mean']:.2%} ± {100 * (r['finetuned_sd'] or 0):.2f} ({len(r['finetuned'])})")
        inter = "—" if r["interleaved_ms"] is None else f"{r['interleaved_ms']:.4f} ms"
        recal = "—" if r["recalibrated"] is None else f"{r['recalibrated']:.1%}"
        readings = " / ".join(f"{x:.3f}" for x in r["paired_readings"])
        lines.append(f"| {float(r['budget']):.0%} | {r['method']} | {r['paired_vs_edgeprune']:.3f} "
                     f"({readings}) | {inter} | {r['macs_m']:.1f} | "
                     f"{r['proxy_val_accuracy']:.1%} | {recal} | {ft} |")
    lines += paired_by_seed(summary["rows"])
    routes = [(k, name, x) for k, rs in summary.get("routes", {}).items() for name, x in rs.items()]
    if routes:
        steps = summary["config"].get("abn", {}).get("finetune_steps", 0)
        score = f"after BN re-est. and {steps} distillation steps" if steps else "after BN re-est."
        lines += ["", f"Routes of the accuracy side at edgeprune's predicted latency (val accuracy {score}, "
                  "the search's score):", "",
                  f"| budget | route | predicted | val acc {score} |", "|---|---|---|---|"]
        lines += [f"| {float(k):.0%} | {name} | {x['predicted_ms']:.4f} ms | {x['proxy_val_accuracy']:.1%} |"
                  for k, name, x in routes]
    return "\n".join(lines) + "\n"


def paired_by_seed(rows: list[dict]) -> list[str]:
    """Each of edgeprune's models (one per objective) minus each other model, seed by seed (the
    same seed fine-tunes both): the pairs the issue's claims rest on, since a seed moves every
    method of a budget alike."""
    acc = {(r["budget"], r["method"]): dict(zip(r["seeds"], r["finetuned"])) for r in rows if "failed" not in r}
    keys = list(acc)
    out = []
    for i, (key, ours_name) in enumerate(keys):
        if not ours_name.startswith("edgeprune"):
            continue
        ours = acc[key, ours_name]
        # every other model of the budget; another edgeprune model only once, from the earlier one's side
        for key2, name in keys[i + 1:] + [k for k in keys[:i] if not k[1].startswith("edgeprune")]:
            seeds = sorted(set(ours) & set(acc[key2, name]))
            if key2 != key or not seeds:
                continue
            d = [100 * (ours[k] - acc[key2, name][k]) for k in seeds]
            sd = f" ± {statistics.stdev(d):.2f}" if len(d) > 1 else ""
            out.append(f"| {float(key):.0%} | {ours_name} − {name} | {' / '.join(f'{x:+.2f}' for x in d)} | "
                       f"{statistics.fmean(d):+.2f}{sd} | {sum(x > 0 for x in d)} of {len(d)} |")
    head = ["", "edgeprune's models minus each other model after fine-tuning, seed by seed (points):", "",
            "| budget | pair | by seed | mean ± sd | first ahead |", "|---|---|---|---|---|"]
    return head + out if out else []


def _mean(xs):
    return statistics.fmean(xs) if xs else None

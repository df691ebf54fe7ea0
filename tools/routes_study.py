"""The accuracy-side routes issue 9 listed that the search does not use, scored like its candidates.

Two routes, each put on the same *predicted* latency as edgeprune's pick in a side-by-side run
(``tools/side_by_side.py plan``), and scored as the search scores a candidate: validation
accuracy after BatchNorm re-estimation (``AdaptiveBN``, the run's own settings):

- **Per-group sensitivity curves**: each group alone pruned to a grid of ratios, the others
  whole; the curves (validation loss, or accuracy, made monotone) are the knapsack's values
  and the latency table its weights (``search.search`` with per-channel marginals).
- **NetAdapt-style greedy**: from the unpruned widths, the predicted latency is lowered step
  by step; at each step every group proposes the widest width that alone meets the step's
  target, each proposal is scored, the best is kept. NetAdapt scores its proposals after a
  short fine-tune; here BN re-estimation stands in for it (EagleEye's finding, and what keeps
  12 groups x 10 steps within minutes on two cores). The pick at each goal is rescaled onto
  the goal like every search candidate (``fit_shape``).

Adaptive BN (edgeprune's search) and the uniform prune are scored again with the same scorer.
Scores are cached in ``RUN/routes-study.json`` after each one, so an interrupted study resumes.

    python tools/routes_study.py --run runs/sbs-r18
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from side_by_side import open_session, save_json  # noqa: E402  (also sets OpenMP passive)


class CachedScorer:
    """``AdaptiveBN`` full scores, persisted as they come (widths -> [accuracy, loss])."""

    def __init__(self, scorer, path: Path):
        self.scorer, self.path = scorer, path
        self.state = json.loads(path.read_text()) if path.exists() else {"scores": {}, "routes": {}}
        self.calls = 0

    def __call__(self, widths: dict[str, int]):
        from edgeprune.search.accuracy import Score
        key = json.dumps(dict(sorted(widths.items())))
        if key not in self.state["scores"]:
            s = self.scorer(widths)
            self.state["scores"][key] = [s.accuracy, s.loss]
            self.calls += 1
            save_json(self.path, self.state)
        return Score(*self.state["scores"][key])


def grid_widths(table, g: str, ratios: list[float], lo: int, round_to: int) -> list[int]:
    c = table.groups[g]
    ws = {max(lo, round_to * math.floor(r * c / round_to)) for r in ratios}
    return sorted(w for w in ws if w < c) + [c]


def sensitivity_scores(table, score, ratios, cfg, metric: str) -> dict[str, np.ndarray]:
    """Per-channel marginals whose cumulative sum is the group's curve (higher is better)."""
    from edgeprune.search.knapsack import bounds
    lo, _ = bounds(table, cfg)
    full = dict(table.groups)
    out = {}
    for g, c in table.groups.items():
        ws = grid_widths(table, g, ratios, lo[g], cfg.round_to)
        vals = []
        for w in ws:
            s = score({**full, g: w})
            vals.append(s.accuracy if metric == "accuracy" else -s.loss)
        curve = np.interp(np.arange(c + 1), ws, vals)          # flat below the lowest grid width
        curve = np.maximum.accumulate(curve)                   # a wider group never scores lower
        out[g] = np.diff(curve)
        print(f"  sensitivity {g}: " + " ".join(f"{w}:{v:.3f}" for w, v in zip(ws, vals)), flush=True)
    return out


def netadapt(table, score, goals: list[float], steps_to_first: int, steps_between: int, cfg) -> dict[float, dict]:
    """Greedy proposals from the unpruned widths down to each goal (largest first)."""
    from edgeprune.search.knapsack import bounds
    lo, hi = bounds(table, cfg)
    widths = dict(hi)
    targets, start = [], table.predict(widths)
    for i, goal in enumerate(sorted(goals, reverse=True)):
        n = steps_to_first if i == 0 else steps_between
        targets += [(start * (goal / start) ** ((k + 1) / n), goal if k == n - 1 else None) for k in range(n)]
        start = goal
    picks = {}
    for t, goal in targets:
        proposals = []
        for g in widths:
            w = widths[g]
            while w > lo[g] and table.predict({**widths, g: w}) > t:
                w = max(lo[g], (w - 1) // cfg.round_to * cfg.round_to)
            if w < widths[g] and table.predict({**widths, g: w}) <= t:
                proposals.append(({**widths, g: w}, g))
        if not proposals:
            print(f"  netadapt: no group alone meets {t:.4f} ms; stopping", flush=True)
            break
        scored = [(score(p).accuracy, -score(p).loss, g, p) for p, g in proposals]
        acc, _, g, widths = max(scored, key=lambda x: x[:2])
        print(f"  netadapt -> {t:.4f} ms: {g}={widths[g]} ({acc:.3f}, {len(proposals)} proposals)", flush=True)
        if goal is not None:
            picks[goal] = dict(widths)
    return picks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a side-by-side run directory whose plan is done")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.375, 0.5, 0.625, 0.75, 0.875])
    ap.add_argument("--steps", type=int, default=8, help="NetAdapt steps from unpruned to the first goal")
    ap.add_argument("--steps-between", type=int, default=2, help="... and between goals")
    a = ap.parse_args()
    if not all(0 < r < 1 for r in a.ratios) or a.steps < 1 or a.steps_between < 1:
        ap.error("--ratios must lie in (0, 1); --steps and --steps-between must be >= 1")
    from edgeprune.search.accuracy import AbnConfig, AdaptiveBN
    from edgeprune.search.knapsack import SearchConfig, search
    from edgeprune.search.shapes import fit_shape, shape_of, uniform

    run = Path(a.run)
    cfg = json.loads((run / "config.json").read_text())
    plan = json.loads((run / "plan.json").read_text())
    s = open_session(cfg)
    table, scfg = s.table(), SearchConfig()
    score = CachedScorer(AdaptiveBN(s.model, s.input_shape, s.data, "l1", AbnConfig(**cfg["abn"])),
                         run / "routes-study.json")
    goals = {k: e["methods"]["edgeprune"]["predicted_ms"] for k, e in plan["budgets"].items()}
    t0 = time.time()
    curves = {m: sensitivity_scores(table, score, a.ratios, scfg, m) for m in ("loss", "accuracy")}
    t_sens = time.time() - t0
    t0 = time.time()
    greedy = netadapt(table, score, list(goals.values()), a.steps, a.steps_between, scfg)
    t_net = time.time() - t0
    routes = {}
    for key, goal in goals.items():
        picks = {"adaptive-bn (edgeprune)": plan["budgets"][key]["methods"]["edgeprune"]["widths"],
                 "uniform": fit_shape(table, uniform(table), goal, scfg),
                 "sensitivity curves, val loss": search(table, curves["loss"], goal, scfg).widths,
                 "sensitivity curves, val accuracy": search(table, curves["accuracy"], goal, scfg).widths}
        if goal in greedy:
            picks["netadapt-style greedy"] = fit_shape(table, shape_of(table, greedy[goal]), goal, scfg)
        routes[key] = {name: {"widths": w, "predicted_ms": round(table.predict(w), 5),
                              "proxy_val_accuracy": score(w).accuracy, "proxy_val_loss": round(score(w).loss, 4)}
                       for name, w in picks.items()}
        for name, r in routes[key].items():
            print(f"{key} {name}: {r['predicted_ms']:.4f} ms, {r['proxy_val_accuracy']:.3f}", flush=True)
    score.state["routes"] = routes
    score.state["seconds"] = {"sensitivity": round(t_sens), "netadapt": round(t_net)}
    save_json(score.path, score.state)
    print(f"sensitivity curves {t_sens:.0f} s, netadapt {t_net:.0f} s (cached scores are free on a rerun)")


if __name__ == "__main__":
    main()

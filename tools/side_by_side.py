"""Side by side at equal measured latency: edgeprune against the prunes users reach for (issue 9).

All methods start from one trained baseline; every pruned model gets the same fine-tune recipe
(``finetune.finetune_pruned``) over several seeds and is scored on the full test set. The
baselines' latency is matched to edgeprune's final model within ±3% by a paired same-run
measurement (``baselines.match``: the knob is bisected between a faster and a slower try; out of
tolerance, the baseline kept is the one not faster than edgeprune's model), and all final
models of a budget are measured interleaved in one run. A baseline tool that cannot prune the
model (NNI's tracer on EfficientNet-Lite0) is recorded as failed with its error.
``edgeprune-capacity`` is edgeprune's loop with the search's other objective (``capacity``), its
shape matched to edgeprune's model like a baseline: one objective against the other.

    python tools/side_by_side.py plan --model resnet18 --out runs/sbs-r18      # measure, search, match (serial)
    python tools/side_by_side.py finetune --out runs/sbs-r18 --seeds 0 1 2 --jobs 2
    python tools/side_by_side.py recheck --out runs/sbs-r18 --reads 5          # more paired readings, quiet host
    python tools/side_by_side.py summary --out runs/sbs-r18                    # summary.md/.json (+ pareto.png)
    python tools/side_by_side.py derive --out runs/sbs-r18 --to runs/sbs-r18-ep6 --epochs 6 --budgets 0.35
        # the same models fine-tuned another way (here: longer), results apart; then finetune --out runs/sbs-r18-ep6

Phases write their results as they go, so an interrupted phase resumes where it stopped.
Measure-heavy ``plan`` and ``recheck`` should run alone; ``finetune`` may use both cores (``--jobs 2``).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from edgeprune.runtime.cpus import passive_openmp

passive_openmp()  # before torch loads

from edgeprune.artifacts.onnxio import atomic_write  # noqa: E402 (after passive_openmp)

METHODS = ("edgeprune", "uniform-tp", "uniform-nni", "global-latency", "global-macs", "edgeprune-capacity")
FIRST = ("edgeprune", "uniform-tp", "edgeprune-capacity")  # fine-tuned first: the comparisons the issue turns on


def save_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def open_session(cfg: dict):
    from edgeprune.session import Session, SessionConfig
    out = Path(cfg["out"])
    weights = out / "baseline.pt"
    s = Session.open(SessionConfig(
        model=cfg["model"], target=cfg["target"], input_size=cfg["input_size"], data=cfg["data"],
        train_samples=cfg["train_samples"], val_samples=cfg["val_samples"], test_samples=None,
        baseline_epochs=cfg["baseline_epochs"], weights=str(weights) if weights.exists() else None,
        progress=False, profiles_dir=cfg["profiles_dir"]))
    if not weights.exists():
        s.ensure_trained(out / "baseline.ckpt")
    return s


# --- plan: baseline, edgeprune's loop, matched baselines, interleaved latency -----------------------

def plan(cfg: dict, only: list[str] | None = None) -> None:
    """Baseline, edgeprune's loop and the baselines in ``only`` (default: all), per budget."""
    from edgeprune.artifacts.onnxio import export_onnx
    from edgeprune.search.knapsack import SearchConfig
    from edgeprune.training.metrics import evaluate

    out = Path(cfg["out"])
    s = open_session(cfg)
    state = _load(out / "plan.json") or {"budgets": {}}
    if "baseline" not in state:
        acc = evaluate(s.model, s.data.loader("test"), s.data.num_classes).accuracy
        onnx = export_onnx(s.model, s.input_shape, out / "onnx" / "unpruned.onnx")
        ms = sorted(s.target.measure(onnx).median_ms for _ in range(3))[1]
        state["baseline"] = {"test_accuracy": acc, "median_ms": ms, "onnx": str(onnx)}
        save_json(out / "plan.json", state)
    table = s.table()
    print(f"baseline: {state['baseline']}", flush=True)
    scfg = SearchConfig()
    for frac in cfg["budgets"]:
        key = f"{frac:g}"
        entry = state["budgets"].setdefault(key, {"budget_ms": frac * state["baseline"]["median_ms"], "methods": {}})
        methods = entry["methods"]
        if "edgeprune" not in methods:
            model, extra = edgeprune_loop(s, table, state, cfg, frac, "adaptive-bn")
            methods["edgeprune"] = record(s, out, key, "edgeprune", model, table, extra)
            save_json(out / "plan.json", state)
        ref = Path(methods["edgeprune"]["onnx"])
        goal = methods["edgeprune"]["predicted_ms"]
        if "routes" not in entry:
            entry["routes"] = routes(s, table, goal, scfg, methods["edgeprune"]["widths"], cfg)
            save_json(out / "plan.json", state)
        for name in [m for m in METHODS[1:] if only is None or m in only]:
            if name not in methods:
                try:
                    model, extra = (capacity_method(s, table, state, cfg, frac, goal, ref) if name == "edgeprune-capacity"
                                    else baseline_method(name, s, table, goal, ref, methods["edgeprune"]["macs"]))
                    methods[name] = record(s, out, key, name, model, table, extra)
                    entry.pop("interleaved", None)  # a new model: its budget is measured again
                except Exception as e:  # noqa: BLE001 (a tool that cannot prune this model is a finding)
                    methods[name] = {"failed": f"{type(e).__name__}: {e}"[:300]}
                save_json(out / "plan.json", state)
            print(f"{key} {name}: {summary_line(methods[name])}", flush=True)
        if set(entry.get("interleaved", {})) != {"unpruned", *usable(methods)}:
            entry["interleaved"] = interleaved(s.target, state["baseline"]["onnx"], usable(methods))
            save_json(out / "plan.json", state)


def edgeprune_loop(s, table, state: dict, cfg: dict, frac: float, objective: str):
    """(model, details) of edgeprune's closed loop at ``frac`` of the unpruned latency, its
    search choosing by ``objective`` (``prune --objective``)."""
    from edgeprune.search.accuracy import AbnConfig, AdaptiveBN, ShapePlanner
    from edgeprune.search.knapsack import SearchConfig
    from edgeprune.search.loop import Anchor, LoopConfig, fit_budget
    t0 = time.time()
    scfg = SearchConfig()
    scorer = AdaptiveBN(s.model, s.input_shape, s.data, "l1", AbnConfig(**cfg["abn"]))
    planner = ShapePlanner(table, scorer, scfg, s.scores(), objective)
    # paired with the unpruned model, in the table's units (edgeprune prune --budget-ratio):
    # the host's drift within the hour drove runs/sbs-eff-25ft's loop through 5 rounds
    level = table.full_ms
    anchor = Anchor(Path(state["baseline"]["onnx"]), level) if cfg.get("anchored", True) else None
    budget = frac * level if anchor else frac * state["baseline"]["median_ms"]
    r = fit_budget(s.model, s.input_shape, table, planner, s.target, budget, scfg, LoopConfig(), anchor)
    return r.model, {"objective": objective, "rounds": [x.to_dict() for x in r.rounds],
                     "search_s": round(time.time() - t0, 1), "candidates": [c.to_dict() for c in planner.candidates]}


def capacity_method(s, table, state: dict, cfg: dict, frac: float, goal_ms: float, ref):
    """(model, details) of the loop with ``--objective capacity``, its shape then matched to
    edgeprune's model by measurement like a baseline: two loops on one budget can land a few
    percent apart on a shared host (runs/sbs15-eff35: 1.054 paired), and the comparison of two
    objectives must not be a comparison of two latencies. The loop's own model is kept in the
    details (``loop_*``)."""
    import tempfile

    from edgeprune.artifacts.onnxio import export_onnx
    from edgeprune.pruning import baselines as b
    from edgeprune.pruning.prune import prune_to_widths, widths_of
    from edgeprune.search.knapsack import SearchConfig
    from edgeprune.search.shapes import fit_shape, shape_of
    model, extra = edgeprune_loop(s, table, state, cfg, frac, "capacity")
    widths = widths_of(model, s.input_shape)
    shape = shape_of(table, widths)
    with tempfile.TemporaryDirectory() as tmp:
        loop_ratio = b.paired_ratio(s.target, ref, export_onnx(model, s.input_shape, Path(tmp) / "loop.onnx"))[0]
    extra.update(loop_widths=widths, loop_predicted_ms=table.predict(widths), loop_macs=b.macs(model, s.input_shape),
                 loop_paired_vs_edgeprune=loop_ratio)

    def build(predicted_ms: float):  # the shape at a predicted latency: the knob the match turns
        return prune_to_widths(s.model, s.input_shape, fit_shape(table, shape, predicted_ms, SearchConfig()))
    m = b.match(build, b.predicted_ms(table, s.input_shape), goal_ms, 0.5 * goal_ms, 1.5 * goal_ms,
                s.target, ref, s.input_shape)
    return m.model, {**extra, **matched(m)}


def routes(s, table, goal_ms: float, scfg, chosen: dict, cfg: dict) -> dict:
    """The accuracy-side routes at the same *predicted* latency, each scored like a search
    candidate (val accuracy after BN re-estimation): what each objective would have picked."""
    from edgeprune.pruning.importance import importances
    from edgeprune.search.accuracy import AbnConfig, AdaptiveBN
    from edgeprune.search.knapsack import search
    from edgeprune.search.shapes import fit_shape, uniform
    scorer = {c: AdaptiveBN(s.model, s.input_shape, s.data, c, AbnConfig(**cfg["abn"])) for c in ("l1", "lamp", "bn_scale")}
    plans = {"adaptive-bn (edgeprune)": ("l1", chosen), "uniform": ("l1", fit_shape(table, uniform(table), goal_ms, scfg))}
    for crit in ("l1", "lamp", "bn_scale"):  # channels kept by the same criterion the plan used
        plans[f"kept importance, {crit}"] = (crit, search(table, importances(s.model, s.input_shape, crit), goal_ms, scfg).widths)
    return {name: {"widths": w, "predicted_ms": table.predict(w), "proxy_val_accuracy": scorer[c](w).accuracy}
            for name, (c, w) in plans.items()}


def baseline_method(name: str, s, table, goal_ms: float, ref, ref_macs: float):
    """(pruned model, details) of one baseline, matched to the reference."""
    from edgeprune.pruning import baselines as b
    pred = b.predicted_ms(table, s.input_shape)
    if name == "uniform-tp":
        m = b.match(lambda k: b.uniform_model(s.model, s.input_shape, table, k), pred, goal_ms, 0.1, 1.0,
                    s.target, ref, s.input_shape)
    elif name == "uniform-nni":
        from edgeprune.pruning.nni_engine import nni_uniform
        m = b.match(lambda k: nni_uniform(s.model, s.input_shape, 1 - k), pred, goal_ms, 0.1, 0.99,
                    s.target, ref, s.input_shape)
    elif name == "global-latency":
        m = b.match(lambda r: b.global_magnitude(s.model, s.input_shape, r), pred, goal_ms, 0.0, 0.9,
                    s.target, ref, s.input_shape)
    else:  # global-macs: MACs matched, latency only measured
        @functools.cache
        def build(r: float):
            return b.global_magnitude(s.model, s.input_shape, r)
        knob = b.bisect(lambda r: b.macs(build(r), s.input_shape), ref_macs, 0.0, 0.9)
        return build(knob), {"knob": knob}
    return m.model, matched(m)


def matched(m) -> dict:
    """What a latency match records: the knob kept, every try, and the confirming paired reading."""
    return {"knob": m.knob, "match_attempts": m.attempts, "match_tries": m.tries,
            "paired_vs_edgeprune": m.confirmed, "paired_ci": list(m.confirmed_ci)}


def record(s, out: Path, key: str, name: str, model, table, extra: dict) -> dict:
    """Weights, ONNX, widths, MACs, prediction, paired latency vs edgeprune's model, proxy score."""
    import copy

    from edgeprune.artifacts.onnxio import export_onnx
    from edgeprune.pruning import baselines as b
    from edgeprune.pruning.prune import widths_of
    from edgeprune.search.accuracy import AdaptiveBN
    from edgeprune.training.models import save_weights
    stem = f"{key}-{name}"
    weights = save_weights(model, out / "models" / f"{stem}.pt")
    onnx = export_onnx(model, s.input_shape, out / "onnx" / f"{stem}.onnx")
    widths = widths_of(model, s.input_shape)
    d = {"widths": widths, "weights": str(weights), "onnx": str(onnx), "macs": b.macs(model, s.input_shape),
         "params": sum(p.numel() for p in model.parameters()), "predicted_ms": table.predict(widths), **extra}
    if name == "edgeprune":
        d.update(paired_vs_edgeprune=1.0, paired_ci=[1.0, 1.0])
    elif "paired_vs_edgeprune" not in d:  # a matched baseline brings the reading that confirmed its match
        ratio, ci = b.paired_ratio(s.target, out / "onnx" / f"{key}-edgeprune.onnx", onnx)
        d.update(paired_vs_edgeprune=ratio, paired_ci=list(ci))
    d["proxy_val_accuracy"] = AdaptiveBN(s.model, s.input_shape, s.data).score(copy.deepcopy(model)).accuracy
    return d


def interleaved(target, unpruned_onnx: str, methods: dict) -> dict:
    """Every model of a budget (and the unpruned one) measured window by window in one run."""
    names = ["unpruned", *methods]
    paths = [unpruned_onnx, *(methods[n]["onnx"] for n in methods)]
    lats = target.measure_many(paths)
    return {n: {"median_ms": lat.median_ms, "p90_ms": lat.p90_ms, "window_medians_ms": list(lat.window_medians_ms)}
            for n, lat in zip(names, lats)}


def usable(methods: dict) -> dict:
    """The methods that produced a model (a failed one records its error instead)."""
    return {n: m for n, m in methods.items() if "failed" not in m}


def summary_line(m: dict) -> str:
    if "failed" in m:
        return f"failed: {m['failed']}"
    return (f"predicted {m['predicted_ms']:.4f} ms, paired vs edgeprune {m['paired_vs_edgeprune']:.3f}, "
            f"MACs {m['macs'] / 1e6:.1f}M, proxy {m['proxy_val_accuracy']:.3f}")


def recheck(cfg: dict, reads: int) -> None:
    """``reads`` more paired readings of every baseline against edgeprune's model, appended to
    the method's ``paired_rechecks``: a match made while the host was busy can read 0.8 or 1.1
    once the neighbours leave (issue 9's 25% cell, session 9), and the summary's latency is the
    median of every reading, so a claim rests on more than the two the match took."""
    from edgeprune.pruning.baselines import paired_ratio
    from edgeprune.runtime import get_target
    out = Path(cfg["out"])
    state = _load(out / "plan.json")
    target = get_target(cfg["target"])
    for key, entry in state["budgets"].items():
        ref = Path(entry["methods"]["edgeprune"]["onnx"])
        for name, m in usable(entry["methods"]).items():
            if name == "edgeprune":
                continue
            got = [round(paired_ratio(target, ref, Path(m["onnx"]))[0], 4) for _ in range(reads)]
            m.setdefault("paired_rechecks", []).extend(got)
            save_json(out / "plan.json", state)
            print(f"{key} {name}: {' '.join(f'{x:.3f}' for x in got)}", flush=True)


# --- finetune: every (budget, method, seed), same recipe, in worker processes -----------------------

_WORKER = {}


def _init_worker(cfg: dict) -> None:
    import torch
    torch.set_num_threads(1)
    _WORKER["s"] = open_session(cfg)
    _WORKER["cfg"] = cfg


def _finetune_task(task: tuple[str, str, int, dict]) -> str:
    import copy

    from edgeprune.training.finetune import finetune_pruned
    key, name, seed, m = task
    s, cfg = _WORKER["s"], _WORKER["cfg"]
    path = Path(cfg["out"]) / "results" / f"{key}-{name}-s{seed}.json"
    if path.exists():  # another finetune process (e.g. one per seed) got here first
        return f"{path.name}: done elsewhere"
    t0 = time.time()
    model = s.pruned(m["widths"], m["weights"])
    teacher = copy.deepcopy(s.model).eval()
    ft = finetune_pruned(model, teacher, s.data, cfg["epochs"], seed=seed, threads=1)
    save_json(path, {"budget": key, "method": name, "seed": seed, "seconds": round(time.time() - t0, 1),
                     **{k: v["accuracy"] for k, v in ft.to_dict().items() if k != "train"},
                     "epochs_run": ft.train.epochs_run if ft.train else 0})
    return f"{path.name}: {ft.finetuned.accuracy:.4f} ({time.time() - t0:.0f} s)"


def finetune(cfg: dict, seeds: list[int], jobs: int, methods: list[str]) -> None:
    out = Path(cfg["out"])
    state = _load(out / "plan.json")
    tasks = [(key, name, seed, entry["methods"][name])
             for name in methods for seed in seeds for key, entry in state["budgets"].items()
             if name in usable(entry["methods"]) and not (out / "results" / f"{key}-{name}-s{seed}.json").exists()]
    # edgeprune and uniform first: the comparison that decides the issue
    tasks.sort(key=lambda t: (t[1] not in FIRST, t[2], t[0], METHODS.index(t[1])))
    print(f"{len(tasks)} fine-tunes to run", flush=True)
    with ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(cfg,)) as pool:
        for line in pool.map(_finetune_task, tasks):
            print(line, flush=True)


def derive(cfg: dict, src: Path, to: Path, epochs: int, budgets: list[float]) -> int:
    """A study of the same pruned models under another fine-tune length: ``to`` gets the plan
    (only ``budgets``), the baseline (linked) and a config with ``epochs``; its results stay
    apart from the source's. Answers "does a longer fine-tune change the margin?" (issue 9)."""
    state = _load(src / "plan.json")
    if state is None:
        print(f"side_by_side: {src / 'plan.json'} missing: run the plan phase first", file=sys.stderr)
        return 2
    keep = {k: v for k, v in state["budgets"].items() if float(k) in budgets}
    if not keep:
        print(f"side_by_side: none of --budgets {budgets} is in {src / 'plan.json'} ({', '.join(state['budgets'])})",
              file=sys.stderr)
        return 2
    if to.resolve() == src.resolve():
        print(f"side_by_side: --to {to} is the study it derives from; give a new directory", file=sys.stderr)
        return 2
    to.mkdir(parents=True, exist_ok=True)
    save_json(to / "config.json", {**cfg, "out": str(to), "epochs": epochs, "derived_from": str(src)})
    save_json(to / "plan.json", {**state, "budgets": keep})
    if not (to / "baseline.pt").exists():
        (to / "baseline.pt").symlink_to((src / "baseline.pt").resolve())
    print(f"{to}: {len(keep)} budget(s) of {src}, {epochs} fine-tune epochs; next: finetune --out {to}")
    return 0


# --- summary (tools/sbs_summary.py renders it) ------------------------------------------------------

def summarise(cfg: dict) -> dict:
    from sbs_summary import markdown, pareto, summary_of
    out = Path(cfg["out"])
    results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    summary = summary_of(cfg, _load(out / "plan.json"), results)
    save_json(out / "summary.json", summary)
    (out / "summary.md").write_text(markdown(summary))
    pareto(summary, out / "pareto.png")
    return summary


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["plan", "finetune", "recheck", "summary", "derive"])
    p.add_argument("--to", help="derive: the new study's directory")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--target", default="ort-cpu")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-samples", type=int, default=12000)
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--baseline-epochs", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="fine-tune epochs (the pipeline's recipe)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.35])
    p.add_argument("--candidates", type=int, default=32)
    p.add_argument("--refine", type=int, default=16)
    p.add_argument("--greedy-steps", type=int, default=8, help="the search's NetAdapt-style candidate (0: none)")
    p.add_argument("--finetune-steps", type=int, default=0, help="the search's finalists scored after this many "
                   "distillation steps (0: BN re-estimation only)")
    p.add_argument("--absolute", action="store_true", help="edgeprune's loop reads each model alone against "
                   "an absolute budget (before: a drifting host moved its verdicts) instead of paired with the unpruned one")
    p.add_argument("--profiles-dir", help="latency tables (default: OUT/profiles, so a study never rewrites the committed tables)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--reads", type=int, default=5, help="recheck: paired readings per baseline")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    a = p.parse_args()
    if not all(0 < f < 1 for f in a.budgets):
        p.error(f"--budgets are shares of the unpruned latency, between 0 and 1 (got {a.budgets})")
    counts = [a.epochs, a.baseline_epochs, *a.seeds, a.candidates, a.refine, a.greedy_steps, a.finetune_steps]
    if a.jobs < 1 or a.reads < 1 or any(x < 0 for x in counts):
        p.error("--jobs and --reads must be >= 1; --epochs, --baseline-epochs, --seeds, --candidates, --refine, "
                "--greedy-steps and --finetune-steps >= 0")
    out = Path(a.out)
    cfg_path = out / "config.json"
    if a.phase == "plan" and not cfg_path.exists():
        save_json(cfg_path, {"out": str(out), "model": a.model, "target": a.target, "input_size": a.input_size,
                             "data": a.data, "train_samples": a.train_samples, "val_samples": a.val_samples,
                             "baseline_epochs": a.baseline_epochs, "epochs": a.epochs, "budgets": a.budgets,
                             "profiles_dir": a.profiles_dir or str(Path(a.out) / "profiles"),
                             "anchored": not a.absolute,
                             "abn": {"samples": a.candidates, "refine": a.refine, "greedy_steps": a.greedy_steps,
                                     "finetune_steps": a.finetune_steps}})
    if not cfg_path.exists():
        print(f"side_by_side: {cfg_path} missing: run the plan phase first", file=sys.stderr)
        return 2
    cfg = json.loads(cfg_path.read_text())
    if a.phase == "derive":
        return derive(cfg, out, Path(a.to or p.error("derive needs --to DIR")), a.epochs, a.budgets)
    if a.phase == "plan":
        plan(cfg, a.methods)
    elif a.phase == "finetune":
        finetune(cfg, a.seeds, a.jobs, a.methods)
    elif a.phase == "recheck":
        recheck(cfg, a.reads)
    summarise(cfg)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency-table fitting study: collect the raw measurements once, then compare ways of
turning them into predictions on random configurations measured twice (the second pass gives
the measurement noise floor that no table can beat).

    python tools/table_study.py collect --model resnet18 --input-size 32 --random 120 --out runs/study/r18-32.json
    python tools/table_study.py analyse runs/study/r18-32.json --train 10 30 60

``analyse`` fits on the first N random configurations (minimum of the two passes) and
predicts the others, three ways: the noise floor (pass A against pass B), the profiler sum
with scale and offset only, and edgeprune's calibration (scale, offset and per-group terms).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeprune.runtime.cpus import passive_openmp  # noqa: E402

passive_openmp()  # before torch loads


def collect(args) -> None:
    import torch

    from edgeprune.latency.profile import (
        Exporter,
        ProfileConfig,
        colour_groups,
        level_grid,
        profile_config,
        random_widths,
    )
    from edgeprune.pruning.groups import analyse
    from edgeprune.runtime import get_target
    from edgeprune.training.models import build_model
    torch.set_num_threads(1)
    target = get_target(args.target)
    shape = (1, 3, args.input_size, args.input_size)
    model = build_model(args.model, num_classes=10, in_channels=3).eval()
    structure = analyse(model, shape)
    cfg = ProfileConfig(levels=args.levels, progress=False)
    levels = level_grid(structure, cfg)
    m = len(next(iter(levels.values())))
    colours = colour_groups(structure, m)
    design = [{g: levels[g][(i + j * colours[g]) % m] for g in levels} for j in range(m) for i in range(m)]
    rng = np.random.default_rng(args.seed)
    rand = (sample_configs(structure, cfg, rng, args.random) if args.sampler == "mixed"
            else [random_widths(structure, cfg, rng) for _ in range(args.random)])
    rand[0] = structure.full_widths()  # the unpruned model: the anchor every budget is a share of
    t0 = time.time()
    with tempfile.TemporaryDirectory() as work:
        files = Exporter(model, shape, Path(work))
        samples = [profile_config(files, target, w, cfg.runs) for w in design]
        t_prof = time.time() - t0
        e2e_design = files.measure(target, design)
        t1 = time.time()
        pass_a = files.measure(target, rand)
        t_rand = time.time() - t1
        order = list(range(len(rand)))[::-1]
        pass_b_rev = files.measure(target, [rand[i] for i in order])
        pass_b = [0.0] * len(rand)
        for k, i in enumerate(order):
            pass_b[i] = pass_b_rev[k]
    data = {"model": args.model, "input_size": args.input_size, "levels": levels,
            "groups": {g.name: g.channels for g in structure.groups.values()},
            "layers": {l.name: l.axes for l in structure.layers.values()},
            "weights": weight_counts(model, structure), "sampler": args.sampler,
            "design": [{**s, "e2e_ms": e} for s, e in zip(samples, e2e_design)],
            "random": [{"widths": w, "a_ms": a, "b_ms": b} for w, a, b in zip(rand, pass_a, pass_b)],
            "seconds": {"profile": round(t_prof, 1), "random_pass": round(t_rand, 1)}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data))
    print(json.dumps(data["seconds"]))


def sample_configs(structure, cfg, rng, n: int) -> list[dict[str, int]]:
    """What profile's calibration draws (edgeprune.latency.profile.sample_widths)."""
    from edgeprune.latency.profile import sample_widths
    return sample_widths(structure, cfg, rng, n)


def weight_counts(model, structure) -> dict[str, list]:
    """{layer: [full weight count, in group, out group, depthwise]}: a configuration's weight
    bytes follow from its widths."""
    mods = dict(model.named_modules())
    return {name: [int(mods[name].weight.numel()), l.in_group, l.out_group, bool(l.depthwise)]
            for name, l in structure.layers.items() if name in mods and hasattr(mods[name], "weight")}


def weight_mb(weights: dict, groups: dict, widths: dict) -> float:
    total = 0.0
    for n, (count, gi, go, dw) in weights.items():
        f = 1.0
        for g in ([go] if dw else [gi, go]):
            if g:
                f *= widths[g] / groups[g]
        total += count * f
    return total * 4 / 1e6


def error(pred, meas) -> str:
    rel = (np.asarray(pred) - np.asarray(meas)) / np.asarray(meas)
    return f"within ±10% {np.mean(np.abs(rel) <= 0.1):4.0%}  RMSPE {np.sqrt(np.mean(rel ** 2)):5.1%}"


def analyse(path: str, train_sizes: list[int]) -> None:
    from edgeprune.latency.calibration import Calibration, fit
    from edgeprune.latency.profile import layer_entry
    from edgeprune.latency.table import LatencyTable
    d = json.loads(Path(path).read_text())
    groups, rand = d["groups"], d["random"]
    entries = {n: layer_entry(n, axes, d["levels"], d["design"]) for n, axes in d["layers"].items()}
    table = LatencyTable({}, groups, entries, 0.0)
    widths = [r["widths"] for r in rand]
    raw = np.array([table.raw({**groups, **w}) for w in widths])
    a, b = np.array([r["a_ms"] for r in rand]), np.array([r["b_ms"] for r in rand])
    meas = np.minimum(a, b)
    print(f"{path}: {d['model']} {d['input_size']} px, {len(groups)} groups, {len(rand)} random configurations")
    print(f"  noise floor (pass A vs pass B)            {error(a, b)}")
    for n in train_sizes:
        test = slice(n, None)
        plain = fit(raw[:n], widths[:n], meas[:n], {}, align=1)  # no groups: scale and offset only
        full = fit(raw[:n], widths[:n], meas[:n], groups)
        for name, cal in (("scale+offset", plain), ("calibration", full)):
            pred = [Calibration.total_ms(cal, r, w, groups) for r, w in zip(raw[test], widths[test])]
            print(f"  fit on {n:3d}, {name:<14} ({len(rand) - n:3d} tested) {error(pred, meas[test])}")
        if "weights" in d:
            mb = np.array([weight_mb(d["weights"], groups, {**groups, **w}) for w in widths])
            for name, cols in (("+ weight MB", [mb]), ("+ MB, MB>32", [mb, np.maximum(mb - 32, 0)]),
                               ("+ MB, MB²", [mb, mb ** 2])):
                pred = _fit_extra(raw, widths, meas, groups, np.column_stack(cols), n)
                print(f"  fit on {n:3d}, {name:<14} ({len(rand) - n:3d} tested) {error(pred[test], meas[test])}")
    if "weights" in d:
        mb = np.array([weight_mb(d["weights"], groups, {**groups, **w}) for w in widths])
        print(f"  weights: {mb.min():.1f}-{mb.max():.1f} MB; unpruned {mb[0]:.1f} MB measured {meas[0]:.3f} ms")
    if d.get("sampler") == "mixed":
        by_sampling(raw, widths, meas, a, b, groups, mb)


def by_sampling(raw, widths, meas, a, b, groups, mb, big_mb: float = 25.0, n: int = 20) -> None:
    """The calibration fitted on uniform configurations only (the old sampling) against one
    fitted on the unpruned model plus both kinds: mean error on big and small held-out models."""
    from edgeprune.latency.calibration import Calibration, fit
    uniform, level = list(range(2, len(meas), 2)), list(range(1, len(meas), 2))
    for name, train in (("uniform only", uniform[:2 * n]), ("unpruned + mixed", [0] + uniform[:n] + level[:n])):
        cal = fit(raw[train], [widths[i] for i in train], meas[train], groups)
        test = [i for i in range(1, len(meas)) if i not in train]
        rel = np.array([(Calibration.total_ms(cal, raw[i], widths[i], groups) - meas[i]) / meas[i] for i in test])
        big = mb[test] > big_mb
        print(f"  {name:<17} fit on {len(train)}: {error(rel * meas[test] + meas[test], meas[test])}; mean error "
              f"{rel[big].mean():+.1%} on {big.sum()} models > {big_mb:g} MB, {rel[~big].mean():+.1%} on the others; "
              f"unpruned predicted {Calibration.total_ms(cal, raw[0], widths[0], groups):.3f} ms")
    noise = (a - b) / b
    print(f"  noise floor by size: {np.sqrt(np.mean(noise[mb > big_mb] ** 2)):.1%} RMS > {big_mb:g} MB, "
          f"{np.sqrt(np.mean(noise[mb <= big_mb] ** 2)):.1%} below; unpruned passes {a[0]:.3f} / {b[0]:.3f} ms")


def _fit_extra(raw, widths, meas, groups, extra, n):
    """The calibration's design matrix plus global columns, ridge chosen by LOO on the first n."""
    from edgeprune.latency.calibration import RIDGE_GRID, _loo_rmspe, _solve
    names = sorted(groups)
    X = np.column_stack([raw, np.ones_like(raw)] + [col for g in names for col in (
        [float(w[g] % 16 == 0) for w in widths], [w[g] / groups[g] for w in widths])] + [extra])
    pen = np.ones(X.shape[1])
    pen[:2] = 0
    Xs = X / np.maximum(np.abs(X[:n]).max(axis=0), 1e-9)  # scale columns so one ridge fits all
    lam = min(RIDGE_GRID, key=lambda r: _loo_rmspe(Xs[:n], meas[:n], r, pen))
    return Xs @ _solve(Xs[:n], meas[:n], lam, pen)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--model", default="resnet18")
    c.add_argument("--target", default="ort-cpu")
    c.add_argument("--input-size", type=int, default=32)
    c.add_argument("--levels", type=int, default=5)
    c.add_argument("--random", type=int, default=120)
    c.add_argument("--seed", type=int, default=7)
    c.add_argument("--sampler", choices=["uniform", "mixed"], default="mixed")
    c.add_argument("--out", required=True)
    a = sub.add_parser("analyse")
    a.add_argument("files", nargs="+")
    a.add_argument("--train", nargs="+", type=int, default=[10, 30, 60])
    args = p.parse_args()
    if args.cmd == "collect":
        collect(args)
    else:
        for f in args.files:
            analyse(f, args.train)


if __name__ == "__main__":
    main()

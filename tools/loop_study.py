"""The closed loop read alone against an absolute budget, and paired with the unpruned model
against a relative one (``--budget-ratio``, ``search.loop.Anchor``), on the same host in the same
period (issue 9, item 7: "the loop done in <= 2 rounds").

    python tools/loop_study.py --model resnet18 --input-size 32 --budgets 0.5 0.35 --repeats 2 [--modes anchored --centres 0 0.5] \\
        --profiles-dir runs/loop-study/profiles --out runs/loop-study/study.json

The two loops run in turn (absolute, anchored, absolute, ...), each from a fresh table without
landings (``--landings``: each loop corrected by the readings of the loops before it), with
the kept-importance planner (no data: the latency side alone). The absolute budget is the share
of one reading of the unpruned model taken at the start, as a user who measured once would set
it. Every kept model is then measured against the unpruned model in
alternating blocks, in one pass at the end: its paired share says where each loop really landed,
against the aim (the share times 1 - the loop's margin). ``--centres`` runs each loop once per
``LoopConfig.centre`` in turn: 0 aims every step at the aim itself, the top of the window a fit
must land in (the loop before session 13), 0.5 at the window's middle (the default now).
``--grows`` does the same for ``LoopConfig.grow``: 1 grows a first fit far under the aim only
on a confirmed reading (the loop before session 16), 0.10 whenever it lands 10% under.
``--pools`` does the same for ``LoopConfig.pool``: 0 decides on the first paired reading (the
loop before session 17), 1 pools a reading unsure at an edge with one more set of runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgeprune.runtime.cpus import passive_openmp  # noqa: E402

passive_openmp()  # before torch loads


def run_loops(a) -> tuple[list[dict], Path, object]:
    from edgeprune.artifacts.onnxio import export_onnx
    from edgeprune.search.knapsack import SearchConfig
    from edgeprune.search.loop import Anchor, fit_budget
    from edgeprune.session import Session, SessionConfig
    s = Session.open(SessionConfig(model=a.model, target=a.target, input_size=a.input_size,
                                   profiles_dir=a.profiles_dir, landings=a.landings, progress=False))
    table, scfg, scores = s.table(), SearchConfig(), s.scores()
    tmp = Path(tempfile.mkdtemp(prefix="loop-study-"))
    unpruned = export_onnx(s.model, s.input_shape, tmp / "unpruned.onnx")
    start_ms = sorted(s.target.measure(unpruned).median_ms for _ in range(3))[1]
    level = table.full_ms
    print(f"unpruned: read {start_ms:.4f} ms, table {level:.4f} ms", flush=True)
    rows = []
    for frac in a.budgets:
        for rep in range(a.repeats):
            for mode, (name, cfg) in [(m, v) for m in a.modes for v in variants(a)]:
                label = f"{mode}, {name}" if name else mode
                anchor = Anchor(unpruned, level) if mode == "anchored" else None
                budget = frac * (level if anchor else start_ms)
                t0 = time.perf_counter()
                try:
                    r = fit_budget(s.model, s.input_shape, table, scores, s.target, budget, scfg,
                                   cfg, anchor)
                except Exception as e:  # noqa: BLE001 (a loop that gives up is a finding)
                    rows.append({"budget": frac, "repeat": rep, "mode": label, "failed": f"{type(e).__name__}: {e}"[:200]})
                    continue
                path = export_onnx(r.model, s.input_shape, tmp / f"{frac}-{rep}-{mode}-{cfg.centre:g}-{cfg.grow:g}-{cfg.pool}.onnx")
                rows.append({"budget": frac, "repeat": rep, "mode": label, "onnx": str(path),
                             "rounds": len(r.rounds), "pooled": sum(x.remeasured for x in r.rounds),
                             "seconds": round(time.perf_counter() - t0, 1),
                             "predicted_ms": r.search.predicted_ms, "loop_reading_ms": r.latency.median_ms,
                             "readings": [x.to_dict() for x in r.rounds]})
                print(f"{frac:g} #{rep} {label}: {len(r.rounds)} rounds, predicted {r.search.predicted_ms:.4f}", flush=True)
    return rows, unpruned, s.target


def variants(a) -> list[tuple[str, object]]:
    """(label, LoopConfig) for every --centres x --grows x --pools setting; the label names only
    the settings that vary, so a study of one setting reads as before."""
    from itertools import product

    from edgeprune.search.loop import LoopConfig
    out = []
    for centre, grow, pool in product(a.centres, a.grows, a.pools):
        name = ", ".join(s for s, many in ((f"centre {centre:g}", len(a.centres) > 1), (f"grow {grow:g}", len(a.grows) > 1),
                                           (f"pool {pool}", len(a.pools) > 1)) if many)
        out.append((name, LoopConfig(centre=centre, grow=grow, pool=pool)))
    return out


def landed(rows: list[dict], unpruned: Path, target, margin: float) -> None:
    """Every kept model's paired share of the unpruned model, all in one pass at the end."""
    from edgeprune.pruning.baselines import paired_ratio
    for row in rows:
        if "onnx" in row:
            share, ci = paired_ratio(target, unpruned, Path(row["onnx"]))
            aim = row["budget"] * (1 - margin)
            row.update(share=share, share_ci=list(ci), off_aim=share / aim - 1, fits=share <= row["budget"])


def pick_errors(row: dict) -> list[float]:
    """The table's error at each round's pick, predicted / read - 1, in the loop's own units
    (an anchored loop's readings are paired shares times the table's unpruned prediction, so
    this is the error of the table's *ratio*, which is all a relative budget asks of it)."""
    return [r["predicted_ms"] / r["measured_ms"] - 1 for r in row.get("readings", []) if r["measured_ms"] > 0]


def summary(rows: list[dict]) -> list[str]:
    lines = [("| budget | loop | runs | rounds (each) | table error at the picks, each round | median \\|error\\| "
              "| paired share of unpruned (each) | off the aim, median | fits |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for frac in sorted({r["budget"] for r in rows}, reverse=True):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            rs = [r for r in rows if r["budget"] == frac and r["mode"] == mode]
            ok = [r for r in rs if "share" in r]
            gave_up = f" ({len(rs) - len(ok)} gave up)" if len(ok) < len(rs) else ""
            rounds = " / ".join(str(r["rounds"]) for r in ok) or "—"
            shares = " / ".join(f"{r['share']:.3f}" for r in ok) or "—"
            off = f"{statistics.median(r['off_aim'] for r in ok):+.1%}" if ok else "—"
            fits = sum(r["fits"] for r in ok)
            errs = [pick_errors(r) for r in ok]
            each = " / ".join(", ".join(f"{100 * e:+.0f}%" for e in es) for es in errs) or "—"
            flat = [abs(e) for es in errs for e in es]
            med = f"{statistics.median(flat):.1%}" if flat else "—"
            lines.append(f"| {frac:.0%} | {mode} | {len(rs)} | {rounds} | {each} | {med} | {shares} | {off} "
                         f"| {fits} of {len(rs)}{gave_up} |")
    flat = [abs(e) for r in rows for e in pick_errors(r)]
    rounds = [r["rounds"] for r in rows if "rounds" in r]
    if flat:
        lines.append(f"\nAll loops: median |error| at the picks {statistics.median(flat):.1%} over {len(flat)} picks; "
                     f"{sum(n <= 2 for n in rounds)} of {len(rounds)} loops done in <= 2 rounds.")
    return lines


def study_parser(doc: str, budgets: list[float], repeats: int) -> argparse.ArgumentParser:
    """The arguments every study of the loop takes (this one and ``anchor_study.py``)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--target", default="ort-cpu")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--budgets", nargs="+", type=float, default=budgets)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--profiles-dir", required=True, help="tables (a copy: the study never rewrites committed ones)")
    p.add_argument("--out", required=True)
    return p


def parse_study(p: argparse.ArgumentParser, extra_ok=lambda a: True, extra: str = "") -> argparse.Namespace:
    """Parse ``study_parser``'s arguments (plus a tool's own, judged by ``extra_ok``), refusing
    out-of-range ones in one line (argparse's exit 2)."""
    a = p.parse_args()
    if not all(0 < f < 1 for f in a.budgets) or a.repeats < 1 or not extra_ok(a):
        p.error("--budgets are shares in (0, 1); --repeats >= 1" + (f"; {extra}" if extra else ""))
    return a


def main() -> int:
    p = study_parser(__doc__, [0.5, 0.35], 2)
    p.add_argument("--modes", nargs="+", choices=("absolute", "anchored"), default=["absolute", "anchored"],
                   help="which loops run, in turn (anchored: --budget-ratio, paired with the unpruned model)")
    p.add_argument("--landings", action="store_true",
                   help="correct the table with the loops' own readings as they go (edgeprune.latency.landings): "
                        "each loop learns from the ones before it, as successive prune runs do")
    p.add_argument("--centres", nargs="+", type=float, default=[0.5],
                   help="LoopConfig.centre values, each loop run with each in turn (0 = aim at the window's edge)")
    p.add_argument("--grows", nargs="+", type=float, default=[0.10],
                   help="LoopConfig.grow values, in turn with each centre (1 = a first fit is grown only on a confirmed reading)")
    p.add_argument("--pools", nargs="+", type=int, default=[1],
                   help="LoopConfig.pool values, in turn with the others (0 = decide on the first paired reading)")
    a = parse_study(p, lambda a: all(0 <= c <= 1 for c in a.centres) and all(0 < g <= 1 for g in a.grows)
                    and all(n >= 0 for n in a.pools), "--centres in [0, 1]; --grows in (0, 1]; --pools >= 0")
    from side_by_side import save_json

    from edgeprune.search.loop import LoopConfig
    rows, unpruned, target = run_loops(a)
    landed(rows, unpruned, target, LoopConfig().margin)
    save_json(Path(a.out), {"args": vars(a), "rows": rows})
    print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

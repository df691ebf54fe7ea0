"""Is the unpruned model a steady yardstick? Its reading alone and in alternating blocks (issue 9, item 7).

A relative budget (``--budget-ratio``, ``search.loop.Anchor``) reads every candidate in short
alternating blocks with the unpruned model, so that the host's level cancels. That holds when
both models keep their own speed while they alternate. This asks whether they do: for the
search's picks at ``--budgets`` (kept-importance search on the table in ``--profiles-dir``), each
repeat reads the unpruned model and the pick alone (``Target.measure``), then alternating at
each ``--blocks`` length (``runtime.timing.measure_alternating``), and prints both shares next
to the table's.

    python tools/anchor_study.py --model resnet18 --budgets 0.5 0.3 --repeats 3 \\
        --profiles-dir runs/loop-study2/profiles --out runs/loop-study2/anchor-r18.json
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgeprune.runtime.cpus import passive_openmp  # noqa: E402

passive_openmp()  # before torch loads


def picks(s, table, budgets: list[float], work: Path) -> dict[float, tuple[Path, float]]:
    """The kept-importance search's pick at each share of the table's unpruned prediction:
    (its ONNX file, the table's share for it)."""
    from edgeprune.artifacts.onnxio import export_onnx
    from edgeprune.pruning.prune import prune_to_widths
    from edgeprune.search.knapsack import SearchConfig, search
    full, scores, out = table.predict({}), s.scores(), {}
    for b in budgets:
        w = search(table, scores, b * full, SearchConfig()).widths
        out[b] = (export_onnx(prune_to_widths(s.model, s.input_shape, w), s.input_shape, work / f"pick-{b:g}.onnx"),
                  table.predict(w) / full)
    return out


def read(target, unpruned: Path, pick: Path, blocks_ms: list[float]) -> dict:
    """One repeat: both models alone, then alternating at every block length."""
    from edgeprune.runtime.cpus import pinned
    from edgeprune.runtime.timing import measure_alternating
    u, p = target.measure(unpruned).median_ms, target.measure(pick).median_ms
    row = {"alone": {"unpruned_ms": u, "pick_ms": p, "share": p / u}, "alternating": {}}
    a, b = target.compile(unpruned), target.compile(pick)
    for ms in blocks_ms:
        with pinned(target.spec.threads):
            alt = measure_alternating(a.run_once, b.run_once, target.spec.timing, block_s=ms / 1e3)
        row["alternating"][f"{ms:g}"] = {"unpruned_ms": alt.latencies[0].median_ms, "pick_ms": alt.latencies[1].median_ms,
                                         "share": statistics.median(alt.window_ratios)}
    return row


def fmt(r: dict) -> str:
    return f"{r['unpruned_ms']:.3f} / {r['pick_ms']:.3f} / {r['share']:.3f}"


def summary(rows: list[dict], blocks_ms: list[float]) -> list[str]:
    head = ["budget", "table's share", "alone: unpruned ms / pick ms / share"] + [
        f"{ms:g} ms blocks: unpruned / pick / share" for ms in blocks_ms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['budget']:.0%} #{r['repeat']}", f"{r['table_share']:.3f}", fmt(r["alone"])] + [
            fmt(r["alternating"][f"{ms:g}"]) for ms in blocks_ms]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    from loop_study import parse_study, study_parser
    p = study_parser(__doc__, [0.5, 0.3], 3)
    p.add_argument("--blocks", nargs="+", type=float, default=[5, 20, 50], help="alternation block lengths, ms")
    a = parse_study(p, lambda a: all(ms > 0 for ms in a.blocks), "--blocks > 0 ms")
    from side_by_side import save_json

    from edgeprune.artifacts.onnxio import export_onnx
    from edgeprune.session import Session, SessionConfig
    s = Session.open(SessionConfig(model=a.model, target=a.target, input_size=a.input_size,
                                   profiles_dir=a.profiles_dir, landings=False, progress=False))
    table, rows = s.table(), []
    with tempfile.TemporaryDirectory() as tmp:
        unpruned = export_onnx(s.model, s.input_shape, Path(tmp) / "unpruned.onnx")
        chosen = picks(s, table, a.budgets, Path(tmp))
        for rep in range(a.repeats):  # repeats outermost: every budget is read in every period
            for b, (pick, share) in chosen.items():
                rows.append({"budget": b, "repeat": rep, "table_share": share, **read(s.target, unpruned, pick, a.blocks)})
                print("\n".join(summary(rows[-1:], a.blocks)[2:]), flush=True)
    save_json(Path(a.out), {"args": vars(a), "table_unpruned_ms": table.predict({}), "rows": rows})
    print("\n".join(summary(rows, a.blocks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``edgeprune report RUN...``: re-render each prune run's report (with its charts), and put
several runs on one accuracy-against-measured-latency plot, one series per objective × target."""
from __future__ import annotations

from pathlib import Path

from edgeprune.artifacts.onnxio import atomic_write
from edgeprune.errors import UsageError
from edgeprune.reports.model import PruneReport
from edgeprune.reports.report import (
    fmt_ms,
    fmt_pct,
    fmt_speedup,
    md_table,
    write_charts,
    write_report,
)
from edgeprune.runs import Run, read_run


def series_name(r: PruneReport) -> str:
    return f"{(r.search.objective if r.search else None) or 'edgeprune'} · {r.target}"


def _report_of(run: Run) -> PruneReport:
    """The run's report to re-render (validated on read), with what its run.json says (model,
    target, budget) in place of the report's copies: the manifest is the run's contract, the
    report its story."""
    if run.report is None:
        raise UsageError(f"{run.dir} has no report.json to render; run prune again")
    m = run.manifest
    if m is None:  # a run made before run.json: its report is all there is
        return run.report
    return run.report.model_copy(update={"model": m.model, "target": m.target.name, "budget_ms": m.budget_ms})


def compare_runs(runs: list[str | Path], out: str | Path) -> Path:
    """Refresh every run's report.md and charts; write OUT/pareto.png and OUT/report.md."""
    from edgeprune.reports.plots import Point, pareto_png
    reports = [_report_of(read_run(run, finished=False)) for run in runs]  # all read before anything is written
    out = Path(out)
    series: dict[str, list] = {}
    for run, r in zip(runs, reports):
        r.charts = write_charts(r, run)
        write_report(r, run)
        if r.measured_ms is not None and r.accuracy_after is not None:
            series.setdefault(series_name(r), []).append(
                Point(r.measured_ms, r.accuracy_after, label=f"{Path(run).name}"))
        if r.baseline_ms is not None and r.accuracy_before is not None:
            series.setdefault(f"unpruned · {r.target}", []).append(Point(r.baseline_ms, r.accuracy_before))
    series = {k: list({(p.latency_ms, p.accuracy): p for p in v}.values()) for k, v in series.items()}
    pareto_png(series, out / "pareto.png", "accuracy against measured latency")
    rows = [(f"[{Path(run).name}]({Path(run).resolve() / 'report.md'})", r.model, r.target,
             series_name(r).split(" · ")[0], fmt_ms(r.budget_ms), fmt_ms(r.measured_ms),
             fmt_speedup(r.speedup), fmt_pct(r.accuracy_before), fmt_pct(r.accuracy_after))
            for run, r in zip(runs, reports)]
    lines = ["# edgeprune runs", "", "![accuracy against measured latency](pareto.png)", "",
             *md_table(("run", "model", "target", "objective", "budget", "measured", "speed-up",
                        "accuracy before", "accuracy after"), rows)]
    with atomic_write(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out / "report.md"

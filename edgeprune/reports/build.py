"""The prune run's report, built as the typed ``PruneReport`` from what the run produced
(``PruneOutcome``). Kept apart from ``pipeline`` so the job reads as its stages and the report's
shape is set in one place beside its model (``reports/model.py``)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from edgeprune import __version__
from edgeprune.reports.model import (
    SCHEMA_VERSION,
    ArtifactPart,
    BudgetVerdictPart,
    Epoch,
    ErrorAtPicks,
    Finetune,
    Landings,
    Layer,
    LayerMs,
    MetricsPart,
    PruneReport,
    RoundRow,
    SearchSummary,
    Step,
    TableError,
    TableSummary,
)

if TYPE_CHECKING:
    from edgeprune.artifacts.export import ExportResult
    from edgeprune.latency.table import LatencyTable
    from edgeprune.pipeline import FinalMeasurement, PruneJob
    from edgeprune.search.loop import LoopResult
    from edgeprune.session import Session
    from edgeprune.training.metrics import Metrics


def error_at_picks(rounds: list[dict]) -> ErrorAtPicks:
    """The table's error where it matters: at the widths the search picked, measured by the loop
    (random configurations can look fine while the picks are off, issue 9). ``errors`` are those
    of the predictions the loop used (landings included); ``profile_errors`` those of the
    profile alone."""
    def stats(key: str) -> tuple[list[float], float | None]:
        errs = [r[key] / r["measured_ms"] - 1 for r in rounds if r.get("measured_ms") and r.get(key)]
        return [round(e, 4) for e in errs], round(statistics.median(abs(e) for e in errs), 4) if errs else None
    errs, med = stats("predicted_ms")
    profile, profile_med = stats("calibrated_ms")
    return ErrorAtPicks(n=len(errs), errors=errs, median_abs=med,
                        profile_errors=profile, profile_median_abs=profile_med)


def landings_summary(table, before: int | None) -> Landings:
    """How many of this host's loop readings corrected the table, and how many it keeps now."""
    if table.landings is None:
        return Landings(used=False)
    return Landings(used=True, path=str(table.landings.path) if table.landings.path else None,
                    before=before, after=len(table.landings))


def search_summary(result: LoopResult) -> SearchSummary:
    """What chose the widths, and how the accuracy search's reference candidates scored."""
    found = {}
    settled = round(result.search.budget_ms, 5)  # the references at the budget the loop settled at
    for origin in ("uniform", "importance", "greedy"):
        scores = [c["accuracy"] for c in result.candidates if c["origin"] in (origin, f"rescaled {origin}")
                  and c["budget_ms"] == settled and "accuracy" in c]
        if scores:
            found[f"{origin}_proxy_accuracy"] = scores[-1]
    return SearchSummary(objective=result.search.objective, proxy_accuracy=result.search.proxy_accuracy,
                         candidates=len(result.candidates), **found)


@dataclass
class PruneOutcome:
    """What a prune run produced, gathered for its report (``build_report``)."""

    budget_ms: float
    measured: FinalMeasurement
    result: LoopResult             # the last step's closed loop: the widths and their search
    rounds: list[dict]             # every step's loop rounds, each tagged with its step
    steps: list[dict]              # per gradual step: its search and the accuracy path after it
    table: LatencyTable
    landed: int | None             # landings the table had before this run (None: not used)
    before: Metrics                # the unpruned model's test metrics
    after: Metrics                 # the pruned, fine-tuned model's
    stats_before: dict             # model_stats: params, macs
    stats_after: dict
    artifact: ExportResult         # model.onnx
    device_artifact: ExportResult | None  # the target's own format, when it has one
    size_before: int               # bytes of the unpruned model's ONNX file
    history: list[dict]            # fine-tune epochs, tagged with their step
    layer_ms: dict                 # measured per-layer ms: {"before": {...}, "after": {...}}
    stage_seconds: dict[str, float]


def build_report(s: Session, job: PruneJob, o: PruneOutcome) -> PruneReport:
    """The run's report, typed; every key a report has always had is set (None when there is no
    value), so report.json keeps its keys. ``charts`` is added once they are drawn."""
    table, result, measured = o.table, o.result, o.measured
    protected = set(s.search_config(job.search).protect)
    layers = [Layer(group=g, modules=s.structure.groups[g].producers, channels=c, kept=result.widths.get(g, c),
                    ratio=round(result.widths.get(g, c) / c, 4), protected=g in protected)
              for g, c in table.groups.items()]
    err = TableError(**{k: getattr(table.error, k) for k in ("n", "within_10pct", "rmspe", "max_abs_pct")})
    return PruneReport(
        schema_version=SCHEMA_VERSION,
        model=s.cfg.model, target=s.spec.name, input_size=s.cfg.input_size, engine=job.engine,
        data=s.data.name, budget_ms=o.budget_ms, budget_ratio=job.budget_ratio, baseline_ms=measured.baseline.median_ms,
        baseline_p90_ms=measured.baseline.p90_ms, predicted_ms=result.search.predicted_ms,
        measured_ms=measured.budget.latency_ms, measured_p90_ms=measured.final.p90_ms,
        measured_runs=measured.final.runs, measured_window_medians_ms=list(measured.final.window_medians_ms),
        final_same_run_ms=measured.final.median_ms,
        # not shown to be over; "budget_verdict" says whether it fits or noise leaves it open
        within_budget=measured.budget.verdict != "over",
        budget_verdict=BudgetVerdictPart(**measured.budget.to_dict()),
        accuracy_before=o.before.accuracy, accuracy_after=o.after.accuracy,
        metrics_before=MetricsPart(**o.before.to_dict()), metrics_after=MetricsPart(**o.after.to_dict()),
        params_before=o.stats_before["params"], params_after=o.stats_after["params"],
        macs_before=o.stats_before["macs"], macs_after=o.stats_after["macs"],
        size_bytes_before=o.size_before, size_bytes_after=o.artifact.size_bytes,
        kept_importance=result.search.to_dict()["kept_importance"], layers=layers, widths=result.widths,
        table=TableSummary(path=str(table.path), hash=table.digest, error=err,
                           error_at_picks=error_at_picks(o.rounds), landings=landings_summary(table, o.landed)),
        rounds=[RoundRow(**r) for r in o.rounds], stage_seconds=o.stage_seconds,
        finetune=Finetune(history=[Epoch(**h) for h in o.history], epochs=job.epochs if job.finetune else 0,
                          steps=job.steps),
        artifact=_artifact_part(o.artifact),
        versions={"edgeprune": __version__, "torch": torch.__version__, "runtime": s.target.runtime_version()},
        speedup=measured.speedup["ratio"], speedup_ci=measured.speedup["ci"],
        speedup_method=measured.speedup["method"],
        accuracy_pruned=o.steps[-1]["accuracy_pruned"], accuracy_recalibrated=o.steps[-1]["accuracy_recalibrated"],
        search=search_summary(result), steps=[Step(**st) for st in o.steps],
        layer_ms=LayerMs(**o.layer_ms),
        **({"device_artifact": _artifact_part(o.device_artifact)} if o.device_artifact else {}),
    )


def _artifact_part(art) -> ArtifactPart:
    return ArtifactPart(path=str(art.path), kind=art.kind, max_abs_diff=art.max_abs_diff, size_bytes=art.size_bytes)

"""``report.json`` as a typed model: what a prune run measured and decided, for people and tools.

Why a model and not a dict: the report used to be a 35-key dict assembled in one place and read
back with ``.get()`` in several others, so a renamed key or a string where a number belongs
surfaced as a "—" in report.md or a TypeError far from its cause. ``PruneReport`` names every
section and its units (``_ms``, ``_bytes``, ratios in 0..1), the pipeline builds it, and
``load_report`` validates a report.json on read, with one clear line for a damaged file.

Compatibility, both ways:

* the JSON keeps the keys and values it always had (``PruneReport.to_json_dict`` dumps only the
  fields that were set, in the order the report always listed them), so readers of report.json
  written against earlier versions keep working;
* reports made by older versions lack newer keys: every field except ``model`` and ``target`` is
  optional, and a field missing on read stays missing on write (nothing is invented);
* sections added later by other commands (``precisions`` from ``edgeprune quantize``) or by a
  newer edgeprune are kept as they are (``extra="allow"``, at every level).

``schema_version`` changes when a field is removed or changes meaning; a reader refuses a
version it does not know. A report without one predates the schema (version 1 in content).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1
FILENAME = "report.json"


class _Part(BaseModel):
    """A section of the report: typed where edgeprune reads it, open to keys it does not know."""

    model_config = ConfigDict(extra="allow")


class MetricsPart(_Part):
    """Test (or validation) metrics of one model; fractions in 0..1."""

    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    n: int | None = None                      # images evaluated
    loss: float | None = None


class BudgetVerdictPart(_Part):
    """``checks.comparison.BudgetVerdict.to_dict``: the pruned model against the budget."""

    verdict: str | None = None                # fits / over / inconclusive
    latency_ms: float | None = None
    ci_ms: list[float] | None = None          # [low, high]
    budget_ms: float | None = None
    windows: int | None = None
    confidence: float | None = None
    estimator: str | None = None


class Layer(_Part):
    """One channel group: how many output channels it had and how many the search kept."""

    group: str | None = None
    modules: list[str] | None = None
    channels: int | None = None
    kept: int | None = None
    ratio: float | None = None                # kept / channels
    protected: bool | None = None


class TableError(_Part):
    """The latency table against end-to-end measurements of random configurations."""

    n: int | None = None
    within_10pct: float | None = None         # fraction of checks within 10%
    rmspe: float | None = None                # root mean square percentage error, as a fraction
    max_abs_pct: float | None = None


class ErrorAtPicks(_Part):
    """The table's error at the widths the search picked (``reports.build.error_at_picks``)."""

    n: int | None = None
    errors: list[float] | None = None         # predicted / measured - 1, per round
    median_abs: float | None = None
    profile_errors: list[float] | None = None  # the profile alone, without this host's landings
    profile_median_abs: float | None = None


class Landings(_Part):
    """This host's loop readings that correct the table (``reports.build.landings_summary``)."""

    used: bool | None = None
    path: str | None = None
    before: int | None = None                 # readings kept before this run
    after: int | None = None                  # and after it


class TableSummary(_Part):
    path: str | None = None
    hash: str | None = None
    error: TableError | None = None
    error_at_picks: ErrorAtPicks | None = None
    landings: Landings | None = None


class RoundRow(_Part):
    """One closed-loop round (``search.loop.Round.to_dict``), tagged with its gradual step."""

    round: int | None = None
    search_budget_ms: float | None = None
    predicted_ms: float | None = None
    measured_ms: float | None = None
    measured_p90_ms: float | None = None
    remeasured: bool | None = None
    calibrated_ms: float | None = None        # the profile's own prediction, before landings
    yardstick: float | None = None            # paired rounds: the unpruned model's drift off the table
    #                                           over the candidate's (search.loop.yardstick_drift)
    step: int | None = None


class Epoch(_Part):
    """One fine-tune epoch."""

    epoch: int | None = None
    train_loss: float | None = None
    val: MetricsPart | None = None
    lr: float | None = None
    seconds: float | None = None
    rolled_back: bool | None = None
    step: int | None = None


class Finetune(_Part):
    history: list[Epoch] | None = None
    epochs: int | None = None                 # asked for, over all steps (0: no fine-tune)
    steps: int | None = None                  # gradual pruning steps
    rolled_back: bool | None = None


class ArtifactPart(_Part):
    """An exported file: ``artifact`` (model.onnx) or ``device_artifact`` (the target's format)."""

    path: str | None = None
    kind: str | None = None
    max_abs_diff: float | None = None         # against PyTorch, on the same input
    size_bytes: int | None = None


class SearchSummary(_Part):
    """What chose the widths (``reports.build.search_summary``); the ``*_proxy_accuracy`` references
    are there only when the accuracy search scored that reference at the settled budget."""

    objective: str | None = None
    proxy_accuracy: float | None = None
    candidates: int | None = None
    uniform_proxy_accuracy: float | None = None
    importance_proxy_accuracy: float | None = None
    greedy_proxy_accuracy: float | None = None


class StepSearch(_Part):
    """``search.knapsack.SearchResult.to_dict`` of one gradual step."""

    widths: dict[str, int] | None = None
    predicted_ms: float | None = None
    budget_ms: float | None = None
    full_ms: float | None = None
    kept_importance: float | None = None
    steps: int | None = None
    seconds: float | None = None
    objective: str | None = None
    proxy_accuracy: float | None = None


class Step(_Part):
    """One gradual pruning step: its search and the accuracy path after it."""

    step: int | None = None
    search: StepSearch | None = None
    accuracy_pruned: float | None = None
    accuracy_recalibrated: float | None = None
    accuracy_finetuned: float | None = None
    candidates: list[dict[str, Any]] | None = None


class LayerMs(_Part):
    """Measured time per layer, ms, of the unpruned and the pruned model (layers.png)."""

    before: dict[str, float] | None = None
    after: dict[str, float] | None = None


class PruneReport(_Part):
    """The whole report. Field order is the order report.json has always listed its keys."""

    schema_version: int | None = None         # None: a report made before the schema
    model: str
    target: str
    input_size: int | list[int] | None = None  # the side in pixels (a few early reports: the shape)
    engine: str | None = None                 # None: made before --engine (Torch-Pruning)
    data: str | None = None
    budget_ms: float | None = None
    budget_ratio: float | None = None         # --budget-ratio: budget_ms is this share of this run's unpruned reading
    baseline_ms: float | None = None          # unpruned, same alternating run as the pruned model
    baseline_p90_ms: float | None = None
    predicted_ms: float | None = None         # the table's prediction for the chosen widths
    measured_ms: float | None = None          # the budget verdict's estimate
    measured_p90_ms: float | None = None
    measured_runs: int | None = None
    measured_window_medians_ms: list[float] | None = None
    final_same_run_ms: float | None = None
    within_budget: bool | None = None         # not shown to be over (budget_verdict says which)
    budget_verdict: BudgetVerdictPart | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    metrics_before: MetricsPart | None = None
    metrics_after: MetricsPart | None = None
    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    size_bytes_before: int | None = None
    size_bytes_after: int | None = None
    kept_importance: float | None = None
    layers: list[Layer] | None = None
    widths: dict[str, int] | None = None
    table: TableSummary | None = None
    rounds: list[RoundRow] | None = None
    stage_seconds: dict[str, float] | None = None
    finetune: Finetune | None = None
    artifact: ArtifactPart | None = None
    versions: dict[str, str | None] | None = None
    speedup: float | None = None              # unpruned / pruned, paired same-run ratio
    speedup_ci: list[float] | None = None
    speedup_method: str | None = None
    accuracy_pruned: float | None = None      # test accuracy right after pruning (last step)
    accuracy_recalibrated: float | None = None  # ... after BN re-estimation
    search: SearchSummary | None = None
    steps: list[Step] | None = None
    layer_ms: LayerMs | None = None
    device_artifact: ArtifactPart | None = None
    charts: dict[str, str] | None = None      # chart name -> file beside the report

    def to_json_dict(self) -> dict:
        """What report.json holds: the fields that were set (a key an older report lacks stays
        absent, a key set to None is written as null), then the extra sections."""
        return self.model_dump(mode="json", exclude_unset=True)


def as_report_dict(report: PruneReport) -> dict:
    """The JSON dict the renderers lay out. They take only a PruneReport, so every report they
    show has been validated (an older report.json through ``load_report``), never a raw dict
    whose mistyped value would surface as a crash halfway through report.md."""
    if not isinstance(report, PruneReport):
        raise TypeError(f"expected a PruneReport (load_report or PruneReport.model_validate), "
                        f"got {type(report).__name__}")
    return report.to_json_dict()


def load_report(path: str | Path) -> PruneReport:
    """The report in ``path`` (a report.json). Every way it can be unusable (unreadable, not
    JSON, not an object, an unknown schema version, a mistyped field) is one UsageError line."""
    from edgeprune.manifest import read_versioned
    return read_versioned(Path(path), PruneReport, SCHEMA_VERSION, "a report written by edgeprune prune",
                          "a report made by another edgeprune version", unversioned_ok=True,
                          damaged=" (not a report written by edgeprune prune, or damaged)")

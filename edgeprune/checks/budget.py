"""What an artifact must fit, and how a reading is held against it (``edgeprune check``).

A budget is in ms (given, the target file's, or the one the artifact was pruned to), or, for a
run pruned with ``--budget-ratio``, a *share* of the unpruned model's latency, checked as it was
pruned: the run keeps that model beside its artifact (run.json's ``unpruned``) and the two run
in alternating blocks in one run. Judging a relative run against its budget in ms would judge
the host instead: a shared host drifts ±30% within minutes (BENCHMARKS.md), so a model that fits
its share read over budget whenever the host slowed. Each window's ratio pairs two readings
taken moments apart, so the host's level cancels; the share is the median window ratio over
``PAIRED_SESSIONS`` fresh pairs of sessions, as the paired regression comparison pools them.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import budget_ms_or_raise

PAIRED_SESSIONS = 4   # a paired measurement: more, shorter sessions, since each compilation
PAIRED_WINDOWS = 3    # places the weights anew (session SD 0.5-2%, tools/study_alternation.py)


@dataclass(frozen=True)
class Budget:
    """What the artifact must fit: ``ms``, or (a relative budget, ``prune --budget-ratio``)
    ``share`` of the latency of ``unpruned``, read in pairs with it (``checks.share``)."""

    ms: float | None
    source: str
    share: float | None = None
    unpruned: Path | None = None

    def describe(self) -> str:
        return f"{self.ms:.4f} ms" if self.share is None else f"{self.share:g} of the unpruned model's latency"


def check_budget(budget_ms: float | None, spec, meta: dict, source: str | None = None,
                 share: float | None = None, unpruned: str | Path | None = None) -> Budget | None:
    """An explicit budget, else a relative one (``share`` of ``unpruned``: a prune run's
    ``--budget-ratio``), else the target file's budget for the artifact's model, else the
    budget the artifact was pruned to (when it was pruned for this target)."""
    if budget_ms is not None:
        return Budget(budget_ms_or_raise(budget_ms), source or "--budget-ms")
    if share is not None:
        return Budget(None, source or "--budget-ratio", share, Path(unpruned))
    model = meta.get("model")
    if model and spec.budget_for(model) is not None:
        return Budget(float(spec.budget_for(model)), f"target {spec.name} budgets_ms.{model}")
    if meta.get("budget_ms") and meta.get("target") == spec.name:
        try:
            return Budget(float(json.loads(meta["budget_ms"])), "artifact metadata (its pruning budget)")
        except (TypeError, ValueError):
            return None
    return None


def measure_share(target, unpruned: Path, artifact: Path, timing,
                  sessions: int = PAIRED_SESSIONS) -> tuple[float, tuple[float, ...], float | None]:
    """(the artifact's latency as a share of ``unpruned``'s: the median window ratio, every
    window's ratio, the share of the time the device was busy with other work)."""
    timing = timing.model_copy(update={"windows": PAIRED_WINDOWS})
    alts, wait = target.with_busy_share(lambda: [target.measure_alternating(unpruned, artifact, timing)
                                                 for _ in range(sessions)])
    ratios = tuple(r for a in alts for r in a.window_ratios)
    return statistics.median(ratios), ratios, wait


def over(budget: Budget | None, a) -> bool:
    """Whether the measurement ``a`` (a check's Attempt) is over ``budget``."""
    if budget is None:
        return False
    if budget.share is not None:
        return a.share is not None and a.share > budget.share
    return a.latency_ms > budget.ms


def reading(budget: Budget | None, a) -> str:
    """``a`` in the budget's terms: its share of the unpruned model's latency, or its ms."""
    return f"{a.share:.3f} (paired)" if budget is not None and budget.share is not None else f"{a.latency_ms:.4f} ms"

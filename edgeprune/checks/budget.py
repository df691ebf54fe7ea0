"""What an artifact must fit, and how a reading is held against it (``edgeprune check``).

A budget is in ms (given, the target file's, or the one the artifact was pruned to), or, for a
run pruned with ``--budget-ratio``, a *share* of the unpruned model's latency, checked as it was
pruned: the run keeps that model beside its artifact (run.json's ``unpruned``) and the two run
in alternating blocks in one run. Judging a relative run against its budget in ms would judge
the host instead: a shared host drifts ±30% within minutes (BENCHMARKS.md), so a model that fits
its share read over budget whenever the host slowed. Each window's ratio pairs two readings
taken moments apart, so the host's level cancels (``measure.measure_share``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import budget_ms_or_raise


@dataclass(frozen=True)
class Budget:
    """What the artifact must fit: ``ms``, or (a relative budget, ``prune --budget-ratio``)
    ``share`` of the latency of ``unpruned``, read in pairs with it (``measure.with_share``).
    A measurement is held against it in the budget's own terms (``value``)."""

    ms: float | None
    source: str
    share: float | None = None
    unpruned: Path | None = None

    @property
    def relative(self) -> bool:
        return self.share is not None

    def value(self, a) -> float | None:
        """What of the measurement ``a`` (a check's Attempt) this budget limits: its share of the
        unpruned model's latency, or its latency in ms (None: no share was read)."""
        return a.share if self.relative else a.latency_ms

    def over(self, a) -> bool:
        v = self.value(a)
        return v is not None and v > (self.share if self.relative else self.ms)

    def reading(self, a) -> str:
        return f"{a.share:.3f} (paired)" if self.relative else f"{a.latency_ms:.4f} ms"

    def describe(self) -> str:
        return f"{self.share:g} of the unpruned model's latency" if self.relative else f"{self.ms:.4f} ms"


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


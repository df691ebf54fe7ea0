"""Budget -> per-group widths: a pure function of (table, importances, budget, constraints).

Greedy in the NetAdapt/HALP spirit: repeatedly remove the ``round_to`` least important
channels of the group whose removal costs the least importance per millisecond saved (the
table gives exact deltas, coupled layers included), until the prediction fits; then add
channels back wherever they still fit, best importance per millisecond first.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from edgeprune.errors import InfeasibleBudget, UsageError, budget_ms_or_raise
from edgeprune.latency.table import LatencyTable


@dataclass
class SearchConfig:
    min_ratio: float = 0.25        # no group below this fraction of its channels
    min_width: int = 8             # nor below this many channels
    round_to: int = 8              # widths are multiples of this (or the full width)
    protect: list[str] = field(default_factory=list)  # group names kept whole
    max_widths: dict[str, int] | None = None  # upper bounds (gradual pruning never regrows)


@dataclass
class SearchResult:
    widths: dict[str, int]
    predicted_ms: float
    budget_ms: float
    full_ms: float
    kept_importance: float          # fraction of the total (normalised) importance kept
    steps: int
    seconds: float
    objective: str = "importance"           # what chose the widths (importance, adaptive-bn)
    proxy_accuracy: float | None = None     # adaptive-bn: val accuracy after BN re-estimation

    def to_dict(self) -> dict:
        d = {"widths": self.widths, "predicted_ms": round(self.predicted_ms, 5),
             "budget_ms": self.budget_ms, "full_ms": round(self.full_ms, 5),
             "kept_importance": None if math.isnan(self.kept_importance) else round(self.kept_importance, 5),
             "steps": self.steps, "seconds": round(self.seconds, 4), "objective": self.objective}
        if self.proxy_accuracy is not None:
            d["proxy_accuracy"] = round(self.proxy_accuracy, 5)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SearchResult":
        d = {**d, "kept_importance": float("nan") if d.get("kept_importance") is None else d["kept_importance"]}
        return cls(**d)


class ImportancePlanner:
    """The closed loop's planner for the kept-importance objective: a new greedy search at
    every budget it is asked for."""

    objective = "importance"

    def __init__(self, table: LatencyTable, scores: dict[str, np.ndarray], cfg: "SearchConfig"):
        self.table, self.scores, self.cfg = table, scores, cfg

    def __call__(self, budget_ms: float) -> SearchResult:
        return search(self.table, self.scores, budget_ms, self.cfg)


def bounds(table: LatencyTable, cfg: SearchConfig) -> tuple[dict[str, int], dict[str, int]]:
    """(lowest, highest) allowed width per group."""
    lo, hi = {}, {}
    for g, c in table.groups.items():
        top = min(c, (cfg.max_widths or {}).get(g, c))
        floor = max(cfg.min_width, math.ceil(c * cfg.min_ratio))
        floor = min(top, cfg.round_to * math.ceil(floor / cfg.round_to))
        lo[g], hi[g] = (top, top) if g in cfg.protect else (floor, top)
    return lo, hi


def search(table: LatencyTable, scores: dict[str, np.ndarray], budget_ms: float,
           cfg: SearchConfig | None = None) -> SearchResult:
    """Widths maximising kept importance with ``table.predict(widths) <= budget_ms``."""
    cfg = cfg or SearchConfig()
    budget_ms_or_raise(budget_ms)
    unknown_groups = set(cfg.protect) - set(table.groups)
    if unknown_groups:
        raise UsageError(f"cannot protect unknown groups: {', '.join(sorted(unknown_groups))}")
    t0 = time.perf_counter()
    lo, hi = bounds(table, cfg)
    floor_ms = table.predict(lo)
    if floor_ms > budget_ms:
        raise InfeasibleBudget(budget_ms, floor_ms)
    cum = {g: np.concatenate([[0.0], np.cumsum(scores[g])]) if g in scores else np.arange(c + 1.0)
           for g, c in table.groups.items()}
    widths = dict(hi)
    steps = 0
    state = _State(table, widths)
    while state.total > budget_ms:
        best = None
        for g in widths:
            new = _step_down(widths[g], lo[g], cfg.round_to)
            if new is None:
                continue
            saved = state.delta(g, new)
            lost = cum[g][widths[g]] - cum[g][new]
            key = (saved > 1e-9, saved / (lost + 1e-9), -lost)
            if best is None or key > best[0]:
                best = (key, g, new)
        if best is None:
            break
        state.set(best[1], best[2])
        steps += 1
    steps += _fill(state, hi, cum, budget_ms, cfg.round_to)
    total_imp = sum(c[-1] for c in cum.values())  # scores of a pruned model cover its own widths
    kept = sum(cum[g][w] for g, w in widths.items()) / total_imp if total_imp else 1.0
    return SearchResult(dict(widths), table.predict(widths), budget_ms, table.full_ms,
                        float(kept), steps, time.perf_counter() - t0)


def _fill(state: "_State", hi, cum, budget_ms: float, round_to: int) -> int:
    """Grow groups back while the prediction stays within budget (undoes greedy overshoot)."""
    steps = 0
    while True:
        best = None
        for g, w in state.widths.items():
            new = min(hi[g], (w // round_to + 1) * round_to)
            if new <= w:
                continue
            cost = -state.delta(g, new)
            if state.table.predict({**state.widths, g: new}) > budget_ms * (1 + 1e-9):
                continue
            gain = cum[g][new] - cum[g][w]
            key = gain / max(cost, 1e-9)
            if best is None or key > best[0]:
                best = (key, g, new)
        if best is None:
            return steps
        state.set(best[1], best[2])
        steps += 1


def _step_down(w: int, lo: int, round_to: int) -> int | None:
    new = (w - 1) // round_to * round_to
    return new if new >= lo and new > 0 else None


class _State:
    """Current widths and predicted latency, updated from the layers one group touches."""

    def __init__(self, table: LatencyTable, widths: dict[str, int]):
        self.table = table
        self.widths = widths
        self.touching = {g: table.entries_touching(g) for g in table.groups}
        self.total = table.predict(widths)

    def delta(self, g: str, new: int) -> float:
        """Predicted milliseconds saved by setting group g to ``new``."""
        entries = self.touching[g]
        before = sum(e.predict(self.widths) for e in entries)
        trial = {**self.widths, g: new}
        after = sum(e.predict(trial) for e in entries)
        terms = self.table.group_ms(g, self.widths[g]) - self.table.group_ms(g, new)
        return self.table.scale * (before - after) + terms

    def set(self, g: str, new: int) -> None:
        self.widths[g] = new
        self.total = self.table.predict(self.widths)  # exact, no drift from summed deltas

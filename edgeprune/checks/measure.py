"""How ``edgeprune check`` measures: one Attempt is ``SESSIONS`` fresh runtime sessions of the
artifact (each compiles it again, so per-process effects such as memory placement vary between
them), or, paired, alternating blocks of an old and the new artifact in ``PAIRED_SESSIONS``
fresh pairs of sessions; under a relative budget, followed by its share of the unpruned model.
``check`` decides what the attempts mean."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from edgeprune.checks.budget import Budget
from edgeprune.checks.comparison import Comparison, compare_paired, latency_of
from edgeprune.runtime.base import too_busy

SESSIONS = 2                # sessions per measurement
CHECK_WINDOWS = 10          # windows per measurement, spread over the sessions
PAIRED_SESSIONS = 4         # a paired measurement: more, shorter sessions, since each compilation
PAIRED_WINDOWS = 3          # places the weights anew (session SD 0.5-2%, tools/study_alternation.py)


@dataclass(frozen=True)
class Attempt:
    """One measurement (fresh sessions) and its comparison with the baseline."""

    latency_ms: float
    median_ms: float               # the least-disturbed window's median (what `measure` reports)
    p90_ms: float
    windows_ms: tuple[float, ...]
    samples_ms: tuple[float, ...] = field(default=(), repr=False)
    cpu_wait: float | None = None  # share of its time the measuring thread waited for a CPU
    comparison: Comparison | None = None
    reference_windows_ms: tuple[float, ...] = ()   # the old artifact's, in a paired measurement
    share: float | None = None                     # its latency as a share of the unpruned model's
    share_windows: tuple[float, ...] = ()          # (a relative budget, read in pairs: measure_share)

    @property
    def disturbed(self) -> bool:
        return too_busy(self.cpu_wait)

    def to_dict(self) -> dict:
        d = {"latency_ms": round(self.latency_ms, 5), "median_ms": round(self.median_ms, 5),
             "p90_ms": round(self.p90_ms, 5), "cpu_wait": self.cpu_wait, "disturbed": self.disturbed,
             "windows_ms": [round(w, 5) for w in self.windows_ms]}
        if self.reference_windows_ms:
            d["reference_windows_ms"] = [round(w, 5) for w in self.reference_windows_ms]
        if self.share is not None:
            d["share"], d["share_windows"] = round(self.share, 5), [round(w, 5) for w in self.share_windows]
        return {**d, **({"comparison": self.comparison.to_dict()} if self.comparison else {})}


def check_timing(timing):
    """The target's timing protocol per session, with enough windows for CHECK_WINDOWS in all."""
    return timing.model_copy(update={"windows": max(timing.windows, -(-CHECK_WINDOWS // SESSIONS))})


def measure_attempt(target, path, timing, sessions: int = SESSIONS) -> Attempt:
    """One measurement: ``sessions`` fresh sessions of the target, their windows pooled."""
    lats, wait = target.with_busy_share(lambda: [target.measure(path, timing) for _ in range(sessions)])
    windows = tuple(w for lat in lats for w in (lat.window_medians_ms or (lat.median_ms,)))
    best = min(lats, key=lambda lat: lat.median_ms)
    return Attempt(latency_of(windows), best.median_ms, best.p90_ms, windows, tuple(best.samples_ms), wait)


def measure_pair(target, reference, candidate, timing, tolerance: float, sessions: int = PAIRED_SESSIONS) -> Attempt:
    """Reference and candidate in alternating short blocks, in ``sessions`` fresh pairs of
    sessions of ``PAIRED_WINDOWS`` windows; the candidate's Attempt carries the paired comparison."""
    alts, wait = _alternate(target, reference, candidate, timing, sessions)
    ref, cand = ([w for a in alts for w in a.latencies[i].window_medians_ms] for i in (0, 1))
    comparison = compare_paired([w for a in alts for w in a.log_ratios], latency_of(ref), latency_of(cand),
                                tolerance)
    return replace(_candidate(alts, wait), comparison=comparison, reference_windows_ms=tuple(ref))


def measure_share(target, unpruned, artifact, timing, sessions: int = PAIRED_SESSIONS) -> Attempt:
    """The artifact in alternating blocks with ``unpruned``, as ``measure_pair``; its Attempt
    carries the share: the median of the windows' ratios (artifact / unpruned)."""
    alts, wait = _alternate(target, unpruned, artifact, timing, sessions)
    ratios = tuple(r for a in alts for r in a.window_ratios)
    return replace(_candidate(alts, wait), share=statistics.median(ratios), share_windows=ratios)


def _alternate(target, a, b, timing, sessions: int):
    """``sessions`` alternating runs of ``a`` and ``b`` of ``PAIRED_WINDOWS`` windows each, and the
    share of their time the device was busy with other work."""
    timing = timing.model_copy(update={"windows": PAIRED_WINDOWS})
    return target.with_busy_share(lambda: [target.measure_alternating(a, b, timing) for _ in range(sessions)])


def _candidate(alts, wait) -> Attempt:
    """The second model's Attempt from alternating runs: its windows pooled, its best session's
    median, p90 and samples."""
    cand = tuple(w for a in alts for w in a.latencies[1].window_medians_ms)
    best = min((a.latencies[1] for a in alts), key=lambda lat: lat.median_ms)
    return Attempt(latency_of(cand), best.median_ms, best.p90_ms, cand, tuple(best.samples_ms), wait)


def with_share(target, path: Path, budget: Budget | None, measure: Callable[[], Attempt]) -> Callable[[], Attempt]:
    """``measure``, followed, under a relative budget, by the share read in pairs with the
    unpruned model (``measure_share``); a measurement is as disturbed as its busier part."""
    if budget is None or not budget.relative:
        return measure

    def both() -> Attempt:
        a, s = measure(), measure_share(target, budget.unpruned, path, target.spec.timing)
        waits = [w for w in (a.cpu_wait, s.cpu_wait) if w is not None]
        return replace(a, share=s.share, share_windows=s.share_windows, cpu_wait=max(waits) if waits else None)
    return both

"""The one timing protocol every target uses: warm up by time, run many times, report medians.

Written once so a number from ort-cpu and one from a remote board mean the same thing.
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from .spec import TimingSpec


@dataclass(frozen=True)
class Latency:
    """Summary of repeated runs; units are in the field names."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    iqr_ms: float
    runs: int
    samples_ms: tuple[float, ...] = field(default=(), repr=False)
    window_medians_ms: tuple[float, ...] = ()

    @property
    def spread(self) -> float:
        """Robust coefficient of variation: IQR / median."""
        return self.iqr_ms / self.median_ms if self.median_ms else 0.0

    def to_dict(self, samples: bool = False) -> dict:
        d = asdict(self)
        d["spread"] = round(self.spread, 4)
        if not samples:
            d.pop("samples_ms")
        return d

    def merged(self, other: "Latency") -> "Latency":
        """Pool the windows of two measurements of the same model: the least-disturbed window
        of either summarises both, and all window medians are kept."""
        best = self if self.median_ms <= other.median_ms else other
        return replace(best, window_medians_ms=self.window_medians_ms + other.window_medians_ms)

    @classmethod
    def from_samples(cls, samples_ms: list[float] | tuple[float, ...]) -> "Latency":
        s = sorted(samples_ms)
        if not s:
            raise ValueError("no samples")
        return cls(
            median_ms=statistics.median(s), p90_ms=quantile(s, 0.9), p99_ms=quantile(s, 0.99),
            mean_ms=statistics.fmean(s), min_ms=s[0],
            iqr_ms=quantile(s, 0.75) - quantile(s, 0.25), runs=len(s), samples_ms=tuple(samples_ms),
        )


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure(run_once: Callable[[], object], spec: TimingSpec | None = None) -> Latency:
    """Warm up for ``warmup_s``, then time ``windows`` separate windows, each running until
    ``min_runs`` and ``min_time_s`` are met (capped by ``max_runs``/``max_time_s``).

    The result summarises the window with the lowest median: on a shared machine other work
    only ever adds time, so the least-disturbed window is the best estimate of the model's own
    latency; every window's median is kept in ``window_medians_ms`` to show the disturbance.
    """
    return measure_interleaved([run_once], spec)[0]


def measure_interleaved(runs: list[Callable[[], object]], spec: TimingSpec | None = None) -> list[Latency]:
    """``measure`` for several callables at once, their windows taken in turn."""
    spec = spec or TimingSpec()
    for run_once in runs:
        end = time.perf_counter() + spec.warmup_s
        run_once()
        while time.perf_counter() < end:
            run_once()
    windows: list[list[list[float]]] = [[] for _ in runs]
    for _ in range(spec.windows):
        for i, run_once in enumerate(runs):
            windows[i].append(_window(run_once, spec))
    return [_summary(w) for w in windows]


def _summary(windows: list[list[float]]) -> Latency:
    medians = [statistics.median(w) for w in windows]
    best = windows[medians.index(min(medians))]
    return replace(Latency.from_samples(best), window_medians_ms=tuple(medians))


@contextmanager
def pinned(threads: int):
    """Restrict every thread of this process to ``threads`` CPUs while measuring (Linux), then
    restore. Every thread, not only the caller: sched_setaffinity(0) moves the calling thread
    alone, and runtimes (OpenVINO's CPU streams) start their workers when the model is compiled,
    before measuring starts, so those would stay free to migrate."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    cpus = set(sorted(before)[-threads:] if threads < len(before) else before)
    saved = {tid: _set_affinity(tid, cpus) for tid in _threads()}
    try:
        yield
    finally:
        for tid in _threads():
            _set_affinity(tid, saved.get(tid) or before)


def _threads() -> list[int]:
    """Thread ids of this process (just this thread where /proc is absent)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def _set_affinity(tid: int, cpus: set[int]) -> set[int] | None:
    """Set a thread's CPUs; its previous set, or None if it could not be changed (gone, denied)."""
    try:
        previous = os.sched_getaffinity(tid)
        os.sched_setaffinity(tid, cpus)
        return previous
    except OSError:
        return None


def _window(run_once: Callable[[], object], spec: TimingSpec) -> list[float]:
    clock = time.perf_counter
    samples: list[float] = []
    start = clock()
    while True:
        t0 = clock()
        run_once()
        samples.append((clock() - t0) * 1e3)
        elapsed = clock() - start
        enough = len(samples) >= spec.min_runs and elapsed >= spec.min_time_s
        if enough or len(samples) >= spec.max_runs or elapsed >= spec.max_time_s:
            return samples

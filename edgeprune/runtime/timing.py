"""The one timing protocol every target uses: warm up by time, run many times, report medians.

Written once so a number from ort-cpu and one from a remote board mean the same thing.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from edgeprune.runtime.spec import TimingSpec


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

    @staticmethod
    def least_disturbed(*readings: "Latency") -> "Latency":
        """Several measurements of one model read as one: the reading whose least-disturbed
        window is fastest summarises them (the rule ``measure`` applies to its own windows:
        other work on a shared machine only adds time), and every window median is kept."""
        best = min(readings, key=lambda r: r.median_ms)
        return replace(best, window_medians_ms=tuple(w for r in readings for w in r.window_medians_ms))

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


class DeviceTime(float):
    """Milliseconds a run measured on its own device, returned by a ``run_once`` that times
    itself: a GPU run's kernels are timed by CUDA events around them, and the host's clock
    around a launch and a synchronize would add the launch and the wake-up to every sample.
    The protocol takes this figure instead of its wall clock; windows still end by wall time."""


def _sample_ms(result: object, wall_ms: float) -> float:
    return float(result) if isinstance(result, DeviceTime) else wall_ms


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


BLOCK_S = 0.02       # alternation: each block of runs lasts about this long. A model whose
#                      weights outgrow the cache re-warms over several runs after the other
#                      model's block: at 5 ms, ResNet-18 at 32 px (45 MB, 1.3 ms a run, 4 runs a
#                      block) read 5-30% slower than alone beside its pruned pick, and the paired
#                      share 8-26% low; at 20 ms it reads as alone (within its own spread), and
#                      two identical models' window spread is about the same (BENCHMARKS.md, "How
#                      noisy the paired ratio is" and session 13)
MIN_BLOCK_RUNS = 3   # ... and has at least this many runs, so one cold first run is outvoted
MIN_ROUNDS = 5       # rounds (one block of each model) per window at least


@dataclass(frozen=True)
class Alternation:
    """Two models run in short alternating blocks (A B, then B A, ...): each round pairs one
    block median of each, a few milliseconds apart, so a slow period of the host (a neighbour,
    the clock) hits both sides of every pair and cancels out of their ratio."""

    rounds_ms: tuple[tuple[tuple[float, float], ...], ...]   # windows × rounds × (a, b) block medians
    latencies: tuple[Latency, Latency]

    @property
    def log_ratios(self) -> tuple[tuple[float, ...], ...]:
        """log(b / a) of every round, by window."""
        return tuple(tuple(math.log(b / a) for a, b in w) for w in self.rounds_ms)

    @property
    def window_ratios(self) -> tuple[float, ...]:
        """b / a of every window: the median of its rounds' ratios."""
        return tuple(math.exp(statistics.median(w)) for w in self.log_ratios if w)


def measure_alternating(run_a: Callable[[], object], run_b: Callable[[], object],
                        spec: TimingSpec | None = None, block_s: float = BLOCK_S) -> Alternation:
    """Warm both up, then ``windows`` windows of ``min_time_s`` each, made of rounds of one
    block of each model, the order swapped every round (going second is not free: the first
    run of a block finds the other model in the caches, which the block median outvotes)."""
    spec = spec or TimingSpec()
    sizes = [_block_runs(run, spec.warmup_s, block_s) for run in (run_a, run_b)]
    samples: tuple[list[float], list[float]] = ([], [])
    windows, turn = [], 0
    for _ in range(spec.windows):
        rounds, start = [], time.perf_counter()
        while len(rounds) < MIN_ROUNDS or time.perf_counter() - start < spec.min_time_s:
            order, turn = ((0, 1) if turn % 2 == 0 else (1, 0)), turn + 1
            pair = [0.0, 0.0]
            for i in order:
                block = _timed(run_a if i == 0 else run_b, sizes[i])
                samples[i].extend(block)
                pair[i] = statistics.median(block)
            rounds.append((pair[0], pair[1]))
        windows.append(tuple(rounds))
    lats = tuple(replace(Latency.from_samples(s), window_medians_ms=tuple(
        statistics.median(r[i] for r in w) for w in windows)) for i, s in enumerate(samples))
    return Alternation(tuple(windows), lats)


def _block_runs(run_once: Callable[[], object], warmup_s: float, block_s: float) -> int:
    """Warm up for ``warmup_s``; the runs one block of ``block_s`` needs (the median warm run)."""
    end = time.perf_counter() + warmup_s
    times = _timed(run_once, 1)
    while time.perf_counter() < end or len(times) < MIN_BLOCK_RUNS:
        times += _timed(run_once, 1)
    per_run_s = statistics.median(times[1:]) / 1e3
    return max(MIN_BLOCK_RUNS, math.ceil(block_s / max(per_run_s, 1e-9)))


def _timed(run_once: Callable[[], object], runs: int) -> list[float]:
    clock, out = time.perf_counter, []
    for _ in range(runs):
        t0 = clock()
        result = run_once()
        out.append(_sample_ms(result, (clock() - t0) * 1e3))
    return out


def _window(run_once: Callable[[], object], spec: TimingSpec) -> list[float]:
    clock = time.perf_counter
    samples: list[float] = []
    start = clock()
    while True:
        t0 = clock()
        result = run_once()
        samples.append(_sample_ms(result, (clock() - t0) * 1e3))
        elapsed = clock() - start
        enough = len(samples) >= spec.min_runs and elapsed >= spec.min_time_s
        if enough or len(samples) >= spec.max_runs or elapsed >= spec.max_time_s:
            return samples

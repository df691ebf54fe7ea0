"""The statistics of a regression check: how a new measurement is compared with an old one.

Two comparisons, for two situations:

* **Paired** (the default whenever the old artifact can run here: a baseline's frozen copy, or
  ``--reference``). Old and new run in short alternating blocks in one run
  (``timing.measure_alternating``); each round gives ``log(new / old)`` from two blocks a few
  milliseconds apart, so the host's slow periods (a neighbour's memory traffic, the clock),
  which move a time-separated comparison by ±20% on a shared machine, cancel out. The ratio is
  ``exp(median log ratio)``; its interval comes from resampling whole windows (clusters of
  consecutive rounds), which keeps the rounds' correlation inside a window honest.
* **Absolute** (another runtime version, board image or host, where only the baseline's numbers
  can stand for the past). A measurement's latency is the lower quartile of its window medians:
  neighbours only ever *add* time, so disturbed windows are slow, never fast. The ratio's
  interval resamples whole windows of both sides. It is only as good as the host is steady.

A **regression** needs the ratio above ``1 + tolerance`` *and* the interval entirely above 1.
Bootstraps are seeded: the same data gives the same interval.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOW_QUANTILE = 0.25
QUANTILE_METHOD = "median_unbiased"   # Hyndman & Fan type 8: same quantile for 10 or 20 windows
RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
DEFAULT_TOLERANCE = 0.05
METHODS = {
    "paired": (f"ratio = exp(median of log(new/old)) over rounds of alternating ~5 ms blocks of the "
               f"old and new artifact in one run; {CONFIDENCE:.0%} bootstrap CI resampling whole "
               f"windows ({RESAMPLES} resamples, seed {SEED})"),
    "absolute": (f"ratio of lower-quartile window medians (check / baseline numbers), {CONFIDENCE:.0%} "
                 f"bootstrap CI resampling whole windows ({RESAMPLES} resamples, seed {SEED})"),
}


def latency_of(windows) -> float:
    """The latency a set of window medians stands for: their lower quartile."""
    return float(np.quantile(np.asarray(windows, dtype=float), LOW_QUANTILE, method=QUANTILE_METHOD))


@dataclass(frozen=True)
class Comparison:
    """new / old latency ratio with its bootstrap interval and the verdict."""

    ratio: float
    low: float
    high: float
    baseline_ms: float
    check_ms: float
    tolerance: float
    confidence: float = CONFIDENCE
    method: str = "absolute"

    @property
    def regression(self) -> bool:
        return self.ratio > 1 + self.tolerance and self.low > 1

    @property
    def faster(self) -> bool:
        return self.ratio < 1 - self.tolerance and self.high < 1

    def to_dict(self) -> dict:
        return {"ratio": round(self.ratio, 4), "ci": [round(self.low, 4), round(self.high, 4)],
                "confidence": self.confidence, "tolerance": self.tolerance, "method": self.method,
                "baseline_ms": round(self.baseline_ms, 5), "check_ms": round(self.check_ms, 5),
                "regression": self.regression, "faster": self.faster}

    def describe(self) -> str:
        return (f"{self.ratio:.3f}× the baseline ({self.confidence:.0%} CI [{self.low:.3f}, {self.high:.3f}], "
                f"{self.method}, tolerance {self.tolerance:.0%})")


def compare(baseline_windows, check_windows, tolerance: float = DEFAULT_TOLERANCE,
            confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED) -> Comparison:
    """Absolute comparison: bootstrap the ratio of lower-quartile window medians, resampling
    the windows of each side independently."""
    b, c = _positive(baseline_windows), _positive(check_windows)
    rng = np.random.default_rng(seed)
    q = dict(q=LOW_QUANTILE, axis=1, method=QUANTILE_METHOD)
    boot = (np.quantile(c[rng.integers(0, c.size, (resamples, c.size))], **q)
            / np.quantile(b[rng.integers(0, b.size, (resamples, b.size))], **q))
    ratio = latency_of(c) / latency_of(b)
    return _comparison(ratio, boot, latency_of(b), latency_of(c), tolerance, confidence, "absolute")


def compare_paired(log_ratio_windows, baseline_ms: float, check_ms: float,
                   tolerance: float = DEFAULT_TOLERANCE, confidence: float = CONFIDENCE,
                   resamples: int = RESAMPLES, seed: int = SEED) -> Comparison:
    """Paired comparison: ``log_ratio_windows`` holds each window's per-round log(new/old);
    the ratio is exp of their pooled median, the interval resamples whole windows."""
    windows = [np.asarray(w, dtype=float) for w in log_ratio_windows if len(w)]
    if not windows or not all(np.isfinite(w).all() for w in windows):
        raise ValueError("need finite log ratios in at least one window")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(windows), (resamples, len(windows)))
    boot = np.exp([np.median(np.concatenate([windows[i] for i in row])) for row in picks])
    ratio = float(np.exp(np.median(np.concatenate(windows))))
    return _comparison(ratio, boot, baseline_ms, check_ms, tolerance, confidence, "paired")


@dataclass(frozen=True)
class BudgetVerdict:
    """Where a measured latency stands against a budget: the estimator ``check`` uses (lower
    quartile of the window medians), its bootstrap interval, and one of three verdicts.

    "inconclusive" when the interval straddles the budget: noise, not the model, decides the
    side. Before, the pipeline kept the fastest window of up to three final measurements and of
    the loop's own reading, which on a shared machine turns any near-miss into a pass."""

    latency_ms: float
    low_ms: float
    high_ms: float
    budget_ms: float
    windows: int
    confidence: float = CONFIDENCE
    busy: bool = False   # measured while the device was busy with something else

    @property
    def verdict(self) -> str:
        """An "over" read on a busy device is inconclusive, as in ``check``: a neighbour can
        only add time, so a busy reading can prove a fit but not a miss."""
        if self.high_ms <= self.budget_ms:
            return "fits"
        return "over" if self.low_ms > self.budget_ms and not self.busy else "inconclusive"

    def describe(self) -> str:
        busy = " (the device was busy: over on this reading, not proven)" if self.busy and \
            self.low_ms > self.budget_ms else ""
        return (f"{self.latency_ms:.4f} ms [{self.low_ms:.4f}, {self.high_ms:.4f}] against a budget of "
                f"{self.budget_ms:.4f} ms: {self.verdict}{busy}")

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "latency_ms": round(self.latency_ms, 5), "ci_ms": [round(self.low_ms, 5),
                round(self.high_ms, 5)], "budget_ms": self.budget_ms, "windows": self.windows, "busy": self.busy,
                "confidence": self.confidence, "estimator": "lower quartile of window medians, bootstrap CI "
                f"resampling windows ({RESAMPLES} resamples, seed {SEED})"}


def budget_verdict(windows, budget_ms: float, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                   seed: int = SEED) -> BudgetVerdict:
    """The latency of ``windows`` (window medians, ms) against ``budget_ms``, with its interval."""
    w = _positive(windows)
    rng = np.random.default_rng(seed)
    boot = np.quantile(w[rng.integers(0, w.size, (resamples, w.size))], LOW_QUANTILE, axis=1,
                       method=QUANTILE_METHOD)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    est = latency_of(w)
    return BudgetVerdict(est, min(float(low), est), max(float(high), est), float(budget_ms), int(w.size), confidence)


def _comparison(ratio: float, boot, baseline_ms: float, check_ms: float, tolerance: float,
                confidence: float, method: str) -> Comparison:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return Comparison(ratio, min(float(low), ratio), max(float(high), ratio), baseline_ms, check_ms,
                      tolerance, confidence, method)


def _positive(windows) -> np.ndarray:
    a = np.asarray(windows, dtype=float)
    if a.size == 0 or a.min() <= 0:
        raise ValueError("need positive window medians on both sides")
    return a

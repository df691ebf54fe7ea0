"""Calibration: from the sum of per-layer profiler times to end-to-end latency.

The per-layer grids come from the runtime's profiler on a coarse grid of widths and are
smoothed, so they miss two things an end-to-end run sees: the profiler's own overhead, and
kernels that run faster at aligned widths (on ONNX Runtime's CPU convolutions a group at a
multiple of 16 channels is measurably cheaper than its neighbours at multiples of 8; ResNet-18
at 32 px, tools/table_study.py, BENCHMARKS.md). Random whole-model configurations measured end
to end fit

    e2e ≈ scale · Σ layers + offset + Σ_g (aligned_ms[g] · [w_g % align = 0] + linear_ms[g] · w_g / C_g)

by relative least squares. The per-group terms are ridge-penalised toward zero with the
penalty chosen by leave-one-out error, so with few configurations the fit falls back to scale
and offset alone.

Where the weights outgrow the caches, latency is no longer a sum of layer costs: every layer
waits on memory. ResNet-18 at 32 px on a 2-core AVX2 host read 0.53 ms at 16 MB of weights,
2.5 ms at 31 MB and 4.0 ms unpruned at 45 MB (issue 9), which the per-layer terms missed by
up to 2×. A hinge ``per_mb_ms · max(0, weight MB − knee_mb)`` with its knee chosen by the same
leave-one-out error (or none, where no cliff shows) models that.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RIDGE_GRID = tuple(10.0 ** e for e in range(-4, 5)) + (1e8,)  # 1e8: scale and offset only


@dataclass
class Calibration:
    scale: float = 1.0
    offset_ms: float = 0.0
    align: int = 16
    aligned_ms: dict[str, float] = field(default_factory=dict)
    linear_ms: dict[str, float] = field(default_factory=dict)
    ridge: float | None = None        # chosen penalty on the per-group terms
    loo_rmspe: float | None = None    # its leave-one-out relative error on the calibration set
    knee_mb: float | None = None      # weight size above which each MB costs per_mb_ms more
    per_mb_ms: float = 0.0

    def group_ms(self, group: str, width: int, channels: int) -> float:
        """The per-group end-to-end correction at ``width`` (0 for a group without terms)."""
        aligned = self.aligned_ms.get(group, 0.0) if width % self.align == 0 else 0.0
        return aligned + self.linear_ms.get(group, 0.0) * width / channels

    def total_ms(self, raw_ms: float, widths: dict[str, int], groups: dict[str, int], weight_mb: float = 0.0) -> float:
        return self.scale * raw_ms + self.offset_ms + self.memory_ms(weight_mb) + sum(
            self.group_ms(g, widths[g], c) for g, c in groups.items())

    def memory_ms(self, weight_mb: float) -> float:
        return 0.0 if self.knee_mb is None else self.per_mb_ms * max(0.0, weight_mb - self.knee_mb)


def fit(raw_ms: list[float], widths: list[dict[str, int]], e2e_ms: list[float],
        groups: dict[str, int], align: int = 16, weight_mb: list[float] | None = None) -> Calibration:
    """Fit a Calibration on configurations with known profiler sums and end-to-end medians
    (and weight sizes, for the memory hinge)."""
    raw, y = np.asarray(raw_ms, float), np.asarray(e2e_ms, float)
    if len(y) < 3:
        return Calibration(float(np.median(y / raw)) if len(y) else 1.0, 0.0, align)
    names = sorted(groups)
    base = [raw, np.ones_like(raw)]
    terms = [col for g in names for col in (
        [float(w[g] % align == 0) for w in widths], [w[g] / groups[g] for w in widths])]
    best = None
    for knee in _knees(weight_mb):
        extra = [] if knee is None else [np.maximum(0.0, np.asarray(weight_mb, float) - knee)]
        X = np.column_stack(base + extra + terms)
        penalised = np.ones(X.shape[1])
        penalised[:len(base) + len(extra)] = 0.0
        for lam in RIDGE_GRID:
            err = _loo_rmspe(X, y, lam, penalised)
            if best is None or err < best[0] - 1e-9:
                best = (err, knee, lam, X, penalised, len(extra))
    err, knee, ridge, X, penalised, n_extra = best
    coef = _solve(X, y, ridge, penalised)
    if coef[0] <= 0 or (n_extra and coef[2] < 0):  # degenerate data: keep the layers' shape, fit the level only
        return Calibration(float(np.median(y / raw)), 0.0, align)
    pairs = coef[2 + n_extra:].reshape(len(names), 2)
    return Calibration(round(float(coef[0]), 6), round(float(coef[1]), 6), align,
                       {g: round(float(a), 6) for g, (a, _) in zip(names, pairs)},
                       {g: round(float(b), 6) for g, (_, b) in zip(names, pairs)},
                       ridge, round(err, 5), None if knee is None else round(float(knee), 3),
                       round(float(coef[2]), 6) if n_extra else 0.0)


def _knees(weight_mb: list[float] | None) -> list[float | None]:
    """No hinge, or a knee at one of the calibration set's weight-size quantiles."""
    if not weight_mb or len(weight_mb) < 8 or max(weight_mb) <= min(weight_mb):
        return [None]
    return [None, *sorted(set(np.quantile(np.asarray(weight_mb, float), np.linspace(0.15, 0.85, 8)).round(3)))]


def _solve(X: np.ndarray, y: np.ndarray, ridge: float, penalised: np.ndarray) -> np.ndarray:
    """Relative (1/y-weighted) ridge least squares."""
    Xw, yw = X / y[:, None], np.ones_like(y)
    A = Xw.T @ Xw + ridge * np.diag(penalised) + 1e-12 * np.eye(X.shape[1])
    return np.linalg.solve(A, Xw.T @ yw)


def _loo_rmspe(X: np.ndarray, y: np.ndarray, ridge: float, penalised: np.ndarray) -> float:
    """Leave-one-out relative error of the ridge fit, in closed form (hat-matrix diagonal)."""
    Xw = X / y[:, None]
    A = Xw.T @ Xw + ridge * np.diag(penalised) + 1e-12 * np.eye(X.shape[1])
    H = Xw @ np.linalg.solve(A, Xw.T)
    resid = (1.0 - H.sum(axis=1)) / np.clip(1.0 - np.diag(H), 1e-6, None)
    return float(np.sqrt(np.mean(resid ** 2)))

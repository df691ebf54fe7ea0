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

    def group_ms(self, group: str, width: int, channels: int) -> float:
        """The per-group end-to-end correction at ``width`` (0 for a group without terms)."""
        aligned = self.aligned_ms.get(group, 0.0) if width % self.align == 0 else 0.0
        return aligned + self.linear_ms.get(group, 0.0) * width / channels

    def total_ms(self, raw_ms: float, widths: dict[str, int], groups: dict[str, int]) -> float:
        return self.scale * raw_ms + self.offset_ms + sum(
            self.group_ms(g, widths[g], c) for g, c in groups.items())


def fit(raw_ms: list[float], widths: list[dict[str, int]], e2e_ms: list[float],
        groups: dict[str, int], align: int = 16) -> Calibration:
    """Fit a Calibration on configurations with known profiler sums and end-to-end medians."""
    raw, y = np.asarray(raw_ms, float), np.asarray(e2e_ms, float)
    if len(y) < 3:
        return Calibration(float(np.median(y / raw)) if len(y) else 1.0, 0.0, align)
    names = sorted(groups)
    X = np.column_stack([raw, np.ones_like(raw)] + [col for g in names for col in (
        [float(w[g] % align == 0) for w in widths], [w[g] / groups[g] for w in widths])])
    penalised = np.ones(X.shape[1])
    penalised[:2] = 0.0
    ridge = min(RIDGE_GRID, key=lambda lam: _loo_rmspe(X, y, lam, penalised))
    coef = _solve(X, y, ridge, penalised)
    if coef[0] <= 0:  # degenerate data: keep the layers' shape, fit the level only
        return Calibration(float(np.median(y / raw)), 0.0, align)
    terms = coef[2:].reshape(len(names), 2)
    return Calibration(round(float(coef[0]), 6), round(float(coef[1]), 6), align,
                       {g: round(float(a), 6) for g, (a, _) in zip(names, terms)},
                       {g: round(float(b), 6) for g, (_, b) in zip(names, terms)},
                       ridge, round(_loo_rmspe(X, y, ridge, penalised), 5))


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

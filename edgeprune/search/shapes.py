"""Width *shapes*: one relative keep-ratio per group, scaled by the latency table to sit on a budget.

A shape says how the cut is spread over the network (all ones: the uniform prune); the budget
says how deep it goes. Separating the two lets the accuracy search compare candidates that all
spend the same predicted latency, and lets the closed loop tighten a chosen candidate after a
measured miss without searching again: it rescales the same shape to the new budget.
"""
from __future__ import annotations

import math

import numpy as np

from edgeprune.latency.table import LatencyTable
from edgeprune.search.knapsack import SearchConfig, bounds

Shape = dict[str, float]
MIN_RATIO = 0.02  # a sampled or mutated shape never asks for less than this of a group


def widths_at(table: LatencyTable, shape: Shape, scale: float, cfg: SearchConfig) -> dict[str, int]:
    """Each group at ``scale * shape[g]`` of its channels, rounded down to ``round_to``, within bounds."""
    lo, hi = bounds(table, cfg)
    out = {}
    for g, c in table.groups.items():
        want = scale * shape.get(g, 1.0) * c
        w = cfg.round_to * math.floor(want / cfg.round_to + 1e-9)
        out[g] = int(min(hi[g], max(lo[g], w if w < c else c)))
    return out


def fit_shape(table: LatencyTable, shape: Shape, budget_ms: float, cfg: SearchConfig) -> dict[str, int]:
    """The widest widths of ``shape`` the table predicts within ``budget_ms``.

    Bisects the common scale (the prediction grows with every width), then spends what rounding
    left: one ``round_to`` step at a time, to the group furthest below its ideal share. So every
    candidate sits on the budget and none wastes latency that a rival of the same shape would use.
    """
    top = 1.0 / max(MIN_RATIO, min(shape.get(g, 1.0) for g in table.groups))
    lo_s, hi_s = 0.0, top
    if table.predict(widths_at(table, shape, hi_s, cfg)) <= budget_ms:
        lo_s = hi_s
    for _ in range(40):
        if hi_s - lo_s < 1e-4:
            break
        mid = (lo_s + hi_s) / 2
        if table.predict(widths_at(table, shape, mid, cfg)) <= budget_ms:
            lo_s = mid
        else:
            hi_s = mid
    widths = widths_at(table, shape, lo_s, cfg)
    return _spend_rest(table, shape, widths, budget_ms, cfg, lo_s)


def _spend_rest(table, shape, widths, budget_ms, cfg, scale) -> dict[str, int]:
    _, hi = bounds(table, cfg)
    blocked: set[str] = set()
    while True:
        open_ = [g for g in widths if g not in blocked and widths[g] < hi[g]]
        if not open_:
            return widths
        g = max(open_, key=lambda g: scale * shape.get(g, 1.0) * table.groups[g] / max(widths[g], 1))
        trial = {**widths, g: min(hi[g], (widths[g] // cfg.round_to + 1) * cfg.round_to)}
        if table.predict(trial) <= budget_ms:
            widths = trial
        else:
            blocked.add(g)


def shape_of(table: LatencyTable, widths: dict[str, int]) -> Shape:
    """The shape a set of widths has (its ratios to the full widths)."""
    return {g: widths.get(g, c) / c for g, c in table.groups.items()}


def uniform(table: LatencyTable) -> Shape:
    return {g: 1.0 for g in table.groups}


def random_shape(table: LatencyTable, rng: np.random.Generator, low: float = 0.25) -> Shape:
    """Independent ratios in [low, 1]: EagleEye's random candidate, before scaling to the budget."""
    return {g: float(rng.uniform(low, 1.0)) for g in table.groups}


def mutate(shape: Shape, rng: np.random.Generator, sigma: float = 0.25, p: float = 0.4) -> Shape:
    """Each ratio multiplied by exp(N(0, sigma)) with probability ``p`` (at least one changes)."""
    groups = list(shape)
    hit = rng.random(len(groups)) < p
    hit[rng.integers(len(groups))] = True
    return {g: float(np.clip(r * math.exp(rng.normal(0, sigma)) if h else r, MIN_RATIO, 1.0))
            for (g, r), h in zip(shape.items(), hit)}

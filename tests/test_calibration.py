"""Calibration: profiler sums plus per-group end-to-end terms, fitted by ridge with a
leave-one-out choice of penalty."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.latency.calibration import Calibration, fit
from edgeprune.latency.table import LatencyTable, LayerEntry
from edgeprune.search.knapsack import SearchConfig, _State, search

GROUPS = {"a": 64, "b": 128, "c": 32}


def configs(n: int, seed: int = 0) -> list[dict[str, int]]:
    rng = np.random.default_rng(seed)
    return [{g: int(rng.choice(range(8, c + 1, 8))) for g, c in GROUPS.items()} for _ in range(n)]


def raw_of(w: dict[str, int]) -> float:
    return 0.02 + 1e-5 * (w["a"] * w["b"] + w["b"] * w["c"]) + 1e-4 * w["a"]


def truth(w: dict[str, int]) -> float:
    """1.3 x the profiler sum, 0.01 ms fixed, 'a' faster at multiples of 16, 'c' dearer per channel."""
    return 1.3 * raw_of(w) + 0.01 - 0.02 * (w["a"] % 16 == 0) + 0.03 * w["c"] / 32


def test_fit_recovers_aligned_and_linear_group_terms():
    train, test = configs(60), configs(40, seed=1)
    cal = fit([raw_of(w) for w in train], train, [truth(w) for w in train], GROUPS)
    pred = np.array([cal.total_ms(raw_of(w), w, GROUPS) for w in test])
    true = np.array([truth(w) for w in test])
    assert np.max(np.abs(pred - true) / true) < 0.01
    assert cal.aligned_ms["a"] == pytest.approx(-0.02, abs=2e-3)
    assert cal.group_ms("a", 48, 64) < cal.group_ms("a", 40, 64)  # aligned width is cheaper
    assert cal.loo_rmspe < 0.01


def test_scale_and_offset_only_misses_the_aligned_effect():
    # the same data without per-group terms: what the table predicted before calibration grew them
    train = configs(60)
    raw = np.array([raw_of(w) for w in train])
    y = np.array([truth(w) for w in train])
    A = np.stack([raw / y, 1 / y], 1)
    s, o = np.linalg.lstsq(A, np.ones_like(y), rcond=None)[0]
    plain = np.abs((s * raw + o - y) / y).max()
    cal = fit(raw, train, y, GROUPS)
    fitted = max(abs(cal.total_ms(r, w, GROUPS) - t) / t for r, w, t in zip(raw, train, y))
    assert fitted < plain / 3


def test_pure_noise_keeps_group_terms_small():
    # no group effect at all, 5% noise: the leave-one-out choice of penalty shrinks the terms
    rng = np.random.default_rng(3)
    train = configs(40)
    raw = [raw_of(w) for w in train]
    y = [1.2 * r * (1 + 0.05 * rng.standard_normal()) for r in raw]
    cal = fit(raw, train, y, GROUPS)
    assert cal.ridge >= 1.0
    typical = np.median(y)
    assert all(abs(v) < 0.1 * typical for v in [*cal.aligned_ms.values(), *cal.linear_ms.values()])
    assert cal.scale == pytest.approx(1.2, rel=0.25)


def test_too_few_configurations_fall_back_to_a_ratio():
    train = configs(2)
    cal = fit([1.0, 2.0], train, [1.5, 3.0], GROUPS)
    assert (cal.scale, cal.offset_ms, cal.aligned_ms) == (1.5, 0.0, {})
    assert fit([], [], [], GROUPS).scale == 1.0


def aligned_table() -> LatencyTable:
    """Two groups; a width of 'a' that is a multiple of 16 saves 0.3 ms end to end."""
    layers = {"conv": LayerEntry(["a", "b"], [[8, 32], [8, 32]], [[0.1, 0.4], [0.4, 1.6]])}
    cal = Calibration(scale=1.0, offset_ms=0.05, aligned_ms={"a": -0.3}, linear_ms={"b": 0.1})
    return LatencyTable({}, {"a": 32, "b": 32}, layers, 0.0, cal)


def test_search_deltas_include_the_group_terms():
    table = aligned_table()
    state = _State(table, {"a": 24, "b": 24})
    for g, new in [("a", 16), ("a", 8), ("b", 16), ("b", 8)]:
        expected = table.predict({"a": 24, "b": 24}) - table.predict({"a": 24, "b": 24, g: new})
        assert state.delta(g, new) == pytest.approx(expected)


def test_search_prefers_an_aligned_width_the_table_knows_is_faster():
    table = aligned_table()
    scores = {"a": np.ones(32), "b": np.ones(32)}
    budget = table.predict({"a": 24, "b": 32}) - 1e-6  # a=24 misses, a=16 (aligned) fits easily
    r = search(table, scores, budget, SearchConfig(min_ratio=0.25, round_to=8))
    assert r.predicted_ms <= budget
    assert r.widths["a"] % 16 == 0


def weight_mb(w: dict[str, int]) -> float:
    return 4 * 9 * (3 * w["a"] + w["a"] * w["b"] + w["b"] * w["c"]) / 1e6 * 40  # 0.7-10 MB here


def test_memory_hinge_models_a_cache_cliff_the_layer_sum_misses():
    # above 5 MB of weights every MB costs 0.05 ms more: the profiler's per-layer sum cannot see it
    cliff = lambda w: truth(w) + 0.05 * max(0.0, weight_mb(w) - 5.0)
    train, test = configs(60), configs(40, seed=1)
    y = [cliff(w) for w in train]
    raw = [raw_of(w) for w in train]
    without = fit(raw, train, y, GROUPS)
    cal = fit(raw, train, y, GROUPS, weight_mb=[weight_mb(w) for w in train])
    assert without.knee_mb is None and cal.knee_mb is not None
    assert 3.0 <= cal.knee_mb <= 7.0 and cal.per_mb_ms == pytest.approx(0.05, rel=0.3)
    err = lambda c, mb: max(abs(c.total_ms(raw_of(w), w, GROUPS, mb(w)) - cliff(w)) / cliff(w) for w in test)
    assert err(cal, weight_mb) < 0.03 < err(without, lambda w: 0.0)


def test_no_cliff_no_hinge():
    train = configs(60)
    cal = fit([raw_of(w) for w in train], train, [truth(w) for w in train], GROUPS,
              weight_mb=[weight_mb(w) for w in train])
    assert cal.memory_ms(100.0) == pytest.approx(0.0, abs=1e-3)

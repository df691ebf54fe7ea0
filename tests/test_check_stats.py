"""The regression statistic on synthetic timings: window medians of noisy samples, with
disturbed windows the way a shared machine makes them (neighbours only add time)."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.checks.check import Comparison, compare, latency_of

NOISE = 0.03          # per-sample relative noise, as measured on these machines


def windows(rng, n: int, scale: float = 1.0, noise: float = NOISE, per: int = 60,
            disturbed: int = 0, shift: float = 0.0) -> list[float]:
    """``n`` window medians of ``per`` samples around ``scale``; the first ``disturbed`` windows
    get a heavy right tail (a neighbour adding 20-200% to most of their samples)."""
    out = []
    for i in range(n):
        x = scale * (1 + shift) * (1 + rng.normal(0, noise, per))
        if i < disturbed:
            hit = rng.random(per) < 0.8
            x = x + hit * scale * rng.uniform(0.2, 2.0, per)
        out.append(float(np.median(x)))
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def test_equal_distributions_pass(rng):
    c = compare(windows(rng, 20), windows(rng, 10))
    assert not c.regression and not c.faster
    assert c.low <= 1 <= c.high
    assert c.ratio == pytest.approx(1, abs=0.02)


def test_ten_percent_slower_with_realistic_noise_is_a_regression(rng):
    c = compare(windows(rng, 20), windows(rng, 10, scale=1.10))
    assert c.regression
    assert c.low > 1 and c.ratio == pytest.approx(1.10, abs=0.02)
    assert c.low <= c.ratio <= c.high


def test_ten_percent_slower_with_noisy_windows_is_a_regression(rng):
    """3% noise on the window medians themselves (the worst a quiet run sees), not just samples."""
    base = list(1 + rng.normal(0, 0.03, 20))
    check = list(1.10 * (1 + rng.normal(0, 0.03, 10)))
    c = compare(base, check)
    assert c.regression and c.low > 1


def test_three_percent_slower_is_within_a_five_percent_tolerance(rng):
    c = compare(windows(rng, 20), windows(rng, 10, scale=1.03), tolerance=0.05)
    assert c.ratio == pytest.approx(1.03, abs=0.015)
    assert c.low > 1          # significant...
    assert not c.regression   # ...but smaller than the tolerance
    assert compare(windows(rng, 20), windows(rng, 10, scale=1.03), tolerance=0.01).regression


def test_heavy_right_tail_in_some_windows_is_no_false_alarm(rng):
    """Up to 6 of 10 check windows disturbed by a neighbour: the lower quartile ignores them."""
    base = windows(rng, 20, disturbed=4)
    for disturbed in (1, 3, 6):
        c = compare(base, windows(rng, 10, disturbed=disturbed))
        assert not c.regression, (disturbed, c)
        assert c.ratio == pytest.approx(1, abs=0.03)


def test_a_median_would_have_raised_the_false_alarm(rng):
    """Why the lower quartile: with 6 of 10 windows disturbed the median of windows moves >20%."""
    check = windows(rng, 10, disturbed=6)
    base = windows(rng, 20)
    assert np.median(check) / np.median(base) > 1.2
    assert latency_of(check) / latency_of(base) < 1.03


def test_false_alarm_and_detection_rates_over_many_synthetic_runs():
    """Per-run shifts of ±1.5% (sd) between sessions, 0-3 disturbed windows per run."""
    rng = np.random.default_rng(7)
    false_alarms = detections = 0
    n = 200
    for _ in range(n):
        def run(k, scale=1.0):
            return windows(rng, k, scale, disturbed=int(rng.integers(0, 4)), shift=rng.normal(0, 0.015))
        base = run(10) + run(10)
        false_alarms += compare(base, run(10)).regression
        detections += compare(base, run(10, 1.10)).regression
    assert false_alarms / n <= 0.05
    assert detections / n >= 0.95


def test_faster_is_reported_and_never_a_regression(rng):
    c = compare(windows(rng, 20), windows(rng, 10, scale=0.8))
    assert c.faster and not c.regression and c.high < 1


def test_bootstrap_is_reproducible_and_seed_dependent(rng):
    base, check = windows(rng, 20), windows(rng, 10, scale=1.04)
    assert compare(base, check) == compare(base, check)
    a, b = compare(base, check, seed=1), compare(base, check, seed=2)
    assert a.ratio == b.ratio and (a.low, a.high) != (b.low, b.high)


def test_single_window_each_side_gives_a_point_interval():
    """The fake target yields one deterministic window: the interval collapses to the ratio."""
    c = compare([2.0], [3.0])
    assert (c.ratio, c.low, c.high) == pytest.approx((1.5, 1.5, 1.5))
    assert c.regression
    same = compare([2.0], [2.0])
    assert (same.ratio, same.low, same.high) == (1.0, 1.0, 1.0) and not same.regression


@pytest.mark.parametrize("base, check", [([], [1.0]), ([1.0], []), ([1.0, 0.0], [1.0]), ([1.0], [-1.0])])
def test_compare_rejects_empty_or_non_positive(base, check):
    with pytest.raises(ValueError):
        compare(base, check)


def test_latency_is_the_lower_quartile_of_window_medians():
    assert latency_of([4, 1, 3, 2, 5]) == pytest.approx(1 + 2 / 3)  # type 8: order statistic 1.67
    assert latency_of([7.0]) == 7.0
    # the same quantile whatever the number of windows: 10 vs 20 draws of one distribution agree
    rng = np.random.default_rng(3)
    tens = [latency_of(rng.normal(1, 0.05, 10)) for _ in range(4000)]
    twenties = [latency_of(rng.normal(1, 0.05, 20)) for _ in range(4000)]
    assert abs(np.median(tens) - np.median(twenties)) < 0.001  # the linear default is off by 0.002


def test_comparison_dict_shape():
    d = Comparison(1.1, 1.05, 1.15, 1.0, 1.1, 0.05).to_dict()
    assert d["ci"] == [1.05, 1.15] and d["regression"] is True and d["faster"] is False
    assert set(d) == {"ratio", "ci", "confidence", "tolerance", "baseline_ms", "check_ms", "regression", "faster", "method"}


# --- the verdict: confirmation and the contention guard -------------------------------------------

def feed(monkeypatch, *specs):
    """A ``measure`` callable returning synthetic measurements: (latency ratio, CPU wait share)."""
    from edgeprune.checks import check
    monkeypatch.setattr(check, "RETRY_PAUSE_S", 0.0)
    queue = list(specs)
    calls = []

    def measure():
        ratio, wait = queue.pop(0)
        calls.append(ratio)
        w = tuple(ratio * (1 + 0.002 * k) for k in range(10))
        return check.Attempt(latency_of(w), w[0], w[-1], w, cpu_wait=wait)
    return measure, calls


BASE = tuple(1 + 0.002 * k for k in range(20))


def verdict(measure, budget_ms=None, confirm=True):
    from edgeprune.checks.budget import Budget
    from edgeprune.checks.check import CheckResult, judge
    res = CheckResult("m.onnx", "t", budget=Budget(budget_ms, "test") if budget_ms else None)
    judge(res, measure, BASE, 0.05, confirm)
    return res


def test_a_regression_needs_a_confirming_measurement(monkeypatch):
    measure, calls = feed(monkeypatch, (1.2, 0.0), (1.2, 0.0))
    res = verdict(measure)
    assert res.regression and len(calls) == 2 and "regression in both measurements" in res.problems[0]
    measure, calls = feed(monkeypatch, (1.2, 0.0), (1.0, 0.0))
    res = verdict(measure)
    assert not res.regression and not res.problems and len(calls) == 2
    assert "an earlier measurement failed" in res.notes[-1]


def test_a_pass_needs_one_measurement_even_on_a_busy_machine(monkeypatch):
    measure, calls = feed(monkeypatch, (1.0, 0.6))
    res = verdict(measure)
    assert not res.problems and calls == [1.0] and res.status == "pass"


def test_disturbed_measurements_cannot_prove_a_regression(monkeypatch):
    """A neighbour took the CPU: the flagged measurements are repeated, then inconclusive."""
    measure, calls = feed(monkeypatch, (1.3, 0.4), (1.3, 0.3), (1.3, 0.5), (1.3, 0.2))
    res = verdict(measure)
    assert res.status == "inconclusive" and not res.regression and len(calls) == 4
    assert res.problems[0].startswith("inconclusive") and "4 of 4 measurements waited" in res.notes[0]


def test_clean_measurements_after_a_disturbed_one_decide(monkeypatch):
    measure, calls = feed(monkeypatch, (1.3, 0.4), (1.2, 0.01), (1.2, 0.0))
    assert verdict(measure).regression and len(calls) == 3
    measure, calls = feed(monkeypatch, (1.3, 0.4), (1.01, 0.0))
    res = verdict(measure)
    assert not res.problems and len(calls) == 2


def test_without_confirmation_one_clean_flag_decides(monkeypatch):
    measure, calls = feed(monkeypatch, (1.2, 0.0))
    assert verdict(measure, confirm=False).regression and len(calls) == 1


def test_budget_is_confirmed_like_a_regression(monkeypatch):
    measure, calls = feed(monkeypatch, (1.0, 0.0), (1.0, 0.0))
    res = verdict(measure, budget_ms=0.5)
    assert res.over_budget and not res.regression and len(calls) == 2
    measure, calls = feed(monkeypatch, (1.0, 0.0), (0.4, 0.0))
    res = verdict(measure, budget_ms=0.5)
    assert not res.over_budget and len(calls) == 2


def test_a_baseline_on_a_busy_machine_keeps_the_least_slowed_measurements_and_warns(monkeypatch):
    from edgeprune.checks.check import CheckResult, _baseline_attempts
    measure, calls = feed(monkeypatch, (1.3, 0.4), (1.1, 0.3), (1.2, 0.5), (1.4, 0.2))
    res = CheckResult("m.onnx", "t")
    used = _baseline_attempts(res, measure)
    assert len(calls) == 4 and sorted(round(a.windows_ms[0], 3) for a in used) == [1.1, 1.2]
    assert res.notes[0].startswith("WARNING: recorded on a busy machine (waited for the CPU up to 50%")
    measure, calls = feed(monkeypatch, (1.0, 0.0), (1.3, 0.4), (1.0, 0.01))
    res = CheckResult("m.onnx", "t")
    used = _baseline_attempts(res, measure)
    assert len(calls) == 3 and not any(a.disturbed for a in used) and not res.notes


def test_paired_comparison_cancels_a_slow_period():
    # both models slow down together in the second half (a neighbour): unpaired, the spread
    # of each side swamps a 10% difference; paired by round, the ratio is ~1.10 throughout
    from edgeprune.checks.comparison import compare_paired
    rng = np.random.default_rng(1)
    ref = np.concatenate([np.full(100, 1.0), np.full(100, 1.6)]) * rng.lognormal(0, 0.02, 200)
    cand = 1.10 * np.concatenate([np.full(100, 1.0), np.full(100, 1.6)]) * rng.lognormal(0, 0.02, 200)
    unpaired = compare(ref.reshape(10, 20).mean(1), cand.reshape(10, 20).mean(1), 0.05)
    assert not unpaired.regression
    logs = np.log(cand / ref).reshape(10, 20)
    paired = compare_paired(logs, 1.0, 1.1, 0.05)
    assert paired.regression and paired.low > 1.05 and paired.ratio == pytest.approx(1.10, rel=0.02)
    assert paired.method == "paired" and paired.to_dict()["method"] == "paired"
    same = compare_paired(np.log(ref[::-1] / ref).reshape(10, 20), 1.0, 1.0, 0.05)
    assert not same.regression


def test_paired_interval_widens_when_windows_disagree():
    # rounds inside a window are correlated: the interval must come from whole windows, so
    # two windows reading +8% and -2% give a wide interval however many rounds each has
    from edgeprune.checks.comparison import compare_paired
    tight = compare_paired([np.log(np.full(50, 1.08))] * 2 + [np.log(np.full(50, 1.07))] * 2, 1, 1, 0.05)
    loose = compare_paired([np.log(np.full(50, 1.08)), np.log(np.full(50, 0.98))] * 2, 1, 1, 0.05)
    assert tight.regression
    assert loose.low < 1 and not loose.regression
    with pytest.raises(ValueError, match="finite"):
        compare_paired([[float("nan")]], 1, 1)

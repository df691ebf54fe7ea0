"""The final verdict: one alternating measurement gives the paired speed-up and the budget
verdict; an interval that straddles the budget is measured again and, if it still straddles,
said to be inconclusive instead of keeping the best of several tries."""
from __future__ import annotations

from dataclasses import replace

import pytest

from edgeprune.checks.comparison import budget_verdict
from edgeprune.pipeline import measure_final
from edgeprune.runtime.timing import Alternation, Latency


def lat(windows: list[float]) -> Latency:
    return replace(Latency.from_samples(windows * 3), window_medians_ms=tuple(windows))


class Scripted:
    """A target whose alternating measurements of (unpruned, final) follow a script of
    window medians; every round's ratio is final / unpruned of its window."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def with_busy_share(self, run):
        return run(), None  # the share is unknown: as on a host without schedstat

    def measure_alternating(self, a, b, timing=None):
        self.calls += 1
        base, final = self.script.pop(0)
        rounds = tuple(tuple((u, f) for _ in range(4)) for u, f in zip(base, final))
        return Alternation(rounds, (lat(base), lat(final)))


def test_inside_budget_is_measured_once_and_the_speedup_is_paired():
    t = Scripted([([1.0, 1.0, 1.0, 1.0, 1.0], [0.40, 0.41, 0.40, 0.42, 0.40])])
    m = measure_final(t, "u.onnx", "f.onnx", 0.5)
    assert t.calls == 1
    assert m.budget.verdict == "fits" and m.budget.high_ms <= 0.5
    assert m.speedup["method"] == "paired"
    assert m.speedup["ratio"] == pytest.approx(1 / 0.40, rel=0.02)
    assert m.speedup["ci"][0] <= m.speedup["ratio"] <= m.speedup["ci"][1]


def test_noise_that_straddles_the_budget_is_measured_again_then_said_inconclusive():
    straddle = ([1.0] * 6, [0.48, 0.49, 0.50, 0.51, 0.52, 0.53])
    t = Scripted([straddle] * 3)
    m = measure_final(t, "u.onnx", "f.onnx", 0.495, attempts=3)
    assert t.calls == 3  # re-measured while the interval straddled the budget
    assert m.budget.verdict == "inconclusive"
    assert m.budget.low_ms <= 0.495 < m.budget.high_ms
    assert m.budget.windows == 18  # every window pooled, not the fastest kept
    assert len(m.final.window_medians_ms) == 18


def test_a_model_that_is_really_too_slow_is_over_and_a_second_look_can_settle_it():
    t = Scripted([([1.0] * 5, [0.60, 0.61, 0.62, 0.60, 0.61])])
    assert measure_final(t, "u.onnx", "f.onnx", 0.5).budget.verdict == "over"
    calm = ([1.0] * 6, [0.45, 0.44, 0.45, 0.46, 0.45, 0.44])
    t = Scripted([([1.0] * 6, [0.46, 0.55, 0.47, 0.56, 0.48, 0.54]), calm, calm])
    m = measure_final(t, "u.onnx", "f.onnx", 0.5, attempts=3)
    assert t.calls >= 2 and m.budget.verdict in ("fits", "inconclusive")


def test_budget_verdict_is_the_lower_quartile_with_an_interval():
    v = budget_verdict([1.0, 1.1, 1.2, 1.3, 5.0], 2.0)  # a disturbed window only adds time
    assert v.latency_ms < 1.3 and v.verdict == "fits"
    d = v.to_dict()
    assert d["verdict"] == "fits" and d["ci_ms"][0] <= d["latency_ms"] <= d["ci_ms"][1] and d["windows"] == 5
    assert "inconclusive" not in v.describe() and "2.0000 ms" in v.describe()
    assert budget_verdict([3.0, 3.1, 3.2], 2.0).verdict == "over"


class Busy(Scripted):
    """A scripted target whose device was busy during every measurement."""

    def with_busy_share(self, run):
        return run(), 0.30


def test_over_on_a_busy_device_is_inconclusive_and_the_loops_readings_count():
    slow = ([1.0] * 5, [0.60, 0.61, 0.62, 0.60, 0.61])
    m = measure_final(Busy([slow] * 3), "u.onnx", "f.onnx", 0.5, attempts=3)
    assert m.budget.busy and m.budget.verdict == "inconclusive" and "busy" in m.budget.describe()
    assert measure_final(Scripted([slow]), "u.onnx", "f.onnx", 0.5).budget.verdict == "over"  # not busy: over
    # the loop read this architecture inside the budget in 12 windows: pooled, not dropped
    m = measure_final(Scripted([slow] * 3), "u.onnx", "f.onnx", 0.5, earlier_ms=(0.44,) * 12, attempts=3)
    assert m.budget.windows >= 17 and m.budget.verdict != "over"


def test_a_relative_budget_is_judged_on_paired_ratios_not_on_the_hosts_level():
    """--budget-ratio 0.5 on a host running 1.6x slower than when the table was profiled: the
    pruned model reads 0.72 ms, over 0.5 of the table's 1.0 ms unpruned level, yet it is 0.45 of
    the unpruned model read beside it, so it fits; the verdict's budget is in this run's ms."""
    t = Scripted([([1.6] * 5, [0.72, 0.72, 0.73, 0.72, 0.72])])
    assert measure_final(Scripted(list(t.script)), "u.onnx", "f.onnx", 0.5).budget.verdict == "over"
    m = measure_final(t, "u.onnx", "f.onnx", 0.5, level_ms=1.0)
    assert m.budget.verdict == "fits"
    assert m.budget.budget_ms == pytest.approx(0.8)  # 0.5 of the unpruned model's 1.6 ms this run
    assert m.budget.latency_ms == pytest.approx(0.72, rel=0.01)
    # the loop's readings (table units, level 1.0) count as shares of the unpruned model
    slow = Scripted([([1.6] * 3, [0.85, 0.85, 0.85])])
    assert measure_final(slow, "u.onnx", "f.onnx", 0.5, earlier_ms=(0.45,) * 40, level_ms=1.0).budget.windows == 43
    over = Scripted([([1.6] * 5, [0.9] * 5)])
    assert measure_final(over, "u.onnx", "f.onnx", 0.5, level_ms=1.0).budget.verdict == "over"

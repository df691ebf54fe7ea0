"""The final verdict: a same-run speed-up, re-measurement over budget, and the loop's own
measurement of the same architecture pooled in when a disturbed period reads it over budget."""
from __future__ import annotations

import pytest

from edgeprune.pipeline import measure_final
from edgeprune.runtime.timing import Latency


def lat(ms: float) -> Latency:
    return Latency.from_samples([ms] * 5)


class Scripted:
    """A target whose interleaved measurements of (unpruned, final) follow a script."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def measure_many(self, paths, timing=None):
        self.calls += 1
        base, final = self.script.pop(0)
        return [lat(base), lat(final)]


def test_inside_budget_is_measured_once_and_the_speedup_is_same_run():
    t = Scripted([(1.0, 0.4)])
    base, same_run, verdict = measure_final(t, "u.onnx", "f.onnx", 0.5, lat(0.45))
    assert t.calls == 1
    assert base.median_ms / same_run.median_ms == 2.5
    assert verdict.median_ms == 0.4


def test_a_disturbed_final_period_is_re_measured_then_pooled_with_the_loop():
    t = Scripted([(1.2, 0.56), (1.1, 0.54), (1.3, 0.53)])  # every final window slow
    base, same_run, verdict = measure_final(t, "u.onnx", "f.onnx", 0.5, lat(0.47), attempts=3)
    assert t.calls == 3
    assert same_run.median_ms == 0.53  # least-disturbed of the pooled final windows
    assert verdict.median_ms == 0.47   # the loop measured this architecture inside the budget
    assert base.median_ms / same_run.median_ms > 2  # the speed-up never mixes periods


def test_a_model_that_is_really_too_slow_stays_over():
    t = Scripted([(1.0, 0.6)] * 3)
    _, _, verdict = measure_final(t, "u.onnx", "f.onnx", 0.5, lat(0.61), attempts=3)
    assert verdict.median_ms > 0.5


class Alternating:
    """A target whose alternating blocks give a known per-round ratio, while its interleaved
    windows are disturbed unevenly (the unpruned model's fastest window is much slower)."""

    def measure_many(self, paths, timing=None):
        return [lat(3.0), lat(0.5)]   # separate best windows would say 6.0x

    def measure_alternating(self, a, b, timing=None):
        from edgeprune.runtime.timing import Alternation
        rounds = tuple(tuple((0.5 * k, 0.5 * k * r) for k, r in zip((1, 2, 3, 1, 2), (3.2, 3.3, 3.4, 3.3, 3.2)))
                       for _ in range(4))
        return Alternation(rounds, (lat(0.5), lat(1.65)))


def test_the_reported_speedup_is_a_paired_same_run_ratio():
    from edgeprune.pipeline import paired_speedup
    s = paired_speedup(Alternating(), "u.onnx", "f.onnx")
    assert s["method"] == "paired"
    assert s["ratio"] == pytest.approx(3.3)   # median of per-round ratios, not 6.0 from best windows
    assert s["ci"][0] <= s["ratio"] <= s["ci"][1]

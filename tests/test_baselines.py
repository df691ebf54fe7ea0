"""The comparison baselines (uniform, global magnitude), the latency matcher, and the shared
fine-tune recipe every compared model goes through."""
from __future__ import annotations

import copy

import pytest
from conftest import INPUT_SHAPE

from edgeprune.pruning import baselines as b
from edgeprune.pruning.prune import widths_of


def test_uniform_widths_cut_every_group_by_the_same_ratio(tiny_table):
    w = b.uniform_widths(tiny_table, 0.5)
    for g, c in tiny_table.groups.items():
        assert w[g] % 8 == 0 and abs(w[g] - c / 2) <= 4
    assert b.uniform_widths(tiny_table, 1.0) == tiny_table.groups


def test_global_magnitude_really_shrinks_the_model(resnet18_setup):
    model, table, _ = resnet18_setup
    pruned = b.global_magnitude(model, INPUT_SHAPE, 0.5)
    assert b.macs(pruned, INPUT_SHAPE) < 0.6 * b.macs(model, INPUT_SHAPE)
    widths = widths_of(pruned, INPUT_SHAPE)
    assert set(widths) == set(table.groups)  # same group names as the table: predictable
    assert len({w / table.groups[g] for g, w in widths.items()}) > 1  # not uniform: a global ranking
    assert widths_of(model, INPUT_SHAPE) == table.groups  # the original is untouched


@pytest.mark.parametrize("goal", [3.0, 7.5, 11.9])
def test_bisect_finds_the_closest_knob(goal):
    calls = []
    f = lambda x: calls.append(x) or 10 * x + 2
    x = b.bisect(f, goal, 0.0, 1.0, steps=20)
    assert len(set(calls)) == len(calls)  # each knob evaluated once
    assert f(x) == pytest.approx(goal, abs=1e-4)
    assert b.bisect(lambda x: -x, -0.25, 0.0, 1.0, steps=20) == pytest.approx(0.25, abs=1e-5)
    assert b.bisect(f, 50.0, 0.0, 1.0) == 1.0  # out of reach: the nearest end


class RatioTarget:
    """A target whose paired measurement reports a scripted ratio per attempt."""

    def __init__(self, ratios):
        self.ratios = list(ratios)

    def measure_alternating(self, a, b_):
        from edgeprune.runtime.timing import Alternation, Latency
        r = self.ratios.pop(0)
        rounds = (tuple((1.0, r) for _ in range(6)),) * 3
        lat = Latency.from_samples([1.0])
        return Alternation(rounds, (lat, lat))


def _match(tiny_model, tiny_table, tmp_path, ratios, goal=0.7):
    ref = tmp_path / "ref.onnx"
    ref.write_bytes(b"")
    target = RatioTarget(ratios)
    build = lambda k: b.uniform_model(tiny_model, INPUT_SHAPE, tiny_table, k)
    m = b.match(build, b.predicted_ms(tiny_table, INPUT_SHAPE), goal * tiny_table.predict({}), 0.1, 1.0,
                target, ref, INPUT_SHAPE)
    return m, target


def test_match_rescales_the_goal_by_the_measured_miss(tiny_model, tiny_table, tmp_path):
    m, target = _match(tiny_model, tiny_table, tmp_path, [1.6, 1.01, 1.02])
    assert m.attempts == 2 and m.ratio == pytest.approx(1.01)
    assert m.tries[1][0] < m.tries[0][0]  # slower than the reference: a smaller keep ratio next
    assert m.confirmed == pytest.approx(1.02)  # the kept pair is measured once more, with its CI
    assert m.confirmed_ci == pytest.approx((1.02, 1.02))
    assert target.ratios == []


def test_match_bisects_between_a_faster_and_a_slower_try(tiny_model, tiny_table, tmp_path):
    m, _ = _match(tiny_model, tiny_table, tmp_path, [0.6, 1.5, 1.01, 1.0])
    (k1, _), (k2, _), (k3, _) = m.tries
    assert min(k1, k2) < k3 < max(k1, k2)
    assert m.attempts == 3 and m.ratio == pytest.approx(1.01)


def test_match_never_measures_one_architecture_twice(tiny_model, tiny_table, tmp_path):
    """Out of tolerance on both sides every time: the bisection runs out of new widths or of
    attempts without measuring a width twice, and keeps the slower side."""
    m, _ = _match(tiny_model, tiny_table, tmp_path, [0.9, 1.1] * 10)
    archs = [b.architecture(b.uniform_model(tiny_model, INPUT_SHAPE, tiny_table, k)) for k, _ in m.tries]
    assert len(set(archs)) == len(archs) <= 8
    assert m.ratio == pytest.approx(1.1)


def test_choose_keeps_the_baseline_no_faster_than_the_reference():
    t = lambda r: b.Matched(r, None, r, (r, r), 1)
    assert b.choose([t(0.94), t(1.05)], 0.03).ratio == 1.05  # out of tolerance: the slower side
    assert b.choose([t(0.94), t(1.02), t(0.99)], 0.03).ratio == 0.99  # inside: the closest
    assert b.choose([t(0.90), t(0.94)], 0.03).ratio == 0.94  # all faster: the slowest
    assert b.choose([t(1.09), t(1.2)], 0.03).ratio == 1.09


def test_finetune_pruned_reports_the_accuracy_path(tiny_model):
    from edgeprune.pruning.prune import prune_to_widths
    from edgeprune.training.data import DataConfig, load_data
    from edgeprune.training.finetune import finetune_pruned, recipe
    data = load_data(DataConfig(input_size=32, train_samples=400, val_samples=100, test_samples=100))
    teacher = tiny_model
    pruned = prune_to_widths(tiny_model, INPUT_SHAPE, {g: 8 for g in widths_of(tiny_model, INPUT_SHAPE)})
    only_bn = finetune_pruned(copy.deepcopy(pruned), teacher, data, epochs=0)
    assert only_bn.train is None and only_bn.finetuned == only_bn.recalibrated
    out = finetune_pruned(pruned, teacher, data, epochs=1, seed=3)
    assert out.train is not None and out.train.epochs_run == 1
    assert out.recalibrated.accuracy == only_bn.recalibrated.accuracy  # same recipe, same BN batches
    assert out.recalibrated.loss == pytest.approx(only_bn.recalibrated.loss, rel=1e-4)
    assert recipe(data, 2, seed=3).batch_size == 32 and recipe(data, 2).epochs == 2
    assert set(out.to_dict()) == {"pruned", "recalibrated", "finetuned", "train"}

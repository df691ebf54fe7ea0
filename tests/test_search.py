"""Budget -> widths: constraints, known optima on hand-made additive tables, and the fake resnet18 table."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from edgeprune.errors import InfeasibleBudget, UsageError
from edgeprune.latency.table import LatencyTable, LayerEntry
from edgeprune.search.knapsack import SearchConfig, bounds, search


def additive_table(per_channel_ms: dict[str, tuple[int, float]], coupled: dict | None = None,
                   overhead_ms: float = 0.0) -> LatencyTable:
    """Each group g with C channels costs k*w ms at width w (exact, linear); ``coupled`` adds
    layers costing k*w_a*w_b (a 2-axis layer such as a conv between two groups)."""
    groups = {g: c for g, (c, _) in per_channel_ms.items()}
    layers = {f"L_{g}": LayerEntry([g], [[8, c]], [8 * k, c * k]) for g, (c, k) in per_channel_ms.items()}
    for (a, b), k in (coupled or {}).items():
        la, lb = [8, groups[a]], [8, groups[b]]
        layers[f"L_{a}_{b}"] = LayerEntry([a, b], [la, lb], [[k * x * y for y in lb] for x in la])
    return LatencyTable({}, groups, layers, overhead_ms)


def uniform_scores(table: LatencyTable, value: float = 1.0, **per_group) -> dict[str, np.ndarray]:
    return {g: np.full(c, per_group.get(g, value), dtype=float) for g, c in table.groups.items()}


def lattice(lo: int, hi: int, step: int) -> list[int]:
    return sorted({w for w in range(lo, hi + 1) if w % step == 0} | {hi})


def brute_force(table, scores, budget, cfg: SearchConfig):
    lo, hi = bounds(table, cfg)
    cum = {g: np.concatenate([[0.0], np.cumsum(s)]) for g, s in scores.items()}
    best = None
    for combo in itertools.product(*(lattice(lo[g], hi[g], cfg.round_to) for g in table.groups)):
        w = dict(zip(table.groups, combo))
        if table.predict(w) <= budget + 1e-12:
            kept = sum(cum[g][w[g]] for g in w)
            best = max(best or 0.0, kept)
    total = sum(cum[g][c] for g, c in table.groups.items())
    return best / total


@pytest.fixture
def two_groups():
    # "a" costs 10x more per channel than "b"; both equally important
    return additive_table({"a": (64, 0.01), "b": (64, 0.001)})


def test_known_optimum_prunes_the_expensive_group(two_groups):
    r = search(two_groups, uniform_scores(two_groups), 0.4)
    assert r.widths == {"a": 32, "b": 64}
    assert r.predicted_ms == pytest.approx(0.384)
    assert r.full_ms == pytest.approx(0.704)
    assert r.kept_importance == pytest.approx(96 / 128)
    assert r.budget_ms == 0.4
    assert r.steps >= 4


def test_budget_above_full_keeps_everything(two_groups):
    r = search(two_groups, uniform_scores(two_groups), 10.0)
    assert r.widths == two_groups.groups
    assert r.predicted_ms == pytest.approx(r.full_ms)
    assert r.kept_importance == pytest.approx(1.0)
    assert r.steps == 0


def test_important_cheap_group_is_pruned_less():
    t = additive_table({"valuable": (64, 0.002), "wasteful": (64, 0.01)})
    scores = uniform_scores(t, valuable=5.0, wasteful=0.5)
    r = search(t, scores, 0.25)
    assert r.predicted_ms <= 0.25
    assert r.widths["wasteful"] == 16  # its floor: min_ratio 0.25 of 64
    assert r.widths["valuable"] == 40  # what is left of the budget goes to the valuable group
    assert r.widths["valuable"] / 64 > r.widths["wasteful"] / 64
    # with a looser budget the valuable group is not touched at all
    assert search(t, scores, 0.3).widths == {"valuable": 64, "wasteful": 16}


@pytest.mark.parametrize("budget", [0.9, 0.7, 0.5, 0.35])
def test_near_optimal_on_coupled_additive_table(budget):
    t = additive_table({"a": (32, 0.004), "b": (48, 0.002), "c": (24, 0.006)},
                       coupled={("a", "b"): 0.0002, ("b", "c"): 0.0003}, overhead_ms=0.05)
    rng = np.random.default_rng(0)
    scores = {g: np.sort(rng.uniform(0.2, 2.0, c))[::-1] for g, c in t.groups.items()}
    cfg = SearchConfig()
    r = search(t, scores, budget, cfg)
    assert r.predicted_ms <= budget
    assert r.predicted_ms == pytest.approx(t.predict(r.widths))
    best = brute_force(t, scores, budget, cfg)
    step = max(s[:8].sum() for s in scores.values()) / sum(s.sum() for s in scores.values())
    assert r.kept_importance >= best - step, (r.widths, r.kept_importance, best)


def test_widths_respect_round_to_and_full_width():
    t = additive_table({"a": (60, 0.01), "b": (36, 0.01)})
    for round_to in (4, 8, 16):
        cfg = SearchConfig(round_to=round_to, min_ratio=0.1, min_width=1)
        floor_ms = t.predict(bounds(t, cfg)[0])
        for budget in (0.91, 0.61, 0.41, floor_ms + 0.01):  # not on a reachable sum (see the next test)
            r = search(t, uniform_scores(t), budget, cfg)
            assert r.predicted_ms <= budget
            for g, w in r.widths.items():
                assert w == t.groups[g] or w % round_to == 0, (round_to, budget, g, w)


@pytest.mark.parametrize("budget", [0.8, 0.6, 0.4])
def test_predicted_never_exceeds_a_budget_it_can_meet_exactly(budget):
    # widths summing to exactly 80, 60 or 40 channels fit these budgets on the nose; the search's
    # running total must neither drift over the budget nor stop short of it (1e-9 relative slack
    # absorbs float summation order, nothing more)
    t = additive_table({"a": (60, 0.01), "b": (36, 0.01)})
    r = search(t, uniform_scores(t), budget, SearchConfig(round_to=4, min_ratio=0.1, min_width=1))
    assert r.predicted_ms <= budget * (1 + 1e-9), r
    assert r.predicted_ms == pytest.approx(budget)


@pytest.mark.parametrize("min_ratio, min_width, floors", [
    (0.5, 8, {"a": 32, "b": 64}),
    (0.25, 40, {"a": 40, "b": 40}),
    (0.25, 8, {"a": 16, "b": 32}),
    (0.1, 20, {"a": 24, "b": 24}),  # rounded up to the lattice
])
def test_min_ratio_and_min_width(min_ratio, min_width, floors):
    t = additive_table({"a": (64, 0.01), "b": (128, 0.01)})
    cfg = SearchConfig(min_ratio=min_ratio, min_width=min_width)
    assert bounds(t, cfg)[0] == floors
    floor_ms = t.predict(floors)
    r = search(t, uniform_scores(t), floor_ms * 1.000001, cfg)
    assert r.widths == floors
    assert all(r.widths[g] >= floors[g] for g in t.groups)


def test_min_width_above_group_size_keeps_group_whole():
    t = additive_table({"small": (16, 0.01), "big": (128, 0.01)})
    lo, hi = bounds(t, SearchConfig(min_width=32))
    assert lo["small"] == hi["small"] == 16


def test_protected_groups_stay_full(two_groups):
    cfg = SearchConfig(protect=["a"])
    r = search(two_groups, uniform_scores(two_groups), 0.68, cfg)
    assert r.widths["a"] == 64
    assert r.widths["b"] < 64
    assert r.predicted_ms <= 0.68
    with pytest.raises(InfeasibleBudget):
        search(two_groups, uniform_scores(two_groups), 0.4, cfg)  # feasible only by pruning "a"


def test_protecting_an_unknown_group_is_a_usage_error(two_groups):
    with pytest.raises(UsageError, match="zz"):
        search(two_groups, uniform_scores(two_groups), 0.5, SearchConfig(protect=["zz"]))


def test_max_widths_are_upper_bounds(two_groups):
    cfg = SearchConfig(max_widths={"a": 40, "b": 56})
    r = search(two_groups, uniform_scores(two_groups), 10.0, cfg)
    assert r.widths == {"a": 40, "b": 56}  # never regrown, even when the budget allows
    r = search(two_groups, uniform_scores(two_groups), 0.3, cfg)
    assert r.widths["a"] <= 40 and r.widths["b"] <= 56 and r.predicted_ms <= 0.3


def test_infeasible_budget_states_the_reachable_minimum(two_groups):
    cfg = SearchConfig()
    floor_ms = two_groups.predict(bounds(two_groups, cfg)[0])
    assert floor_ms == pytest.approx(16 * 0.011)
    with pytest.raises(InfeasibleBudget) as info:
        search(two_groups, uniform_scores(two_groups), 0.1, cfg)
    e = info.value
    assert isinstance(e, UsageError) and e.exit_code == 2
    assert e.reachable_ms == pytest.approx(floor_ms)
    assert e.budget_ms == 0.1
    assert f"{floor_ms:.3f} ms" in str(e)
    assert "infeasible" in str(e)


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan")])
def test_non_positive_budget_is_a_usage_error(two_groups, budget):
    with pytest.raises(UsageError, match="positive") as info:
        search(two_groups, uniform_scores(two_groups), budget)
    assert not isinstance(info.value, InfeasibleBudget)


# --- the fake-target tables ----------------------------------------------------------------------

def test_tiny_resnet_search(tiny_table, tiny_model):
    from conftest import INPUT_SHAPE

    from edgeprune.pruning.importance import importances
    scores = importances(tiny_model, INPUT_SHAPE)
    assert set(scores) == set(tiny_table.groups)
    budget = 0.8 * tiny_table.predict({})
    r = search(tiny_table, scores, budget)
    assert r.predicted_ms <= budget
    assert 0 < r.kept_importance < 1
    assert set(r.widths) == set(tiny_table.groups)


RESNET_FRACTIONS = [0.95, 0.85, 0.7, 0.55, 0.45, 0.35]


@pytest.fixture(scope="module")
def resnet18_results(resnet18_setup):
    _, table, scores = resnet18_setup
    full = table.predict({})
    return table, [search(table, scores, f * full) for f in RESNET_FRACTIONS]


def test_resnet18_results_fit_and_are_on_the_lattice(resnet18_results):
    table, results = resnet18_results
    lo, hi = bounds(table, SearchConfig())
    for r in results:
        assert r.predicted_ms <= r.budget_ms
        assert r.predicted_ms == pytest.approx(table.predict(r.widths))
        for g, w in r.widths.items():
            assert lo[g] <= w <= hi[g]
            assert w % 8 == 0 or w == table.groups[g]


def test_tighter_budgets_give_smaller_models(resnet18_results):
    _, results = resnet18_results
    predicted = [r.predicted_ms for r in results]
    kept = [r.kept_importance for r in results]
    assert predicted == sorted(predicted, reverse=True)
    assert kept == sorted(kept, reverse=True)
    assert kept[0] > kept[-1]


def test_resnet18_search_down_to_the_floor(resnet18_setup):
    # the most greedy steps a feasible budget can need: every group from full to near its floor
    # (how long that takes is a benchmark's business, not a test's: tools/side_by_side.py)
    _, table, scores = resnet18_setup
    lo, hi = bounds(table, SearchConfig())
    floor_ms = table.predict(lo)
    r = search(table, scores, floor_ms * 1.02)
    assert r.predicted_ms <= floor_ms * 1.02
    assert r.steps <= sum((hi[g] - lo[g]) // 8 + 1 for g in hi) * 2  # each step moves one group by 8


def test_resnet18_round_to_16(resnet18_setup):
    _, table, scores = resnet18_setup
    r = search(table, scores, 0.5 * table.predict({}), SearchConfig(round_to=16, min_width=16))
    assert all(w % 16 == 0 for w in r.widths.values())
    assert math.isfinite(r.predicted_ms) and r.predicted_ms <= r.budget_ms

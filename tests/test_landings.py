"""Landings: the loop's trusted readings correct the table where budgets land, from the next run."""
from __future__ import annotations

import copy
import json
import math

import pytest
from conftest import INPUT_SHAPE, SlowerHost

from edgeprune.latency.landings import PRIOR
from edgeprune.pruning.importance import importances
from edgeprune.search.knapsack import SearchConfig
from edgeprune.search.loop import fit_budget


@pytest.fixture
def table(tiny_table, tmp_path):
    """A private copy of the session's table, with an empty landings file in ``tmp_path``."""
    t = copy.copy(tiny_table)
    t.path = tmp_path / "tiny.json"
    t.attach_landings()
    return t


def half(table) -> dict[str, int]:
    return {g: max(8, c // 2) for g, c in table.groups.items()}


def test_a_landing_corrects_the_table_near_it_and_nowhere_else(table):
    w, far = half(table), dict(table.groups)
    base, base_far = table.predict(w), table.predict(far)
    assert table.predict(w) == table.calibrated(w)  # no landings: the profile itself
    table.landings.add(w, 1.5 * base)
    moved = math.log(table.predict(w) / base) / math.log(1.5)
    assert moved == pytest.approx(1 / (1 + PRIOR), rel=1e-6)
    assert table.predict(far) == pytest.approx(base_far, rel=0.01)  # the unpruned model is far from half width
    table.landings.add(w, 1.5 * base)  # a second reading that agrees moves it further
    assert table.predict(w) / base > 1.5 ** (1 / (1 + PRIOR))
    assert table.calibrated(w) == base


def test_landings_never_change_the_tables_identity(table):
    digest = table.digest
    table.landings.add(half(table), 2 * table.predict(half(table)))
    assert table.digest == digest and "landings" not in table.to_dict()


def test_landings_are_kept_beside_the_table_for_that_table_only(table, tmp_path, capsys):
    w = half(table)
    table.landings.add(w, 1.4 * table.predict(w))
    path = table.landings.save()
    assert path == tmp_path / "tiny.landings.json" and not list(tmp_path.glob("*.tmp*"))
    again = copy.copy(table)
    assert len(again.attach_landings()) == 1
    assert again.predict(w) == pytest.approx(table.predict(w))
    saved = json.loads(path.read_text())
    saved["table"] = "another-profile"  # re-profiled since: its landings no longer apply
    path.write_text(json.dumps(saved))
    assert len(copy.copy(table).attach_landings()) == 0
    path.write_text("{not json")
    assert len(copy.copy(table).attach_landings()) == 0
    assert "ignoring unreadable landings" in capsys.readouterr().err


def test_the_next_run_lands_where_this_one_measured(tiny_model, table):
    """A host 25% slower than the profile: the first run misses and tightens; the second starts
    from the landings, predicts its pick within 5% and fits in its first round."""
    scores = importances(tiny_model, INPUT_SHAPE)
    host = SlowerHost(1.25)
    budget = 0.7 * host.factor * table.predict({})
    first = fit_budget(tiny_model, INPUT_SHAPE, table, scores, host, budget, SearchConfig())
    assert len(first.rounds) >= 2 and first.rounds[0].measured_ms > 1.15 * first.rounds[0].predicted_ms
    assert len(table.landings) == len(first.rounds)
    second = fit_budget(tiny_model, INPUT_SHAPE, table, scores, host, budget, SearchConfig())
    pick = second.rounds[0]
    assert len(second.rounds) == 1 and second.latency.median_ms <= budget
    assert abs(pick.predicted_ms / pick.measured_ms - 1) < 0.05
    assert abs(pick.calibrated_ms / pick.measured_ms - 1) > 0.15  # the profile alone is still 25% off


def test_a_budget_not_met_still_teaches_the_table(tiny_model, table):
    """Readings of a loop that gave up are kept too (the pipeline saves them in a finally)."""
    from edgeprune.errors import BudgetNotMet
    from edgeprune.search.loop import LoopConfig
    scores = importances(tiny_model, INPUT_SHAPE)
    host = SlowerHost(1.6)
    with pytest.raises(BudgetNotMet):
        fit_budget(tiny_model, INPUT_SHAPE, table, scores, host, 0.9 * table.predict({}) * 0.5, SearchConfig(),
                   LoopConfig(max_rounds=2))
    assert len(table.landings) >= 1

"""tools/sbs_summary.py: the side-by-side study's rows and its seed-by-seed pairs, from a plan
and results written as the tool writes them (no models, no target)."""
import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "tools" / "sbs_summary.py"


@pytest.fixture(scope="module")
def sbs():
    spec = importlib.util.spec_from_file_location("sbs_summary", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _method(macs: float, paired: float) -> dict:
    return {"widths": {}, "macs": macs, "paired_vs_edgeprune": paired, "paired_ci": [paired, paired],
            "proxy_val_accuracy": 0.3, "predicted_ms": 0.1}


def _study():
    plan = {"baseline": {"median_ms": 0.44, "test_accuracy": 0.86, "onnx": "u.onnx"},
            "budgets": {"0.35": {"methods": {"edgeprune": _method(3.1e6, 1.0), "uniform-tp": _method(2.5e6, 0.98),
                                             "edgeprune-capacity": _method(3.2e6, 0.99),
                                             "uniform-nni": {"failed": "TraceError: no"}},
                                 "interleaved": {"edgeprune": {"median_ms": 0.15}}}}}
    acc = {"edgeprune": [0.850, 0.852], "uniform-tp": [0.845, 0.849], "edgeprune-capacity": [0.856, 0.851]}
    results = [{"budget": "0.35", "method": m, "seed": s, "finetuned": a, "recalibrated": 0.5}
               for m, accs in acc.items() for s, a in enumerate(accs)]
    return plan, results


def test_each_edgeprune_model_is_paired_seed_by_seed_with_every_other_model_once(sbs):
    plan, results = _study()
    summary = sbs.summary_of({"model": "m", "target": "t"}, plan, results)
    pairs = {line.split("|")[2].strip(): line for line in sbs.paired_by_seed(summary["rows"]) if line.startswith("| 35%")}
    assert set(pairs) == {"edgeprune − uniform-tp", "edgeprune − edgeprune-capacity", "edgeprune-capacity − uniform-tp"}
    assert "+1.10 / +0.20" in pairs["edgeprune-capacity − uniform-tp"]
    assert "+0.65 ± 0.64" in pairs["edgeprune-capacity − uniform-tp"]
    assert "-0.60 / +0.10" in pairs["edgeprune − edgeprune-capacity"]
    assert "1 of 2" in pairs["edgeprune − edgeprune-capacity"]


def test_rows_keep_failures_and_average_the_seeds(sbs):
    plan, results = _study()
    rows = {r["method"]: r for r in sbs.summary_of({}, plan, results)["rows"]}
    assert rows["uniform-nni"] == {"budget": "0.35", "method": "uniform-nni", "failed": "TraceError: no"}
    assert rows["edgeprune-capacity"]["finetuned_mean"] == pytest.approx(0.8535)
    assert rows["edgeprune-capacity"]["macs_m"] == pytest.approx(3.2)
    assert "edgeprune-capacity" in sbs.markdown(sbs.summary_of({}, plan, results))

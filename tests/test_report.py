import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from edgeprune.errors import UsageError
from edgeprune.reports.model import PruneReport, load_report

typed = PruneReport.model_validate
from edgeprune.reports.report import (
    fmt_ms,
    print_summary,
    render_markdown,
    write_report,
)

MINIMAL = {"model": "resnet18", "target": "ort-cpu", "budget_ms": 25.0}

FULL = {
    "model": "resnet18", "target": "ort-cpu", "input_size": [1, 3, 64, 64], "data": "fashion-mnist",
    "budget_ms": 25.0, "baseline_ms": 99.53, "predicted_ms": 24.1, "measured_ms": 24.87,
    "measured_p90_ms": 26.2, "speedup": 4.002, "within_budget": True,
    "accuracy_before": 0.884, "accuracy_after": 0.874,
    "metrics_before": {"accuracy": 0.884, "precision": 0.88, "recall": 0.879, "f1": 0.8802},
    "metrics_after": {"accuracy": 0.874, "precision": 0.87, "recall": 0.869, "f1": 0.8702},
    "params_before": 11_181_642, "params_after": 2_800_000,
    "macs_before": 148_700_000, "macs_after": 39_800_000,
    "size_bytes_before": 44_700_000, "size_bytes_after": 11_200_000,
    "layers": [
        {"group": "g0", "modules": ["conv1", "bn1", "layer1.0.conv2", "layer1.1.conv2", "x"],
         "channels": 64, "kept": 32, "ratio": 0.5, "protected": False},
        {"group": "g7", "modules": ["fc"], "channels": 512, "kept": 512, "ratio": 1.0,
         "protected": True},
    ],
    "table": {"path": "profiles/ort-cpu/resnet18.json", "hash": "deadbeef",
              "error": {"n": 20, "within_10pct": 0.9, "rmspe": 0.052}},
    "rounds": [{"round": 1, "search_budget_ms": 25.0, "predicted_ms": 24.9, "measured_ms": 27.1},
               {"round": 2, "search_budget_ms": 23.1, "predicted_ms": 23.0, "measured_ms": 24.87}],
    "stage_seconds": {"profile": 120.5, "search": 0.8, "finetune": 300.0},
    "finetune": {"history": [
        {"epoch": 1, "train_loss": 0.71, "val": {"accuracy": 0.86, "f1": 0.85}, "rolled_back": False},
        {"epoch": 2, "train_loss": 0.52, "val": {"accuracy": 0.874}},
    ], "rolled_back": False},
    "artifact": {"path": "out/model.onnx", "kind": "onnx", "max_abs_diff": 2.3e-6},
    "versions": {"torch": "2.14.1", "onnxruntime": "1.31.1"},
}


def test_device_artifact_is_listed_beside_the_onnx():
    md = render_markdown(typed({**FULL, "device_artifact": {"path": "out/model.xml", "kind": "openvino",
                                                      "max_abs_diff": 1.5e-6}}))
    assert "| out/model.onnx | onnx | 2.3e-06 |" in md
    assert "| out/model.xml | openvino | 1.5e-06 |" in md


def test_a_relative_budget_is_said_as_a_share_and_its_rounds_as_paired():
    md = render_markdown(typed({**FULL, "budget_ratio": 0.25}))
    assert "| budget | 25.0 ms (25% of the unpruned model, paired) |" in md
    assert "paired with the unpruned model and given in the table's units" in md
    plain = render_markdown(typed(FULL))
    assert "| budget | 25.0 ms |" in plain and "paired with the unpruned" not in plain
    assert "unpruned's drift" in md and "unpruned's drift" not in plain
    moved = {**FULL, "budget_ratio": 0.25, "rounds": [{**FULL["rounds"][0], "yardstick": 1.437}]}
    assert "| 1 | 25.0 ms | 24.9 ms | 27.1 ms | 1.44 |" in render_markdown(typed(moved))


def test_full_report_renders_every_section():
    md = render_markdown(typed(FULL))
    assert md.startswith("# edgeprune report: resnet18 on ort-cpu")
    for heading in ("Summary", "Model", "Per-layer widths", "Closed-loop rounds",
                    "Latency table prediction error", "Time per stage", "Fine-tune history",
                    "Artifact", "Versions"):
        assert f"## {heading}" in md
    assert "| budget | 25.0 ms |" in md
    assert "| measured (p90) | 26.2 ms |" in md
    assert "| speedup | 4.00× |" in md
    assert "| within budget | ✓ |" in md
    assert "| accuracy | 88.4% | 87.4% |" in md
    assert "| F1 | 88.0% | 87.0% |" in md
    assert "| params | 11.18M | 2.80M |" in md
    assert "| MACs (M) | 148.7 | 39.8 |" in md
    assert "| file size (MB) | 44.70 | 11.20 |" in md
    assert "| g0 | `conv1`, `bn1`, `layer1.0.conv2`, `layer1.1.conv2` … (+1) | 64 | 32 | 0.50 |  |" in md
    assert "| g7 | `fc` | 512 | 512 | 1.00 | yes |" in md
    assert "| 2 | 23.1 ms | 23.0 ms | 24.9 ms |" in md
    assert "| RMSPE | 5.2% |" in md
    assert "| **total** | **421.3** |" in md
    assert "| 1 | 0.71 | 86.0% | 85.0% | ✗ |" in md


def test_minimal_report_shows_dashes_and_skips_empty_sections():
    md = render_markdown(typed(MINIMAL))
    assert "| budget | 25.0 ms |" in md
    assert "| measured | — |" in md
    assert "| within budget | — |" in md
    assert "## Per-layer widths" not in md and "## Model" not in md


def test_ms_formatting_keeps_three_significant_digits():
    assert fmt_ms(123.456) == "123 ms"
    assert fmt_ms(12.345) == "12.3 ms"
    assert fmt_ms(1.2345) == "1.23 ms"
    assert fmt_ms(0.27712) == "0.277 ms"
    assert fmt_ms(0.0123) == "0.0123 ms"
    assert fmt_ms(None) == "—" and fmt_ms(float("nan")) == "—"


def test_write_report_round_trips_and_leaves_no_temp_files(tmp_path):
    report = FULL
    out = tmp_path / "run"
    json_path, md_path = write_report(typed(report), out)
    assert (json_path, md_path) == (out / "report.json", out / "report.md")
    assert json.loads(json_path.read_text()) == {**FULL}
    assert md_path.read_text() == render_markdown(typed(report))
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]
    write_report(typed(MINIMAL), out)  # overwriting works and still leaves nothing else behind
    assert json.loads(json_path.read_text()) == MINIMAL
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]


def test_print_summary_shows_the_headline_numbers():
    buf = io.StringIO()
    print_summary(typed(FULL), console=Console(file=buf, width=100, color_system=None))
    text = buf.getvalue()
    for piece in ("resnet18 on ort-cpu", "25.0 ms", "24.9 ms ✓", "4.00×", "88.4%", "87.4%",
                  "11.18M", "2.80M"):
        assert piece in text
    print_summary(typed(MINIMAL), console=Console(file=io.StringIO()))


def test_an_inconclusive_verdict_is_not_shown_as_a_fit():
    """Seen in the demo on a busy host: the interval straddled the budget, the verdict said
    inconclusive, and the terminal table still marked the latency with a tick."""
    r = {**FULL, "within_budget": True, "budget_verdict": {"verdict": "inconclusive", "latency_ms": 1.82,
                                                           "ci_ms": [1.30, 2.07], "budget_ms": 1.67}}
    buf = io.StringIO()
    print_summary(typed(r), console=Console(file=buf, width=120, color_system=None))
    text = buf.getvalue()
    assert "✓" not in text and " ?" in text and "inconclusive" in text


def test_search_section_shows_the_accuracy_path_and_the_paired_speedup():
    r = {**FULL, "speedup": 3.31, "speedup_ci": [3.2, 3.4], "speedup_method": "paired",
         "accuracy_pruned": 0.101, "accuracy_recalibrated": 0.717,
         "search": {"objective": "adaptive-bn", "candidates": 50, "proxy_accuracy": 0.75,
                    "uniform_proxy_accuracy": 0.70, "importance_proxy_accuracy": 0.58}}
    md = render_markdown(typed(r))
    assert "## Search and accuracy" in md
    for text in ("adaptive-bn", "| candidates scored | 50 |", "75.0%", "70.0%", "58.0%", "10.1%", "71.7%",
                 "3.31× (95% CI 3.20–3.40, paired)"):
        assert text in md, text
    assert "## Search and accuracy" not in render_markdown(typed(MINIMAL))


# --- the typed model (reports/model.py): report.json validated on read --------------------------

def write_json(tmp_path, content) -> Path:
    path = tmp_path / "report.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("content, fragment", [
    ({**FULL, "budget_ms": "x"}, "budget_ms: Input should be a valid number"),
    ({**FULL, "layers": [{"group": "g0", "kept": "half"}]}, "layers.0.kept"),
    ({k: v for k, v in FULL.items() if k != "model"}, "model: Field required"),
    ({**FULL, "schema_version": 99}, "schema version 99"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
])
def test_a_damaged_report_is_refused_in_one_line(tmp_path, content, fragment):
    with pytest.raises(UsageError) as e:
        load_report(write_json(tmp_path, content))
    assert fragment in str(e.value) and len(str(e.value).splitlines()) == 1


def test_an_older_report_loads_renders_and_keeps_exactly_its_keys(tmp_path):
    """A report made before the schema (no schema_version, engine, budget_verdict, search...)
    loads, renders as the dict does, and is written back with the same keys, nothing added;
    a section another command added (quantize's precisions) is kept."""
    precisions = {"target": "openvino-cpu", "test_images": 10, "calibration_images": 5, "rows": []}
    for old in (MINIMAL, FULL, {**FULL, "precisions": precisions}):
        r = load_report(write_json(tmp_path, old))
        assert r.schema_version is None and r.to_json_dict() == old  # (in prune's key order: FULL's is not)
        assert render_markdown(r) == render_markdown(typed(old))
    assert "| pruning engine | torch-pruning |" in render_markdown(load_report(write_json(tmp_path, MINIMAL)))
    json_path, _ = write_report(load_report(write_json(tmp_path, FULL)), tmp_path / "again")
    assert json.loads(json_path.read_text()) == FULL


def test_the_renderers_take_only_a_validated_report():
    """A raw dict (issue 10: report.json read back with .get()) must go through the typed model
    first, so a mistyped value is one line at load time, never a crash halfway through report.md."""
    with pytest.raises(TypeError, match="PruneReport"):
        render_markdown(FULL)

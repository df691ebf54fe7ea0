"""End to end on real OpenVINO (CPU) and real data, through the CLI: profile a table with its own
measured error, prune to a measured budget, export the pruned model as a validated IR."""
from __future__ import annotations

import json
import math

import pytest
from conftest import assert_fits_as_measured, run_cli

pytest.importorskip("openvino", reason="the openvino package is not installed (pip install 'edgeprune[openvino]')")

pytestmark = [pytest.mark.slow, pytest.mark.openvino, pytest.mark.latency]

TARGET = "openvino-cpu"


@pytest.fixture(scope="module")
def ov_run(tmp_path_factory):
    """Profile tiny_resnet on openvino-cpu, then prune it to 0.8x its measured latency (the
    prune reuses the table: same settings). At 64 px the convolutions, not the fixed
    per-inference overhead, dominate, which leaves the loop room on a noisy shared machine
    (at 32 px the smallest allowed model sat within 8% of the budget and one run in five failed).
    Three widths per group keep the profile short; the closed loop absorbs the coarser table.
    The kept-importance search: this tests OpenVINO end to end, and the adaptive-BN search's
    candidate scoring (half this fixture's time at 64 px) is tested on ort-cpu."""
    from edgeprune.api import measure
    base = tmp_path_factory.mktemp("ov-pipeline")
    profiles = base / "profiles"
    unpruned_ms = sorted(measure("tiny_resnet", TARGET, 64).median_ms for _ in range(3))[1]
    budget = round(0.8 * unpruned_ms, 5)
    profile = run_cli(["profile", "tiny_resnet", "--target", TARGET, "--input-size", "64", "--calibrate", "8",
                       "--levels", "3", "--profiles-dir", profiles], cwd=base, timeout=600)
    out = base / "run"
    prune = run_cli(["prune", "tiny_resnet", "--target", TARGET, "--data", "digits", "--input-size", "64",
                     "--budget-ms", budget, "--min-ratio", "0.125", "--epochs", "1", "--baseline-epochs", "1",
                     "--calibrate", "8", "--levels", "3", "--objective", "importance", "--out", out,
                     "--profiles-dir", profiles], cwd=base, timeout=600)
    return {"profile": profile, "prune": prune, "out": out, "budget": budget, "unpruned_ms": unpruned_ms,
            "base": base, "table": profiles / TARGET / "tiny_resnet-64px.json"}


def test_profile_writes_an_openvino_table_with_its_error(ov_run):
    import openvino

    from edgeprune.latency.table import LatencyTable
    r = ov_run["profile"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert str(ov_run["table"]) in r.stdout and "prediction error over 5 random configurations" in r.stdout
    table = LatencyTable.load(ov_run["table"])
    assert table.meta["runtime"] == "openvino" and table.meta["runtime_version"] == openvino.__version__
    assert (table.meta["device"], table.meta["threads"], table.meta["target"]) == ("CPU", 1, TARGET)
    assert set(table.layers) >= {"conv1", "layer1.conv1", "layer2.conv2", "fc"}
    assert table.error.n == 5 and math.isfinite(table.error.rmspe)
    assert table.predict(table.groups) > 0


def test_prune_meets_a_measured_budget_on_openvino(ov_run):
    r, out, budget = ov_run["prune"], ov_run["out"], ov_run["budget"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == TARGET
    assert_fits_as_measured(report, budget)
    assert report["params_after"] < report["params_before"]
    assert report["speedup"] > 1
    assert any(l["kept"] < l["channels"] for l in report["layers"])
    for key in ("accuracy_before", "accuracy_after"):
        assert isinstance(report[key], float) and 0 <= report[key] <= 1
    assert report["table"]["path"] == str(ov_run["table"])  # the profiled table, reused
    # the target's own format is delivered beside the ONNX, validated against PyTorch
    assert report["device_artifact"]["kind"] == "openvino"
    assert (out / "model.xml").exists() and (out / "model.bin").exists()
    assert report["device_artifact"]["max_abs_diff"] < 1e-3


def test_pruned_model_exports_as_a_validated_ir(ov_run):
    from edgeprune.artifacts.export import read_metadata
    report = json.loads((ov_run["out"] / "report.json").read_text())
    xml = ov_run["out"] / "model.xml"
    r = run_cli(["export", "tiny_resnet", "--run", ov_run["out"], "--format", "openvino", "--target", TARGET,
                 "--input-size", "64", "--out", xml], cwd=ov_run["base"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(openvino," in r.stdout
    assert xml.exists() and xml.with_suffix(".bin").exists()
    meta = read_metadata(xml)
    assert meta["target"] == TARGET and meta["model"] == "tiny_resnet"
    for artifact in (ov_run["out"] / "model.onnx", xml):  # both load and run on the target
        r = run_cli(["measure", artifact, "--target", TARGET, "--json"], cwd=ov_run["base"])
        assert r.returncode == 0, r.stderr
        assert 0 < json.loads(r.stdout)["median_ms"] < 10 * report["baseline_ms"]

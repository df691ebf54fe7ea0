"""The check's files: baseline round trip and refusals, deploy file validation, JUnit XML."""
from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET

import pytest

from edgeprune.checks.baseline import (
    Baseline,
    default_path,
    describe_mismatch,
    dumps,
    mismatches,
)
from edgeprune.checks.check import Budget, CheckResult, Comparison
from edgeprune.checks.check_report import junit_cases, render, to_json
from edgeprune.checks.deploy import load_deploy
from edgeprune.checks.junit import TestCase, to_xml, write
from edgeprune.errors import UsageError

FP = {"runtime": "onnxruntime", "runtime_version": "1.31.1", "device": "cpu", "threads": 1, "precision": "fp32",
      "host_cpu": "Some CPU", "host_isa": ["avx2", "fma"], "host_cores": 2, "host_arch": "x86_64"}


def make_baseline(**over) -> Baseline:
    d = dict(artifact={"path": "m.onnx", "name": "m.onnx", "sha256": "ab", "size_bytes": 1, "model": "m"},
             target="ort-cpu", fingerprint=dict(FP), timing={"warmup_s": 0.1, "windows": 5},
             latency={"latency_ms": 1.01, "median_ms": 1.0, "p90_ms": 1.2, "p99_ms": 1.3, "min_ms": 0.9,
                      "runs": 3, "window_medians_ms": [1.0, 1.01, 1.02, 1.5], "samples_ms": [1.0, 0.9, 1.1]})
    d.update(over)
    return Baseline(**d)


# --- baseline ----------------------------------------------------------------------------------

def test_baseline_round_trip(tmp_path):
    b = make_baseline()
    path = b.save(tmp_path / "profiles" / "ort-cpu" / "baseline-m.json")
    assert Baseline.load(path) == b
    assert [p.name for p in path.parent.iterdir()] == ["baseline-m.json"]  # no temp file left
    d = json.loads(path.read_text())
    assert d["kind"] == "edgeprune-baseline" and d["schema"] == 1
    assert d["latency"]["window_medians_ms"] == [1.0, 1.01, 1.02, 1.5]
    # number lists on one line: a re-baseline is a small diff
    assert '"window_medians_ms": [1.0, 1.01, 1.02, 1.5]' in path.read_text()


def test_dumps_keeps_string_lists_and_nested_values():
    text = dumps({"a": [1, 2.5, -3e-05], "b": ["x", "y"], "c": {"d": []}})
    assert json.loads(text) == {"a": [1, 2.5, -3e-05], "b": ["x", "y"], "c": {"d": []}}
    assert '"a": [1, 2.5, -3e-05]' in text


def test_mismatched_fingerprint_is_reported_key_by_key():
    here = dict(FP, runtime_version="1.32.0", host_cpu="Other CPU")
    diff = mismatches(FP, here)
    assert diff == {"runtime_version": ("1.31.1", "1.32.0"), "host_cpu": ("Some CPU", "Other CPU")}
    text = describe_mismatch(diff)
    assert "runtime_version: baseline '1.31.1', here '1.32.0'" in text
    assert mismatches(FP, dict(FP)) == {}
    assert mismatches(FP, dict(FP, host_isa=("avx2", "fma"))) == {}  # list vs tuple is not a difference


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ('{"kind": "something-else"}', "not an edgeprune baseline"),
    ('{"kind": "edgeprune-baseline", "schema": 99}', "schema 99"),
    ('{"kind": "edgeprune-baseline", "schema": 1, "target": "x"}', "malformed"),
])
def test_unreadable_baselines_are_usage_errors(tmp_path, content, fragment):
    path = tmp_path / "b.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=fragment):
        Baseline.load(path)


def test_baseline_without_windows_is_refused(tmp_path):
    b = make_baseline()
    b.latency["window_medians_ms"] = []
    path = b.save(tmp_path / "b.json")
    with pytest.raises(UsageError, match="window medians"):
        Baseline.load(path)


def test_missing_baseline_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read baseline"):
        Baseline.load(tmp_path / "nope.json")


def test_default_path_per_artifact_and_target(tmp_path, monkeypatch):
    """Named after the artifact's path (relative to the working directory), so two runs'
    model.onnx get two baselines."""
    monkeypatch.chdir(tmp_path)
    assert str(default_path("ort-cpu", "runs/r18/model.onnx")) == "profiles/ort-cpu/baseline-runs_r18_model.json"
    assert str(default_path("ort-cpu", "model.onnx")) == "profiles/ort-cpu/baseline-model.json"
    assert str(default_path("boards/pi5.yaml", "a/b.onnx", "p")) == "p/pi5/baseline-a_b.json"
    outside = tmp_path.parent / "elsewhere" / "m.onnx"
    assert default_path("ort-cpu", outside).name.endswith("elsewhere_m.json")


# --- deploy file -------------------------------------------------------------------------------

def deploy(tmp_path, text: str):
    path = tmp_path / "deploy.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_deploy_file_expands_targets_and_resolves_paths(tmp_path):
    path = deploy(tmp_path, """
        defaults: {target: ort-cpu, tolerance: 0.04}
        checks:
          - artifact: runs/a.onnx
          - artifact: b.onnx
            target: [ort-cpu, boards/pi.yaml]
            budget_ms: 2.5
            baseline: base/{target}/b.json
            tolerance: 0.1
    """)
    checks = load_deploy(path)
    assert [(c.artifact, c.target, c.budget_ms, c.baseline, c.tolerance) for c in checks] == [
        (str(tmp_path / "runs/a.onnx"), "ort-cpu", None, None, 0.04),
        (str(tmp_path / "b.onnx"), "ort-cpu", 2.5, str(tmp_path / "base/ort-cpu/b.json"), 0.1),
        (str(tmp_path / "b.onnx"), str(tmp_path / "boards/pi.yaml"), 2.5, str(tmp_path / "base/pi/b.json"), 0.1),
    ]


def test_deploy_file_may_be_a_plain_list(tmp_path):
    checks = load_deploy(deploy(tmp_path, "- {artifact: a.onnx, target: fake}\n"))
    assert len(checks) == 1 and checks[0].target == "fake" and checks[0].tolerance is None


@pytest.mark.parametrize("text, fragments", [
    ("checks:\n  - artifact: a.onnx\n    budgetms: 3\n", ["deploy.yaml", "checks[0].budgetms", "did you mean 'budget_ms'"]),
    ("check:\n  - artifact: a.onnx\n", ["unknown key 'check'", "did you mean 'checks'"]),
    ("defaults: {tolerence: 0.1}\nchecks: [{artifact: a.onnx}]\n", ["defaults.tolerence", "'tolerance'"]),
    ("checks:\n  - target: ort-cpu\n", ["missing key 'checks[0].artifact'"]),
    ("checks:\n  - artifact: a.onnx\n    budget_ms: -1\n", ["checks[0].budget_ms", "greater than 0"]),
    ("checks:\n  - artifact: a.onnx\n    tolerance: 2\n", ["checks[0].tolerance"]),
    ("checks: []\n", ["checks"]),
    ("checks: [{artifact: a.onnx\n", ["not valid YAML"]),
    ("42\n", ["expected a mapping"]),
    ("checks:\n  - artifact: a.onnx\n    target: [x, y]\n    baseline: b.json\n", ["{target}"]),
])
def test_bad_deploy_files_name_the_file_and_key(tmp_path, text, fragments):
    with pytest.raises(UsageError) as e:
        load_deploy(deploy(tmp_path, text))
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


def test_missing_deploy_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read deploy file"):
        load_deploy(tmp_path / "none.yaml")


# --- JUnit and output ----------------------------------------------------------------------------

def results() -> list[CheckResult]:
    ok = CheckResult("a.onnx", "ort-cpu", "b.json", latency_ms=1.0, baseline_ms=1.0,
                     comparison=Comparison(1.0, 0.98, 1.02, 1.0, 1.0, 0.05), budget=Budget(2.0, "target"))
    bad = CheckResult("b <&> \"q\".onnx", "ort-cpu", status="fail", problems=["regression: 1.2× \x07 slower"],
                      latency_ms=1.2, regression=True, seconds=3.5)
    err = CheckResult("c.onnx", "board", status="error", problems=["artifact c.onnx does not exist"])
    return [ok, bad, err]


def test_junit_xml_is_well_formed_with_one_case_per_check(tmp_path):
    path = write(junit_cases(results()), tmp_path / "out" / "junit.xml", suite="edgeprune check")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["a.onnx", 'b <&> "q".onnx', "c.onnx"]
    assert [c.get("classname") for c in cases] == ["edgeprune.check.ort-cpu"] * 2 + ["edgeprune.check.board"]
    assert cases[0].find("failure") is None and cases[0].find("error") is None
    assert "regression" in cases[1].find("failure").get("message")
    assert "\x07" not in cases[1].find("failure").get("message")  # control characters dropped
    assert cases[2].find("error").get("message") == "artifact c.onnx does not exist"
    assert "PASS" in cases[0].find("system-out").text
    assert float(cases[1].get("time")) == 3.5


def test_junit_empty_suite():
    root = ET.fromstring(to_xml([TestCase("x", "y")], "s").split("\n", 1)[1])
    assert root.find("testsuite").get("tests") == "1"


def test_table_and_json_shapes():
    text = render(results())
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["artifact", "target"]
    assert "PASS" in lines[1] and "[0.980, 1.020]" in lines[1] and "FAIL" in lines[2] and "ERROR" in lines[3]
    assert "FAIL  regression" in text and "ERROR artifact c.onnx" in text
    assert lines[-1].startswith("method: absolute: ratio of lower-quartile window medians")
    d = to_json(results())
    assert d["status"] == "error" and d["exit_code"] == 2 and len(d["checks"]) == 3
    assert d["checks"][0]["comparison"]["ci"] == [0.98, 1.02]
    assert d["checks"][0]["budget_source"] == "target"
    assert to_json(results()[:2])["exit_code"] == 1 and to_json(results()[:1])["exit_code"] == 0

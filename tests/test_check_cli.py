"""``edgeprune check`` as CI runs it: exit codes 0/1/2, --json, --junit, --all, baselines on disk;
the deterministic fake target for the plumbing, real ONNX Runtime for the end-to-end path, and
the pytest plugin's ``assert_latency``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from conftest import write_fake_target

from edgeprune.cli import main

# Small real timing: a few short windows per session (the check needs >= 5 per session anyway).
REAL_YAML = textwrap.dedent("""\
    name: ortsmall
    runtime: onnxruntime
    threads: 1
    budgets_ms: {tiny_resnet: 1000}
    timing: {warmup_s: 0.05, min_runs: 5, min_time_s: 0.03, max_time_s: 1, windows: 5}
""")


def export(path: Path, size: int = 32, model: str = "tiny_resnet", target: str = "fake") -> Path:
    from edgeprune.artifacts.export import export_artifact
    from edgeprune.training.models import build_model
    torch.manual_seed(0)
    export_artifact(build_model(model).eval(), "onnx", path, (1, 3, size, size), {"model": model, "target": target})
    return path


@pytest.fixture
def work(tmp_path, monkeypatch):
    """cwd with m.onnx (tiny_resnet, 32 px, metadata target 'fake'), fake.yaml on EDGEPRUNE_TARGETS."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    targets = tmp_path / "targets"
    write_fake_target(targets)
    (targets / "ortsmall.yaml").write_text(REAL_YAML)
    export(cwd / "m.onnx")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("EDGEPRUNE_TARGETS", str(targets))
    return cwd, targets


def run(capsys, *args) -> tuple[int, str, str]:
    """The CLI in-process (same code path as the console script, minus interpreter start-up)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *fragments) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_lifecycle_through_the_real_command_line(work, cli, capsys):
    """Subprocesses: no baseline (2), unchanged (0, JSON shape), slower model (1, JUnit)."""
    cwd, targets = work
    r = cli(["check", "m.onnx", "--target", "fake"], cwd, env_targets=targets)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    one_error_line(r.stderr, "no baseline at profiles/fake/baseline-m.json", "--update")
    assert not (cwd / "profiles").exists()

    code, out, _ = run(capsys, "check", "m.onnx", "--target", "fake", "--update", "--json")
    d = json.loads(out)
    assert code == 0 and d["status"] == "pass" and d["checks"][0]["status"] == "updated"
    base = json.loads((cwd / "profiles/fake/baseline-m.json").read_text())
    assert base["fingerprint"]["runtime"] == "fake" and base["artifact"]["model"] == "tiny_resnet"
    frozen = cwd / "profiles/fake" / base["artifact"]["frozen"]
    assert frozen.name == "baseline-m.frozen.onnx" and frozen.read_bytes() == (cwd / "m.onnx").read_bytes()

    r = cli(["check", "m.onnx", "--json"], cwd, env_targets=targets)  # target from the artifact's metadata
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) == {"status", "exit_code", "method", "checks"}
    c = d["checks"][0]
    assert (c["status"], c["target"], c["regression"], c["over_budget"]) == ("pass", "fake", False, False)
    assert c["comparison"]["ratio"] == 1.0 and c["comparison"]["ci"] == [1.0, 1.0]
    assert len(c["attempts"]) == 1  # nothing flagged: no confirmation run
    assert c["comparison"]["method"] == "paired" and d["method"].startswith("paired: ")
    assert "absolute:" not in d["method"]

    export(cwd / "m.onnx", size=64)  # the model changed: four times the work
    r = cli(["check", "m.onnx", "--junit", "junit.xml"], cwd, env_targets=targets)
    assert r.returncode == 1, r.stderr
    assert "FAIL  regression in both measurements" in r.stdout and "the artifact changed" in r.stdout
    assert "95% CI" in r.stdout and "method: paired: ratio = exp(median of log(new/old))" in r.stdout
    assert "the baseline's own artifact now measures 1.000× its recorded latency" in r.stdout
    suite = ET.parse(cwd / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")


def test_absolute_comparison_when_asked_or_when_the_frozen_copy_is_gone(work, capsys):
    cwd, _ = work
    assert run(capsys, "check", "m.onnx", "--target", "fake", "--update")[0] == 0
    export(cwd / "m.onnx", size=64)
    code, out, _ = run(capsys, "check", "m.onnx", "--target", "fake", "--absolute", "--json")
    c = json.loads(out)["checks"][0]
    assert code == 1 and c["regression"] and c["comparison"]["method"] == "absolute"
    (cwd / "profiles/fake/baseline-m.frozen.onnx").write_bytes(b"tampered")
    code, out, _ = run(capsys, "check", "m.onnx", "--target", "fake")
    assert code == 1 and "has changed since it was recorded" in out and "drift between the two dates" in out
    assert "method: absolute:" in out
    (cwd / "profiles/fake/baseline-m.frozen.onnx").unlink()
    code, out, _ = run(capsys, "check", "m.onnx", "--target", "fake")
    assert code == 1 and "baseline-m.frozen.onnx, is missing" in out


def test_budget_exceeded_names_the_budget_and_its_source(work, capsys):
    code, out, _ = run(capsys, "check", "m.onnx", "--update", "--budget-ms", "1e-4")
    assert code == 1  # the baseline is written, but the model is over budget
    assert Path("profiles/fake/baseline-m.json").is_file()
    assert "over budget: 0.36" in out and "> 0.0001 ms (--budget-ms)" in out
    code, out, _ = run(capsys, "check", "m.onnx", "--budget-ms", "1000", "--json")
    assert code == 0
    c = json.loads(out)["checks"][0]
    assert c["budget_ms"] == 1000 and c["budget_source"] == "--budget-ms" and not c["over_budget"]


def test_budget_from_the_target_file(work, capsys):
    cwd, targets = work
    (targets / "fake.yaml").write_text("name: fake\nruntime: fake\nbudgets_ms: {tiny_resnet: 1.0e-4}\n")
    run(capsys, "check", "m.onnx", "--update")
    code, out, _ = run(capsys, "check", "m.onnx", "--json")
    c = json.loads(out)["checks"][0]
    assert code == 1 and c["over_budget"] and not c["regression"]
    assert c["budget_source"] == "target fake budgets_ms.tiny_resnet"
    assert len(c["attempts"]) == 2  # confirmed by a second measurement
    code, out, _ = run(capsys, "check", "m.onnx", "--json", "--no-confirm")
    assert code == 1 and len(json.loads(out)["checks"][0]["attempts"]) == 1


def test_incomparable_baseline_is_reported_not_compared(work, capsys):
    run(capsys, "check", "m.onnx", "--update")
    path = Path("profiles/fake/baseline-m.json")
    d = json.loads(path.read_text())
    d["fingerprint"]["runtime_version"] = "fake-0"
    path.write_text(json.dumps(d))
    code, out, _ = run(capsys, "check", "m.onnx", "--json")
    c = json.loads(out)["checks"][0]
    assert code == 1 and c["status"] == "fail" and c["comparison"] is None
    assert c["incomparable"] == {"runtime_version": ["fake-0", "fake-1"]}
    assert "incomparable baseline" in c["problems"][0] and "--allow-mismatch" in c["problems"][0]
    code, out, _ = run(capsys, "check", "m.onnx", "--allow-mismatch")
    assert code == 0 and "compared despite a different setup" in out and "PASS" in out


@pytest.mark.parametrize("args, fragments", [
    (["check", "m.onnx", "--baseline", "b.json"], ["no baseline at b.json; create it with: edgeprune check "
                                                  "m.onnx --target fake --baseline b.json --update"]),
    (["check"], ["either an artifact or a deploy file"]),
    (["check", "m.onnx", "--all", "d.yaml"], ["not both"]),
    (["check", "m.onnx", "--tolerance", "1.5"], ["tolerance"]),
    (["check", "nope.onnx"], ["nope.onnx does not exist"]),
    (["check", "bad.onnx", "--target", "fake"], ["bad.onnx is not a valid ONNX model"]),
    (["check", "m.onnx", "--target", "fkae"], ["unknown target 'fkae'", "did you mean 'fake'"]),
    (["check", "m.onnx", "--budget-ms", "-1", "--update"], ["positive"]),
    (["check", "m.onnx", "--baseline", "corrupt.json"], ["corrupt.json is not valid JSON"]),
    (["check", "--all", "d.yaml", "--target", "fake"], ["belong in the deploy file"]),
    (["check", "--all", "missing.yaml"], ["cannot read deploy file"]),
])
def test_usage_errors_exit_2_with_one_line_and_write_nothing(work, capsys, args, fragments):
    cwd, _ = work
    (cwd / "bad.onnx").write_bytes(b"not a model")
    (cwd / "corrupt.json").write_text("{")
    (cwd / "d.yaml").write_text("checks: [{artifact: m.onnx}]\n")
    before = sorted(os.listdir(cwd))
    code, out, err = run(capsys, *args, "--junit", "j.xml")
    assert code == 2 and out == ""
    one_error_line(err, *fragments)
    assert sorted(os.listdir(cwd)) == before


def test_all_checks_a_deploy_file_one_junit_case_each(work, capsys):
    cwd, _ = work
    export(cwd / "models" / "small.onnx")
    (cwd / "deploy.yaml").write_text(textwrap.dedent("""\
        defaults: {target: fake}
        checks:
          - artifact: m.onnx
            budget_ms: 1000
          - artifact: models/small.onnx
            budget_ms: 1.0e-4
            baseline: baselines/{target}/small.json
    """))
    code, out, _ = run(capsys, "check", "--all", "deploy.yaml", "--update")
    assert code == 1  # both baselines written; the second model is over its budget
    assert (cwd / "profiles/fake/baseline-m.json").is_file() and (cwd / "baselines/fake/small.json").is_file()

    code, out, _ = run(capsys, "check", "--all", "deploy.yaml", "--junit", "out/junit.xml", "--json")
    d = json.loads(out)
    assert code == 1 and d["exit_code"] == 1
    assert [c["status"] for c in d["checks"]] == ["pass", "fail"]
    assert d["checks"][1]["budget_source"] == "deploy file"
    cases = ET.parse(cwd / "out/junit.xml").getroot().find("testsuite").findall("testcase")
    assert len(cases) == 2 and cases[0].find("failure") is None and cases[1].find("failure") is not None

    # an entry that cannot run is an error case; the others still run
    (cwd / "deploy.yaml").write_text("checks:\n  - {artifact: m.onnx, target: fake}\n  - {artifact: gone.onnx, target: fake}\n")
    code, out, _ = run(capsys, "check", "--all", "deploy.yaml", "--junit", "junit2.xml")
    assert code == 2 and "PASS" in out and "ERROR artifact" in out
    suite = ET.parse(cwd / "junit2.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "1")

    (cwd / "deploy.yaml").write_text("checks:\n  - {artifact: m.onnx, taget: fake}\n")
    code, out, err = run(capsys, "check", "--all", "deploy.yaml")
    assert code == 2
    one_error_line(err, "deploy.yaml", "checks[0].taget", "did you mean 'target'")


def test_real_onnxruntime_update_then_check_passes_and_catches_a_slower_model(work, capsys, monkeypatch):
    from edgeprune.runtime import base as runtime_base
    cwd, _ = work
    # the contention guard has its own tests; here a busy test machine must not turn the verdict
    # into "inconclusive" or add retry pauses
    monkeypatch.setattr(runtime_base, "MAX_BUSY_SHARE", 1.0)
    export(cwd / "real.onnx", target="ortsmall")
    code, out, err = run(capsys, "check", "real.onnx", "--update", "--json")
    assert code == 0, (out, err)
    attempts = json.loads(out)["checks"][0]["attempts"]
    assert len(attempts) == 2 and all(0 <= a["cpu_wait"] <= 1 for a in attempts)  # schedstat was read
    base = json.loads((cwd / "profiles/ortsmall/baseline-real.json").read_text())
    assert base["fingerprint"]["runtime"] == "onnxruntime" and len(base["latency"]["window_medians_ms"]) == 20
    assert base["timing"]["windows"] == 5 and base["sessions"] == 2
    # generous tolerance: this asserts the path works, not this machine's noise
    code, out, _ = run(capsys, "check", "real.onnx", "--tolerance", "0.3", "--json")
    c = json.loads(out)["checks"][0]
    assert code == 0, c
    assert c["budget_source"] == "target ortsmall budgets_ms.tiny_resnet"
    assert c["comparison"]["method"] == "paired"  # the baseline's frozen copy ran beside it
    assert len(c["attempts"][0]["windows_ms"]) == len(c["attempts"][0]["reference_windows_ms"]) == 12
    assert 0.7 < c["comparison"]["ratio"] < 1.3 and c["drift"]["ratio"] > 0
    export(cwd / "real.onnx", size=96, target="ortsmall")  # ~9x the work
    code, out, _ = run(capsys, "check", "real.onnx", "--tolerance", "0.3")
    assert code == 1 and "regression in both measurements" in out


# --- the pytest plugin ---------------------------------------------------------------------------

def test_assert_latency_on_a_file_a_model_name_and_a_module(work):
    from edgeprune.errors import UsageError
    from edgeprune.pytest_plugin import assert_latency
    from edgeprune.training.models import build_model
    cwd, targets = work
    assert 0 < assert_latency("m.onnx", target="fake", budget_ms=1000) < 1000
    with pytest.raises(AssertionError, match=r"m.onnx on fake: measured .* ms and .* ms > budget 0.0000 ms"):
        assert_latency("m.onnx", target="fake", budget_ms=1e-6)
    assert assert_latency("tiny_resnet", target="ortsmall") > 0  # budget from the target file
    assert assert_latency(build_model("tiny_resnet"), target="ortsmall", budget_ms=1000) > 0
    with pytest.raises(UsageError, match="no budget for TinyResNet"):
        assert_latency(build_model("tiny_resnet"), target="fake")
    with pytest.raises(UsageError, match="does not exist"):
        assert_latency("gone.onnx", target="fake", budget_ms=1)


def test_pytest_plugin_fixture_in_a_users_suite(work):
    cwd, targets = work
    (cwd / "test_user.py").write_text(textwrap.dedent("""\
        def test_fast(assert_latency):
            assert assert_latency("m.onnx", budget_ms=1000) > 0

        def test_too_slow(assert_latency):
            assert_latency("m.onnx", budget_ms=1e-6)
    """))
    installed = any(ep.value == "edgeprune.pytest_plugin" for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "edgeprune.pytest_plugin"]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin,
                        "--edgeprune-target", "fake", "test_user.py"], cwd=cwd, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "EDGEPRUNE_TARGETS": str(targets)})
    assert "1 failed, 1 passed" in r.stdout, r.stdout + r.stderr
    assert "m.onnx on fake: measured" in r.stdout and "budget_ms=" in r.stdout


def test_reference_compares_two_artifacts_in_one_run_without_a_baseline(work, capsys):
    cwd, _ = work
    export(cwd / "big.onnx", size=64)  # four times the work of m.onnx on the fake target
    code, out, _ = run(capsys, "check", "m.onnx", "--reference", "m.onnx", "--target", "fake", "--json")
    c = json.loads(out)["checks"][0]
    assert code == 0 and c["status"] == "pass" and c["comparison"]["ratio"] == 1.0
    assert c["baseline"] == "m.onnx" and not (cwd / "profiles").exists()
    code, out, _ = run(capsys, "check", "big.onnx", "--reference", "m.onnx", "--target", "fake", "--json")
    c = json.loads(out)["checks"][0]
    assert code == 1 and c["regression"] and c["comparison"]["ratio"] > 3
    assert len(c["attempts"]) == 2  # confirmed


@pytest.mark.parametrize("extra, fragment", [
    (["--update"], "neither --update nor --absolute"),
    (["--absolute"], "neither --update nor --absolute"),
    (["--reference", "missing.onnx"], "missing.onnx"),
])
def test_reference_bad_input_is_one_line(work, capsys, extra, fragment):
    args = ["check", "m.onnx", "--target", "fake", *extra]
    if extra[0] in ("--update", "--absolute"):
        args += ["--reference", "m.onnx"]
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    one_error_line(err, fragment)


def test_two_runs_artifacts_get_two_baselines(work, capsys):
    """Every prune run writes model.onnx: their baselines are two files, and a baseline is not
    used for another artifact unless re-recorded."""
    cwd, _ = work
    for name, size in (("a", 32), ("b", 64)):
        export(cwd / "runs" / name / "model.onnx", size=size)
        assert run(capsys, "check", f"runs/{name}/model.onnx", "--target", "fake", "--update")[0] == 0
    names = sorted(p.name for p in (cwd / "profiles/fake").glob("baseline-*.json"))
    assert names == ["baseline-runs_a_model.json", "baseline-runs_b_model.json"]
    for name in ("a", "b"):  # each passes against its own baseline
        assert run(capsys, "check", f"runs/{name}/model.onnx", "--target", "fake")[0] == 0
    code, _, err = run(capsys, "check", "runs/b/model.onnx", "--target", "fake",
                       "--baseline", "profiles/fake/baseline-runs_a_model.json")
    assert code == 2
    one_error_line(err, "was recorded for runs/a/model.onnx, not runs/b/model.onnx", "--update")


def test_the_frozen_copy_never_aliases_the_artifact(work, capsys):
    """--baseline deployed.json beside deployed.onnx: replacing the artifact leaves the frozen copy
    alone, so a 4x slower replacement is a paired regression, not an absolute comparison."""
    cwd, _ = work
    export(cwd / "deployed.onnx")
    assert run(capsys, "check", "deployed.onnx", "--target", "fake", "--baseline", "deployed.json",
               "--update")[0] == 0
    assert (cwd / "deployed.frozen.onnx").read_bytes() == (cwd / "deployed.onnx").read_bytes()
    export(cwd / "deployed.onnx", size=64)
    code, out, _ = run(capsys, "check", "deployed.onnx", "--target", "fake", "--baseline", "deployed.json",
                       "--json")
    c = json.loads(out)["checks"][0]
    assert code == 1 and c["regression"] and c["comparison"]["method"] == "paired"



def test_checking_an_artifact_never_loads_torch(tmp_path):
    """`edgeprune check` runs in a user's CI once per artifact and target, and needs only the
    runtime: loading torch cost 3 s of every such command. The API, the check modules and the
    ONNX Runtime target import without it."""
    code = ("import sys, edgeprune.api, edgeprune.cli, edgeprune.checks.check, edgeprune.checks.check_report, "
            "edgeprune.runtime.ort; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "False"


def test_listing_targets_never_loads_torch(tmp_path):
    """`edgeprune targets` asks every runtime whether its device is here; the GPU runtimes
    (torch, TensorRT) answer from the GPU list (nvidia-smi, the board model), not by importing
    torch, which cost the command 3.6 s of its 7.7 s."""
    code = ("import sys, contextlib, io\nfrom edgeprune.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()): code = main(['targets'])\n"
            "print(code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "0 False"

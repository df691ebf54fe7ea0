"""run.json, the manifest of a prune run: it round-trips, survives a moved run directory, is
refused in one line when damaged, and is what export/check/report --run read (issue 10).
Runs made before run.json (report.json only) still work."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_fake_target

from edgeprune import api, cli
from edgeprune.errors import UsageError
from edgeprune.manifest import (
    SCHEMA_VERSION,
    Artifact,
    RunManifest,
    TargetRef,
    read,
    stored_path,
)
from edgeprune.runs import read_run

SIZE = 16


def manifest(**changes) -> RunManifest:
    base = dict(edgeprune_version="0.1.0", model="tiny_resnet", input_size=SIZE, input_shape=[1, 3, SIZE, SIZE],
                target=TargetRef(name="fake", file="/somewhere/fake.yaml", fingerprint={"runtime": "fake"}),
                widths={"conv1": 8, "layer1.conv1": 16}, importance="l1", budget_ms=0.5,
                artifacts={"onnx": Artifact(kind="onnx", path="model.onnx", size_bytes=10)})
    return RunManifest(**{**base, **changes})


def test_manifest_round_trips(tmp_path):
    m = manifest()
    path = m.write(tmp_path)
    assert path == tmp_path / "run.json" and json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert read(tmp_path) == m
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left behind


def test_paths_inside_the_run_are_stored_relative(tmp_path):
    assert stored_path(tmp_path / "run" / "model.onnx", tmp_path / "run") == "model.onnx"
    assert stored_path(tmp_path / "w.pt", tmp_path / "run") == str((tmp_path / "w.pt").resolve())
    with pytest.raises(ValueError, match="inside the run directory"):
        manifest(artifacts={"onnx": Artifact(kind="onnx", path="/abs/model.onnx")})
    with pytest.raises(ValueError, match="inside the run directory"):
        manifest(artifacts={"onnx": Artifact(kind="onnx", path="../model.onnx")})


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize("content, fragment", [
    (None, "has no run.json"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"schema_version": 99}), "schema version 99"),
    (json.dumps({"model": "tiny_resnet"}), "schema version None"),
    ("WIDTHS", "widths.conv1"),
    ("SIZE", "input_size"),
    ("NOTARGET", "target"),
])
def test_a_bad_run_json_is_one_usage_error_line(tmp_path, content, fragment):
    good = json.loads(manifest().model_dump_json())
    if content == "WIDTHS":
        content = json.dumps({**good, "widths": {"conv1": "eight"}})
    elif content == "SIZE":
        content = json.dumps({**good, "input_size": "large"})
    elif content == "NOTARGET":
        content = json.dumps({k: v for k, v in good.items() if k != "target"})
    if content is not None:
        (tmp_path / "run.json").write_text(content)
    with pytest.raises(UsageError) as e:
        read(tmp_path)
    assert fragment in one_line(e)
    with pytest.raises(UsageError) as e:  # the commands' reader says the same
        read_run(tmp_path)
    assert fragment in one_line(e) or "neither run.json nor report.json" in str(e.value)


def test_a_missing_run_directory_is_one_usage_error_line(tmp_path):
    with pytest.raises(UsageError) as e:
        read(tmp_path / "nowhere")
    assert "does not exist" in one_line(e)


def test_a_damaged_run_json_is_not_hidden_by_report_json(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"model": "tiny_resnet", "widths": {}}))
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(UsageError, match="not valid JSON"):
        read_run(tmp_path)


# --- a real (fake-target) prune run ----------------------------------------------------------


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tiny_resnet prune run at 16 px on a fake target given as a YAML path (~15 s)."""
    base = tmp_path_factory.mktemp("manifest")
    target = write_fake_target(base / "targets")
    budget = 0.7 * api.measure("tiny_resnet", str(target), SIZE).median_ms
    report = api.prune("tiny_resnet", base / "out", budget, str(target), data="digits", epochs=0,
                       input_size=SIZE, baseline_epochs=1, progress=False, objective="importance",
                       profiles_dir=str(base / "profiles"))
    return {"base": base, "out": base / "out", "target": target, "report": report}


def input_dims(path: Path) -> list[int]:
    import onnx
    return [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]


def test_prune_writes_a_manifest_that_matches_its_report(pruned):
    m = read(pruned["out"])
    report = json.loads((pruned["out"] / "report.json").read_text())
    assert m.widths == report["widths"] == pruned["report"]["widths"]
    assert (m.model, m.input_size, m.budget_ms) == ("tiny_resnet", SIZE, report["budget_ms"])
    assert m.target.name == "fake" and m.target.file == str(pruned["target"].resolve())
    assert m.target.fingerprint["runtime"] == "fake" and m.table.hash == report["table"]["hash"]
    assert m.weights.pruned == "model.pt" and m.weights.baseline == "baseline.pt"
    assert m.artifacts["onnx"].path == "model.onnx" and m.data.source == "digits"


def test_export_run_takes_input_size_and_target_from_the_manifest(pruned, tmp_path, monkeypatch):
    """No --target, --input-size nor --weights: the run's target file (not resolvable by its name
    alone), its 16 px input and its pruned weights come from run.json."""
    monkeypatch.chdir(tmp_path)  # no ./targets here: the name "fake" alone would not resolve
    out = tmp_path / "again.onnx"
    assert cli.main(["export", "tiny_resnet", "--run", str(pruned["out"]), "--out", str(out)]) == 0
    assert input_dims(out)[2:] == [SIZE, SIZE]
    from edgeprune.artifacts.export import read_metadata
    assert read_metadata(out)["target"] == "fake"


def assert_exports(run: Path, out: Path) -> None:
    """``export --run`` on ``run`` writes an ONNX file at the run's input size."""
    assert cli.main(["export", "tiny_resnet", "--run", str(run), "--out", str(out)]) == 0
    assert input_dims(out)[2:] == [SIZE, SIZE]


def test_a_moved_run_directory_still_works(pruned, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(pruned["out"], moved)
    run = read_run(moved)
    assert run.weights == moved / "model.pt" and run.onnx == moved / "model.onnx"
    assert_exports(moved, tmp_path / "moved.onnx")


def test_export_run_with_a_damaged_manifest_exits_2_in_one_line(pruned, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pruned["out"], run)
    (run / "run.json").write_text(json.dumps({**json.loads((run / "run.json").read_text()), "schema_version": 2}))
    assert cli.main(["export", "tiny_resnet", "--run", str(run), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "schema version 2" in err
    assert not (tmp_path / "x.onnx").exists()


def test_a_run_made_before_run_json_still_exports_from_its_report(pruned, tmp_path, monkeypatch):
    """Decision: an older run (report.json only) is read as before: its model, widths and input
    size from the report, its target by name (so a YAML-path target needs --target or
    EDGEPRUNE_TARGETS, as it always did)."""
    old = tmp_path / "old"
    shutil.copytree(pruned["out"], old)
    (old / "run.json").unlink()
    run = read_run(old)
    assert run.manifest is None and run.widths == pruned["report"]["widths"] and run.target == "fake"
    monkeypatch.setenv("EDGEPRUNE_TARGETS", str(pruned["target"].parent))
    assert_exports(old, tmp_path / "old.onnx")


def test_a_rerun_into_the_directory_drops_the_old_manifest_until_it_finishes(pruned, tmp_path, monkeypatch):
    import edgeprune.pipeline as pipeline_mod
    run = tmp_path / "run"
    shutil.copytree(pruned["out"], run)

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline_mod, "fit_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        api.prune("tiny_resnet", run, pruned["report"]["budget_ms"], str(pruned["target"]), data="digits",
                  epochs=0, input_size=SIZE, baseline_epochs=1, progress=False, objective="importance",
                  profiles_dir=str(pruned["base"] / "profiles"))
    assert not (run / "run.json").exists()


def test_check_run_finds_the_artifact_target_and_budget(pruned, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [res] = api.check(run=str(pruned["out"]), update=True, baseline=str(tmp_path / "base.json"))
    assert res.artifact == str(pruned["out"] / "model.onnx") and res.target == "fake"
    assert res.budget.ms == pruned["report"]["budget_ms"] and res.budget.source == f"run {pruned['out']}"
    with pytest.raises(UsageError, match="does not combine with --all"):
        api.check(run=str(pruned["out"]), deploy="deploy.yaml")


def test_report_reads_the_manifest(pruned, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pruned["out"], run)
    assert cli.main(["report", str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert "fake" in (tmp_path / "cmp" / "report.md").read_text()
    (run / "run.json").write_text("[]")
    assert cli.main(["report", str(run), "--out", str(tmp_path / "cmp")]) == 2
    assert "expected a JSON object" in capsys.readouterr().err

"""An interrupted `prune` resumes: the re-run reuses the closed loop's widths and the
fine-tune checkpoint instead of starting over (fake target: deterministic and fast)."""
from __future__ import annotations

import json

import pytest

import edgeprune.pipeline as pipeline_mod
import edgeprune.training.finetune as finetune_mod
from edgeprune import api

SIZE = 16


def run(tmp_path, fake_target_file, budget):
    return api.prune("tiny_resnet", tmp_path / "out", budget, str(fake_target_file), data="digits",
                     epochs=1, input_size=SIZE, baseline_epochs=1, progress=False,
                     profiles_dir=str(tmp_path / "profiles"))


def test_interrupted_prune_resumes_with_the_same_widths(tmp_path, fake_target_file, monkeypatch):
    unpruned = api.measure("tiny_resnet", str(fake_target_file), SIZE).median_ms
    budget = 0.7 * unpruned
    real_train, real_fit = finetune_mod.train, pipeline_mod.fit_budget

    def interrupt_finetune(model, data, cfg, checkpoint=None, teacher=None, key=""):
        if teacher is not None:  # the baseline trains; the fine-tune is interrupted
            raise KeyboardInterrupt
        return real_train(model, data, cfg, checkpoint, teacher, key)

    monkeypatch.setattr(finetune_mod, "train", interrupt_finetune)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, fake_target_file, budget)
    saved = json.loads((tmp_path / "out" / "step1.json").read_text())
    assert not (tmp_path / "out" / "report.json").exists() and not (tmp_path / "out" / "run.json").exists()

    calls = []
    monkeypatch.setattr(finetune_mod, "train", real_train)
    monkeypatch.setattr(pipeline_mod, "fit_budget", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    report = run(tmp_path, fake_target_file, budget)
    assert calls == []  # the loop's outcome was reused
    assert report["widths"] == saved["search"]["widths"]
    assert report["within_budget"] and report["measured_ms"] <= budget
    verdict = report["budget_verdict"]  # one estimator, its interval next to the budget
    assert verdict["verdict"] == "fits" and verdict["ci_ms"][1] <= budget == verdict["budget_ms"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "(fits: " in md and "95% CI" in md
    assert not list((tmp_path / "out").glob("step*.json")) and not list((tmp_path / "out").glob("finetune*.ckpt"))


def test_gradual_pruning_steps_down_to_the_budget(tmp_path, fake_target_file):
    unpruned = api.measure("tiny_resnet", str(fake_target_file), SIZE).median_ms
    budget = 0.7 * unpruned
    report = api.prune("tiny_resnet", tmp_path / "out", budget, str(fake_target_file), data="digits",
                       epochs=2, steps=2, input_size=SIZE, baseline_epochs=1, progress=False,
                       profiles_dir=str(tmp_path / "profiles"))
    steps = sorted({r["step"] for r in report["rounds"]})
    assert steps == [1, 2]
    first = [r for r in report["rounds"] if r["step"] == 1][-1]
    last = [r for r in report["rounds"] if r["step"] == 2][-1]
    # step 1 aims at a budget between the unpruned model and the final one; tiny_resnet's widths
    # are coarse, so its pick may already read on the final budget, never under step 2's
    assert budget < first["search_budget_ms"] and last["measured_ms"] <= budget
    assert first["measured_ms"] >= last["measured_ms"]
    assert [h["step"] for h in report["finetune"]["history"]] == [1, 2]  # one epoch after each step
    assert report["within_budget"]


def test_the_loops_readings_are_kept_beside_the_table(tmp_path, fake_target_file):
    """Every round's reading is kept as a landing for the next run, and the report says so;
    --no-landings neither reads nor writes them."""
    budget = 0.7 * api.measure("tiny_resnet", str(fake_target_file), SIZE).median_ms
    report = run(tmp_path, fake_target_file, budget)
    landings = report["table"]["landings"]
    sidecar = tmp_path / "profiles" / "fake" / "tiny_resnet-16px.landings.json"
    assert landings["used"] and landings["path"] == str(sidecar)
    assert landings["before"] == 0 and landings["after"] == len(report["rounds"])
    assert len(json.loads(sidecar.read_text())["landings"]) == len(report["rounds"])
    assert report["table"]["error_at_picks"]["profile_median_abs"] is not None
    assert "landings" in (tmp_path / "out" / "report.md").read_text()
    # report.json is a typed PruneReport (issue 10): validated on read, written back byte for byte
    from edgeprune.reports.model import SCHEMA_VERSION, load_report
    from edgeprune.reports.report import write_report
    written = (tmp_path / "out" / "report.json").read_text()
    typed = load_report(tmp_path / "out" / "report.json")
    assert typed.schema_version == SCHEMA_VERSION and typed.to_json_dict() == report == json.loads(written)
    again, _ = write_report(typed, tmp_path / "again")
    assert again.read_text() == written
    # the run's manifest (issue 10) says what its report says
    from edgeprune.manifest import read
    manifest = read(tmp_path / "out")
    assert manifest.widths == report["widths"] == json.loads((tmp_path / "out" / "report.json").read_text())["widths"]
    assert (manifest.input_size, manifest.budget_ms, manifest.target.name) == (SIZE, report["budget_ms"], "fake")
    # export --run rebuilds the run's model at the run's input size (not the default 32 px)
    from edgeprune import cli
    exported = tmp_path / "again.onnx"
    assert cli.main(["export", "tiny_resnet", "--run", str(tmp_path / "out"), "--target", str(fake_target_file),
                     "--out", str(exported)]) == 0
    import onnx
    dims = onnx.load(str(exported)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][2:] == [SIZE, SIZE]
    assert cli.main(["export", "resnet18", "--run", str(tmp_path / "out"), "--target", str(fake_target_file),
                     "--out", str(tmp_path / "other.onnx")]) == 2
    sidecar.unlink()
    report = api.prune("tiny_resnet", tmp_path / "out2", budget, str(fake_target_file), data="digits", epochs=0,
                       input_size=SIZE, baseline_epochs=1, progress=False, landings=False,
                       profiles_dir=str(tmp_path / "profiles"))
    assert report["table"]["landings"] == {"used": False} and not sidecar.exists()

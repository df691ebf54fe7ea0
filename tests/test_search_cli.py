"""`edgeprune search`: both objectives from the command line, and its input errors in one line."""
from __future__ import annotations

import json

import pytest
import torch

from edgeprune.training.models import build_model, save_weights

SIZE = 16


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    return save_weights(build_model("tiny_resnet", num_classes=10), tmp_path / "w.pt")


@pytest.mark.parametrize("objective", [[], ["--objective", "capacity"]])
def test_search_scores_candidates_when_given_data(tmp_path, cli, fake_target_file, weights, objective):
    r = cli(["search", "tiny_resnet", "--target", fake_target_file, "--input-size", SIZE, "--budget-ms", "0.15",
             "--data", "digits", "--weights", weights, "--candidates", "4", "--refine", "2", "--json", *objective,
             "--profiles-dir", tmp_path / "p", "--calibrate", "6", "--levels", "3"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["objective"] == (objective[1] if objective else "adaptive-bn") and 0 <= out["proxy_accuracy"] <= 1
    assert out["predicted_ms"] <= 0.15 and out["kept_importance"] is None


def test_search_without_data_keeps_importance_and_uses_the_target_budget(tmp_path, cli, fake_target_file):
    fake_target_file.write_text(fake_target_file.read_text() + "budgets_ms:\n  tiny_resnet: 0.15\n")
    r = cli(["search", "tiny_resnet", "--target", fake_target_file, "--input-size", SIZE, "--json",
             "--profiles-dir", tmp_path / "p", "--calibrate", "6", "--levels", "3"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # was a TypeError traceback without --budget-ms
    out = json.loads(r.stdout)
    assert out["objective"] == "importance" and out["budget_ms"] == 0.15


def test_search_takes_a_budget_as_a_share_of_the_unpruned_model(tmp_path, cli, fake_target_file):
    """--budget-ratio 0.8 means 0.8 of the table's own prediction for the unpruned model, whatever
    the target file's budget in ms says."""
    fake_target_file.write_text(fake_target_file.read_text() + "budgets_ms:\n  tiny_resnet: 0.15\n")
    r = cli(["search", "tiny_resnet", "--target", fake_target_file, "--input-size", SIZE, "--json",
             "--budget-ratio", "0.8", "--profiles-dir", tmp_path / "p", "--calibrate", "6", "--levels", "3"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["budget_ms"] == pytest.approx(0.8 * out["full_ms"], rel=1e-4) and out["budget_ms"] != 0.15
    assert out["predicted_ms"] <= out["budget_ms"]


@pytest.mark.parametrize("args, words", [
    (["--objective", "adaptive-bn"], "--data"),
    (["--objective", "capacity"], "--data"),
    (["--data", "digits"], "--weights"),
])
def test_search_input_errors_are_one_line(tmp_path, cli, fake_target_file, args, words):
    r = cli(["search", "tiny_resnet", "--target", fake_target_file, "--input-size", SIZE, "--budget-ms", "0.15",
             *args, "--profiles-dir", tmp_path / "p"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr


@pytest.mark.parametrize("flag, value", [("--candidates", "-1"), ("--refine", "-2"), ("--search-seed", "-3")])
def test_out_of_range_search_sizes_are_refused(tmp_path, cli, fake_target_file, flag, value):
    r = cli(["prune", "tiny_resnet", "--target", fake_target_file, "--input-size", SIZE, "--budget-ms", "0.15",
             flag, value, "--out", tmp_path / "out", "--profiles-dir", tmp_path / "p"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and flag.lstrip("-") in r.stderr
    assert not (tmp_path / "out").exists()


def test_search_without_a_budget_says_where_one_comes_from(tmp_path, cli, fake_target_file):
    r = cli(["search", "tiny_resnet", "--target", fake_target_file, "--input-size", SIZE,
             "--profiles-dir", tmp_path / "p"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "no --budget-ms given" in r.stderr


def test_prune_json_prints_the_report(tmp_path, cli, fake_target_file):
    r = cli(["prune", "tiny_resnet", "--target", fake_target_file, "--input-size", SIZE, "--budget-ms", "0.15",
             "--objective", "importance", "--epochs", "0", "--baseline-epochs", "1", "--calibrate", "6",
             "--levels", "3", "--out", tmp_path / "out", "--profiles-dir", tmp_path / "p", "--json"], cwd=tmp_path)
    assert r.returncode in (0, 1), r.stderr
    report = json.loads(r.stdout)
    assert report == json.loads((tmp_path / "out" / "report.json").read_text())
    assert (r.returncode == 0) == report["within_budget"]


@pytest.mark.parametrize("command", ["search", "prune"])
def test_the_objective_choices_are_the_pipelines(command):
    """The CLI spells its choices out (it imports nothing heavy at start-up); they must stay the
    objectives the pipeline and the search accept."""
    import argparse

    from edgeprune.cli import build_parser
    from edgeprune.pipeline import OBJECTIVES
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    (objective,) = [a for a in sub._actions if "--objective" in a.option_strings]
    assert tuple(objective.choices) == OBJECTIVES

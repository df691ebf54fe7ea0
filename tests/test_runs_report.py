"""`edgeprune report RUN...`: charts per run, one Pareto plot across runs, bad input in one line."""
from __future__ import annotations

import json

from test_report import FULL

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(path, **changes):
    path.mkdir(parents=True)
    r = {**FULL, "layer_ms": {"before": {"conv1": 0.2, "layer1.0.conv1": 0.3}, "after": {"conv1": 0.1}},
         "search": {"objective": "adaptive-bn"}, **changes}
    (path / "report.json").write_text(json.dumps(r))
    return path


def test_report_draws_charts_and_a_pareto_of_several_runs(tmp_path, cli):
    a = write_run(tmp_path / "r50", measured_ms=20.0, accuracy_after=0.87)
    b = write_run(tmp_path / "r35", measured_ms=14.0, accuracy_after=0.85, target="openvino-cpu")
    r = cli(["report", a, b, "--out", tmp_path / "cmp"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for run in (a, b):
        assert (run / "pareto.png").read_bytes().startswith(PNG)
        assert (run / "layers.png").read_bytes().startswith(PNG)
        md = (run / "report.md").read_text()
        assert "![Accuracy against measured latency](pareto.png)" in md and "(layers.png)" in md
    assert (tmp_path / "cmp" / "pareto.png").read_bytes().startswith(PNG)
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "r50" in md and "r35" in md and "openvino-cpu" in md and "adaptive-bn" in md


def test_report_on_a_directory_without_a_run_is_one_line_and_exit_2(tmp_path, cli):
    good = write_run(tmp_path / "good")
    r = cli(["report", good, tmp_path / "nothing"], cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "nothing" in r.stderr
    assert not (good / "pareto.png").exists()  # nothing written when one input is bad


def test_a_damaged_report_is_one_line_and_exit_2(tmp_path, cli):
    """report.json is validated on read (reports/model.py): a string where a number belongs is
    named, not rendered as "—" or a TypeError in the plot."""
    bad = write_run(tmp_path / "bad", budget_ms="x")
    r = cli(["report", bad], cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "budget_ms" in r.stderr and not (bad / "report.md").exists()

"""``check --run`` on a run pruned with ``--budget-ratio``: the artifact is judged as it was
pruned, as a share of the unpruned model read in pairs with it, not against the run's budget in
ms (which a host that slowed since the run fails). Deterministic fake target for the plumbing."""
from __future__ import annotations

import json

import pytest
from conftest import write_fake_target

from edgeprune import api, cli
from edgeprune.checks.request import CheckRequest
from edgeprune.errors import UsageError
from edgeprune.runs import read_run
from edgeprune.runtime.fake import FakeTarget

SIZE = 16
RATIO = 0.7


@pytest.fixture(scope="module")
def relative(tmp_path_factory):
    """A tiny_resnet prune run to 70% of its unpruned latency on a fake target (~15 s)."""
    base = tmp_path_factory.mktemp("share")
    target = write_fake_target(base / "targets")
    report = api.prune("tiny_resnet", base / "out", target=str(target), budget_ratio=RATIO, data="digits",
                       epochs=0, input_size=SIZE, baseline_epochs=1, progress=False, objective="importance",
                       profiles_dir=str(base / "profiles"))
    return {"base": base, "out": base / "out", "target": target, "report": report}


@pytest.fixture
def slower_host(monkeypatch):
    """Every reading 1.6x slower than when the run was pruned: a host that drifted since."""
    plain = FakeTarget.measure_many

    def slowed(self, paths, timing=None):
        from edgeprune.runtime.timing import Latency
        return [Latency.from_samples([x * 1.6 for x in lat.samples_ms]) for lat in plain(self, paths, timing)]
    monkeypatch.setattr(FakeTarget, "measure_many", slowed)


def test_a_relative_run_keeps_its_unpruned_model_and_its_share(relative):
    from edgeprune.artifacts.export import read_metadata
    r = read_run(relative["out"])
    assert r.budget_ratio == RATIO and r.unpruned == relative["out"] / "unpruned.onnx" and r.unpruned.is_file()
    assert json.loads((relative["out"] / "run.json").read_text())["artifacts"]["unpruned"]["path"] == "unpruned.onnx"
    meta = read_metadata(r.unpruned)
    assert meta["model"] == "tiny_resnet" and "budget_ms" not in meta  # held to no budget of its own
    assert r.unpruned.stat().st_size > r.onnx.stat().st_size


def test_check_run_judges_the_share_read_in_pairs(relative, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [res] = api.check(run=str(relative["out"]), update=True, baseline="base.json")
    assert res.budget.share == RATIO and res.budget.ms is None and res.budget.source == f"run {relative['out']}"
    share = res.attempts[-1].share
    assert 0 < share <= RATIO and res.status == "updated" and not res.over_budget
    assert res.to_dict()["budget_share"] == RATIO and res.to_dict()["attempts"][-1]["share"] == pytest.approx(share)


def test_a_host_that_slowed_since_the_run_fails_its_ms_but_not_its_share(relative, tmp_path, monkeypatch, slower_host):
    """The reason for the share: the run's budget in ms (what check --run judged before) is
    failed by the host, not by the model."""
    monkeypatch.chdir(tmp_path)
    budget_ms = relative["report"]["budget_ms"]
    [absolute] = api.check(run=str(relative["out"]), update=True, baseline="a.json", budget_ms=budget_ms)
    assert absolute.over_budget and absolute.status == "fail"
    [paired] = api.check(run=str(relative["out"]), update=True, baseline="b.json")
    assert not paired.over_budget and paired.status == "updated", paired.problems


def test_a_model_over_its_share_fails_with_the_share_named(relative, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    r = read_run(relative["out"])
    req = CheckRequest(str(r.onnx), str(relative["target"]), "budget", budget_ratio=0.05, unpruned=str(r.unpruned))
    [res] = api.check(req)
    assert res.status == "fail" and res.over_budget and len(res.attempts) == 2  # flagged, then confirmed
    assert "of the unpruned model's latency" in res.problems[0] and "(paired) > 0.05" in res.problems[0]
    code = cli.main(["check", "--run", str(relative["out"]), "--baseline", "c.json", "--update"])
    out = capsys.readouterr().out
    assert code == 0 and f"{RATIO:g}x unpruned" in out
    code = cli.main(["check", str(r.onnx), "--target", str(relative["target"]), "--baseline", "d.json", "--update",
                     "--budget-ratio", "0.05", "--unpruned", str(r.unpruned)])
    out = capsys.readouterr().out
    assert code == 1 and "0.05x unpruned" in out and "of the unpruned model's latency" in out


def test_a_relative_budget_given_on_the_command_line_wins_over_the_runs(relative, tmp_path, monkeypatch):
    """``check --run DIR --budget-ratio R --unpruned U``: the command's share is judged, as its
    ``--budget-ms`` would be, not the run's own (which it silently replaced before)."""
    monkeypatch.chdir(tmp_path)
    r = read_run(relative["out"])
    [res] = api.check(run=str(relative["out"]), update=True, baseline="b.json", budget_ratio=0.05,
                      unpruned=str(r.unpruned))
    assert res.budget.share == 0.05 and res.budget.source == "--budget-ratio"
    assert res.status == "fail" and "> 0.05 of the unpruned model's latency" in res.problems[0]


@pytest.mark.parametrize("flags", [["--budget-ratio", "0.5"], ["--unpruned", "u.onnx"],
                                   ["--budget-ratio", "0.5", "--unpruned", "u.onnx", "--budget-ms", "1"],
                                   ["--budget-ratio", "1", "--unpruned", "u.onnx"],
                                   ["--budget-ratio", "nan", "--unpruned", "u.onnx"]])
def test_check_refuses_a_half_given_relative_budget_in_one_line(flags, tmp_path, capsys):
    code = cli.main(["check", str(tmp_path / "m.onnx"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "relative budget" in err


@pytest.mark.parametrize("fields, fragment", [
    ({"budget_ratio": 0.5}, "give both"),
    ({"unpruned": "u.onnx"}, "give both"),
    ({"budget_ratio": 1.5, "unpruned": "u.onnx"}, "share in (0, 1)"),
    ({"budget_ratio": 0.5, "unpruned": "u.onnx", "budget_ms": 1.0}, "no --budget-ms"),
])
def test_a_relative_budget_without_its_yardstick_is_refused(fields, fragment):
    with pytest.raises(UsageError, match="relative budget") as e:
        CheckRequest("m.onnx", **fields)
    assert fragment in str(e.value)


def test_a_missing_unpruned_model_is_one_line_before_any_measurement(relative, tmp_path, monkeypatch):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(relative["out"], run)
    (run / "unpruned.onnx").unlink()
    monkeypatch.setattr(FakeTarget, "measure_many", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(UsageError, match="unpruned.onnx does not exist"):
        api.check(run=str(run), update=True, baseline=str(tmp_path / "b.json"))


def test_a_deploy_file_entry_takes_a_relative_budget(relative, tmp_path):
    """``budget_ratio`` + ``unpruned`` in a deploy file: paths relative to the file, judged paired."""
    import shutil
    for name in ("model.onnx", "unpruned.onnx"):
        shutil.copy(relative["out"] / name, tmp_path / name)
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(f"checks:\n  - artifact: model.onnx\n    target: {relative['target']}\n"
                      f"    budget_ratio: {RATIO}\n    unpruned: unpruned.onnx\n")
    [res] = api.check(deploy=str(deploy), update=True)
    assert res.status == "updated" and res.budget.share == RATIO and res.budget.unpruned == tmp_path / "unpruned.onnx"
    deploy.write_text(deploy.read_text().replace(f"budget_ratio: {RATIO}", "budget_ratio: 0.01"))
    [res] = api.check(deploy=str(deploy), update=True)
    assert res.status == "fail" and "(paired) > 0.01" in res.problems[0]

"""``CheckRequest``: every contradiction between ``edgeprune check``'s flags is refused when the
request is built (no file read, nothing measured), with the same one line through the CLI;
the flags map onto one mode; ``--all`` and ``--run`` expand into single-artifact requests."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest

from edgeprune.checks.request import CheckRequest, Mode
from edgeprune.cli import main
from edgeprune.errors import UsageError

# (flags for CheckRequest.from_flags, the same on the command line, a fragment of the one line).
# The files named here do not exist: a refusal must come before anything is read.
INVALID = {
    "reference with update": (dict(artifact="m.onnx", reference="old.onnx", update=True),
                              ["m.onnx", "--reference", "old.onnx", "--update"], "neither --update nor --absolute"),
    "reference with absolute": (dict(artifact="m.onnx", reference="old.onnx", absolute=True),
                                ["m.onnx", "--reference", "old.onnx", "--absolute"],
                                "neither --update nor --absolute"),
    "run with all": (dict(run="runs/a", deploy="d.yaml"), ["--run", "runs/a", "--all", "d.yaml"],
                     "--run checks one prune run; it does not combine with --all"),
    "artifact with all": (dict(artifact="m.onnx", deploy="d.yaml"), ["m.onnx", "--all", "d.yaml"],
                          "give either an artifact or a deploy file (--all), not both or neither"),
    "neither": (dict(), [], "give either an artifact or a deploy file (--all), not both or neither"),
    "reference with all": (dict(deploy="d.yaml", reference="old.onnx"), ["--all", "d.yaml", "--reference", "old.onnx"],
                           "--reference compares one artifact with another; it does not combine with --all"),
    "target with all": (dict(deploy="d.yaml", target="fake"), ["--all", "d.yaml", "--target", "fake"],
                        "belong in the deploy file's checks, not with --all"),
    "baseline with all": (dict(deploy="d.yaml", baseline="b.json"), ["--all", "d.yaml", "--baseline", "b.json"],
                          "belong in the deploy file's checks"),
    "budget with all": (dict(deploy="d.yaml", budget_ms=1.0), ["--all", "d.yaml", "--budget-ms", "1"],
                        "belong in the deploy file's checks"),
    "tolerance out of range": (dict(artifact="m.onnx", tolerance=1.5), ["m.onnx", "--tolerance", "1.5"],
                               "tolerance must be a fraction in [0, 1), got 1.5"),
    "tolerance nan": (dict(artifact="m.onnx", tolerance=float("nan")), ["m.onnx", "--tolerance", "nan"],
                      "tolerance must be a fraction in [0, 1), got nan"),
    "tolerance with all": (dict(deploy="d.yaml", tolerance=-0.1), ["--all", "d.yaml", "--tolerance", "-0.1"],
                           "tolerance must be a fraction in [0, 1)"),
}


@pytest.mark.parametrize("flags, fragment", [(f, frag) for f, _, frag in INVALID.values()], ids=list(INVALID))
def test_each_contradiction_is_refused_when_the_request_is_built(flags, fragment):
    with pytest.raises(UsageError) as e:
        CheckRequest.from_flags(**flags)
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("args, fragment", [(a, frag) for _, a, frag in INVALID.values()], ids=list(INVALID))
def test_each_contradiction_through_the_cli_is_one_line_exit_2_and_measures_nothing(
        tmp_path, monkeypatch, capsys, args, fragment):
    from edgeprune.checks import check

    def measured(*a, **k):
        raise AssertionError("a refused request reached the measurement")
    monkeypatch.setattr(check, "run_check", measured)
    monkeypatch.chdir(tmp_path)
    code = main(["check", *args, "--junit", "j.xml"])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("edgeprune: error: ") and fragment in lines[0]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fields, fragment", [
    (dict(artifact="m.onnx", mode=Mode.REFERENCE), "give it (--reference OLD_ARTIFACT)"),
    (dict(artifact="m.onnx", reference="old.onnx"), "not of mode 'baseline'"),
    (dict(artifact="m.onnx", mode="update", reference="old.onnx"), "neither --update nor --absolute"),
    (dict(artifact="m.onnx", mode=Mode.BUDGET, absolute=True), "takes no --absolute"),
    (dict(artifact="m.onnx", mode="updaet"), "unknown check mode 'updaet'"),
])
def test_direct_construction_is_validated_the_same_way(fields, fragment):
    with pytest.raises(UsageError) as e:
        CheckRequest(**fields)
    assert fragment in str(e.value)


def test_flags_become_one_mode_and_the_request_is_frozen():
    assert CheckRequest.from_flags("m.onnx").mode is Mode.BASELINE
    assert CheckRequest.from_flags("m.onnx", update=True).mode is Mode.UPDATE
    r = CheckRequest.from_flags("m.onnx", reference="old.onnx", tolerance=None)
    assert r.mode is Mode.REFERENCE and r.tolerance == 0.05 and r.reference == "old.onnx"
    assert CheckRequest("m.onnx", mode="update").mode is Mode.UPDATE  # a string mode is coerced
    with pytest.raises(AttributeError):
        r.mode = Mode.UPDATE  # type: ignore[misc]
    with pytest.raises(UsageError, match="neither --update"):  # replace() validates again
        replace(r, mode=Mode.UPDATE)


def test_a_deploy_file_expands_into_requests_with_its_values_and_the_commands_flags(tmp_path):
    (tmp_path / "d.yaml").write_text("defaults: {target: fake, tolerance: 0.2}\nchecks:\n"
                                     "  - {artifact: m.onnx, budget_ms: 2, tolerance: 0.1}\n"
                                     "  - {artifact: n.onnx, target: [a, b], baseline: 'bl/{target}.json'}\n")
    base = CheckRequest.from_flags(deploy=str(tmp_path / "d.yaml"), update=True, confirm=False, tolerance=0.3)
    reqs = base.checks()
    assert [(r.artifact, r.target, r.tolerance) for r in reqs] == [
        (str(tmp_path / "m.onnx"), "fake", 0.1), (str(tmp_path / "n.onnx"), "a", 0.2),
        (str(tmp_path / "n.onnx"), "b", 0.2)]
    assert all(r.deploy is None and r.mode is Mode.UPDATE and not r.confirm for r in reqs)
    assert all(r.budget_source == "deploy file" and r.baseline_root == tmp_path / "profiles" for r in reqs)
    assert reqs[0].budget_ms == 2 and reqs[2].baseline == str(tmp_path / "bl/b.json")
    (tmp_path / "e.yaml").write_text("checks: [{artifact: m.onnx}]\n")  # no tolerance anywhere: the command's
    assert CheckRequest.from_flags(deploy=str(tmp_path / "e.yaml"), tolerance=0.3).checks()[0].tolerance == 0.3


def test_api_check_takes_a_request_or_its_fields_not_both():
    from edgeprune import api
    with pytest.raises(TypeError, match="no other arguments"):
        api.check(CheckRequest("m.onnx"), update=True)
    with pytest.raises(UsageError, match="neither --update nor --absolute"):
        api.check("m.onnx", reference="old.onnx", absolute=True)

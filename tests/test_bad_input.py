"""The CLI contract for bad input, everywhere (issue 10): every flag's range, files, target YAML,
data, ``--out``, runs and baselines. Each case gets exactly one line on stderr
("edgeprune: error: ..."), exit 2, no traceback, nothing on stdout, and leaves nothing behind:
no output directory, no profile, no temp file. The CLI runs in-process; every case is refused
before any real work (tiny_resnet at 16 px on the fake runtime, so even a case that were not
refused would finish in seconds rather than train)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import write_fake_target

from edgeprune import cli


class _Evil:
    """A pickle that, if unpickled without weights_only, would create a marker directory."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The files the cases point at, made once and copied for each case."""
    from edgeprune.artifacts.export import export_artifact
    from edgeprune.training.models import build_model, save_weights
    d = tmp_path_factory.mktemp("template")
    torch.manual_seed(0)
    model = build_model("tiny_resnet", num_classes=10).eval()
    export_artifact(model, "onnx", d / "m.onnx", (1, 3, 16, 16), {"model": "tiny_resnet", "target": "fake"})
    save_weights(model, d / "good.pt")
    good = (d / "good.pt").read_bytes()
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    (d / "corrupt.pt").write_bytes(bytes(range(256)) * 8)
    (d / "text.pt").write_text("these are not weights\n")
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3)).state_dict(), d / "other.pt")
    (d / "weights_dir").mkdir()
    (d / "corrupt.onnx").write_bytes(b"this is not protobuf")
    (d / "empty.onnx").write_bytes(b"")
    (d / "dir.onnx").mkdir()
    (d / "empty.yaml").write_text("")
    (d / "list.yaml").write_text("- name: fake\n- runtime: fake\n")
    (d / "types.yaml").write_text("name: fake\nruntime: fake\nthreads: two\n")
    (d / "runtime.yaml").write_text("name: x\nruntime: tensorflw\n")
    (d / "key.yaml").write_text("name: fake\nruntime: fake\nthread: 1\n")
    (d / "broken.yaml").write_text("name: broken\nruntime: [fake\n")
    (d / "negthreads.yaml").write_text("name: fake\nruntime: fake\nthreads: -1\n")
    (d / "corrupt.json").write_text("{")
    (d / "list.json").write_text("[]")
    (d / "emptydata").mkdir()
    (d / "notrun").mkdir()
    (d / "afile").write_text("an existing regular file\n")
    (d / "adir").mkdir()
    return d


@pytest.fixture
def work(template, tmp_path, monkeypatch) -> Path:
    cwd = tmp_path / "cwd"
    shutil.copytree(template, cwd)
    # the evil pickle names a marker outside cwd: creating it would mean the file was unpickled unsafely
    torch.save(_Evil(str(tmp_path / "pwned")), cwd / "pickle.pt")
    write_fake_target(tmp_path / "targets")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("EDGEPRUNE_TARGETS", str(tmp_path / "targets"))
    return cwd


FAST = ["--target", "fake", "--input-size", "16", "--profiles-dir", "profs", "--levels", "3", "--runs", "1",
        "--calibrate", "0", "--validate", "0"]
PRUNE = ["prune", "tiny_resnet", *FAST, "--out", "out", "--budget-ms", "1", "--epochs", "0",
         "--baseline-epochs", "0", "--objective", "importance", "--train-samples", "30", "--val-samples", "30",
         "--test-samples", "30"]
SEARCH = ["search", "tiny_resnet", *FAST, "--budget-ms", "1", "--objective", "importance"]
RELATIVE = PRUNE[:PRUNE.index("--budget-ms")] + PRUNE[PRUNE.index("--budget-ms") + 2:]  # no --budget-ms to clash with
MEASURE = ["measure", "tiny_resnet", "--target", "fake", "--input-size", "16"]
EXPORT = ["export", "tiny_resnet", "--target", "fake", "--input-size", "16", "--out", "x.onnx"]
CHECK = ["check", "m.onnx", "--target", "fake", "--no-confirm"]

# id: (argv, fragments the one line must hold). A later repeat of a flag overrides the base's.
CASES = {
    # sizes
    "input-size zero": ([*MEASURE, "--input-size", "0"], ["--input-size"]),
    "input-size negative": ([*PRUNE, "--input-size", "-16"], ["--input-size"]),
    "input-size not a number": ([*MEASURE, "--input-size", "big"], ["--input-size", "big"]),
    "export input-size negative": ([*EXPORT, "--input-size", "-1"], ["--input-size"]),
    # budgets
    "budget zero": ([*PRUNE, "--budget-ms", "0"], ["budget"]),
    "budget negative": ([*PRUNE, "--budget-ms", "-1"], ["budget"]),
    "budget nan": ([*PRUNE, "--budget-ms", "nan"], ["budget", "nan"]),
    "budget inf": ([*PRUNE, "--budget-ms", "inf"], ["budget", "inf"]),
    "search budget nan": ([*SEARCH, "--budget-ms", "nan"], ["budget", "nan"]),
    "search budget inf": ([*SEARCH, "--budget-ms", "inf"], ["budget", "inf"]),
    "search budget negative": ([*SEARCH, "--budget-ms", "-3"], ["budget"]),
    "check budget nan": ([*CHECK, "--budget-ms", "nan", "--update"], ["budget", "nan"]),
    "check budget inf": ([*CHECK, "--budget-ms", "inf", "--update"], ["budget", "inf"]),
    "budget not a number": ([*PRUNE, "--budget-ms", "fast"], ["--budget-ms", "fast"]),
    "budget in ms and as a ratio": ([*PRUNE, "--budget-ratio", "0.5"], ["--budget-ratio", "--budget-ms"]),
    "search budget in ms and as a ratio": ([*SEARCH, "--budget-ratio", "0.5"], ["--budget-ratio", "--budget-ms"]),
    "budget ratio over one": ([*RELATIVE, "--budget-ratio", "1.5"], ["--budget-ratio", "1.5"]),
    "budget ratio zero": ([*RELATIVE, "--budget-ratio", "0"], ["--budget-ratio"]),
    "budget ratio nan": ([*RELATIVE, "--budget-ratio", "nan"], ["--budget-ratio"]),
    # ratios
    "min-ratio zero": ([*PRUNE, "--min-ratio", "0"], ["--min-ratio"]),
    "min-ratio above one": ([*SEARCH, "--min-ratio", "1.5"], ["--min-ratio"]),
    "min-ratio negative": ([*PRUNE, "--min-ratio", "-0.25"], ["--min-ratio"]),
    "min-ratio nan": ([*SEARCH, "--min-ratio", "nan"], ["--min-ratio"]),
    "tolerance negative": ([*CHECK, "--tolerance", "-0.1"], ["tolerance"]),
    "tolerance nan": ([*CHECK, "--tolerance", "nan"], ["tolerance"]),
    "tolerance inf": ([*CHECK, "--tolerance", "inf"], ["tolerance"]),
    # epochs, steps, widths, counts
    "epochs negative": ([*PRUNE, "--epochs", "-1"], ["--epochs"]),
    "baseline-epochs negative": ([*PRUNE, "--baseline-epochs", "-2"], ["--baseline-epochs"]),
    "steps zero": ([*PRUNE, "--steps", "0"], ["--steps"]),
    "steps negative": ([*PRUNE, "--steps", "-2"], ["--steps"]),
    "round-to zero": ([*PRUNE, "--round-to", "0"], ["--round-to"]),
    "round-to negative": ([*SEARCH, "--round-to", "-8"], ["--round-to"]),
    "min-width zero": ([*SEARCH, "--min-width", "0"], ["--min-width"]),
    "min-width negative": ([*PRUNE, "--min-width", "-1"], ["--min-width"]),
    "candidates negative": ([*PRUNE, "--objective", "adaptive-bn", "--candidates", "-1"], ["--candidates"]),
    "refine negative": ([*PRUNE, "--objective", "adaptive-bn", "--refine", "-4"], ["--refine"]),
    "levels one": (["profile", "tiny_resnet", *FAST, "--levels", "1"], ["levels"]),
    "runs zero": (["profile", "tiny_resnet", *FAST, "--runs", "0"], ["runs"]),
    "levels too few for the model": (["profile", "tiny_resnet", *FAST, "--levels", "2"], ["--levels 3"]),
    "calibrate negative": ([*SEARCH, "--calibrate", "-1"], ["calibrate"]),
    "train-samples zero": ([*PRUNE, "--train-samples", "0"], ["--train-samples"]),
    "val-samples negative": ([*PRUNE, "--val-samples", "-5"], ["--val-samples"]),
    "test-samples zero": ([*PRUNE, "--test-samples", "0"], ["--test-samples"]),
    "calibration-samples zero": (["quantize", "--run", "notrun", "--calibration-samples", "0"],
                                 ["--calibration-samples"]),
    # weights files
    "weights missing": ([*MEASURE, "--weights", "missing.pt"], ["missing.pt"]),
    "weights truncated": ([*MEASURE, "--weights", "truncated.pt"], ["truncated.pt"]),
    "weights corrupt": ([*MEASURE, "--weights", "corrupt.pt"], ["corrupt.pt"]),
    "weights a text file": ([*MEASURE, "--weights", "text.pt"], ["text.pt"]),
    "weights a pickled object": ([*MEASURE, "--weights", "pickle.pt"], ["pickle.pt", "weights_only=True"]),
    "weights of another model": ([*EXPORT, "--weights", "other.pt"], ["other.pt", "does not match"]),
    "weights a directory": ([*MEASURE, "--weights", "weights_dir"], ["weights_dir", "is a directory"]),
    # artifacts and tables
    "measure corrupt onnx": (["measure", "corrupt.onnx", "--target", "fake"], ["corrupt.onnx"]),
    "measure empty onnx": (["measure", "empty.onnx", "--target", "fake"], ["empty.onnx"]),
    "check corrupt onnx": (["check", "corrupt.onnx", "--target", "fake"], ["corrupt.onnx"]),
    "check a directory as artifact": (["check", "dir.onnx", "--target", "fake"], ["dir.onnx", "directory"]),
    "measure a directory as artifact": (["measure", "dir.onnx", "--target", "fake"], ["dir.onnx", "directory"]),
    "table corrupt": ([*SEARCH, "--table", "corrupt.json"], ["corrupt.json"]),
    "table a directory": ([*SEARCH, "--table", "adir"], ["adir"]),
    # target YAML
    "yaml empty": ([*MEASURE, "--target", "empty.yaml"], ["empty.yaml", "empty file"]),
    "yaml a list": ([*MEASURE, "--target", "list.yaml"], ["list.yaml", "mapping"]),
    "yaml wrong type": ([*MEASURE, "--target", "types.yaml"], ["types.yaml", "threads"]),
    "yaml out of range": ([*MEASURE, "--target", "negthreads.yaml"], ["negthreads.yaml", "threads"]),
    "yaml unknown runtime": ([*MEASURE, "--target", "runtime.yaml"], ["target 'x'", "tensorflw"]),
    "yaml unknown key": ([*MEASURE, "--target", "key.yaml"], ["key.yaml", "thread"]),
    "yaml malformed": ([*MEASURE, "--target", "broken.yaml"], ["broken.yaml", "YAML"]),
    "yaml missing": ([*MEASURE, "--target", "nope.yaml"], ["nope.yaml"]),
    # data
    "data missing folder": ([*PRUNE, "--data", "no/such/folder"], ["no/such/folder"]),
    "data empty folder": ([*PRUNE, "--data", "emptydata"], ["emptydata"]),
    "search data empty folder": ([*SEARCH, "--objective", "adaptive-bn", "--data", "emptydata"], ["emptydata"]),
    # --out
    "prune out an existing file": ([*PRUNE, "--out", "afile"], ["afile"]),
    "export out an existing directory": ([*EXPORT, "--out", "adir"], ["adir"]),
    "profile out an existing directory": (["profile", "tiny_resnet", *FAST, "--out", "adir"], ["adir"]),
    # runs
    "export run missing": ([*EXPORT, "--run", "norun"], ["norun"]),
    "export run not a run": ([*EXPORT, "--run", "notrun"], ["notrun"]),
    "report run missing": (["report", "norun"], ["norun"]),
    "report not a run": (["report", "notrun", "--out", "rep"], ["notrun"]),
    "check run missing": (["check", "--run", "norun"], ["norun"]),
    "check run not a run": (["check", "--run", "notrun"], ["notrun"]),
    "quantize run missing": (["quantize", "--run", "norun"], ["norun"]),
    "quantize run not a run": (["quantize", "--run", "notrun"], ["notrun"]),
    # baselines
    "baseline missing": ([*CHECK, "--baseline", "nobase.json"], ["nobase.json"]),
    "baseline corrupt json": ([*CHECK, "--baseline", "corrupt.json"], ["corrupt.json"]),
    "baseline a list": ([*CHECK, "--baseline", "list.json"], ["list.json"]),
    # names
    "unknown importance": ([*SEARCH, "--importance", "l3"], ["l3"]),
    "unknown engine": ([*PRUNE, "--engine", "torch-prunnig"], ["torch-prunnig"]),
    "unknown export format": ([*EXPORT, "--format", "tflite"], ["tflite"]),
    "unknown protect name": ([*SEARCH, "--protect", "layer99"], ["layer99"]),
    "unknown objective": ([*SEARCH, "--objective", "accuracy"], ["--objective"]),
    "missing required out": (["prune", "tiny_resnet", "--budget-ms", "1"], ["--out"]),
}


def tree(directory: Path) -> list[str]:
    """Every path under ``directory``, hidden temp files included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("argv, fragments", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(work, capsys, argv, fragments):
    before = tree(work)
    try:
        code = cli.main(list(argv))
    except SystemExit as e:  # argparse's own exit: a usage block, not the contract's one line
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("edgeprune: error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert out == ""
    assert tree(work) == before  # no output dir, profile, baseline, report or .tmp half-written
    assert not (work.parent / "pwned").exists()  # the pickle was refused, never run
    assert "weights_only` set to `False`" not in err  # never advise loading unsafely


def test_there_are_at_least_forty_kinds():
    assert len(CASES) >= 40


@pytest.mark.parametrize("budget", ["0", "-1", "nan", "inf"])
def test_a_bad_budget_is_refused_before_the_data_and_model_are_loaded(work, capsys, monkeypatch, budget):
    """`prune --budget-ms 0` took 12 s to say so: the session (data, model, table) was opened
    first. Now nothing is loaded before the refusal."""
    from edgeprune.session import Session

    def opened(*args, **kwargs):
        raise AssertionError("the session was opened before the budget was checked")
    monkeypatch.setattr(Session, "open", opened)
    code = cli.main(["prune", "tiny_resnet", *FAST, "--out", "out", "--budget-ms", budget])
    assert code == 2 and "budget must be a positive, finite number" in capsys.readouterr().err


def test_a_budget_ratio_of_one_is_refused_by_the_api_before_any_work(work, monkeypatch):
    """--budget-ratio 1 passes the CLI's fraction type (0, 1] but asks for no pruning at all; the
    API refuses it (and both budgets at once) before the session opens."""
    from edgeprune import api
    from edgeprune.errors import UsageError
    from edgeprune.session import Session

    def opened(*args, **kwargs):
        raise AssertionError("the session was opened before the budget was checked")
    monkeypatch.setattr(Session, "open", opened)
    with pytest.raises(UsageError, match="between 0 and 1"):
        api.prune("tiny_resnet", "out", target="fake", budget_ratio=1.0)
    with pytest.raises(UsageError, match="not both"):
        api.search("tiny_resnet", 1.0, target="fake", budget_ratio=0.5)
    assert not Path("out").exists()

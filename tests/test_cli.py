"""The command line, as a user runs it: real subprocesses, JSON output, and one-line errors
(exit 2, no traceback, nothing written) for every kind of bad input."""
from __future__ import annotations

import json
import os
import shutil
import textwrap

import pytest
import yaml
from conftest import write_fake_target

from edgeprune.runtime.spec import BUILTIN_TARGETS


@pytest.fixture
def work(tmp_path):
    """An empty working directory for the command, and a targets dir holding fake.yaml."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    targets = tmp_path / "targets"
    write_fake_target(targets)
    return cwd, targets


@pytest.fixture
def fake_table_file(tiny_table, tmp_path):
    path = tmp_path / "table.json"
    shutil.copy(tiny_table.path, path)
    return path


def listing(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def assert_usage_error(result, *fragments):
    """Exit 2, exactly one stderr line 'edgeprune: error: ...' holding ``fragments``, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgeprune: error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def test_targets_lists_ort_cpu_installed(cli, work):
    cwd, _ = work
    r = cli(["targets"], cwd)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("ort-cpu"))
    assert "onnxruntime" in line and "installed" in line and "not installed" not in line


def test_targets_json_includes_env_targets(cli, work):
    cwd, targets = work
    r = cli(["targets", "--json"], cwd, env_targets=targets)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["ort-cpu"]["installed"] is True
    assert rows["ort-cpu"]["runtime"] == "onnxruntime"
    on_disk = yaml.safe_load((BUILTIN_TARGETS / "ort-cpu.yaml").read_text())["budgets_ms"]
    assert rows["ort-cpu"]["budgets_ms"] == on_disk
    assert rows["fake"]["runtime"] == "fake" and rows["fake"]["path"] == str(targets / "fake.yaml")


def test_targets_tell_an_installed_runtime_from_a_present_device(cli, work):
    """openvino-npu on a machine without an NPU: the runtime is installed, the device is not here."""
    pytest.importorskip("openvino", reason="OpenVINO not installed")
    import openvino as ov
    if any(d.startswith("NPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an NPU")
    r = cli(["targets", "--json"], work[0])
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["openvino-npu"]["installed"] is True and rows["openvino-npu"]["device_present"] is False
    assert rows["openvino-cpu"]["device_present"] is True and rows["ort-cpu"]["device_present"] is True
    line = next(l for l in cli(["targets"], work[0]).stdout.splitlines() if l.startswith("openvino-npu"))
    assert line.split()[-2:] == ["installed", "absent"]


def test_measure_model_json(cli, work):
    cwd, _ = work
    r = cli(["measure", "tiny_resnet", "--target", "ort-cpu", "--input-size", "32", "--json"], cwd)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    d = json.loads(lines[0])
    assert d["target"] == "ort-cpu"
    assert d["runs"] > 0
    assert 0 < d["median_ms"] <= d["p90_ms"]
    assert listing(cwd) == []  # measuring writes nothing


def test_measure_onnx_file(cli, work, tiny_model):
    from conftest import INPUT_SHAPE

    from edgeprune.artifacts.onnxio import export_onnx
    cwd, _ = work
    path = export_onnx(tiny_model, INPUT_SHAPE, cwd / "m.onnx")
    r = cli(["measure", "m.onnx", "--json"], cwd)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["runs"] > 0 and d["median_ms"] > 0
    assert listing(cwd) == ["m.onnx"] and path.exists()


def test_search_profiles_then_fits_budget(cli, work, tiny_table):
    cwd, _ = work
    fake_yaml = work[1] / "fake.yaml"
    budget = round(0.8 * tiny_table.predict({}), 4)
    r = cli(["search", "tiny_resnet", "--target", fake_yaml, "--budget-ms", budget, "--json",
             "--profiles-dir", "profs"], cwd)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["predicted_ms"] <= budget
    assert d["budget_ms"] == budget
    assert set(d["widths"]) == set(tiny_table.groups)
    assert all(w <= tiny_table.groups[g] for g, w in d["widths"].items())
    assert min(w / tiny_table.groups[g] for g, w in d["widths"].items()) < 1
    assert listing(cwd) == ["profs", "profs/fake", "profs/fake/tiny_resnet-32px.json"]


def test_search_with_table_and_text_output(cli, work, fake_table_file):
    cwd, targets = work
    r = cli(["search", "tiny_resnet", "--target", "fake", "--budget-ms", "0.3", "--table", fake_table_file], cwd,
            env_targets=targets)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("predicted ")
    assert "budget 0.300" in r.stdout
    assert listing(cwd) == []


def test_no_command_exits_2(cli, work):
    r = cli([], work[0])
    assert r.returncode == 2
    assert "usage" in (r.stdout + r.stderr).lower()
    assert "Traceback" not in r.stderr


# --- bad input: exit 2, one line, nothing created ------------------------------------------------

PRUNE = ["prune", "--out", "out", "--epochs", "0", "--baseline-epochs", "0", "--profiles-dir", "profs", "--calibrate", "6"]


def prune_args(model, *extra):
    return [PRUNE[0], model, *PRUNE[1:], *extra]


@pytest.fixture
def bad_targets(work):
    _, targets = work
    (targets / "broken.yaml").write_text("name: broken\nruntime: [fake\n")
    (targets / "typo.yaml").write_text("name: typo\nruntime: fake\nthread: 1\n")
    return targets


@pytest.fixture
def fixed_size_factory(tmp_path):
    """A `pkg.module:factory` model whose Linear only fits a 32 px input."""
    d = tmp_path / "pymods"
    d.mkdir()
    (d / "fixedsize.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def net(num_classes=10):
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(8 * 32 * 32, num_classes))
    """))
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(d), os.environ.get("PYTHONPATH")]))}


# Run as real processes (the exit code and stderr a user sees). The other kinds of bad input
# (budgets, YAML, runs, ...) run in-process in test_bad_input.py, 84 cases without a process each.
BAD_INPUT = {
    "unknown model": (prune_args("tiny_resnt", "--budget-ms", "1"), ["unknown model 'tiny_resnt'",
                                                                     "did you mean 'tiny_resnet'"]),
    "unknown target": (prune_args("tiny_resnet", "--target", "ort-cpi", "--budget-ms", "1"),
                       ["unknown target 'ort-cpi'", "did you mean 'ort-cpu'"]),
    "unknown key": (prune_args("tiny_resnet", "--target", "typo", "--budget-ms", "1"),
                    ["typo.yaml", "unknown key 'thread'", "did you mean 'threads'"]),
    "zero budget": (prune_args("tiny_resnet", "--budget-ms", "0"), ["positive", "0.0"]),
    "input too small": (prune_args("fixedsize:net", "--input-size", "16", "--budget-ms", "1"),
                        ["cannot take input size 16"]),
    "missing dataset": (prune_args("tiny_resnet", "--data", "fashion-mnist", "--data-root", "/nonexistent",
                                   "--budget-ms", "1"), ["/nonexistent", "apt-get install"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_leaves_nothing(cli, work, bad_targets, fixed_size_factory, case):
    cwd, targets = work
    args, fragments = BAD_INPUT[case]
    r = cli(args, cwd, env_targets=targets, extra_env=fixed_size_factory)
    assert_usage_error(r, *fragments)
    assert listing(cwd) == []  # no --out dir, no profiles dir


def test_infeasible_budget_states_the_minimum(cli, work, fake_table_file, tiny_table):
    from edgeprune.search.knapsack import SearchConfig, bounds
    cwd, targets = work
    floor_ms = tiny_table.predict(bounds(tiny_table, SearchConfig())[0])
    r = cli(prune_args("tiny_resnet", "--target", "fake", "--budget-ms", "0.01", "--table", fake_table_file),
            cwd, env_targets=targets)
    assert_usage_error(r, "infeasible", f"{floor_ms:.3f} ms")
    assert listing(cwd) == []


@pytest.mark.parametrize("content", [b"this is not protobuf", b""])
def test_corrupt_onnx_file(cli, work, content):
    cwd, _ = work
    (cwd / "bad.onnx").write_bytes(content)
    r = cli(["measure", "bad.onnx", "--json"], cwd)
    assert_usage_error(r, "bad.onnx", "not a valid ONNX model")
    assert r.stdout == ""
    assert listing(cwd) == ["bad.onnx"]


def test_corrupt_table_file(cli, work):
    cwd, targets = work
    (cwd / "t.json").write_text("[]")
    r = cli(["search", "tiny_resnet", "--target", "fake", "--budget-ms", "1", "--table", "t.json"], cwd,
            env_targets=targets)
    assert_usage_error(r, "t.json", "not a readable latency table")
    assert listing(cwd) == ["t.json"]


def test_missing_backend_names_the_install_command(monkeypatch, capsys, tmp_path):
    from edgeprune.cli import main
    from edgeprune.runtime.ort import OrtTarget
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGEPRUNE_TARGETS", raising=False)
    monkeypatch.setattr(OrtTarget, "installed", classmethod(lambda cls: False))
    assert main(["measure", "tiny_resnet", "--json"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: ")
    assert "onnxruntime is not installed" in lines[0]
    assert "pip install onnxruntime" in lines[0]
    assert captured.out == ""
    assert main(["targets"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("ort-cpu"))
    assert "not installed" in line
    assert list(tmp_path.iterdir()) == []


def test_an_internal_error_has_its_own_exit_code(monkeypatch, capsys):
    """A bug is neither bad input (2) nor a regression (1): exit 3, one line naming where,
    and the traceback on request."""
    from edgeprune import cli

    def crash(_args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_measure", crash)
    assert cli.main(["measure", "tiny_resnet"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgeprune: internal error: ZeroDivisionError: division by zero")
    assert "test_cli.py" in err[0] and "--debug" in err[0]
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "measure", "tiny_resnet"])
    monkeypatch.setenv("EDGEPRUNE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main(["measure", "tiny_resnet"])


@pytest.mark.parametrize("error", [MemoryError, TypeError])
def test_out_of_memory_or_a_bug_while_loading_is_not_bad_input(monkeypatch, capsys, tmp_path, error):
    """ORT's own errors on a bad file are bad input (2); running out of memory, or a bug of ours,
    is not (3)."""
    import onnxruntime as ort

    from edgeprune import cli

    def fails(*_a, **_k):
        raise error("boom")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ort, "InferenceSession", fails)
    assert cli.main(["measure", "tiny_resnet"]) == 3
    assert f"internal error: {error.__name__}: boom" in capsys.readouterr().err


def test_version(cli, tmp_path):
    from edgeprune import __version__
    r = cli(["--version"], tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"edgeprune {__version__}"


def test_importing_edgeprune_leaves_the_process_environment_alone(tmp_path):
    """The pytest plugin imports edgeprune in every pytest run where it is installed: it must not
    change OpenMP's wait policy there; the CLI sets it for its own process."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, edgeprune, edgeprune.pytest_plugin; print(os.environ.get('OMP_WAIT_POLICY'))"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr
    code = ("import os\nfrom edgeprune import cli\ntry:\n    cli.main(['targets', '--json'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.strip().splitlines()[-1] == "PASSIVE", r.stderr


def test_an_architecture_that_cannot_be_pruned_still_measures(cli, work):
    """shufflenet_v2's channel shuffle breaks Torch-Pruning's dependency graph: `measure` needs
    no graph and works; `prune` says in one line that this architecture cannot be pruned."""
    cwd, targets = work
    r = cli(["measure", "shufflenet_v2_x0_5", "--target", "fake", "--json"], cwd, env_targets=targets)
    assert r.returncode == 0 and json.loads(r.stdout)["median_ms"] > 0, r.stderr
    r = cli(prune_args("shufflenet_v2_x0_5", "--target", "fake", "--budget-ms", "1"), cwd, env_targets=targets)
    assert_usage_error(r, "cannot find the channel groups of this ShuffleNetV2", "measure")
    assert listing(cwd) == []


def test_an_attention_model_is_refused_at_once_naming_the_layer(cli, work):
    """swin_t: Torch-Pruning's graph recursed for over 3 minutes before this refusal existed;
    now `search` (which needs the groups) says in one line which layer it cannot cut, and
    `measure` (which needs none) works."""
    cwd, targets = work
    r = cli(["search", "swin_t", "--target", "fake", "--input-size", "32", "--budget-ms", "1"], cwd,
            env_targets=targets, timeout=120)
    assert_usage_error(r, "ShiftedWindowAttention at features.1.0.attn", "measure")
    assert listing(cwd) == []

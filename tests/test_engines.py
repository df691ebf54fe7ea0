"""Every pruning engine (Torch-Pruning, NNI) gives the same group names and channel counts, prunes
to exactly the widths of a plan, and keeps the same channels for L1 where scores do not depend
on other groups' cuts; an unknown or uninstalled engine is one clear line."""
from __future__ import annotations

import copy
import importlib.util
import json
import sys

import pytest
import torch

from edgeprune import cli
from edgeprune.errors import UsageError
from edgeprune.pruning.engine import (
    DEFAULT_ENGINE,
    PruningEngine,
    engine_names,
    get_engine,
)
from edgeprune.pruning.groups import analyse
from edgeprune.pruning.prune import prune_to_widths, widths_of
from edgeprune.training.models import build_model

SHAPE = (1, 3, 32, 32)
HAS_NNI = importlib.util.find_spec("nni") is not None
NEEDS = {"nni": pytest.mark.skipif(not HAS_NNI, reason="nni is not installed (pip install 'edgeprune[nni]')")}
ENGINES = [pytest.param(name, marks=NEEDS.get(name, ())) for name in engine_names()]


@pytest.fixture(scope="module", params=ENGINES)
def engine(request) -> PruningEngine:
    return get_engine(request.param)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_model(name, num_classes=10).eval() for name in ("tiny_resnet", "resnet18")}


def plan(model, shrink=lambda c: max(1, c // 2 - 1)):
    """Odd widths for every group: neither rounded nor NNI's own int(c * ratio)."""
    return {g: shrink(c) for g, c in analyse(model, SHAPE).full_widths().items()}


def test_registry():
    assert engine_names()[0] == DEFAULT_ENGINE == "torch-pruning" and "nni" in engine_names()
    assert get_engine().name == get_engine(None).name == "torch-pruning"
    assert isinstance(get_engine(), PruningEngine)


def test_unknown_engine_is_one_line_listing_the_known_ones():
    with pytest.raises(UsageError) as e:
        get_engine("tensorrt")
    assert str(e.value) == "unknown pruning engine 'tensorrt'; known engines: torch-pruning, nni"
    with pytest.raises(UsageError, match="unknown pruning engine"):
        prune_to_widths(build_model("tiny_resnet"), SHAPE, {}, engine="tensorrt")


def test_missing_nni_gives_install_hint(monkeypatch):
    for mod in [m for m in sys.modules if m == "nni" or m.startswith("nni.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "nni", None)  # import nni -> ImportError
    with pytest.raises(UsageError, match=r"nni is not installed for --engine nni; install it with: "
                                         r"pip install 'edgeprune\[nni\]'"):
        get_engine("nni")


@pytest.mark.parametrize("name", ["tiny_resnet", "resnet18"])
def test_same_group_names_channels_and_layers_under_every_engine(engine, models, name):
    model = models[name]
    groups = engine.groups(model, SHAPE)
    reference = get_engine("torch-pruning").groups(model, SHAPE)
    assert list(groups) == list(analyse(model, SHAPE).groups)  # edgeprune's names, in its order
    assert {g: c.channels for g, c in groups.items()} == {g: c.channels for g, c in reference.items()}
    assert {g: c.producers for g, c in groups.items()} == {g: c.producers for g, c in reference.items()}
    assert "fc" not in {p for g in groups.values() for p in g.producers}  # the logits are never pruned


def test_prune_to_a_plan_gives_exactly_its_widths_and_runs(engine, models):
    model = models["tiny_resnet"]
    widths = plan(model)  # (analysing sets eval mode)
    model.train()
    before = copy.deepcopy(model.state_dict())
    pruned = engine.prune_to_widths(model, SHAPE, widths)
    assert widths_of(pruned, SHAPE) == widths
    assert pruned(torch.rand(2, *SHAPE[1:])).shape == (2, 10)
    assert not pruned.training and model.training  # eval under every engine; the input untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    partial = engine.prune_to_widths(model.eval(), SHAPE, {"layer1.conv1": 5})  # others stay whole
    assert widths_of(partial, SHAPE) == {**analyse(model, SHAPE).full_widths(), "layer1.conv1": 5}


def test_resnet18_prunes_to_a_plan(engine, models):
    model = models["resnet18"]
    widths = plan(model, lambda c: max(1, c // 3 + 1))
    pruned = engine.prune_to_widths(model, SHAPE, widths)
    assert widths_of(pruned, SHAPE) == widths
    assert pruned.eval()(torch.rand(2, *SHAPE[1:])).shape == (2, 10)


def test_bad_widths_name_the_group(engine, models):
    model = models["tiny_resnet"]
    with pytest.raises(UsageError, match="unknown channel groups for this model: nope"):
        engine.prune_to_widths(model, SHAPE, {"nope": 3})
    with pytest.raises(UsageError, match="group conv1: width must be at least 1, got 0"):
        engine.prune_to_widths(model, SHAPE, {"conv1": 0})


@pytest.mark.skipif(not HAS_NNI, reason="nni is not installed (pip install 'edgeprune[nni]')")
@pytest.mark.parametrize("group", ["conv1", "layer1.conv1", "layer2.downsample.0"])
@pytest.mark.parametrize("importance", ["l1", "fpgm"])
def test_both_engines_keep_the_same_channels_when_one_group_is_cut(models, group, importance):
    """One group cut: both rank it on the unpruned model, so the pruned models are identical
    (a residual group included: NNI's mask reaches every conv, BN and consumer of the stream)."""
    model = models["tiny_resnet"].eval()
    widths = {group: analyse(model, SHAPE).groups[group].channels // 2 - 3}
    tp = get_engine("torch-pruning").prune_to_widths(model, SHAPE, widths, importance)
    nni = get_engine("nni").prune_to_widths(model, SHAPE, widths, importance)
    tp_params, nni_params = dict(tp.named_parameters()), dict(nni.named_parameters())
    assert tp_params.keys() == nni_params.keys()
    for k, p in tp_params.items():
        assert torch.equal(p, nni_params[k]), k
    x = torch.rand(2, *SHAPE[1:])
    torch.testing.assert_close(tp(x), nni(x))


@pytest.mark.skipif(not HAS_NNI, reason="nni is not installed (pip install 'edgeprune[nni]')")
def test_nni_prune_end_to_end(tmp_path, fake_target_file, capsys, monkeypatch):
    """`edgeprune prune --engine nni` on the fast case: NNI cuts the loop's models, the report
    names the engine, and the saved weights load into the model edgeprune rebuilds from the
    widths (what export --run does)."""
    from edgeprune import api
    from edgeprune.pruning.nni_engine import NNIEngine
    from edgeprune.training.models import load_weights
    calls, real = [], NNIEngine.prune_to_widths
    monkeypatch.setattr(NNIEngine, "prune_to_widths", lambda *a, **k: calls.append(1) or real(*a, **k))
    out, budget = tmp_path / "out", 0.7 * api.measure("tiny_resnet", str(fake_target_file), 16).median_ms
    code = cli.main(["prune", "tiny_resnet", "--target", str(fake_target_file), "--engine", "nni",
                     "--input-size", "16", "--epochs", "0", "--baseline-epochs", "1", "--objective", "importance",
                     "--profiles-dir", str(tmp_path / "profiles"), "--calibrate", "6", "--budget-ms", str(budget),
                     "--out", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["engine"] == "nni" and report["within_budget"] and calls
    assert json.loads((out / "report.json").read_text())["engine"] == "nni"
    assert json.loads((out / "run.json").read_text())["engine"] == "nni"  # the manifest says it too
    assert "| pruning engine | nni |" in (out / "report.md").read_text()
    assert any(w < c for w, c in zip(report["widths"].values(), analyse(build_model("tiny_resnet"), SHAPE)
                                     .full_widths().values()))  # NNI did cut
    rebuilt = load_weights(prune_to_widths(build_model("tiny_resnet"), (1, 3, 16, 16), report["widths"]),
                           out / "model.pt")
    assert widths_of(rebuilt, (1, 3, 16, 16)) == report["widths"]


def test_prune_with_an_unknown_engine_exits_2_with_one_line(tmp_path, capsys):
    code = cli.main(["prune", "tiny_resnet", "--engine", "tensorrt", "--budget-ms", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["edgeprune: error: unknown pruning engine 'tensorrt'; known engines: torch-pruning, nni"]
    assert not (tmp_path / "o").exists()

"""Profiling: the Latin design, attribution of runtime nodes to layers, resume, table metadata."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from conftest import INPUT_SHAPE, TINY_PROFILE

import edgeprune.latency.profile as profile_mod
from edgeprune.artifacts.onnxio import export_onnx, module_call_order
from edgeprune.latency.profile import (
    ProfileConfig,
    attribute,
    build_table,
    colour_groups,
    level_grid,
    next_prime,
)
from edgeprune.pruning.groups import analyse
from edgeprune.training.models import build_model


@pytest.fixture(scope="module")
def structures():
    return {name: analyse(build_model(name, num_classes=10), INPUT_SHAPE)
            for name in ("resnet18", "mobilenet_v2", "tiny_resnet")}


def two_axis_layers(structure):
    return [l for l in structure.layers.values() if len(l.axes) == 2]


def design_of(structure, cfg: ProfileConfig):
    """The configurations build_table measures, rebuilt the way it builds them."""
    levels = level_grid(structure, cfg)
    m = len(next(iter(levels.values())))
    colours = colour_groups(structure, m)
    design = [{g: levels[g][(i + j * colours[g]) % m] for g in levels} for j in range(m) for i in range(m)]
    return levels, m, colours, design


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "tiny_resnet"])
@pytest.mark.parametrize("m", [3, 5])
def test_colouring_separates_the_groups_of_every_layer(structures, name, m):
    s = structures[name]
    colours = colour_groups(s, m)
    assert set(colours) == set(s.groups)
    assert all(0 <= c < m for c in colours.values())
    layers = two_axis_layers(s)
    assert layers
    for layer in layers:
        a, b = layer.axes
        assert colours[a] != colours[b], layer.name


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "tiny_resnet"])
@pytest.mark.parametrize("levels", [3, 5])
def test_latin_design_covers_every_level_pair(structures, name, levels):
    s = structures[name]
    grid, m, colours, design = design_of(s, ProfileConfig(levels=levels))
    assert m == next_prime(levels) and len(design) == m * m
    for g, vals in grid.items():
        assert len(vals) == m and vals[-1] == s.groups[g].channels
        assert vals == sorted(vals) and all(v % 8 == 0 or v == s.groups[g].channels for v in vals)
    for layer in two_axis_layers(s):
        a, b = layer.axes
        # in index space every (in level, out level) pair appears exactly once ...
        idx = [((i + j * colours[a]) % m, (i + j * colours[b]) % m) for j in range(m) for i in range(m)]
        assert sorted(idx) == sorted(itertools.product(range(m), range(m))), layer.name
        # ... so every pair of widths the table's grid holds is measured
        seen = {(w[a], w[b]) for w in design}
        assert seen == set(itertools.product(grid[a], grid[b])), layer.name
    for layer in s.layers.values():  # one-axis layers see every level too
        if len(layer.axes) == 1:
            assert {w[layer.axes[0]] for w in design} == set(grid[layer.axes[0]])


def test_next_prime():
    assert [next_prime(n) for n in (1, 2, 3, 4, 5, 6, 8, 10)] == [2, 2, 3, 5, 5, 7, 11, 11]


def test_attribute_real_ort_profile_of_tiny_resnet(tiny_model, tmp_path):
    from edgeprune.runtime import get_target
    target = get_target("ort-cpu")
    path = export_onnx(tiny_model, INPUT_SHAPE, tmp_path / "m.onnx")
    times = target.layer_times(path, runs=3)
    assert times and all(t.ms >= 0 for t in times)
    order = module_call_order(tiny_model, INPUT_SHAPE)
    per_layer, overhead = attribute(onnx.load(str(path)), order, times)
    modules = {n for n, m in tiny_model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(per_layer) == modules
    assert all(ms > 0 for ms in per_layer.values()), per_layer
    assert overhead >= 0
    assert sum(per_layer.values()) + overhead == pytest.approx(sum(t.ms for t in times), rel=1e-9)


@pytest.fixture
def counting(monkeypatch):
    """Wrap profile.profile_config: count calls, record widths, optionally interrupt."""
    real = profile_mod.profile_config

    class Wrapper:
        calls = 0
        widths: list = []
        interrupt_at = None

        def __call__(self, *args, **kwargs):
            self.calls += 1
            if self.calls == self.interrupt_at:
                raise KeyboardInterrupt
            self.widths.append(dict(args[2]))
            return real(*args, **kwargs)

    w = Wrapper()
    w.widths = []
    monkeypatch.setattr(profile_mod, "profile_config", w)
    return w


def test_resume_after_interrupt(tiny_model, fake_target, tmp_path, counting):
    out = tmp_path / "t.json"
    partial = tmp_path / "t.partial.json"
    cfg = ProfileConfig(**TINY_PROFILE)
    counting.interrupt_at = 4
    with pytest.raises(KeyboardInterrupt):
        build_table(tiny_model, fake_target, INPUT_SHAPE, out, "tiny_resnet", cfg)
    assert not out.exists()
    assert partial.exists()
    saved = json.loads(partial.read_text())["samples"]
    assert sorted(saved) == ["0", "1", "2"]
    first = list(counting.widths)

    counting.calls, counting.interrupt_at, counting.widths = 0, None, []
    table = build_table(tiny_model, fake_target, INPUT_SHAPE, out, "tiny_resnet", cfg)
    m = next_prime(cfg.levels)
    assert counting.calls == m * m - 3  # only the configurations not measured before
    assert first + counting.widths == design_of(analyse(tiny_model, INPUT_SHAPE), cfg)[3]
    assert out.exists() and not partial.exists()
    assert table.error.n == cfg.validate
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_partial_from_other_conditions_is_ignored(tiny_model, fake_target, tmp_path, counting):
    out = tmp_path / "t.json"
    partial = tmp_path / "t.partial.json"
    partial.write_text(json.dumps({"key": "something-else", "samples": {"0": {"bogus": 1}}}))
    cfg = ProfileConfig(**TINY_PROFILE)
    build_table(tiny_model, fake_target, INPUT_SHAPE, out, "tiny_resnet", cfg)
    assert counting.calls == next_prime(cfg.levels) ** 2
    assert not partial.exists()


def test_rebuild_is_deterministic_on_the_fake_target(tiny_table, tiny_model, fake_target, tmp_path):
    again = build_table(tiny_model, fake_target, INPUT_SHAPE, tmp_path / "t.json", "tiny_resnet",
                        ProfileConfig(**TINY_PROFILE))
    assert again.layers == tiny_table.layers
    assert again.calibration == tiny_table.calibration


def test_build_table_without_validation(tiny_model, fake_target, tmp_path):
    # `edgeprune profile --validate 0` is accepted by the CLI: the table must still be written
    table = build_table(tiny_model, fake_target, INPUT_SHAPE, tmp_path / "t.json", "tiny_resnet",
                        ProfileConfig(levels=3, runs=1, validate=0, calibrate=4, progress=False))
    assert table.error.n == 0
    assert (tmp_path / "t.json").exists()
    assert math.isfinite(table.predict({}))


def test_build_table_with_a_group_no_wider_than_round_to(fake_target, tmp_path):
    # an 8-channel group cannot have distinct levels on the 8-channel lattice
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    table = build_table(net, fake_target, INPUT_SHAPE, tmp_path / "t.json", "net",
                        ProfileConfig(levels=3, runs=1, validate=2, calibrate=4, progress=False))
    assert math.isfinite(table.predict({}))
    assert math.isfinite(table.predict({"2": 16}))
    assert table.predict({"2": 16}) < table.predict({})


def test_ort_table_records_measurement_conditions(tiny_model, tmp_path):
    import onnxruntime

    from edgeprune.runtime import get_target
    target = get_target("ort-cpu")
    table = build_table(tiny_model, target, INPUT_SHAPE, tmp_path / "t.json", "tiny_resnet",
                        ProfileConfig(levels=3, runs=2, validate=2, calibrate=8, progress=False))
    meta = table.meta
    assert meta["runtime"] == "onnxruntime"
    assert meta["runtime_version"] == onnxruntime.__version__
    assert meta["threads"] == 1
    assert isinstance(meta["host_cpu"], str) and meta["host_cpu"]
    assert meta["model_signature"] == analyse(tiny_model, INPUT_SHAPE).signature
    assert meta["input_shape"] == list(INPUT_SHAPE)
    assert meta["target"] == "ort-cpu" and meta["model"] == "tiny_resnet"
    assert meta["design_configs"] == 9
    assert table.scale > 0
    assert all(math.isfinite(v) for v in (table.predict({}), table.error.rmspe))
    # the full model's prediction is in the range of what was measured end to end
    assert 0 < table.predict({}) < 100
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["meta"]["runtime_version"] == onnxruntime.__version__


def test_smooth_is_exact_on_a_bilinear_grid_and_pools_noise():
    from edgeprune.latency.profile import smooth
    levels = [[8, 16, 24, 32, 40], [16, 32, 48, 64, 80]]
    ci, co = np.meshgrid(*[np.asarray(l, float) for l in levels], indexing="ij")
    truth = 0.01 + 1e-4 * ci * co + 2e-4 * co
    assert np.allclose(smooth(levels, truth), truth)
    noisy = truth * (1 + np.random.default_rng(0).normal(0, 0.1, truth.shape))
    assert np.abs(smooth(levels, noisy) - truth).mean() < np.abs(noisy - truth).mean()
    line = np.array([1.0, 2.0, 4.0])
    assert np.allclose(smooth([[8, 16, 24]], line), line)  # three points: the quadratic is exact

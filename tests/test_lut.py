"""LatencyTable: interpolation, file round trip and checks, and prediction quality on the fake target."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import INPUT_SHAPE

from edgeprune.errors import UsageError
from edgeprune.latency.calibration import Calibration
from edgeprune.latency.profile import ProfileConfig, random_widths
from edgeprune.latency.table import LatencyTable, LayerEntry, TableError, interpolate
from edgeprune.pruning.groups import analyse
from edgeprune.pruning.prune import prune_to_widths
from edgeprune.search.loop import measure_model
from edgeprune.training.models import build_model

GRID_1D = [[8, 16, 32]]
VALUES_1D = np.array([1.0, 3.0, 4.0])
GRID_2D = [[8, 16], [8, 24]]
VALUES_2D = np.array([[1.0, 2.0], [3.0, 5.0]])


# --- interpolation ------------------------------------------------------------------------------

def test_interpolate_zero_axes_is_the_constant():
    assert interpolate([], np.array(2.5), []) == 2.5


@pytest.mark.parametrize("x, expected", [(8, 1.0), (16, 3.0), (32, 4.0)])
def test_interpolate_exact_at_grid_points_1d(x, expected):
    assert interpolate(GRID_1D, VALUES_1D, [x]) == pytest.approx(expected)


@pytest.mark.parametrize("x, expected", [(12, 2.0), (10, 1.5), (24, 3.5), (20, 3.25)])
def test_interpolate_linear_between_1d(x, expected):
    assert interpolate(GRID_1D, VALUES_1D, [x]) == pytest.approx(expected)


@pytest.mark.parametrize("x, expected", [
    (40, 4.5),   # extends the last cell's slope (1/16 ms per channel)
    (6, 0.5),    # extends the first cell's slope (1/4 ms per channel) downwards
    (4, 0.0),    # ... and is clamped at zero, never negative
    (1, 0.0),
])
def test_interpolate_outside_is_extended_and_clamped(x, expected):
    assert interpolate(GRID_1D, VALUES_1D, [x]) == pytest.approx(expected)


@pytest.mark.parametrize("point, expected", [
    ((8, 8), 1.0), ((16, 24), 5.0), ((8, 24), 2.0), ((16, 8), 3.0),  # corners
    ((12, 8), 2.0), ((8, 16), 1.5), ((12, 16), 2.75),                # edges and centre
])
def test_interpolate_bilinear_2d(point, expected):
    assert interpolate(GRID_2D, VALUES_2D, list(point)) == pytest.approx(expected)


def test_interpolate_single_level_axis_is_constant_along_it():
    assert interpolate([[16]], np.array([2.0]), [8]) == 2.0
    assert interpolate([[16], [8, 16]], np.array([[1.0, 3.0]]), [4, 12]) == pytest.approx(2.0)


def test_interpolate_repeated_levels_is_finite():
    # level_grid repeats a width when a group has too few channels for distinct levels
    # (every level of an 8-channel group is 8); interpolating there must not divide by zero
    v = interpolate([[8, 8, 8]], np.array([2.0, 2.0, 2.0]), [8])
    assert math.isfinite(v) and v == pytest.approx(2.0)
    v = interpolate([[8, 8, 16]], np.array([2.0, 2.0, 4.0]), [8])
    assert math.isfinite(v) and v == pytest.approx(2.0)


# --- a hand-made table ---------------------------------------------------------------------------

def small_table(**meta) -> LatencyTable:
    meta = {"runtime": "fake", "runtime_version": "fake-1", "threads": 1, "device": "cpu",
            "model_signature": "abc", "input_shape": [1, 3, 32, 32], **meta}
    layers = {
        "stem": LayerEntry(["a"], [[8, 16]], [0.1, 0.2]),
        "mid": LayerEntry(["a", "b"], [[8, 16], [8, 32]], [[0.2, 0.5], [0.4, 1.0]]),
        "head": LayerEntry([], [], 0.05),
    }
    return LatencyTable(meta, {"a": 16, "b": 32}, layers, overhead_ms=0.01, calibration=Calibration(scale=2.0, offset_ms=0.1),
                        error=TableError.from_pairs([1.0, 2.0], [1.05, 2.0]))


def test_predict_is_calibrated_sum_of_layers():
    t = small_table()
    assert t.raw({"a": 16, "b": 32}) == pytest.approx(0.01 + 0.2 + 1.0 + 0.05)
    assert t.predict({}) == pytest.approx(2.0 * 1.26 + 0.1)  # missing groups are full width
    assert t.predict({"a": 8, "b": 8}) == pytest.approx(2.0 * (0.01 + 0.1 + 0.2 + 0.05) + 0.1)
    assert t.layer_ms({"a": 8}) == pytest.approx({"stem": 0.2, "mid": 2 * 0.5, "head": 0.1})
    assert {id(e) for e in t.entries_touching("a")} == {id(t.layers["stem"]), id(t.layers["mid"])}


def test_table_error_from_pairs():
    e = TableError.from_pairs([1.0, 2.0, 3.0], [1.0, 2.5, 3.0], [{"a": 1}, {"a": 2}, {"a": 3}])
    assert e.n == 3
    assert e.within_10pct == pytest.approx(2 / 3)
    assert e.max_abs_pct == pytest.approx(0.2)
    assert e.samples[1] == {"predicted_ms": 2.0, "measured_ms": 2.5, "widths": {"a": 2}}


def test_round_trip_is_atomic_and_digest_stable(tmp_path):
    t = small_table()
    t.calibration = Calibration(2.0, 0.1, 16, {"a": -0.05}, {"b": 0.02}, ridge=1.0, loo_rmspe=0.03)
    out = tmp_path / "sub" / "t.json"
    assert t.save(out) == out and t.path == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["t.json"]  # no temp file left
    loaded = LatencyTable.load(out)
    assert loaded.to_dict() == t.to_dict()
    assert loaded.calibration == t.calibration
    assert loaded.digest == t.digest
    assert loaded.path == out
    assert loaded.predict({"a": 12, "b": 20}) == pytest.approx(t.predict({"a": 12, "b": 20}))
    loaded.save(out)  # saving again gives the same bytes' digest
    assert LatencyTable.load(out).digest == t.digest


def test_digest_changes_with_content():
    a, b = small_table(), small_table()
    b.layers["stem"].ms = [0.1, 0.3]
    assert a.digest != b.digest


def test_load_refuses_mismatching_conditions(tmp_path):
    path = small_table().save(tmp_path / "t.json")
    with pytest.raises(UsageError) as info:
        LatencyTable.load(path, expect={"threads": 4, "runtime": "fake"})
    msg = str(info.value)
    assert "threads" in msg and "4" in msg and str(path) in msg
    assert "runtime" not in msg.split("(", 1)[1]  # only the differing key is named
    ok = LatencyTable.load(path, expect={"threads": 4}, allow_mismatch=True)
    assert ok.meta["threads"] == 1
    # keys the table does not record, and keys outside the match list, are not compared
    assert LatencyTable.load(path, expect={"host_cpu": "other", "model": "x", "threads": 1})


def test_load_refuses_other_model_signature(tmp_path):
    path = small_table().save(tmp_path / "t.json")
    with pytest.raises(UsageError, match="model_signature"):
        LatencyTable.load(path, expect={"model_signature": "def"})


@pytest.mark.parametrize("text", ["{not json", "", "[]", '{"schema": 1}'])
def test_corrupt_file_is_a_usage_error(tmp_path, text):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(UsageError, match="not a readable latency table"):
        LatencyTable.load(path)


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        LatencyTable.load(tmp_path / "none.json")


def test_wrong_schema_is_a_usage_error(tmp_path):
    d = small_table().to_dict()
    d["schema"] = 99
    path = tmp_path / "t.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UsageError, match="schema 99"):
        LatencyTable.load(path)


# --- a fake-target table -----------------------------------------------------------------------

def test_fake_table_records_its_conditions(tiny_table):
    model = build_model("tiny_resnet", num_classes=10)
    s = analyse(model, INPUT_SHAPE)
    assert tiny_table.groups == s.full_widths()
    assert set(tiny_table.layers) == set(s.layers)
    assert tiny_table.meta["runtime"] == "fake"
    assert tiny_table.meta["model_signature"] == s.signature
    assert tiny_table.meta["input_shape"] == list(INPUT_SHAPE)
    assert tiny_table.error.n == 3
    assert tiny_table.path is not None and tiny_table.path.exists()
    assert not tiny_table.path.with_name(tiny_table.path.stem + ".partial.json").exists()


def test_fake_table_predicts_random_configurations(tiny_table, fake_target):
    assert tiny_table.error.within_10pct >= 0.9
    model = build_model("tiny_resnet", num_classes=10).eval()
    s = analyse(model, INPUT_SHAPE)
    rng = np.random.default_rng(123)
    cfg = ProfileConfig(min_ratio=0.25)
    rel = []
    for _ in range(6):
        widths = random_widths(s, cfg, rng)
        measured = measure_model(prune_to_widths(model, INPUT_SHAPE, widths), INPUT_SHAPE, fake_target).median_ms
        rel.append(abs(tiny_table.predict(widths) - measured) / measured)
    assert np.mean(np.array(rel) <= 0.10) >= 0.9, rel


def test_fake_table_predicts_the_unpruned_model(tiny_table, fake_target):
    model = build_model("tiny_resnet", num_classes=10).eval()
    measured = measure_model(model, INPUT_SHAPE, fake_target).median_ms
    assert tiny_table.predict(tiny_table.groups) == pytest.approx(measured, rel=0.10)
    assert tiny_table.predict({g: 8 for g in tiny_table.groups}) < tiny_table.predict({})


def test_saved_files_honour_the_umask(tmp_path, tiny_model):
    # atomic writes go through a temp file; the final file must get the usual permissions
    # (0644 under umask 022), not mkstemp's private 0600, so shared profiles/ and deployed
    # artifacts stay readable by other users and services
    import os

    from edgeprune.artifacts.onnxio import export_onnx
    old = os.umask(0o022)
    try:
        table = small_table().save(tmp_path / "t.json")
        onnx_file = export_onnx(tiny_model, INPUT_SHAPE, tmp_path / "m.onnx")
    finally:
        os.umask(old)
    assert oct(table.stat().st_mode & 0o777) == oct(0o644)
    assert oct(onnx_file.stat().st_mode & 0o777) == oct(0o644)


def test_table_knows_the_weight_size_at_any_widths(resnet18_setup, tmp_path):
    import torch.nn as nn
    from conftest import INPUT_SHAPE

    from edgeprune.pruning.prune import prune_to_widths
    model, table, _ = resnet18_setup

    def conv_linear_mb(m):
        return 4 * sum(x.weight.numel() for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear))) / 1e6

    assert table.weight_mb(table.groups) == pytest.approx(conv_linear_mb(model))
    half = {g: c // 2 for g, c in table.groups.items()}
    assert table.weight_mb(half) == pytest.approx(conv_linear_mb(prune_to_widths(model, INPUT_SHAPE, half)))
    again = LatencyTable.load(table.save(tmp_path / "t.json"))
    assert again.weights == table.weights and again.predict(half) == pytest.approx(table.predict(half))

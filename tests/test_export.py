import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from edgeprune.artifacts import export
from edgeprune.artifacts.export import (
    KINDS,
    check_onnx,
    export_artifact,
    read_metadata,
    resolve_kind,
)
from edgeprune.errors import EdgepruneError, UsageError


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_kinds_table_describes_each_kind():
    assert {"onnx", "ort", "openvino", "tensorrt"} <= set(KINDS)
    assert KINDS["onnx"].suffix == ".onnx"
    assert KINDS["ort"].suffix == ".ort"
    assert KINDS["openvino"].suffix == ".xml" and set(KINDS["openvino"].aliases) >= {"ir", "openvino_ir"}
    assert KINDS["tensorrt"].needs_gpu and set(KINDS["tensorrt"].aliases) >= {"trt", "plan"}
    assert KINDS["tensorrt-engine"].suffix == ".engine" and "engine" in KINDS["tensorrt-engine"].aliases


@pytest.mark.parametrize("name, expected", [
    ("onnx", "onnx"), ("ONNX", "onnx"), ("IR", "openvino"), ("openvino_ir", "openvino"),
    ("trt", "tensorrt"), ("Engine", "tensorrt-engine"), ("trt-fp16", "tensorrt-fp16"), ("ort", "ort"),
])
def test_resolve_kind_by_name_or_alias(name, expected):
    assert resolve_kind(name).name == expected


def test_unknown_kind_suggests_a_close_name():
    with pytest.raises(UsageError, match="unknown export format 'openvino-ir'.*did you mean 'openvino_ir'"):
        resolve_kind("openvino-ir")
    with pytest.raises(UsageError, match="known: .*onnx"):
        resolve_kind("zzz")


def test_tiny_model_exports_with_metadata(tmp_path):
    model = tiny_model()
    meta = {"budget_ms": 3.5, "widths": {"g0": 8}, "lut_hash": "abc123"}
    res = export_artifact(model, "onnx", tmp_path / "tiny.onnx", (1, 3, 16, 16), metadata=meta)
    assert res.path == tmp_path / "tiny.onnx" and res.path.is_file()
    assert res.kind == "onnx" and res.ok
    assert res.size_bytes == res.path.stat().st_size > 0
    assert res.max_abs_diff < 1e-4
    got = read_metadata(res.path)
    assert got["lut_hash"] == "abc123"
    assert got["budget_ms"] == "3.5"
    assert got["widths"] == '{"g0": 8}'
    assert got["edgeprune_version"]
    assert leftovers(tmp_path, {"tiny.onnx"}) == []
    assert model.training  # the caller's mode is restored


def test_resnet18_exports_and_matches(tmp_path):
    model = torchvision.models.resnet18(num_classes=10)
    res = export_artifact(model, "onnx", tmp_path / "r18.onnx", (1, 3, 32, 32), metadata={"k": "v"})
    assert res.max_abs_diff < 1e-3 and res.max_rel_diff < float("inf")
    assert read_metadata(res.path)["k"] == "v"
    check_onnx(res.path)


def test_mismatch_raises_and_leaves_no_file(tmp_path, monkeypatch):
    real = export._torch_outputs
    monkeypatch.setattr(export, "_torch_outputs", lambda m, x: [a + 0.5 for a in real(m, x)])
    target = tmp_path / "bad.onnx"
    with pytest.raises(EdgepruneError, match="does not match PyTorch: max abs diff 0.5"):
        export_artifact(tiny_model(), "onnx", target, (1, 3, 16, 16))
    assert not target.exists()
    assert leftovers(tmp_path, set()) == []


def test_existing_file_is_untouched_when_validation_fails(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    export_artifact(tiny_model(), "onnx", target, (1, 3, 16, 16), metadata={"round": 1})
    before = target.read_bytes()
    monkeypatch.setattr(export, "_torch_outputs", lambda m, x: [np.zeros((1, 10), np.float32)])
    with pytest.raises(EdgepruneError):
        export_artifact(tiny_model(), "onnx", target, (1, 3, 16, 16), metadata={"round": 2})
    assert target.read_bytes() == before
    assert leftovers(tmp_path, {"model.onnx"}) == []


def test_a_kind_without_its_package_is_one_install_hint_and_writes_nothing(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else real(name, *a))
    with pytest.raises(UsageError, match=r"tensorrt is not installed for export format tensorrt; "
                                         r"install it with: pip install 'edgeprune\[tensorrt\]'"):
        export_artifact(tiny_model(), "trt", tmp_path / "m.plan", (1, 3, 16, 16))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [None, b"", b"not a model\x00\x01\x02"])
def test_missing_or_corrupt_onnx_is_a_usage_error(tmp_path, content):
    path = tmp_path / "broken.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=r"broken\.onnx is not a valid ONNX model: ") as info:
        check_onnx(path)
    assert "\n" not in str(info.value)


def test_ort_format_round_trips(tmp_path):
    import onnxruntime as ort

    model = tiny_model()
    res = export_artifact(model, "ort", tmp_path / "tiny.ort", (1, 3, 16, 16), metadata={"budget_ms": 2})
    assert res.kind == "ort" and res.max_abs_diff < 1e-4
    assert res.path.read_bytes()[4:8] == b"ORTM"
    assert read_metadata(res.path)["budget_ms"] == "2"
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want = model.eval()(x).numpy()
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], want,
                               atol=1e-4, rtol=1e-3)
    assert leftovers(tmp_path, {"tiny.ort"}) == []


def test_output_shape_mismatch_is_reported_as_such(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_torch_outputs", lambda m, x: [np.zeros((1, 7), np.float32)])
    with pytest.raises(EdgepruneError, match=r"output shapes \[\(1, 10\)\] differ from PyTorch's \[\(1, 7\)\]"):
        export_artifact(tiny_model(), "onnx", tmp_path / "m.onnx", (1, 3, 16, 16))
    assert list(tmp_path.iterdir()) == []

"""ONNX Runtime Mobile target: the ORT-format graph (no NCHWc), XNNPACK where this onnxruntime
has it, else the CPU provider with a stated fallback; options validated."""
from __future__ import annotations

import json

import onnxruntime
import pytest
from conftest import INPUT_SHAPE, run_cli

from edgeprune.errors import UsageError
from edgeprune.runtime import get_target
from edgeprune.runtime.ort import to_ort_format
from edgeprune.runtime.spec import TargetSpec, load_spec

HAS_XNNPACK = "XnnpackExecutionProvider" in onnxruntime.get_available_providers()


def mobile_spec(**options) -> TargetSpec:
    return TargetSpec(name="m", runtime="onnxruntime", device="xnnpack", options=options)


@pytest.fixture
def tiny_onnx(tiny_model, tmp_path):
    from edgeprune.artifacts.onnxio import export_onnx
    return export_onnx(tiny_model, INPUT_SHAPE, tmp_path / "tiny.onnx")


def test_shipped_file_measures_the_ort_format_graph(capsys):
    target = get_target("ort-mobile")
    fp = target.fingerprint()
    assert fp["model_format"] == "ort"
    assert fp["provider"] == ("XnnpackExecutionProvider" if HAS_XNNPACK else "CPUExecutionProvider")
    if not HAS_XNNPACK:
        assert "no XnnpackExecutionProvider" in capsys.readouterr().err


def test_each_target_names_the_format_it_deploys():
    assert get_target("ort-cpu").artifact_kind() == "onnx"
    assert get_target("ort-mobile").artifact_kind() == "ort"


def test_without_fallback_a_missing_provider_is_one_clear_error():
    if HAS_XNNPACK:
        pytest.skip("this onnxruntime has XNNPACK: nothing is missing")
    with pytest.raises(UsageError, match="no XnnpackExecutionProvider.*available: .*CPUExecutionProvider"):
        get_target(mobile_spec()).fingerprint()


@pytest.mark.parametrize("options, fragment", [
    ({"fromat": "ort"}, "did you mean 'format'"),
    ({"format": "tflite"}, "format must be one of onnx, ort"),
    ({"fallback": "gpu"}, "fallback must be one of"),
])
def test_bad_options_are_rejected_naming_the_key(options, fragment):
    with pytest.raises(UsageError, match=fragment):
        get_target(mobile_spec(**options))


def test_measures_the_converted_model_and_leaves_nothing_beside_it(tiny_onnx):
    target = get_target(mobile_spec(format="ort", fallback="cpu"))
    before = sorted(p.name for p in tiny_onnx.parent.iterdir())
    lat = target.measure(tiny_onnx, load_spec("ort-mobile").timing.model_copy(update={"windows": 1, "min_time_s": 0.05}))
    assert lat.median_ms > 0
    assert sorted(p.name for p in tiny_onnx.parent.iterdir()) == before


def nchwc_nodes(onnx_path, tmp_path, disabled=()) -> list[str]:
    """Nodes of ORT's optimised graph that use the x86-only NCHWc layouts."""
    import onnx
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))
    graph = onnx.load(str(tmp_path / "optimised.onnx")).graph
    return [n.op_type for n in graph.node if n.domain == "com.microsoft.nchwc" or n.op_type.startswith("Reorder")]


def test_ort_format_graph_is_the_portable_one(tiny_onnx, tmp_path):
    # the reason this target exists: ort-cpu measures an x86 NCHWc graph a phone never runs
    assert nchwc_nodes(tiny_onnx, tmp_path)
    assert not nchwc_nodes(tiny_onnx, tmp_path, ["NchwcTransformer"])  # what to_ort_format keeps
    ort_file = to_ort_format(tiny_onnx, tmp_path / "m.ort")
    assert ort_file.read_bytes()[4:8] == b"ORTM"
    import onnxruntime as ort
    session = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == list(INPUT_SHAPE)


def test_layer_times_map_to_modules(tiny_model, tiny_onnx):
    import onnx

    from edgeprune.artifacts.onnxio import module_call_order
    from edgeprune.latency.profile import attribute
    target = get_target(mobile_spec(format="ort", fallback="cpu"))
    times = target.layer_times(tiny_onnx, runs=3)
    assert times and not any("Nchwc" in t.op or "Reorder" in t.op for t in times)
    per_layer, overhead = attribute(onnx.load(str(tiny_onnx)), module_call_order(tiny_model, INPUT_SHAPE), times)
    assert sum(per_layer.values()) >= 0.9 * (sum(per_layer.values()) + overhead)


def test_profile_cli_on_ort_mobile(tmp_path):
    r = run_cli(["profile", "tiny_resnet", "--target", "ort-mobile", "--input-size", "32", "--levels", "3",
                 "--runs", "2", "--calibrate", "4", "--validate", "2", "--out", tmp_path / "t.json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "t.json").read_text())["meta"]
    assert meta["model_format"] == "ort" and meta["target"] == "ort-mobile"

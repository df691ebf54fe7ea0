"""The openvino runtime on OpenVINO's real CPU plugin: compile and run, the configuration it
runs under, per-layer times from its performance counters mapped back to modules, absent
devices refused in one line, and OpenVINO IR export (FP32 and FP16) validated against PyTorch."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

ov = pytest.importorskip("openvino", reason="the openvino package is not installed (pip install 'edgeprune[openvino]')")

from conftest import INPUT_SHAPE, TARGETS_DIR  # noqa: E402
from test_export import tiny_model  # noqa: E402

from edgeprune.artifacts import export  # noqa: E402
from edgeprune.artifacts.export import export_artifact, read_metadata, resolve_kind  # noqa: E402
from edgeprune.artifacts.onnxio import export_onnx, module_call_order  # noqa: E402
from edgeprune.errors import EdgepruneError, UsageError  # noqa: E402
from edgeprune.latency.profile import attribute  # noqa: E402
from edgeprune.runtime import get_target  # noqa: E402
from edgeprune.runtime.openvino import (  # noqa: E402
    OpenVinoTarget,
    device_available,
    onnx_names,
    physical_devices,
)
from edgeprune.runtime.spec import TargetSpec, load_spec  # noqa: E402

pytestmark = pytest.mark.openvino


@pytest.fixture(scope="module")
def target():
    return get_target("openvino-cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tiny_resnet, its ONNX file, its Conv/Linear call order) at 32 px."""
    from edgeprune.training.models import build_model
    torch.manual_seed(0)
    model = build_model("tiny_resnet", num_classes=10).eval()
    path = export_onnx(model, INPUT_SHAPE, tmp_path_factory.mktemp("ov") / "tiny.onnx")
    return model, path, module_call_order(model, INPUT_SHAPE)


def spec(device: str, **kw) -> TargetSpec:
    return TargetSpec(name="ov-test", runtime="openvino", device=device, **kw)


def test_module_imports_the_real_openvino_not_itself():
    import edgeprune.runtime.openvino as mine
    assert ov.__file__ != mine.__file__
    assert hasattr(ov, "Core") and hasattr(ov, "convert_model")


def test_runtime_version_and_fingerprint(target):
    assert target.runtime_version() == ov.__version__
    fp = target.fingerprint()
    assert fp["runtime"] == "openvino" and fp["runtime_version"] == ov.__version__
    assert (fp["device"], fp["threads"], fp["precision"]) == ("CPU", 1, "fp32")
    assert fp["device_name"] == ov.Core().get_property("CPU", "FULL_DEVICE_NAME")


def test_compiled_model_runs_one_thread_one_stream_fp32_without_counters(target, tiny):
    model, path, _ = tiny
    compiled = target.compile(path)
    props = compiled.compiled_model
    assert int(props.get_property("INFERENCE_NUM_THREADS")) == 1
    assert int(props.get_property("NUM_STREAMS")) == 1
    assert str(props.get_property("PERFORMANCE_HINT")) == "LATENCY"
    assert props.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert str(props.get_property("PERF_COUNT")) in ("NO", "False")
    assert compiled.example.shape == INPUT_SHAPE
    x = np.random.default_rng(1).standard_normal(INPUT_SHAPE).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    # FP32 inference precision: BF16 (OpenVINO's CPU default where the CPU has it) misses 1e-4
    np.testing.assert_allclose(compiled.run(x), want, atol=1e-4, rtol=1e-3)
    compiled.run_once()


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs at least two CPUs")
def test_inference_keeps_the_measuring_threads_pinning(target, tiny):
    # OpenVINO's own CPU pinning re-pinned the calling thread on every inference, undoing
    # timing.pinned (two measuring processes then shared one CPU and read 4x slow)
    import os

    from edgeprune.runtime.cpus import pinned
    compiled = target.compile(tiny[1])
    assert str(compiled.compiled_model.get_property("ENABLE_CPU_PINNING")) in ("False", "NO")
    with pinned(1):
        mine = os.sched_getaffinity(0)
        for _ in range(3):
            compiled.run_once()
        assert os.sched_getaffinity(0) == mine and len(mine) == 1


def test_measure_gives_a_latency(target, tiny):
    lat = target.measure(tiny[1])
    assert 0 < lat.min_ms <= lat.median_ms <= lat.p90_ms
    assert lat.runs >= 30


def test_layer_times_land_on_modules(target, tiny):
    """At least 90% of the profiled time is on nodes named after ONNX nodes or tensors, and
    attribute() gives at least 90% of it to the model's own layers, every conv included."""
    _, path, order = tiny
    times = target.layer_times(path, runs=5)
    graph = onnx.load(str(path))
    total = sum(t.ms for t in times)
    assert total > 0 and all(t.ms >= 0 for t in times)
    named = sum(t.ms for t in times if t.name in onnx_names(graph))
    assert named >= 0.9 * total, [(t.name, t.ms) for t in times]
    per_layer, overhead = attribute(graph, order, times)
    assert sum(per_layer.values()) >= 0.9 * total
    assert overhead <= 0.1 * total
    assert set(per_layer) == set(order)
    assert all(per_layer[m] > 0 for m in order if "conv" in m), per_layer


def test_layer_times_through_hetero_cpu(tiny):
    """HETERO (the FPGA target's plugin) prefixes node names with 'subgraphN: '; they still map."""
    _, path, _ = tiny
    times = get_target(spec("HETERO:CPU")).layer_times(path, runs=2)
    names = onnx_names(onnx.load(str(path)))
    assert times and all(t.name in names for t in times if t.op == "Convolution")


@pytest.mark.parametrize("device", ["cpu", "AUTO:CPU", "MULTI:CPU", "HETERO:CPU", "AUTO"])
def test_available_device_strings_compile_and_run(device, tiny):
    model, path, _ = tiny
    compiled = get_target(spec(device)).compile(path)
    with torch.no_grad():
        want = model(torch.from_numpy(compiled.example)).numpy()
    np.testing.assert_allclose(compiled.run(compiled.example), want, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("device", ["GPU", "NPU", "HETERO:FPGA,CPU", "GPU.7", "MULTI:CPU,GPU.7", "FPGA"])
def test_absent_device_is_one_clear_line(device):
    available = ov.Core().available_devices
    absent = [d for d in physical_devices(device) if not device_available(d, available)]
    if not absent:  # a machine that has this device: the target builds
        assert isinstance(get_target(spec(device)), OpenVinoTarget)
        return
    with pytest.raises(UsageError) as info:
        get_target(spec(device))
    msg = str(info.value)
    assert msg.startswith(f"openvino device {absent[0]!r}")
    assert msg.endswith(f"is not available here; OpenVINO sees: {', '.join(available)}")
    assert "\n" not in msg


@pytest.mark.parametrize("name", ["openvino-gpu", "openvino-npu", "openvino-fpga"])
def test_cli_refuses_an_absent_device_before_any_work(name, cli, tmp_path):
    devices = physical_devices(load_spec(name).device)
    available = ov.Core().available_devices
    absent = [d for d in devices if not device_available(d, available)]
    if not absent:  # a machine that has this device: the target builds
        assert isinstance(get_target(name), OpenVinoTarget)
        return
    out = tmp_path / "run"
    r = cli(["prune", "tiny_resnet", "--target", name, "--budget-ms", "1", "--out", out,
             "--profiles-dir", tmp_path / "profiles"], cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"edgeprune: error: openvino device {absent[0]!r}")
    assert f"OpenVINO sees: {', '.join(available)}" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_corrupt_model_is_a_usage_error(target, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model\x00\x01")
    with pytest.raises(UsageError, match="openvino cannot load .*bad.onnx: ") as info:
        target.compile(bad)
    assert "\n" not in str(info.value)


def test_target_options_reach_the_compiled_model(tiny):
    t = get_target(spec("CPU", options={"CPU_DENORMALS_OPTIMIZATION": True}))
    assert str(t.compile(tiny[1]).compiled_model.get_property("CPU_DENORMALS_OPTIMIZATION")) in ("True", "YES")


def test_openvino_targets_in_repo_load():
    for path in TARGETS_DIR.glob("openvino*.yaml"):
        assert load_spec(str(path)).runtime == "openvino"


# --- OpenVINO IR export ------------------------------------------------------------------------

def small_model() -> nn.Module:
    return tiny_model()  # the export tests' model: conv+BN+ReLU, strided conv, pool, linear


def constant_types(xml) -> set[str]:
    model = ov.Core().read_model(str(xml))
    return {op.get_element_type().get_type_name() for op in model.get_ops()
            if op.get_type_name() == "Constant" and op.get_element_type().is_real()}


def ov_run(xml, x: np.ndarray) -> np.ndarray:
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.array(compiled.create_infer_request().infer({0: x})[0])


@pytest.mark.parametrize("name, kind", [("openvino", "openvino"), ("ir", "openvino"),
                                        ("openvino-fp32", "openvino"), ("openvino-fp16", "openvino-fp16"),
                                        ("IR_FP16", "openvino-fp16")])
def test_format_names(name, kind):
    assert resolve_kind(name).name == kind


@pytest.mark.parametrize("kind, dtype", [("openvino", "f32"), ("openvino-fp16", "f16")])
def test_ir_export_validated_with_metadata(tmp_path, kind, dtype):
    model = small_model()
    meta = {"budget_ms": 1.25, "widths": {"g0": 8}, "latency_table": "abc123", "target": "openvino-cpu"}
    res = export_artifact(model, kind, tmp_path / "m.xml", (1, 3, 16, 16), metadata=meta)
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    assert res.path == xml and res.kind == kind and res.ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]  # nothing else left
    assert res.size_bytes == xml.stat().st_size + bin_.stat().st_size
    assert constant_types(xml) == {dtype}  # the precision asked for, not save_model's default
    got = read_metadata(xml)
    assert got["budget_ms"] == "1.25" and json.loads(got["widths"]) == {"g0": 8}
    assert got["latency_table"] == "abc123" and got["target"] == "openvino-cpu"
    assert got["edgeprune_version"]
    assert model.training  # the caller's mode is restored
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want = model.eval()(x).numpy()
    atol = 1e-4 if kind == "openvino" else 1e-2
    np.testing.assert_allclose(ov_run(xml, x.numpy()), want, atol=atol, rtol=atol * 10)
    assert res.max_abs_diff <= atol


def test_fp16_ir_is_about_half_the_fp32_one(tmp_path):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    fp32 = export_artifact(model, "openvino", tmp_path / "fp32.xml", (1, 3, 32, 32))
    fp16 = export_artifact(model, "openvino-fp16", tmp_path / "fp16.xml", (1, 3, 32, 32))
    assert fp32.max_abs_diff < 1e-4 < fp16.max_abs_diff < 1e-2
    assert 0.45 < (tmp_path / "fp16.bin").stat().st_size / (tmp_path / "fp32.bin").stat().st_size < 0.55


def test_ir_mismatch_writes_neither_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    xml = tmp_path / "m.xml"
    export_artifact(small_model(), "openvino", xml, (1, 3, 16, 16), metadata={"round": 1})
    before = xml.read_bytes(), (tmp_path / "m.bin").read_bytes()
    real = export._torch_outputs
    monkeypatch.setattr(export, "_torch_outputs", lambda m, x: [a + 0.5 for a in real(m, x)])
    with pytest.raises(EdgepruneError, match="openvino export does not match PyTorch: max abs diff 0.5"):
        export_artifact(small_model(), "openvino", xml, (1, 3, 16, 16), metadata={"round": 2})
    assert (xml.read_bytes(), (tmp_path / "m.bin").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
    assert read_metadata(xml)["round"] == "1"


def test_ir_path_must_end_in_xml(tmp_path):
    with pytest.raises(UsageError, match=r"openvino export path must end in \.xml"):
        export_artifact(small_model(), "openvino", tmp_path / "m.ir", (1, 3, 16, 16))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_ir_metadata_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<net>")
    with pytest.raises(UsageError, match="bad.xml is not a valid OpenVINO IR: "):
        read_metadata(bad)


def test_openvino_targets_deploy_their_precision_as_ir():
    assert get_target("openvino-cpu").artifact_kind() == "openvino"
    spec = load_spec("openvino-cpu").model_copy(update={"precision": "fp16"})
    assert get_target(spec).artifact_kind() == "openvino-fp16"

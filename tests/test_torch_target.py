"""The torch runtime (runtime/torch_aoti.py) and its ONNX -> torch conversion (artifacts/onnx_torch.py).

On the CPU: the conversion against ONNX Runtime, one AOTInductor package compiled for the CPU
(a module fixture; gcc takes ~30-60 s) run against PyTorch and timed, eager timing, the
per-layer profile mapped to the model's modules, the fingerprint, and a CUDA target refused on a
host without a GPU. The tests marked ``gpu`` need a CUDA device and skip without one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgeprune.artifacts import onnx_torch
from edgeprune.artifacts.export import validate
from edgeprune.artifacts.kinds import KINDS
from edgeprune.artifacts.onnxio import export_onnx, module_call_order
from edgeprune.errors import UsageError
from edgeprune.latency.profile import layer_breakdown
from edgeprune.runtime import get_target
from edgeprune.runtime.spec import TargetSpec, TimingSpec, load_spec
from edgeprune.runtime.torch_aoti import node_times, parse_gpu_query
from edgeprune.training.models import build_model

SHAPE = (1, 3, 32, 32)
QUICK = TimingSpec(warmup_s=0.05, min_runs=5, min_time_s=0.05, windows=2)
no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def cpu_target(engine: str = "eager", **kw):
    return get_target(TargetSpec(name="t", runtime="torch", device="cpu", options={"engine": engine}, **kw))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, its ONNX file) of tiny_resnet at 32 px."""
    torch.manual_seed(0)
    model = build_model("tiny_resnet", num_classes=10).eval()
    return model, export_onnx(model, SHAPE, tmp_path_factory.mktemp("torch") / "tiny.onnx")


@pytest.fixture(scope="module")
def aoti(tiny):
    """(target, compiled model, package path): the module's one AOTInductor compile."""
    target = cpu_target("aoti")
    compiled = target.compile(tiny[1])
    return target, compiled, next(iter(target._packages.values()))


def mixed_ops_model() -> nn.Module:
    """The ops the other CNN families export to (Clip, HardSwish/HardSigmoid, Mul, pools with
    ceil_mode and padding), for the conversion test."""
    torch.manual_seed(1)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = nn.functional.relu6(self.conv(x))
            x = nn.functional.max_pool2d(x, 3, 2, 1, ceil_mode=True)
            y = nn.functional.hardswish(self.dw(x))
            x = x * nn.functional.hardsigmoid(y) + nn.functional.avg_pool2d(y, 3, 1, 1)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
    return M().eval()


def test_the_onnx_graph_runs_in_torch_as_onnxruntime_runs_it(tmp_path, tiny):
    import onnxruntime as ort
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    for model, path in [tiny, (None, export_onnx(mixed_ops_model(), SHAPE, tmp_path / "mixed.onnx"))]:
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        with torch.no_grad():
            got = onnx_torch.load(path)(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_an_op_it_cannot_run_is_one_line_naming_it(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"], name="erf0")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UsageError, match=r"cannot run ONNX op Erf \(node erf0\)") as info:
        cpu_target().compile(path)
    assert "\n" not in str(info.value)


def test_the_aoti_package_matches_pytorch_and_is_timed(tiny, aoti):
    model, onnx_path = tiny
    target, compiled, package = aoti
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(compiled.run(x), want, atol=1e-4, rtol=1e-3)
    # the pt2 kind's runner (what export validation uses) loads and runs the same package
    abs_diff, _, ok = validate(model, package, SHAPE, *KINDS["pt2"].tolerance, KINDS["pt2"])
    assert ok and abs_diff < 1e-4
    lat = target.measure(onnx_path, QUICK)  # compiled once: the package is reused by content
    assert len(target._packages) == 1
    assert lat.runs >= QUICK.min_runs and 0 < lat.min_ms <= lat.median_ms
    assert target.artifact_kind() == "pt2" and target.fingerprint()["engine"] == "aoti"


def test_eager_timing_restores_torch_threads(tiny):
    before = torch.get_num_threads()
    lat = cpu_target(threads=1).measure_many([tiny[1], tiny[1]], QUICK)
    assert torch.get_num_threads() == before
    assert all(l.runs >= QUICK.min_runs and l.median_ms > 0 for l in lat)


def test_layer_times_name_onnx_nodes_that_map_to_the_models_layers(tiny):
    import onnx
    model, onnx_path = tiny
    times = cpu_target().layer_times(onnx_path, runs=3)
    graph = onnx.load(str(onnx_path)).graph
    ops = {n.name: n.op_type for n in graph.node if n.op_type not in ("Identity", "Constant")}
    assert [t.name for t in times] == list(ops)  # every computing node once, in graph order
    assert all(t.op == ops[t.name] and t.ms > 0 for t in times)
    per_layer = layer_breakdown(cpu_target(), model, SHAPE, onnx_path, runs=3)
    assert set(per_layer) - {"(input)"} == set(module_call_order(model, SHAPE))
    assert all(ms > 0 for ms in per_layer.values())


def test_node_times_are_medians_in_first_run_order():
    got = node_times([("a", 1.0), ("b", 5.0), ("a", 3.0), ("b", 4.0), ("a", 2.0), ("b", 6.0)], {"a": "Conv"})
    assert [(t.name, t.op, t.ms) for t in got] == [("a", "Conv", 2.0), ("b", "", 5.0)]


def test_fingerprint_and_gpu_query_parsing():
    fp = cpu_target().fingerprint()
    assert {"runtime", "runtime_version", "device", "threads", "engine", "batch", "host_cpu"} <= set(fp)
    assert fp["runtime"] == "torch" and fp["runtime_version"] == torch.__version__ and fp["engine"] == "eager"
    line = "NVIDIA H200, 570.124.06, 1980, 3201, 1980\n"
    assert parse_gpu_query(line) == {"gpu_driver": "570.124.06",
                                     "gpu_clocks_mhz": "app_graphics=1980,app_memory=3201,max_sm=1980"}
    assert parse_gpu_query("NVIDIA A10, 535.1, [N/A], [N/A], 1695") == {"gpu_driver": "535.1",
                                                                     "gpu_clocks_mhz": "max_sm=1695"}
    assert parse_gpu_query("") == {"gpu_driver": None, "gpu_clocks_mhz": None}


@pytest.mark.parametrize("options, device, match", [
    ({"engine": "tensorrt"}, "cpu", "engine must be one of eager, cudagraph, aoti"),
    ({"engin": "eager"}, "cpu", "unknown torch option"),
    ({"engine": "cudagraph"}, "cpu", "engine cudagraph needs a CUDA device"),
    ({}, "npu", "torch device must be cpu, cuda or cuda:N"),
])
def test_bad_options_are_one_line(options, device, match):
    with pytest.raises(UsageError, match=match):
        get_target(TargetSpec(name="t", runtime="torch", device=device, options=options))


def test_builtin_targets_and_a_cuda_target_without_a_gpu(tmp_path, cli):
    from edgeprune.runtime.torch_aoti import TorchTarget
    assert load_spec("cuda-gpu").batch == 1 and load_spec("cuda-gpu-b32").batch == 32
    assert TorchTarget.device_present(load_spec("torch-cpu")) is True
    assert TorchTarget.device_present(load_spec("cuda-gpu")) is torch.cuda.is_available()
    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA device: the refusal needs one without")
    with pytest.raises(UsageError, match="no CUDA device 'cuda' here"):
        get_target("cuda-gpu")
    done = cli(["measure", "tiny_resnet", "--target", "cuda-gpu", "--input-size", "32"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "no CUDA device" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# --- on a GPU ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=1000).eval()
    shape = (1, 3, 224, 224)
    return model, shape, export_onnx(model, shape, tmp_path_factory.mktemp("r18") / "r18.onnx")


@pytest.mark.gpu
@no_gpu
def test_gpu_measures_resnet18_with_cuda_events(resnet18):
    model, shape, onnx_path = resnet18
    target = get_target("cuda-gpu")
    compiled = target.compile(onnx_path)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(compiled.run(x), want, atol=1e-2, rtol=1e-2)  # TF32 convolutions
    from edgeprune.runtime.timing import DeviceTime
    assert isinstance(compiled.run_once(), DeviceTime)
    lat = target.measure(onnx_path, QUICK)
    assert 0 < lat.median_ms < 50 and lat.runs >= QUICK.min_runs
    fp = target.fingerprint()
    assert fp["gpu_name"] and fp["cuda_version"] == torch.version.cuda and fp["batch"] == 1
    assert target.with_busy_share(lambda: 1) == (1, None)


@pytest.mark.gpu
@no_gpu
def test_gpu_profiles_kernel_times_per_layer(resnet18):
    model, shape, onnx_path = resnet18
    target = get_target("cuda-gpu")
    per_layer = layer_breakdown(target, model, shape, onnx_path, runs=5)
    assert set(per_layer) - {"(input)"} == set(module_call_order(model, shape))
    assert all(ms > 0 for name, ms in per_layer.items() if name != "(input)")
    e2e = target.measure(onnx_path, QUICK).median_ms
    assert 0.2 * e2e < sum(per_layer.values()) < 5 * e2e  # kernel times, same order as end to end


@pytest.mark.gpu
@no_gpu
def test_gpu_aoti_package_exports_and_validates(tmp_path, resnet18):
    from edgeprune.artifacts.export import export_artifact
    model, shape, _ = resnet18
    res = export_artifact(model, "pt2-cuda", tmp_path / "m.pt2", shape, metadata={"model": "resnet18"})
    assert res.ok and (tmp_path / "m.json").is_file()


def test_a_captured_cuda_graph_keeps_the_module_it_reads_alive(monkeypatch):
    """A CUDA graph holds raw addresses, not references. On the H200 the captured module was
    dropped after capture, its weights' memory reused, and replays gave 1e6-sized outputs and
    then an illegal memory access. Here the capture is faked on the CPU (no GPU needed): after
    compile-like use, only the replay closures are kept, and the module must still be alive."""
    import contextlib
    import gc
    import weakref

    from edgeprune.runtime import torch_aoti

    class FakeGraph:
        def replay(self):
            pass

    fake = dict(Stream=lambda device=None: type("S", (), {"wait_stream": lambda self, s: None})(),
                current_stream=lambda device=None: type("S", (), {"wait_stream": lambda self, s: None})(),
                stream=lambda s: contextlib.nullcontext(), graph=lambda g: contextlib.nullcontext(),
                CUDAGraph=FakeGraph)
    for name, value in fake.items():
        monkeypatch.setattr(torch.cuda, name, value)
    module = nn.Linear(4, 2)
    alive = weakref.ref(module)
    forward, fire = torch_aoti._cuda_graph(module, torch.zeros(1, 4))
    del module
    gc.collect()
    assert alive() is not None, "the graph's module was freed while its replay is still reachable"
    fire()
    assert forward(torch.ones(1, 4)).shape == (1, 2)

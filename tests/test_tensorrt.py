"""The tensorrt target and the TensorRT engine kind.

Without TensorRT (this machine, CI): the target files, the install hint through the CLI, the
IProfiler path's layer names -> ONNX nodes on the real trtexec files (the same mapping as the
trtexec import), the engine sidecar and its refusal of foreign engines, the INT8 calibration
feeder, the Jetson power keys. With TensorRT and a CUDA GPU: engines built from a tiny ONNX in
FP32 and FP16, run against ONNX Runtime, profiled layer by layer, exported and reloaded."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import REPO, TARGETS_DIR

from edgeprune import cli
from edgeprune.artifacts import kind_tensorrt as kt
from edgeprune.artifacts.kinds import KINDS, copy_together, kind_of
from edgeprune.errors import UsageError
from edgeprune.latency import trtexec
from edgeprune.latency.trtexec_files import (
    load_layer_graph,
    load_metadata,
    load_profile,
)
from edgeprune.runtime import RUNTIMES, target_class
from edgeprune.runtime.spec import TargetSpec, load_spec
from edgeprune.runtime.tensorrt import (
    TensorRtOptions,
    TensorRtTarget,
    cuda_index,
    parse_layer_info,
    power_fingerprint,
    profile_node_times,
)

FIX = Path(__file__).resolve().parent / "fixtures" / "tensorrt"
STEMS = ("rtx3060_resnet18_fp16", "rtx3060_mobilenet_v2_fp16", "rtx3060_alexnet_fp16", "titanrtx_mobilenet_qat_int8")
TRT_TARGETS = {"nvidia-gpu-tensorrt", "jetson-orin-tensorrt"}
HINT = "install it with: pip install 'edgeprune[tensorrt]'"


# --- target files -------------------------------------------------------------------------------

def test_every_tensorrt_target_file_is_tested():
    assert {p.stem for p in TARGETS_DIR.glob("*tensorrt*.yaml")} == TRT_TARGETS


@pytest.mark.parametrize("name", sorted(TRT_TARGETS))
def test_tensorrt_target_files_load_and_validate(name):
    spec = load_spec(name)
    assert (spec.name, spec.runtime, spec.batch, spec.input_size) == (name, "tensorrt", 1, 224)
    assert spec.precision == "fp16" and cuda_index(spec.device, name) == 0
    assert TensorRtOptions.model_validate(spec.options).workspace_mb >= 16
    assert target_class(spec.runtime) is TensorRtTarget and spec.description


def test_gpu_budgets_are_half_the_committed_trtexec_medians():
    """The YAML comment's source: GPU compute medians of the fixtures' timed runs."""
    spec = load_spec("nvidia-gpu-tensorrt")
    for model, stem in (("resnet18", STEMS[0]), ("mobilenet_v2", STEMS[1])):
        median = load_metadata(FIX / f"{stem}.profile.metadata.json").performance_summary.gpu_compute[3]
        assert spec.budgets_ms[model] == pytest.approx(median / 2, abs=0.005)
    assert load_spec("jetson-orin-tensorrt").budgets_ms == {}  # nothing measured on an Orin here


def test_registry_imports_neither_tensorrt_nor_torch():
    assert RUNTIMES["tensorrt"] == "edgeprune.runtime.tensorrt:TensorRtTarget"
    code = ("import sys, edgeprune.runtime, edgeprune.runtime.tensorrt, edgeprune.artifacts.kinds; "
            "assert 'tensorrt' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]


@pytest.mark.parametrize("options, fragment", [({"workspace": 64}, "workspace"), ({"workspace_mb": 1}, "workspace_mb"),
                                               ({"calibration_batches": 0}, "calibration_batches")])
def test_bad_options_are_one_line_before_tensorrt_is_needed(options, fragment):
    with pytest.raises(UsageError, match=f"target 'g': option {fragment}") as e:
        TensorRtTarget(TargetSpec(name="g", runtime="tensorrt", device="cuda", options=options))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("device, index", [("cuda", 0), ("GPU", 0), ("cuda:1", 1), ("gpu:3", 3)])
def test_cuda_index(device, index):
    assert cuda_index(device) == index


@pytest.mark.parametrize("device", ["cpu", "cuda:x", "dla:0", ""])
def test_other_devices_are_refused(device):
    with pytest.raises(UsageError, match="tensorrt device must be cuda or cuda:N"):
        cuda_index(device, "t")


# --- without tensorrt: one line, exit 2 -----------------------------------------------------------

@pytest.fixture
def no_tensorrt(monkeypatch, tmp_path):
    monkeypatch.setattr(TensorRtTarget, "installed", classmethod(lambda cls: False))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_targets_lists_them_not_installed(no_tensorrt, capsys):
    assert cli.main(["targets"]) == 0
    lines = {l.split()[0]: l for l in capsys.readouterr().out.splitlines()[1:]}
    for name in TRT_TARGETS:
        assert "tensorrt" in lines[name] and "not installed" in lines[name] and lines[name].endswith("unknown")


@pytest.mark.parametrize("argv", [
    ["measure", "tiny_resnet", "--target", "nvidia-gpu-tensorrt", "--input-size", "16"],
    ["profile", "tiny_resnet", "--target", "jetson-orin-tensorrt", "--input-size", "16", "--out", "t.json"],
    ["prune", "tiny_resnet", "--target", "nvidia-gpu-tensorrt", "--input-size", "16", "--budget-ms", "1",
     "--out", "out", "--epochs", "0"],
], ids=["measure", "profile", "prune"])
def test_commands_without_tensorrt_say_how_to_install_it(no_tensorrt, capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and out == "" and "Traceback" not in err
    assert lines == [f"edgeprune: error: tensorrt is not installed for target '{argv[3]}'; {HINT}"]
    assert list(no_tensorrt.iterdir()) == []  # nothing written


# --- IProfiler layer names -> ONNX nodes: the trtexec import's mapping -----------------------------

def profiled(stem: str) -> tuple[list[tuple[str, float]], object, object]:
    """Records as the IProfiler reports them over three inferences (1x, 3x, 2x each layer's
    trtexec average: the median is 2x), the layer information, the trtexec profile."""
    profile, graph = load_profile(FIX / f"{stem}.profile.json"), load_layer_graph(FIX / f"{stem}.graph.json")
    records = [(r.name, r.average_ms * k) for k in (1, 3, 2) for r in profile.rows]
    return records, graph, profile


@pytest.mark.parametrize("stem", STEMS)
def test_profiler_names_map_like_the_trtexec_import(stem):
    records, graph, profile = profiled(stem)
    got = profile_node_times(records, graph)
    mapped = trtexec.map_layers(profile, graph)
    assert len(got) == len(profile.rows)  # one per engine layer, in execution order
    for t, row, layer in zip(got, profile.rows, mapped):
        assert t.name == (layer.nodes[0] if layer.nodes else row.name)
        assert t.ms == pytest.approx(2 * row.average_ms)
    # every layer that is not a reformat, no-op or shape call names an ONNX node
    assert all(l.nodes for l in mapped if l.layer_type not in trtexec.OVERHEAD_TYPES)
    assert sum(bool(l.nodes) for l in mapped) >= 0.7 * len(mapped)


def test_resnet18_profiled_convolutions_map_to_its_modules():
    from edgeprune.training.models import build_model
    records, graph, _ = profiled(STEMS[0])
    modules = {n for n, m in build_model("resnet18").named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    found = {trtexec.module_path(t.name) for t in profile_node_times(records, graph) if t.name.endswith(("/Conv", "/Gemm"))}
    assert modules <= found | {None} and len(modules & found) == len(modules)


def test_the_profiler_path_calls_the_shared_mapping(monkeypatch):
    calls = []
    monkeypatch.setattr(trtexec, "layer_nodes", lambda name, info=None: calls.append(name) or (["/shared"], []))
    records, graph, profile = profiled(STEMS[2])
    assert {t.name for t in profile_node_times(records, graph)} == {"/shared"}
    assert calls == [r.name for r in profile.rows]


def test_without_layer_information_names_still_map():
    got = profile_node_times([("/conv1/Conv + /relu/Relu", 0.5), ("Reformatting CopyNode for Input Tensor 0", 0.1)])
    assert [(t.name, t.ms) for t in got] == [("/conv1/Conv", 0.5), ("Reformatting CopyNode for Input Tensor 0", 0.1)]


def test_inspector_json_is_the_layer_info_format():
    text = (FIX / f"{STEMS[0]}.graph.json").read_text()
    graph = parse_layer_info(text)
    assert graph is not None and len(graph.layers) == len(load_layer_graph(FIX / f"{STEMS[0]}.graph.json").layers)
    assert parse_layer_info("not json") is None and parse_layer_info('{"Layers": []}') is None


# --- the engine sidecar ---------------------------------------------------------------------------

HERE = {"tensorrt_version": "10.3.0", "gpu": "Orin (nvgpu)", "compute_capability": "8.7"}


def fake_engine(path: Path, **engine) -> Path:
    """An engine file (arbitrary bytes: nothing here deserializes it) and its sidecar."""
    path.write_bytes(b"plan bytes")
    info = {**HERE, "precision": "fp16", "batch": 1, "inputs": {"input": [1, 3, 8, 8]},
            "outputs": {"logits": [1, 3]}, "sha256": kt.sha256(path), **engine}
    kt.write_sidecar(path, info, {"model": "tiny", "budget_ms": 1.5})
    return path


def test_sidecar_metadata_round_trips_and_travels_with_the_engine(tmp_path):
    path = fake_engine(tmp_path / "m.plan")
    assert kind_of(path) is KINDS["tensorrt"] and [f.name for f in KINDS["tensorrt"].files(path)] == ["m.plan.json", "m.plan"]
    KINDS["tensorrt"].check(path)
    meta = KINDS["tensorrt"].read_metadata(path)
    assert meta["model"] == "tiny" and meta["budget_ms"] == "1.5"
    assert (meta["tensorrt_version"], meta["compute_capability"], meta["precision"]) == ("10.3.0", "8.7", "fp16")
    KINDS["tensorrt"].write_metadata(path, {"round": 2})
    assert KINDS["tensorrt"].read_metadata(path)["round"] == "2"
    copy = copy_together(path, tmp_path / "deploy" / "m.frozen.plan")
    assert sorted(p.name for p in copy.parent.iterdir()) == ["m.frozen.plan", "m.frozen.plan.json"]
    KINDS["tensorrt"].check(copy)


def test_engine_suffix_is_the_same_format(tmp_path):
    path = fake_engine(tmp_path / "m.engine")
    assert kind_of(path) is KINDS["tensorrt-engine"] and kind_of(path).module == KINDS["tensorrt"].module
    assert KINDS["tensorrt-engine"].read_metadata(path)["model"] == "tiny"


@pytest.mark.parametrize("change, fragment", [
    ({"tensorrt_version": "10.7.0"}, "built with TensorRT 10.7.0"),
    ({"compute_capability": "8.6", "gpu": "NVIDIA GeForce RTX 3060"}, "compute capability 8.6"),
])
def test_an_engine_for_another_tensorrt_or_gpu_is_refused_in_one_line(change, fragment):
    with pytest.raises(UsageError, match=fragment) as e:
        kt.check_compatible("m.plan", {**HERE, **change}, HERE)
    assert "\n" not in str(e.value) and "rebuild it here from its ONNX" in str(e.value)


def test_same_architecture_under_another_name_runs():
    kt.check_compatible("m.plan", {**HERE, "gpu": "Jetson AGX Orin"}, HERE)


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: kt.sidecar_path(p).unlink(), "m.plan.json is missing"),
    (lambda p: kt.sidecar_path(p).write_text("{"), "not a TensorRT engine sidecar"),
    (lambda p: kt.sidecar_path(p).write_text('{"format": "other", "engine": {}}'), "not a TensorRT engine sidecar"),
    (lambda p: p.write_bytes(b"another engine"), "describes another engine"),
    (lambda p: p.write_bytes(b""), "is empty"),
])
def test_a_damaged_engine_is_one_usage_error(tmp_path, damage, fragment):
    path = fake_engine(tmp_path / "m.plan")
    damage(path)
    with pytest.raises(UsageError, match=fragment) as e:
        KINDS["tensorrt"].check(path)
    assert "\n" not in str(e.value)


def test_sidecar_lacking_keys_names_them(tmp_path):
    path = fake_engine(tmp_path / "m.plan")
    data = json.loads(kt.sidecar_path(path).read_text())
    del data["engine"]["compute_capability"]
    kt.sidecar_path(path).write_text(json.dumps(data))
    with pytest.raises(UsageError, match="lacks compute_capability"):
        kt.read_sidecar(path)


# --- versions, shapes, calibration, power ---------------------------------------------------------

@pytest.mark.parametrize("version, precision, ok", [
    ("10.3.0", "fp16", True), ("10.3.0", "int8", True), ("8.6.2", "int8", True), ("11.1.0", "fp32", True),
    ("11.1.0", "fp16", False), ("11.0.0", "int8", False), ("8.4.1", "fp32", False),
])
def test_which_tensorrt_builds_which_precision(version, precision, ok):
    if ok:
        kt.check_supported(precision, version)
        return
    with pytest.raises(UsageError, match="ModelOpt|too old") as e:
        kt.check_supported(precision, version)
    assert "\n" not in str(e.value)


def test_static_shape_fills_a_dynamic_batch_only():
    assert kt.static_shape((-1, 3, 224, 224), 4) == (4, 3, 224, 224)
    assert kt.static_shape((2, 3, 8, 8), 4) == (2, 3, 8, 8)  # the exported batch stays
    with pytest.raises(UsageError, match="only the batch may be dynamic"):
        kt.static_shape((1, 3, -1, -1), 1, "input")


def test_random_calibration_is_seeded_and_of_the_engine_shape():
    feeder = kt.CalibrationFeeder(limit=3, seed=5)
    a, b = feeder.batches((2, 3, 4, 4)), kt.CalibrationFeeder(limit=3, seed=5).batches((2, 3, 4, 4))
    assert len(a) == 3 and all(x.shape == (2, 3, 4, 4) and x.dtype == np.float32 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[0], a[1])
    assert feeder.random and feeder.describe(3) == {"batches": 3, "source": "random (latency only)"}


def test_data_calibration_takes_pairs_up_to_the_limit():
    from torch.utils.data import DataLoader, TensorDataset
    loader = DataLoader(TensorDataset(torch.randn(10, 3, 4, 4), torch.zeros(10)), batch_size=2)
    batches = kt.CalibrationFeeder(loader, limit=3).batches((2, 3, 4, 4))
    assert len(batches) == 3 and np.allclose(batches[0], next(iter(loader))[0].numpy())
    with pytest.raises(UsageError, match=r"calibration inputs have shape \[2, 3, 4, 4\], the engine takes \[1, 3, 4, 4\]"):
        kt.CalibrationFeeder(loader).batches((1, 3, 4, 4))
    with pytest.raises(UsageError, match="the calibration set is empty"):
        kt.CalibrationFeeder([]).batches((1, 3, 4, 4))
    with pytest.raises(UsageError, match="calibration batches must be >= 1"):
        kt.CalibrationFeeder(limit=0)


def fake_board(tmp_path: Path, mode: str | None, locked: bool) -> tuple[str, Path]:
    """An ``nvpmodel`` that prints ``mode`` (or fails) and a sysfs with one CPU's clocks."""
    tool = tmp_path / "nvpmodel"
    tool.write_text(f"#!/bin/sh\necho 'NV Power Mode: {mode}'\necho 0\n" if mode else "#!/bin/sh\nexit 1\n")
    tool.chmod(0o755)
    freq = tmp_path / "root" / "sys/devices/system/cpu/cpu0/cpufreq"
    freq.mkdir(parents=True)
    (freq / "scaling_min_freq").write_text("2201600" if locked else "729600")
    (freq / "scaling_max_freq").write_text("2201600")
    return str(tool), tmp_path / "root"


def test_jetson_power_mode_and_clocks_are_in_the_fingerprint_keys(tmp_path):
    tool, root = fake_board(tmp_path, "MAXN", locked=True)
    assert power_fingerprint(tool, root) == {"power_mode": "MAXN", "clocks_locked": True}


def test_no_power_keys_off_a_jetson(tmp_path):
    tool, root = fake_board(tmp_path, None, locked=False)
    assert power_fingerprint(tool, root) == {"power_mode": None, "clocks_locked": None}
    assert power_fingerprint(str(tmp_path / "absent"), root) == {"power_mode": None, "clocks_locked": None}


# --- on TensorRT and a GPU ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'edgeprune[tensorrt]'; "
                                           "on a Jetson it comes with JetPack)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU and torch sees none here")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from edgeprune.artifacts.onnxio import export_onnx
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    return export_onnx(model, (1, 3, 16, 16), tmp_path_factory.mktemp("trt") / "tiny.onnx")


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_engine_matches_onnxruntime_and_profiles(gpu, tiny_onnx, tmp_path, precision, atol):
    import onnx
    import onnxruntime as ort
    spec = TargetSpec(name="t", runtime="tensorrt", device="cuda", precision=precision,
                      options={"timing_cache": str(tmp_path / "timing.cache")}, timing={"warmup_s": 0.05, "min_time_s": 0.05})
    target = TensorRtTarget(spec)
    compiled = target.compile(tiny_onnx)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.allclose(compiled.run(x), want, atol=atol, rtol=atol)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    layers = target.layer_times(tiny_onnx, runs=5)
    nodes = {n.name for n in onnx.load(str(tiny_onnx)).graph.node}
    assert layers and all(t.ms >= 0 for t in layers) and any(t.name in nodes for t in layers)
    lat = target.measure(tiny_onnx)
    assert lat.median_ms > 0 and lat.runs >= 3
    fp = target.fingerprint()
    assert fp["runtime"] == "tensorrt" and fp["precision"] == precision and fp["compute_capability"]


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_exported_engine_reloads_and_a_foreign_one_is_refused(gpu, tmp_path):
    from edgeprune.artifacts.export import export_artifact
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    res = export_artifact(model, "tensorrt", tmp_path / "m.plan", (1, 3, 8, 8), metadata={"model": "tiny"})
    assert res.ok and KINDS["tensorrt"].read_metadata(res.path)["model"] == "tiny"
    target = TensorRtTarget(TargetSpec(name="t", runtime="tensorrt", device="cuda"))
    assert target.compile(res.path).run(np.zeros((1, 3, 8, 8), np.float32)).shape == (1, 3)
    data = json.loads(kt.sidecar_path(res.path).read_text())
    data["engine"]["tensorrt_version"] = "9.9.9"
    kt.sidecar_path(res.path).write_text(json.dumps(data))
    with pytest.raises(UsageError, match="built with TensorRT 9.9.9"):
        target.compile(res.path)

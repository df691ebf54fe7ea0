"""OpenVINO target files and the OpenVINO target's pure parts: device strings, the map from
OpenVINO node names back to ONNX names, the profile parser. None of this needs openvino itself;
tests on the real runtime are in test_openvino.py."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, TARGETS_DIR

from edgeprune.errors import MissingBackend, UsageError
from edgeprune.runtime import RUNTIMES, get_target, target_class
from edgeprune.runtime.openvino import (
    OpenVinoTarget,
    device_available,
    onnx_name,
    ov_message,
    parse_ov_profile,
    physical_devices,
    runs_kernel,
)
from edgeprune.runtime.spec import TargetSpec, load_spec

OPENVINO_TARGETS = {"openvino-cpu": "CPU", "openvino-gpu": "GPU", "openvino-npu": "NPU",
                    "openvino-fpga": "HETERO:FPGA,CPU"}


def test_every_openvino_target_file_is_tested():
    assert {p.stem for p in TARGETS_DIR.glob("openvino*.yaml")} == set(OPENVINO_TARGETS)


@pytest.mark.parametrize("name, device", sorted(OPENVINO_TARGETS.items()))
def test_openvino_target_files_load_and_validate(name, device):
    spec = load_spec(name)
    assert spec.name == name
    assert spec.runtime == "openvino"
    assert spec.device == device
    assert spec.threads == 1 and spec.batch == 1
    assert spec.precision in ("fp32", "fp16")
    assert spec.description
    assert target_class(spec.runtime) is OpenVinoTarget
    assert all(physical_devices(spec.device))


def test_openvino_cpu_is_fp32_one_thread():
    spec = load_spec("openvino-cpu")
    assert (spec.device, spec.threads, spec.precision) == ("CPU", 1, "fp32")


def test_registry_names_the_module_lazily():
    assert RUNTIMES["openvino"] == "edgeprune.runtime.openvino:OpenVinoTarget"
    code = ("import sys, edgeprune, edgeprune.runtime, edgeprune.runtime.openvino; "
            "assert 'openvino' not in sys.modules, 'openvino imported eagerly'")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_missing_openvino_gives_the_install_hint(monkeypatch):
    monkeypatch.setattr(OpenVinoTarget, "installed", classmethod(lambda cls: False))
    with pytest.raises(MissingBackend, match=r"openvino is not installed for target 'openvino-cpu'; "
                                             r"install it with: pip install 'edgeprune\[openvino\]'"):
        get_target("openvino-cpu")


def test_int8_precision_is_refused_with_a_reason():
    with pytest.raises(UsageError, match="precision int8 on openvino needs a quantized model"):
        OpenVinoTarget(TargetSpec(name="ov-int8", runtime="openvino", device="CPU", precision="int8"))


@pytest.mark.parametrize("device, expected", [
    ("CPU", ["CPU"]), ("GPU.1", ["GPU.1"]), ("NPU", ["NPU"]),
    ("HETERO:FPGA,CPU", ["FPGA", "CPU"]), ("MULTI:GPU,CPU", ["GPU", "CPU"]),
    ("AUTO:GPU.0, CPU", ["GPU.0", "CPU"]), ("BATCH:GPU(4)", ["GPU"]),
    ("AUTO", []), ("AUTO:-CPU", []), ("AUTO:GPU,-CPU", ["GPU"]),
])
def test_physical_devices_of_a_device_string(device, expected):
    assert physical_devices(device) == expected


@pytest.mark.parametrize("device, available, ok", [
    ("CPU", ["CPU"], True), ("GPU", ["CPU"], False), ("GPU", ["CPU", "GPU.0", "GPU.1"], True),
    ("GPU.1", ["CPU", "GPU.0", "GPU.1"], True), ("GPU.2", ["CPU", "GPU.0", "GPU.1"], False),
    ("GPU.0", ["CPU", "GPU"], True), ("GPU.1", ["CPU", "GPU"], False), ("FPGA", ["CPU"], False),
    ("NPU", [], False),
])
def test_device_available(device, available, ok):
    assert device_available(device, available) is ok


NAMES = {"/conv1/Conv", "/conv1/Conv_output_0", "/relu/Relu", "/layer1/conv1/Conv",
         "/layer1/conv1/Conv_output_0", "/avgpool/GlobalAveragePool", "/Flatten", "/fc/Gemm", "logits",
         "conv2d", "conv2d_1"}


@pytest.mark.parametrize("ov_name, expected", [
    ("/relu/Relu", "/relu/Relu"),                                               # kept as is
    ("/conv1/Conv/WithoutBiases", "/conv1/Conv"),                               # bias split off
    ("/layer1/conv1/Conv/WithoutBiases", "/layer1/conv1/Conv"),                 # not /conv1/Conv
    ("logits", "logits"), ("logits/sink_port_0", "logits"),                     # output tensor
    ("input_abcd_acdb_/conv1/Conv/WithoutBiases", "/conv1/Conv"),               # reorder -> consumer
    ("input_f32_abcd_bf16_acdb_/layer1/conv1/Conv/WithoutBiases", "/layer1/conv1/Conv"),
    ("/avgpool/GlobalAveragePool_acdb_abcd_/Flatten", "/Flatten"),
    ("subgraph0: /conv1/Conv/WithoutBiases", "/conv1/Conv"),                    # HETERO prefix
    ("conv2d_1", "conv2d_1"), ("conv2d_1_abcd_acdb_conv2d", "conv2d"),
    ("SomethingOpenVinoMade", "SomethingOpenVinoMade"),                         # left to attribute()
    ("my_logitsx", "my_logitsx"),                                               # not at a boundary
])
def test_onnx_name_maps_openvino_nodes_back(ov_name, expected):
    assert onnx_name(ov_name, NAMES) == expected


def test_parse_ov_profile_takes_medians_in_execution_order():
    def run(reorder, conv, fc1, fc2):
        return [("input", "Parameter", 0.0, False),
                ("input_abcd_acdb_/conv1/Conv/WithoutBiases", "Reorder", reorder, True),
                ("/conv1/Conv/WithoutBiases", "Convolution", conv, True),
                ("/relu/Relu", "Relu", 0.0, False),                       # fused: never runs
                ("logits", "FullyConnected", fc1, True),
                ("logits", "FullyConnected", fc2, True)]
    runs = [run(0.002, 0.010, 0.004, 0.001), run(0.004, 0.030, 0.002, 0.0), run(0.003, 0.020, 0.003, 0.0)]
    got = parse_ov_profile(runs, NAMES)
    assert [(t.name, t.op) for t in got] == [("/conv1/Conv", "Reorder"), ("/conv1/Conv", "Convolution"),
                                             ("logits", "FullyConnected"), ("logits", "FullyConnected")]
    # a node under the 1 us resolution reads 0 in some runs: it counts 0 there, not missing
    assert [t.ms for t in got] == pytest.approx([0.003, 0.020, 0.003, 0.0])
    assert parse_ov_profile([], NAMES) == []


@pytest.mark.parametrize("executed, exec_type, real", [
    (True, "brgconv_avx512_f32", True), (False, "gemm_mlas_f32", True),   # ran in under 1 us
    (False, "undef", False), (False, "unknown_f32", False), (True, "unknown_f32", True),
])
def test_runs_kernel_tells_fused_nodes_from_fast_ones(executed, exec_type, real):
    assert runs_kernel(executed, exec_type) is real


def test_ov_message_keeps_the_informative_line():
    e = RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\n"
                     "Exception from src/inference/src/dev/core_impl.cpp:706:\n"
                     "Device with \"FPGA\" name is not registered in the OpenVINO Runtime\n\n")
    assert ov_message(e) == 'Device with "FPGA" name is not registered in the OpenVINO Runtime'
    assert ov_message(RuntimeError("")) == "RuntimeError"


def test_ir_export_without_openvino_gives_the_install_hint(monkeypatch, tmp_path):
    import importlib.util

    import torch.nn as nn

    from edgeprune.artifacts import export
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(MissingBackend, match=r"openvino is not installed for export format openvino-fp16; "
                                             r"install it with: pip install 'edgeprune\[openvino\]'"):
        export.export_artifact(nn.Linear(2, 2), "openvino-fp16", tmp_path / "m.xml", (1, 2))
    assert list(tmp_path.iterdir()) == []

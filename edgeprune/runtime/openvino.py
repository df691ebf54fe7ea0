"""OpenVINO (CPU by default; GPU, NPU, HETERO:FPGA,CPU and other device strings by target file).

Per-layer times come from OpenVINO's own performance counters (``PERF_COUNT``,
``InferRequest.profiling_info``): one entry per executed node, named after the ONNX node it came
from (``/layer1/conv1/Conv/WithoutBiases``), the tensor it produces (``logits``), or, for the
layout reorders the plugin inserts, ``PARENT_<layout>_<layout>_CHILD``; :func:`onnx_name` maps
each back to an ONNX node or tensor name so ``edgeprune.latency.profile.attribute`` finds its module.

A device OpenVINO does not report in ``Core.available_devices`` is refused when the target is
built, with one line naming the devices it does see, before any model is loaded.
"""
from __future__ import annotations

import functools
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeprune.errors import UsageError
from edgeprune.runtime.base import Compiled, NodeTime, Target, example_input
from edgeprune.runtime.cpus import pinned

VIRTUAL_DEVICES = ("HETERO", "MULTI", "AUTO", "BATCH")
PRECISION_HINTS = {"fp32": "f32", "fp16": "f16"}
WARMUP_RUNS = 3


class OpenVinoCompiled(Compiled):
    def __init__(self, compiled_model, shape):
        self.compiled_model = compiled_model
        self.request = compiled_model.create_infer_request()
        self.example = example_input(shape)
        self.request.set_input_tensor(ov_tensor(self.example))

    def run(self, x: np.ndarray) -> np.ndarray:
        out = np.array(self.request.infer({0: x})[0])
        self.request.set_input_tensor(ov_tensor(self.example))
        return out

    def run_once(self) -> None:
        """One inference on the input set once, as a deployed loop runs (no per-call copy)."""
        self.request.infer(share_outputs=True)


class OpenVinoTarget(Target):
    runtime = "openvino"
    package = "openvino"
    extra = "openvino"

    def __init__(self, spec):
        super().__init__(spec)
        if spec.precision not in PRECISION_HINTS:
            raise UsageError(f"target {spec.name!r}: precision {spec.precision} on openvino needs a quantized "
                             f"model: prune at fp32, then `edgeprune quantize --run DIR` makes and measures the INT8 IR")
        import openvino as ov
        self.device = spec.device.strip().upper()
        self._core, self._configured = ov.Core(), False
        self.check_device()

    @classmethod
    def device_present(cls, spec) -> bool | None:
        """Whether OpenVINO sees every real device of ``spec`` (an NPU target on a machine
        without an NPU: runtime installed, device absent)."""
        if not cls.installed():
            return None
        available = _available_devices()
        wanted = physical_devices(spec.device.strip().upper())
        return all(device_available(d, available) for d in wanted) if wanted else bool(available)

    # --- the device ---------------------------------------------------------------------------

    @property
    def core(self):
        """An ``openvino.Core`` with this target's properties set on each of its devices."""
        if not self._configured:
            for dev in physical_devices(self.device) or self._core.available_devices:  # AUTO: all
                props = self._device_properties(self._core, dev)
                if props:
                    self._core.set_property(dev, props)
            self._configured = True
        return self._core

    def check_device(self) -> None:
        """UsageError naming the devices OpenVINO sees when one in ``self.device`` is absent."""
        available = list(self._core.available_devices)
        for dev in physical_devices(self.device):
            if not device_available(dev, available):
                inside = f" (in {self.device!r})" if dev != self.device else ""
                raise UsageError(f"openvino device {dev!r}{inside} is not available here; "
                                 f"OpenVINO sees: {', '.join(available) or 'no devices'}")

    def _device_properties(self, core, dev: str) -> dict:
        """One latency-bound stream, ``threads`` inference threads, the spec's precision, and no
        CPU pinning of OpenVINO's own (it re-pins the calling thread on every inference, undoing
        ``timing.pinned``); only the properties the device's plugin reports as writable
        (GPU/NPU/FPGA plugins differ)."""
        wanted = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False,
                  "INFERENCE_NUM_THREADS": self.spec.threads,
                  "INFERENCE_PRECISION_HINT": PRECISION_HINTS[self.spec.precision]}
        try:
            supported = core.get_property(dev, "SUPPORTED_PROPERTIES")
        except RuntimeError:
            return {}
        writable = {k for k, mode in dict(supported).items() if str(mode) == "RW"}
        return {k: v for k, v in wanted.items() if k in writable}

    def artifact_kind(self) -> str:
        return "openvino-fp16" if self.spec.precision == "fp16" else "openvino"

    def runtime_version(self) -> str:
        import openvino
        return openvino.__version__

    def fingerprint(self) -> dict:
        """The base fingerprint plus the devices' own names (a GPU or NPU is not the host CPU)."""
        names = []
        for dev in physical_devices(self.device):
            try:
                names.append(str(self.core.get_property(dev, "FULL_DEVICE_NAME")))
            except RuntimeError:
                names.append(dev)
        return {**super().fingerprint(), "device_name": ", ".join(names)}

    # --- compile, run, profile ----------------------------------------------------------------

    def _compile(self, onnx_path, perf_count: bool = False):
        """(compiled model, input shape); ``perf_count`` only for profiling, never for timing."""
        core = self.core
        try:
            model = core.read_model(str(onnx_path))
        except RuntimeError as e:
            raise UsageError(f"openvino cannot load {onnx_path}: {ov_message(e)}") from None
        shape = _input_shape(model, self.spec.batch)
        if not model.input(0).get_partial_shape().is_static:
            model.reshape({0: list(shape)})
        config = {**{str(k): v for k, v in self.spec.options.items()}, "PERF_COUNT": perf_count}
        try:
            return core.compile_model(model, self.device, config), shape
        except RuntimeError as e:
            raise UsageError(f"openvino cannot compile {Path(onnx_path).name} for {self.device}: "
                             f"{ov_message(e)}") from None

    def compile(self, onnx_path) -> OpenVinoCompiled:
        compiled, shape = self._compile(onnx_path)
        return OpenVinoCompiled(compiled, shape)

    def layer_times(self, onnx_path, runs: int = 10) -> list[NodeTime]:
        import onnx
        import openvino as ov
        compiled, shape = self._compile(onnx_path, perf_count=True)
        request = compiled.create_infer_request()
        request.set_input_tensor(ov_tensor(example_input(shape)))
        executed = ov.ProfilingInfo.Status.EXECUTED
        per_run: list[list[tuple[str, str, float, bool]]] = []
        with pinned(self.spec.threads):
            # by time as well as count: some kernels (the MLAS FullyConnected) take ~100 runs
            # to settle, and their first-run times would dominate a small model's profile
            end, n = time.perf_counter() + self.spec.timing.warmup_s, 0
            while n < WARMUP_RUNS or time.perf_counter() < end:
                request.infer(share_outputs=True)
                n += 1
            for _ in range(runs):
                request.infer(share_outputs=True)
                per_run.append([(p.node_name, p.node_type, p.real_time.total_seconds() * 1e3,
                                 runs_kernel(p.status == executed, p.exec_type))
                                for p in request.profiling_info])
        return parse_ov_profile(per_run, onnx_names(onnx.load(str(onnx_path))))


# --- pure functions (tested without OpenVINO) -----------------------------------------------------

@functools.lru_cache(maxsize=None)
def _available_devices() -> tuple[str, ...]:
    """The devices OpenVINO sees, asked once per process (a Core per target file made
    `edgeprune targets` create four)."""
    import openvino as ov
    return tuple(ov.Core().available_devices)


def physical_devices(device: str) -> list[str]:
    """The real devices named by an OpenVINO device string: ``GPU.1`` -> [GPU.1];
    ``HETERO:FPGA,CPU`` -> [FPGA, CPU]; ``BATCH:GPU(4)`` -> [GPU]; ``AUTO`` -> [] (any);
    ``AUTO:-CPU`` excludes CPU, which then need not exist."""
    head, sep, rest = device.partition(":")
    if head.upper() not in VIRTUAL_DEVICES:
        return [device]
    out = []
    for part in rest.split(","):
        name = part.split("(")[0].strip()
        if name and not name.startswith("-"):
            out.append(name)
    return out


def device_available(dev: str, available: list[str]) -> bool:
    """``GPU`` matches ``GPU.0``/``GPU.1``; ``GPU.0`` matches a lone ``GPU``."""
    base, _, index = dev.partition(".")
    bases = {a.partition(".")[0] for a in available}
    return dev in available or (not index and base in bases) or (index == "0" and base in available)


def onnx_names(onnx_model) -> set[str]:
    """Names an OpenVINO node can be traced to: ONNX node names and the tensors they produce."""
    return {n.name for n in onnx_model.graph.node if n.name} | {o for n in onnx_model.graph.node for o in n.output if o}


def onnx_name(ov_name: str, names: set[str]) -> str:
    """The ONNX node or tensor an OpenVINO node came from, else ``ov_name`` unchanged.

    OpenVINO keeps the ONNX names and decorates them: ``/conv1/Conv/WithoutBiases`` (conv split
    from its bias), ``logits/sink_port_0``, ``subgraph0: `` (HETERO), and for inserted reorders
    ``PARENT_abcd_acdb_CHILD``. The match is the name ending furthest right (a reorder goes to
    the node it feeds, whose kernel chose that layout), then the longest (``/layer1/conv1/Conv``
    over ``/conv1/Conv``), bounded by the start, ``_`` or ``/`` on both sides."""
    name = _strip_subgraph(ov_name)
    if name in names:
        return name
    best, best_key = ov_name, (-1, -1)
    for cand in names:
        start = name.find(cand)
        while start >= 0:
            end = start + len(cand)
            before_ok = start == 0 or name[start - 1] in "_/"
            after_ok = end == len(name) or name[end] in "_/"
            if before_ok and after_ok and (end, len(cand)) > best_key:
                best, best_key = cand, (end, len(cand))
            start = name.find(cand, start + 1)
    return best


def runs_kernel(executed: bool, exec_type: str) -> bool:
    """Whether a profiled node is real work. The CPU plugin reports NOT_RUN both for nodes
    fused into another or elided (kernel ``undef``, ``unknown_*``) and for nodes that took less
    than its 1 µs resolution (a small FullyConnected flips between the two): the kernel name
    tells them apart."""
    return executed or not exec_type.lower().startswith(("undef", "unknown"))


def parse_ov_profile(per_run: list[list[tuple[str, str, float, bool]]], names: set[str]) -> list[NodeTime]:
    """Median time per node over the runs, named by :func:`onnx_name`, in execution order.

    Each run lists (OpenVINO node name, type, ms, is real work: :func:`runs_kernel`) for every
    node; nodes that are real work in no run are left out."""
    order: list[tuple[str, str]] = []
    times: dict[str, list[float]] = defaultdict(list)
    real: set[str] = set()
    for run in per_run:
        seen: dict[str, int] = defaultdict(int)
        for name, op, ms, is_real in run:
            key = f"{name}#{seen[name]}"
            seen[name] += 1
            if key not in times:
                order.append((key, op))
            times[key].append(ms)
            if is_real:
                real.add(key)
    cache: dict[str, str] = {}
    out = []
    for key, op in order:
        if key not in real:
            continue
        raw = key.rsplit("#", 1)[0]
        if raw not in cache:
            cache[raw] = onnx_name(raw, names)
        out.append(NodeTime(cache[raw], op, statistics.median(times[key])))
    return out


def ov_message(e: BaseException) -> str:
    """The informative line of an OpenVINO exception (they start with 'Exception from src/...')."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    useful = [l for l in lines if not l.startswith(("Exception from ", "Check '"))]
    return (useful or lines or [type(e).__name__])[-1]


def ov_tensor(x: np.ndarray):
    import openvino as ov
    return ov.Tensor(np.ascontiguousarray(x))


def _strip_subgraph(name: str) -> str:
    head, sep, rest = name.partition(": ")
    return rest if sep and head.startswith("subgraph") else name


def _input_shape(model, batch: int) -> tuple[int, ...]:
    shape = model.input(0).get_partial_shape()
    return tuple(d.get_length() if d.is_static else batch for d in shape)

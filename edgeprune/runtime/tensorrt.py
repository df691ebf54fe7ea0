"""TensorRT on an NVIDIA GPU (a workstation's, or a Jetson's through the agent on the board).

``compile`` builds an engine from the ONNX file (``edgeprune.artifacts.kind_tensorrt``: precision
flags, workspace limit, timing cache; kept in memory for the next call on the same file) or loads
a saved ``.plan``/``.engine`` after checking its sidecar; inputs and outputs live in torch CUDA
tensors bound by name (``set_tensor_address``), one ``execute_async_v3`` on a torch stream per
inference, synchronised before it returns. End-to-end times therefore come from the shared
timing protocol as host wall time of enqueue + GPU work + sync (trtexec's "Latency" with
``--noDataTransfers``, without its CUDA graph: a deployed loop that does not capture one pays
the launches too), with no profiler attached.

Per-layer times come from ``IProfiler`` on a separate execution context: TensorRT documents that
a profiler "may affect execution time negatively" (it times layer by layer), so it is never on
the context the end-to-end numbers come from. Each profiled layer is named by TensorRT
(``/layer1/layer1.0/conv1/Conv + /layer1/layer1.0/relu/Relu``, Myelin ``..._myl0_3``, reformats)
and mapped to its first ONNX node by ``edgeprune.latency.trtexec.layer_nodes``, the mapping the
trtexec import uses, with the engine inspector's JSON (the ``--exportLayerInfo`` format: ONNX
nodes in ``Metadata``) as its layer information.

Target options (``options:`` in the target file, ``TensorRtOptions``):
  workspace_mb: 1024         the builder's workspace limit
  timing_cache: PATH         tactic timings reused across builds (default: the user's cache dir,
                             one file per TensorRT version and GPU architecture)
  calibration_batches: 8     seeded random batches an INT8 build is calibrated on (latency only)
``device`` is ``cuda`` or ``cuda:N``; ``precision`` fp32, fp16 or int8; ``batch`` fills a dynamic
batch dimension.
"""
from __future__ import annotations

import hashlib
import statistics
import time
from collections import OrderedDict, defaultdict
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgeprune.errors import UsageError
from edgeprune.runtime import hardware
from edgeprune.runtime.base import Compiled, NodeTime, Target, example_input

ENGINE_MODULE = "edgeprune.artifacts.kind_tensorrt"
CACHED_ENGINES = 4  # serialized engines kept per target (measure, then profile, the same ONNX)
WARMUP_RUNS = 3


class TensorRtOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workspace_mb: int = Field(1024, ge=16)
    timing_cache: str | None = None
    calibration_batches: int = Field(8, ge=1, le=1000)


class TrtCompiled(Compiled):
    """An engine with one execution context and its I/O in torch CUDA tensors."""

    def __init__(self, runtime, engine, profiler=None):
        import tensorrt as trt
        import torch
        self.runtime, self.engine = runtime, engine  # the context needs both alive
        self.context = engine.create_execution_context()
        if profiler is not None:
            self.context.profiler = profiler
        self.stream = torch.cuda.Stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs_ = [n for n in names if n not in self.inputs]
        self.tensors = {}
        for name in self.inputs:
            shape = tuple(engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):  # the build's single optimisation profile: min = opt = max
                shape = tuple(engine.get_tensor_profile_shape(name, 0)[1])
            self.context.set_input_shape(name, shape)
            self.tensors[name] = self._allocate(trt, name, shape)
        for name in self.outputs_:
            self.tensors[name] = self._allocate(trt, name, tuple(self.context.get_tensor_shape(name)))
        for name, t in self.tensors.items():
            self.context.set_tensor_address(name, t.data_ptr())
        self.example = example_input(tuple(self.tensors[self.inputs[0]].shape))
        self._load(self.example)

    def _allocate(self, trt, name, shape):
        import torch
        dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
        return torch.zeros(shape, dtype=dtype, device="cuda")

    def _load(self, x: np.ndarray) -> None:
        import torch
        t = self.tensors[self.inputs[0]]
        if tuple(x.shape) != tuple(t.shape):
            raise UsageError(f"input shape {list(x.shape)} differs from the engine's {list(t.shape)}")
        with torch.cuda.stream(self.stream):
            t.copy_(torch.from_numpy(np.ascontiguousarray(x)).to(t.dtype))
        self.stream.synchronize()

    def run_once(self) -> None:
        """One inference on the input set once; returns when the GPU is done."""
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed; its log above says why")
        self.stream.synchronize()

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        self._load(x)
        self.run_once()
        return [self.tensors[n].float().cpu().numpy() for n in self.outputs_]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.outputs(x)[0]


class TensorRtTarget(Target):
    runtime = "tensorrt"
    package = "tensorrt"
    extra = "tensorrt"

    def __init__(self, spec):
        super().__init__(spec)
        from edgeprune.artifacts import kind_tensorrt as kt
        self.options = self.options_as(TensorRtOptions)
        self.index = cuda_index(spec.device, spec.name)
        kt.check_supported(spec.precision, kt.import_trt().__version__)
        kt.require_cuda(self.index)  # no GPU: one line now, not a CUDA error at the first build
        self._engines: OrderedDict[str, bytes] = OrderedDict()

    @classmethod
    def device_present(cls, spec) -> bool | None:
        if not cls.installed():
            return None
        try:
            return cuda_index(spec.device, spec.name) < hardware.gpu_count()
        except UsageError:
            return False

    def runtime_version(self) -> str:
        import tensorrt
        return tensorrt.__version__

    def artifact_kind(self) -> str:
        """The engine at the target's precision. INT8 deploys its ONNX: a deployable INT8 engine
        is calibrated on real images (``kind_tensorrt.build_engine`` with a ``CalibrationFeeder``
        over the training split), which the pipeline's export step does not have."""
        return {"fp32": "tensorrt", "fp16": "tensorrt-fp16"}.get(self.spec.precision, "onnx")

    def fingerprint(self) -> dict:
        """Base keys (TensorRT version, precision), the GPU and its architecture, the batch, and
        on a Jetson its power mode and whether ``jetson_clocks`` locked the clocks."""
        from edgeprune.artifacts.kind_tensorrt import here
        gpu = here(self.index)
        return {**super().fingerprint(), "gpu": gpu["gpu"], "compute_capability": gpu["compute_capability"],
                "batch": self.spec.batch, **power_fingerprint()}

    def with_busy_share(self, run):
        """The base's reading: the share of the measuring thread's time spent waiting for a CPU
        core. It is kept because every inference here is launched and synchronised by that
        thread (a starved launcher delays small engines measurably, most on a Jetson's CPU).
        Other processes' kernels on the GPU are not seen: NVML's utilisation counts our own
        work too and a Jetson has no NVML, so a GPU shared with other jobs must be kept quiet
        by the user; a failure read there is not marked inconclusive."""
        return super().with_busy_share(run)

    # --- engines ------------------------------------------------------------------------------

    def settings(self):
        from edgeprune.artifacts.kind_tensorrt import BuildSettings
        cache = Path(self.options.timing_cache).expanduser() if self.options.timing_cache else None
        return BuildSettings(precision=self.spec.precision, batch=self.spec.batch,
                             workspace_mb=self.options.workspace_mb, timing_cache=cache, device=self.index)

    def engine(self, path):
        """(runtime, engine) for an ONNX file (built, or reused from this target's last builds)
        or a saved engine (its sidecar checked against this machine first)."""
        from edgeprune.artifacts import kind_tensorrt as kt
        from edgeprune.artifacts.kinds import find_kind
        path = Path(path)
        kind = find_kind(path)
        if kind is not None and kind.module == ENGINE_MODULE:
            return kt.load(path, self.index)
        if not path.is_file():
            raise UsageError(f"{path} {'is a directory' if path.is_dir() else 'does not exist'}")
        settings = self.settings()
        key = hashlib.sha256(path.read_bytes() + repr(settings).encode()).hexdigest()
        if key not in self._engines:
            from edgeprune.artifacts.kind_tensorrt import CalibrationFeeder
            plan, _ = kt.build(path, settings, CalibrationFeeder(limit=self.options.calibration_batches))
            self._engines[key] = plan
            while len(self._engines) > CACHED_ENGINES:
                self._engines.popitem(last=False)
        self._engines.move_to_end(key)
        kt.require_cuda(self.index)
        return kt.deserialize(self._engines[key], path.name)

    def compile(self, onnx_path) -> TrtCompiled:
        return TrtCompiled(*self.engine(onnx_path))

    def layer_times(self, onnx_path, runs: int = 10) -> list[NodeTime]:
        """Per-layer medians from ``IProfiler`` over ``runs`` inferences after a warm-up, on a
        context of its own (never the one ``measure`` times)."""
        import tensorrt as trt

        from edgeprune.latency.trtexec_files import LayerGraph
        runtime, engine = self.engine(onnx_path)
        profiler = make_profiler(trt)
        compiled = TrtCompiled(runtime, engine, profiler)
        end, n = time.perf_counter() + self.spec.timing.warmup_s, 0
        while n < WARMUP_RUNS or time.perf_counter() < end:
            compiled.run_once()
            n += 1
        profiler.records.clear()
        for _ in range(runs):
            compiled.run_once()
        inspector = engine.create_engine_inspector()
        graph = parse_layer_info(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        return profile_node_times(list(profiler.records), graph if isinstance(graph, LayerGraph) else None)


def make_profiler(trt):
    """An ``IProfiler`` that records (layer name, ms) as TensorRT reports them, once per layer
    per inference. The class is made here: its base is TensorRT's."""

    class Profiler(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.records: list[tuple[str, float]] = []

        def report_layer_time(self, layer_name, ms):
            self.records.append((str(layer_name), float(ms)))

    return Profiler()


# --- pure functions (tested without TensorRT) ---------------------------------------------------

def cuda_index(device: str, target: str = "") -> int:
    """``cuda``/``gpu`` -> 0, ``cuda:N`` -> N; anything else is a UsageError naming the target."""
    return hardware.cuda_index(device, f"target {target!r}: tensorrt device")


def parse_layer_info(text: str):
    """The engine inspector's JSON as a ``LayerGraph`` (trtexec's ``--exportLayerInfo`` is this
    same document); None when it is not readable (an engine built without detailed verbosity)."""
    import json

    from edgeprune.latency.trtexec_files import LayerGraph
    try:
        return LayerGraph.model_validate(json.loads(text))
    except (ValueError, TypeError):
        return None


def profile_node_times(records: list[tuple[str, float]], graph=None) -> list[NodeTime]:
    """Median time per engine layer over the profiled inferences, in execution order, each
    named by its first ONNX node (``trtexec.layer_nodes``; layers naming none, such as
    reformats, keep TensorRT's name and go to the layer before them in the table)."""
    # imported here: it loads torch, which listing targets must not
    from edgeprune.latency import trtexec
    info = {l.name: l for l in graph.layers} if graph is not None else {}
    times: dict[str, list[float]] = defaultdict(list)
    for name, ms in records:
        times[name].append(ms)
    out = []
    for name, values in times.items():  # dicts keep first-report order: execution order
        layer = info.get(name)
        nodes, _ = trtexec.layer_nodes(name, layer)
        out.append(NodeTime(nodes[0] if nodes else name, layer.layer_type if layer else "", statistics.median(values)))
    return out


def power_fingerprint(nvpmodel: str = "nvpmodel", root: str | Path = "/") -> dict:
    """On a Jetson (``nvpmodel`` answers): its power mode and whether every CPU's clock is
    locked at its maximum (``jetson_clocks``); both None elsewhere, where nothing reconfigures
    a GPU's power this way and a desktop governor would refuse tables for no reason (power.py)."""
    from edgeprune.runtime.power import clocks_locked, compared_power, nvpmodel_mode
    mode = nvpmodel_mode(nvpmodel)
    if mode is None:
        return {"power_mode": None, "clocks_locked": None}
    return {"power_mode": compared_power({"nvpmodel": mode})["power_mode"], "clocks_locked": clocks_locked(root)}

"""PyTorch on the host CPU or an NVIDIA GPU (``device: cpu``, ``cuda`` or ``cuda:N``).

The target is handed ONNX files like every other; it runs them through
``edgeprune.artifacts.onnx_torch`` (the ONNX graph as a torch module, node names kept), so the
profiler, the closed loop and ``check`` need nothing torch-specific. Target options:

  engine: eager | cudagraph | aoti
    eager      the graph's aten ops run one by one (CPU default)
    cudagraph  the same ops captured once in a CUDA graph and replayed: no Python or launch
               cost per kernel (CUDA default); builds in well under a second
    aoti       the AOTInductor package (``torch.export`` + ``aoti_compile_and_package``, the
               ``pt2``/``pt2-cuda`` artifact this target deploys): fused kernels, but each
               model compiles for about 35 s (BENCHMARKS), too slow for a profile's dozens of configurations;
               use it to measure a final model or a deployed package (``check``)

Timing: the shared protocol (``runtime.timing``); on a GPU each run is timed by CUDA events
around it (``DeviceTime``) after the protocol's warm-up, on the CPU by the host clock.

Per-layer times (``layer_times``) come from ``torch.profiler``: each ONNX node runs inside a
``record_function`` scope named after it (eagerly, whatever the engine: compiled code has no
per-node boundaries), and a scope's time is its CPU time on the CPU, or the CUDA kernel time
of the ops launched inside it on a GPU (``FunctionEvent.device_time_total``). The names are
ONNX node names, so ``latency.profile.attribute`` maps them to modules as it does ONNX
Runtime's; the table's end-to-end calibration then absorbs what fusion in the engine saves.
"""
from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import EdgepruneError, UsageError, unknown
from edgeprune.runtime import hardware
from edgeprune.runtime.base import Compiled, NodeTime, Target, example_input
from edgeprune.runtime.cpus import pinned
from edgeprune.runtime.hardware import tool_output
from edgeprune.runtime.timing import DeviceTime

ENGINES = ("eager", "cudagraph", "aoti")
OPTIONS = {"engine": ENGINES}
SCOPE_PREFIX = "edgeprune.node:"
WARMUP_RUNS = 3
GPU_QUERY = ("name", "driver_version", "clocks.applications.graphics", "clocks.applications.memory", "clocks.max.sm")


def cuda_index(device: str) -> int | None:
    """None for ``cpu``; the GPU's index for ``cuda`` (0) or ``cuda:N``; else a UsageError."""
    return hardware.cuda_index(device, "torch device", cpu=True)


@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` inside (AOTInductor's CPU code bakes the count in
    when it compiles), restored after: the setting is process-wide and fine-tuning uses it too."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class TorchCompiled(Compiled):
    """A model ready on its device: ``fire`` runs it on an input held on the device."""

    def __init__(self, forward: Callable, fire: Callable[[], object], static_x, shape, cuda: bool):
        import torch
        self.forward, self.fire, self.static_x, self.cuda = forward, fire, static_x, cuda
        self.example = example_input(shape)
        self.static_x.copy_(torch.from_numpy(self.example))
        if cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch
        with torch.no_grad():
            out = self.forward(torch.from_numpy(np.ascontiguousarray(x)).to(self.static_x.device))
        return (out[0] if isinstance(out, (list, tuple)) else out).float().cpu().numpy()

    def run_once(self):
        """One inference; on a GPU timed by events on the stream and synchronised."""
        if not self.cuda:
            self.fire()
            return None
        self.start.record()
        self.fire()
        self.end.record()
        self.end.synchronize()
        return DeviceTime(self.start.elapsed_time(self.end))


class TorchTarget(Target):
    runtime = "torch"
    package = "torch"

    def __init__(self, spec):
        super().__init__(spec)
        for key, value in spec.options.items():
            if key not in OPTIONS:
                raise unknown(f"torch option in target {spec.name!r}:", key, OPTIONS)
            if value not in OPTIONS[key]:
                raise UsageError(f"target {spec.name!r}: option {key} must be one of {', '.join(OPTIONS[key])}, got {value!r}")
        if spec.precision != "fp32":
            raise UsageError(f"target {spec.name!r}: the torch runtime measures fp32 models (precision {spec.precision} "
                             "is not supported)")
        self.index = cuda_index(spec.device)
        self.engine = spec.options.get("engine", "eager" if self.index is None else "cudagraph")
        if self.index is None and self.engine == "cudagraph":
            raise UsageError(f"target {spec.name!r}: engine cudagraph needs a CUDA device, not {spec.device!r}")
        if not self.device_present(spec):
            import torch
            raise UsageError(f"target {spec.name!r}: no CUDA device {spec.device!r} here (torch {torch.__version__}, "
                             f"CUDA build {torch.version.cuda}, {torch.cuda.device_count()} devices visible)")
        if self.index is not None:
            import torch
            torch.backends.cudnn.benchmark = True  # the fastest convolution algorithm, as deployed
            torch.cuda.set_device(self.index)  # CUDA events record on the current device's stream
        self._packages: dict[str, Path] = {}
        self._work: tempfile.TemporaryDirectory | None = None

    @classmethod
    def device_present(cls, spec) -> bool | None:
        if not cls.installed():
            return None
        try:
            index = cuda_index(spec.device)
        except UsageError:
            return False
        return True if index is None else index < hardware.gpu_count()

    @property
    def device(self) -> str:
        return "cpu" if self.index is None else f"cuda:{self.index}"

    def runtime_version(self) -> str:
        import torch
        return torch.__version__

    def artifact_kind(self) -> str:
        return "pt2" if self.index is None else "pt2-cuda"

    def fingerprint(self) -> dict:
        """The base fingerprint, the engine and batch, and on a GPU its name, compute
        capability, driver, CUDA and cuDNN versions and clocks where nvidia-smi reads them."""
        fp = {**super().fingerprint(), "engine": self.engine, "batch": self.spec.batch}
        return {**fp, **gpu_fingerprint(self.index)} if self.index is not None else fp

    def with_busy_share(self, run):
        """On a GPU, unknown (None): the host's schedstat says nothing about the GPU, and
        nvidia-smi's utilisation is a coarse sample that counts this process's own kernels
        with everyone else's, so it cannot say how much of the time others held the GPU."""
        if self.index is None:
            return super().with_busy_share(run)
        return run(), None

    # --- compile and time ---------------------------------------------------------------------

    def compile(self, onnx_path) -> TorchCompiled:
        import torch

        from edgeprune.artifacts import onnx_torch
        model = onnx_torch.check_onnx(onnx_path)
        shape = onnx_torch.input_shape(model, self.spec.batch)
        static_x = torch.zeros(shape, device=self.device)
        if self.engine == "aoti":
            from edgeprune.artifacts.kind_pt2 import load_package
            forward = load_package(self._package(onnx_path), -1 if self.index is None else self.index)
        else:
            forward = onnx_torch.OnnxModule(model).eval().to(self.device)
        fire = _no_grad(forward, static_x)
        if self.engine == "cudagraph":
            forward, fire = _cuda_graph(forward, static_x)
        return TorchCompiled(forward, fire, static_x, shape, self.index is not None)

    def measure_many(self, onnx_paths: list, timing=None):
        with torch_threads(self.spec.threads):
            return super().measure_many(onnx_paths, timing)

    def measure_alternating(self, path_a, path_b, timing=None):
        with torch_threads(self.spec.threads):
            return super().measure_alternating(path_a, path_b, timing)

    def _package(self, onnx_path) -> Path:
        """The AOTInductor package of ``onnx_path``, compiled once per file content and batch."""
        from edgeprune.artifacts.kind_pt2 import compile_package
        key = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:16] + f"-b{self.spec.batch}"
        if key not in self._packages:
            if self._work is None:
                self._work = tempfile.TemporaryDirectory(prefix="edgeprune-aoti-")
            out = Path(self._work.name) / f"{key}.pt2"
            with torch_threads(self.spec.threads):
                compile_package(onnx_path, out, self.device, self.spec.batch)
            self._packages[key] = out
        return self._packages[key]

    # --- per layer ----------------------------------------------------------------------------

    def layer_times(self, onnx_path, runs: int = 10) -> list[NodeTime]:
        import torch
        from torch.profiler import ProfilerActivity, profile, record_function

        from edgeprune.artifacts import onnx_torch
        model = onnx_torch.check_onnx(onnx_path)
        module = onnx_torch.OnnxModule(model).eval().to(self.device)
        x = torch.from_numpy(example_input(onnx_torch.input_shape(model, self.spec.batch))).to(self.device)
        cuda = self.index is not None
        if not cuda:  # a CUDA build of torch on a host without a GPU: kineto's failed GPU probe is noise here
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_threads(self.spec.threads), pinned(self.spec.threads), torch.no_grad():
            end, n = time.perf_counter() + self.spec.timing.warmup_s, 0
            while n < WARMUP_RUNS or time.perf_counter() < end:
                module(x)
                n += 1
            _sync(cuda)
            module.scope = lambda name: record_function(SCOPE_PREFIX + name)
            with profile(activities=activities) as prof:
                for _ in range(runs):
                    module(x)
                _sync(cuda)
        records = scope_records(prof.events(), cuda)
        if cuda and records and not any(ms > 0 for _, ms in records):
            raise EdgepruneError("torch.profiler recorded no CUDA kernel time (is CUPTI available to this process?); "
                                 "per-layer times cannot be measured on this GPU")
        return node_times(records, {name: op for name, op, *_ in module.nodes})


def _no_grad(forward: Callable, x) -> Callable[[], object]:
    import torch

    def fire():
        with torch.no_grad():
            return forward(x)
    return fire


def _cuda_graph(module, static_x) -> tuple[Callable, Callable[[], object]]:
    """(forward, fire) replaying ``module`` on ``static_x`` from one captured CUDA graph; the
    warm-up runs on a side stream first (cuDNN picks its algorithms there, not in the capture)."""
    import torch
    stream = torch.cuda.Stream(device=static_x.device)
    stream.wait_stream(torch.cuda.current_stream(static_x.device))
    with torch.no_grad(), torch.cuda.stream(stream):
        for _ in range(WARMUP_RUNS):
            module(static_x)
    torch.cuda.current_stream(static_x.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = module(static_x)
    replay = GraphReplay(module, graph, static_x, static_out)
    return replay.forward, replay.fire


class GraphReplay:
    """A captured graph and everything it reads. A CUDA graph holds raw addresses, not
    references: the module's weights must stay alive as long as the graph can be replayed, or
    the allocator hands their memory to something else and a replay reads garbage or faults
    (seen on the H200: outputs of 1e6 and an illegal memory access)."""

    def __init__(self, module, graph, static_x, static_out):
        self.module, self.graph, self.static_x, self.static_out = module, graph, static_x, static_out

    def forward(self, x):
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_out.clone()

    def fire(self):
        self.graph.replay()


def _sync(cuda: bool) -> None:
    if cuda:
        import torch
        torch.cuda.synchronize()


def scope_records(events, cuda: bool) -> list[tuple[str, float]]:
    """(ONNX node name, ms) of each node scope the profiler recorded, in start order: the host
    CPU time inside the scope, or on a GPU the kernel time of the ops launched inside it (the
    scope's GPU-side copy is left out, or each node would count twice)."""
    from torch.autograd import DeviceType
    found = [e for e in events if e.name.startswith(SCOPE_PREFIX) and e.device_type == DeviceType.CPU]
    found.sort(key=lambda e: e.time_range.start)
    return [(e.name[len(SCOPE_PREFIX):], (e.device_time_total if cuda else e.cpu_time_total) / 1e3) for e in found]


def node_times(records: list[tuple[str, float]], ops: dict[str, str]) -> list[NodeTime]:
    """Per-node medians over the profiled runs, in first-run order (a node's k-th time in a
    run is its k-th record: each run records every node once)."""
    order: list[str] = []
    times: dict[str, list[float]] = defaultdict(list)
    for name, ms in records:
        if name not in times:
            order.append(name)
        times[name].append(ms)
    return [NodeTime(name, ops.get(name, ""), statistics.median(times[name])) for name in order]


# --- the GPU's fingerprint ---------------------------------------------------------------------

def parse_gpu_query(text: str) -> dict:
    """One line of ``nvidia-smi --query-gpu=<GPU_QUERY> --format=csv,noheader,nounits`` as
    {driver, clocks}; fields nvidia-smi cannot read ("[N/A]", "[Not Supported]") are None."""
    line = next((l for l in text.splitlines() if l.strip()), "")
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != len(GPU_QUERY):
        return {"gpu_driver": None, "gpu_clocks_mhz": None}
    value = dict(zip(GPU_QUERY, parts))
    readable = lambda v: v if v and not v.startswith("[") else None  # noqa: E731
    clocks = {"app_graphics": readable(value["clocks.applications.graphics"]),
              "app_memory": readable(value["clocks.applications.memory"]), "max_sm": readable(value["clocks.max.sm"])}
    return {"gpu_driver": readable(value["driver_version"]),
            "gpu_clocks_mhz": ",".join(f"{k}={v}" for k, v in clocks.items() if v) or None}


def gpu_fingerprint(index: int) -> dict:
    """What must match for a GPU latency to count: the GPU model and compute capability, the
    driver, CUDA and cuDNN versions, and the application/max clocks (fixed settings, not the
    current clock, which moves from one read to the next)."""
    import torch
    major, minor = torch.cuda.get_device_capability(index)
    smi = tool_output("nvidia-smi", "-i", str(index), f"--query-gpu={','.join(GPU_QUERY)}",
                      "--format=csv,noheader,nounits", timeout_s=3.0)
    return {"gpu_name": torch.cuda.get_device_name(index), "gpu_capability": f"{major}.{minor}",
            "cuda_version": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version(),
            **parse_gpu_query(smi or "")}

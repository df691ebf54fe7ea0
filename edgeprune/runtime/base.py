"""The interface every runtime implements: compile an ONNX model, run it, time it end to end
and per layer. One module per runtime; the timing protocol lives in ``edgeprune.runtime.timing``."""
from __future__ import annotations

import os
import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgeprune.runtime.cpus import pinned
from edgeprune.runtime.spec import TargetSpec, TimingSpec
from edgeprune.runtime.timing import (
    Alternation,
    Latency,
    measure_alternating,
    measure_interleaved,
)


@dataclass(frozen=True)
class NodeTime:
    """One runtime node's median time. ``name`` is an ONNX node name or the name of the ONNX
    tensor the (possibly fused) node produces; the profiler maps it back to a module."""

    name: str
    op: str
    ms: float


class Compiled(ABC):
    """A model loaded into a runtime, ready to run on a fixed input."""

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray: ...

    def run_once(self) -> None:
        self.run(self.example)

    example: np.ndarray


class Target(ABC):
    """One runtime on one device, configured by a TargetSpec."""

    runtime: ClassVar[str]
    package: ClassVar[str]
    extra: ClassVar[str | None] = None

    def __init__(self, spec: TargetSpec):
        self.spec = spec

    @classmethod
    def installed(cls) -> bool:
        """Whether the runtime's package can be imported here (cheap, no import)."""
        import importlib.util
        return importlib.util.find_spec(cls.package) is not None

    @classmethod
    def device_present(cls, spec: TargetSpec) -> bool | None:
        """Whether the spec's device is present here (None: cannot tell, the runtime is not
        installed). The host CPU always is; runtimes for other devices ask their runtime."""
        return True if cls.installed() else None

    @abstractmethod
    def runtime_version(self) -> str: ...

    @abstractmethod
    def compile(self, onnx_path: str | Path) -> Compiled: ...

    @abstractmethod
    def layer_times(self, onnx_path: str | Path, runs: int = 10) -> list[NodeTime]:
        """Per-node medians over ``runs`` profiled runs, in execution order."""

    def measure(self, onnx_path: str | Path, timing: TimingSpec | None = None) -> Latency:
        """End-to-end latency of one inference under the shared timing protocol."""
        return self.measure_many([onnx_path], timing)[0]

    def measure_many(self, onnx_paths: list, timing: TimingSpec | None = None) -> list[Latency]:
        """Several models measured interleaved (window by window, round robin), so a slow
        period on a shared machine hits all of them instead of biasing one; pinned to
        ``threads`` CPUs so the scheduler does not migrate the run between cores."""
        compiled = [self.compile(p) for p in onnx_paths]
        with pinned(self.spec.threads):
            return measure_interleaved([c.run_once for c in compiled], timing or self.spec.timing)

    def measure_alternating(self, path_a, path_b, timing: TimingSpec | None = None) -> Alternation:
        """Two models in short alternating blocks (``timing.measure_alternating``): the
        measurement a same-run comparison rests on."""
        a, b = self.compile(path_a), self.compile(path_b)
        with pinned(self.spec.threads):
            return measure_alternating(a.run_once, b.run_once, timing or self.spec.timing)

    def artifact_kind(self) -> str:
        """The export format (``edgeprune.artifacts.export.KINDS``) this target deploys; the pipeline
        writes it beside model.onnx when it is not ONNX itself."""
        return "onnx"

    def fingerprint(self) -> dict:
        """What must match for a latency table measured elsewhere to be trusted here."""
        return {"runtime": self.runtime, "runtime_version": self.runtime_version(),
                "device": self.spec.device, "threads": self.spec.threads,
                "precision": self.spec.precision, **host_fingerprint()}


# CPU features that select different kernels in the runtimes (OpenVINO runs BF16 by default
# where avx512_bf16/AMX exist; MLAS blocks NCHWc by 16 with AVX-512, by 8 with AVX2)
ISA_FLAGS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "asimdhp", "sve"}


def host_fingerprint() -> dict:
    """CPU model, ISA features that change kernels, and core count of this host."""
    cpu, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not cpu.strip():
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
            if cpu and flags:
                break
    except OSError:
        pass
    isa = sorted(f for f in flags if f in ISA_FLAGS)
    return {"host_cpu": cpu or platform.machine(), "host_isa": isa, "host_cores": os.cpu_count(),
            "host_arch": platform.machine()}


def example_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)

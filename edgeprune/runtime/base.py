"""The interface every runtime implements: compile an ONNX model, run it, time it end to end
and per layer. One module per runtime; the timing protocol lives in ``edgeprune.runtime.timing``."""
from __future__ import annotations

import os
import platform
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, TypeVar

import numpy as np

from edgeprune.runtime.cpus import cpu_wait_ns, pinned
from edgeprune.runtime.spec import TargetSpec, TimingSpec
from edgeprune.runtime.timing import (
    Alternation,
    Latency,
    measure_alternating,
    measure_interleaved,
)

T = TypeVar("T")
M = TypeVar("M")
MIN_GUARDED_S = 0.25  # shorter measurements (fake targets) are too short to judge contention
MAX_BUSY_SHARE = 0.05  # a measurement whose device was busy with other work more than this share
#                        of its time is "disturbed": a failure read then proves nothing


def too_busy(share: float | None) -> bool:
    """Whether a ``Target.with_busy_share`` reading says the device was too busy for a failing
    measurement to count (None: unknown, so not known to be busy). One threshold for ``check``'s
    regressions and ``prune``'s budget verdict."""
    return share is not None and share > MAX_BUSY_SHARE


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

    def options_as(self, model: type[M]) -> M:
        """The target file's ``options:`` block validated by the runtime's own pydantic
        ``model``; a wrong key or value is one UsageError line naming the target and option."""
        from pydantic import ValidationError

        from edgeprune.errors import UsageError
        try:
            return model.model_validate(self.spec.options)
        except ValidationError as e:
            err = e.errors()[0]
            raise UsageError(f"target {self.spec.name!r}: option {'.'.join(map(str, err['loc']))}: {err['msg']}") from None

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

    def with_busy_share(self, run: Callable[[], T]) -> tuple[T, float | None]:
        """``run()`` (a measurement) and the share of its wall time the device was busy with
        something else, None when unknown or too short to judge. ``check`` reports a failure
        measured on a busy device as inconclusive. Here the device is this host's CPU: the
        time the measuring thread waited for a core (Linux schedstat). A target that measures
        elsewhere (a board over the network, a GPU) asks its device instead."""
        wait0, t0 = cpu_wait_ns(), time.perf_counter()
        out = run()
        wait1, wall = cpu_wait_ns(), time.perf_counter() - t0
        known = wait0 is not None and wait1 is not None and wall >= MIN_GUARDED_S
        return out, (round((wait1 - wait0) / 1e9 / wall, 4) if known else None)

    @contextmanager
    def job_scope(self, key: str):
        """Measurements inside belong to one resumable unit of work (a profile's chunk) named
        ``key``. A local target measures in this process and has nothing to resume; a remote
        one derives its job ids from ``key``, so a rerun after a killed client gets the
        agent's stored results for the jobs it had already sent (``RemoteTarget``)."""
        yield

    def artifact_kind(self) -> str:
        """The export format (``edgeprune.artifacts.kinds.KINDS``) this target deploys; the pipeline
        writes it beside model.onnx when it is not ONNX itself."""
        return "onnx"

    def fingerprint(self) -> dict:
        """What must match for a latency measured elsewhere (a table, a baseline) to count here.

        Every key is compared (``fingerprint_mismatches``): a runtime that adds a condition
        (ONNX Runtime's provider and model format, OpenVINO's device names) adds it here, and
        tables and baselines both compare it from then on."""
        return {"runtime": self.runtime, "runtime_version": self.runtime_version(),
                "device": self.spec.device, "threads": self.spec.threads,
                "precision": self.spec.precision, **host_fingerprint()}


def fingerprint_mismatches(recorded: dict, here: dict) -> dict[str, tuple]:
    """{key: (recorded, here)} for each condition of ``here`` (a target's fingerprint, plus
    whatever the caller adds, e.g. a table's model signature) that ``recorded`` also has and
    that differs. The one definition of "measured under the same conditions": tables and
    baselines kept lists of their own, and they had diverged (issue 10). A list read back from
    JSON equals the tuple it was written from."""
    norm = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
    return {k: (recorded[k], v) for k, v in here.items() if k in recorded and norm(recorded[k]) != norm(v)}


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

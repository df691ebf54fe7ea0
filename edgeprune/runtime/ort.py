"""ONNX Runtime (CPU execution provider by default). Per-layer times come from ORT's own
profiler: one ``kernel_time`` event per node per run, named after the fused node.

Target options (``options:`` in the target file):
  format: onnx | ort   ``ort`` measures the model converted to ONNX Runtime Mobile's ORT format
                       (optimised without the x86-only NCHWc layouts, as a phone runs it)
  fallback: cpu        the provider to use when ``device``'s is missing from this onnxruntime
                       (said once on stderr and recorded in the table's fingerprint)
"""
from __future__ import annotations

import bisect
import json
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeprune.errors import UsageError, is_bad_input, unknown
from edgeprune.runtime.base import Compiled, NodeTime, Target, example_input
from edgeprune.runtime.cpus import pinned

SUFFIXES = ("_kernel_time", "_nchwc")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "xnnpack": "XnnpackExecutionProvider"}
OPTIONS = {"format": ("onnx", "ort"), "fallback": tuple(PROVIDERS)}
_warned: set[str] = set()


class OrtCompiled(Compiled):
    def __init__(self, session, shape):
        self.session = session
        self.input = session.get_inputs()[0].name
        self.example = example_input(shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


class OrtTarget(Target):
    runtime = "onnxruntime"
    package = "onnxruntime"

    def __init__(self, spec):
        super().__init__(spec)
        for key, value in spec.options.items():
            if key not in OPTIONS:
                raise unknown(f"onnxruntime option in target {spec.name!r}:", key, OPTIONS)
            if value not in OPTIONS[key]:
                raise UsageError(f"target {spec.name!r}: option {key} must be one of "
                                 f"{', '.join(OPTIONS[key])}, got {value!r}")
        self.format = spec.options.get("format", "onnx")

    def runtime_version(self) -> str:
        import onnxruntime
        return onnxruntime.__version__

    def provider(self) -> str:
        """The execution provider runs use: the device's, else the target's fallback (said once)."""
        import onnxruntime as ort
        available = ort.get_available_providers()
        wanted = PROVIDERS.get(self.spec.device, self.spec.device)
        if wanted in available:
            return wanted
        fallback = self.spec.options.get("fallback")
        if not fallback:
            raise UsageError(f"onnxruntime here has no {wanted} (device {self.spec.device!r}); "
                             f"available: {', '.join(available)}")
        if self.spec.name not in _warned:
            _warned.add(self.spec.name)
            print(f"edgeprune: onnxruntime {ort.__version__} here has no {wanted}; target "
                  f"{self.spec.name!r} measures with its fallback {PROVIDERS[fallback]}", file=sys.stderr)
        return PROVIDERS[fallback]

    def artifact_kind(self) -> str:
        return self.format

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "provider": self.provider(), "model_format": self.format}

    def _options(self, profile_prefix: str | None = None):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.spec.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        return so

    def _session(self, onnx_path, profile_prefix=None):
        """A session on the model as the device runs it. In ORT format the per-layer profile is
        taken on the ONNX with the same optimisations (NCHWc off), whose node names map back to
        modules; timing runs load the converted .ort file itself."""
        import onnxruntime as ort

        from edgeprune.artifacts.kinds import find_kind
        provider = self.provider()
        disabled = ["NchwcTransformer"] if self.format == "ort" else []
        given = find_kind(onnx_path)
        convert = self.format == "ort" and not profile_prefix and not (given and given.name == "ort")
        try:
            with tempfile.TemporaryDirectory() as tmp:  # the session keeps its own copy
                path = to_ort_format(onnx_path, Path(tmp) / "model.ort") if convert else onnx_path
                return ort.InferenceSession(str(path), self._options(profile_prefix), providers=[provider],
                                            disabled_optimizers=disabled)
        except Exception as e:  # ORT raises its own exception types for bad files
            if not is_bad_input(e, "onnxruntime"):
                raise  # out of memory, or a bug: not the user's file
            raise UsageError(f"onnxruntime cannot load {onnx_path}: {str(e).splitlines()[0]}") from None

    def compile(self, onnx_path) -> OrtCompiled:
        session = self._session(onnx_path)
        return OrtCompiled(session, _input_shape(session, self.spec.batch))

    def layer_times(self, onnx_path, runs: int = 10) -> list[NodeTime]:
        with tempfile.TemporaryDirectory() as tmp:
            session = self._session(onnx_path, profile_prefix=os.path.join(tmp, "ort"))
            x = example_input(_input_shape(session, self.spec.batch))
            name = session.get_inputs()[0].name
            with pinned(self.spec.threads):
                for _ in range(3):
                    session.run(None, {name: x})
                for _ in range(runs):
                    session.run(None, {name: x})
            trace = Path(session.end_profiling())
            events = json.loads(trace.read_text())
        return parse_ort_profile(events, skip_runs=3)


def to_ort_format(onnx_path, out) -> Path:
    """ONNX -> ORT format, the recipe of onnxruntime.tools.convert_onnx_models_to_ort: all graph
    optimisations except the x86-only NCHWc layouts, saved as a flatbuffer."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(out)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.add_session_config_entry("session.qdqisint8allowed", "0")
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["NchwcTransformer"])
    return Path(out)


def parse_ort_profile(events: list[dict], skip_runs: int = 0) -> list[NodeTime]:
    """Median per-node kernel time over the runs after the first ``skip_runs``; a node event
    belongs to the ``model_run`` whose interval contains it."""
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    per_run: list[list[tuple[str, str, float]]] = [[] for _ in starts] or [[]]
    for e in nodes:
        run = max(bisect.bisect_right(starts, e["ts"]) - 1, 0)
        per_run[run].append((_strip(e["name"]), e.get("args", {}).get("op_name", ""), e["dur"] / 1e3))
    per_run = [r for r in per_run[skip_runs:] if r] or [r for r in per_run if r]
    order: list[tuple[str, str]] = []
    times: dict[str, list[float]] = defaultdict(list)
    for run in per_run:
        seen: dict[str, int] = defaultdict(int)
        for name, op, ms in run:
            key = f"{name}#{seen[name]}"
            seen[name] += 1
            if key not in times:
                order.append((key, op))
            times[key].append(ms)
    return [NodeTime(key.rsplit("#", 1)[0], op, statistics.median(times[key])) for key, op in order]


def _strip(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _input_shape(session, batch: int) -> tuple[int, ...]:
    shape = session.get_inputs()[0].shape
    return tuple(batch if not isinstance(d, int) else d for d in shape)

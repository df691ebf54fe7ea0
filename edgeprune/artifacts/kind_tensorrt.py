"""TensorRT engines (``.plan``/``.engine``): built from the ONNX file with the TensorRT Python API.

A serialized engine runs only on the TensorRT version and GPU architecture that built it, and
carries nothing readable about either, so every engine gets a JSON sidecar (``model.plan.json``,
the kind's companion): TensorRT version, GPU name and compute capability, precision, batch, the
I/O shapes, the engine's SHA-256 and the ``edgeprune`` metadata of the ONNX file it was built
from. Loading compares the sidecar with this machine and refuses a foreign engine in one line
(TensorRT itself would fail to deserialize it, or crash).

The build: FP32, or the FP16 / INT8 builder flags (TensorRT then picks per layer among the
allowed precisions; FP32 clears TensorRT's default TF32 so that it matches PyTorch within the
FP32 tolerance), a workspace limit, ``DETAILED`` profiling verbosity (layer names and their
ONNX nodes for the IProfiler and the engine inspector; it changes what NVTX and the inspector
show, not the kernels: trtexec's published profiles in tests/fixtures/tensorrt were timed on
such engines), and a timing cache file reused across builds (a pruning profile builds dozens of
engines of one model; with the cache, tactics measured once are not measured again).
INT8 takes a calibrator fed by :class:`CalibrationFeeder` (real images for a deployed engine;
seeded random inputs when only the latency matters, as ``trtexec --int8`` without a cache).

TensorRT 11 removed the precision flags and the calibrators (networks are strongly typed): there
FP32 builds as before and FP16/INT8 are refused with the way forward. tensorrt and torch's CUDA
are imported inside the functions; the pure parts (sidecar, compatibility, feeder) need neither.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgeprune.errors import EdgepruneError, MissingBackend, UsageError

FORMAT = "edgeprune-tensorrt-engine"
SIDECAR_VERSION = 1
MIN_VERSION = (8, 5)  # name-based I/O (set_tensor_address, execute_async_v3)
DEFAULT_WORKSPACE_MB = 1024
DEFAULT_CALIBRATION_BATCHES = 8
ENGINE_KEYS = ("tensorrt_version", "gpu", "compute_capability", "precision", "batch", "inputs", "outputs", "sha256")


# --- pure parts (no tensorrt) ---------------------------------------------------------------------

def version_tuple(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0"])[:2]
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def check_supported(precision: str, version: str) -> None:
    """UsageError unless this TensorRT can build ``precision``: 8.5 or newer; FP16/INT8 flags
    only before 11, which made every network strongly typed."""
    if version_tuple(version) < MIN_VERSION:
        raise UsageError(f"TensorRT {version} is too old: edgeprune needs {'.'.join(map(str, MIN_VERSION))} or newer "
                         "(name-based I/O); JetPack 6 ships TensorRT 10")
    if version_tuple(version)[0] >= 11 and precision != "fp32":
        raise UsageError(f"TensorRT {version} has no {precision.upper()} builder flag (TensorRT 11 builds strongly "
                         f"typed networks only): use precision fp32, convert the ONNX with NVIDIA ModelOpt "
                         f"(AutoCast for FP16, Q/DQ for INT8) first, or use TensorRT 10 (JetPack 6)")


def static_shape(dims: Iterable[int], batch: int, name: str = "input") -> tuple[int, ...]:
    """A network input's shape with a dynamic batch (-1 first) set to ``batch``; any other
    dynamic dimension is a UsageError (export the ONNX at a fixed input size)."""
    shape = list(dims)
    if shape and shape[0] < 0:
        shape[0] = batch
    if any(d < 0 for d in shape):
        raise UsageError(f"input {name!r} has dynamic dimensions {list(dims)}: only the batch may be dynamic; "
                         "export the model at a fixed input size")
    return tuple(shape)


def sidecar_path(engine: Path) -> Path:
    """``model.plan`` -> ``model.plan.json`` (the kinds' companion suffix)."""
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: Path) -> dict:
    """The sidecar of ``engine``, checked for shape; one UsageError line when missing or wrong."""
    path = sidecar_path(Path(engine))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path.name} is missing: a TensorRT engine needs its sidecar to say which TensorRT "
                         f"and GPU built it; rebuild {Path(engine).name} from its ONNX") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not a TensorRT engine sidecar: {getattr(e, 'msg', None) or e}") from None
    engine_info = data.get("engine") if isinstance(data, dict) else None
    if not isinstance(engine_info, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{path} is not a TensorRT engine sidecar (no {FORMAT!r} format and engine section)")
    missing = [k for k in ENGINE_KEYS if k not in engine_info]
    if missing:
        raise UsageError(f"{path} lacks {', '.join(missing)}")
    data.setdefault("metadata", {})
    return data


def write_sidecar(engine: Path, info: dict, metadata: dict[str, object]) -> Path:
    from edgeprune.artifacts.onnxio import atomic_write
    body = {"format": FORMAT, "version": SIDECAR_VERSION, "engine": info,
            "metadata": {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in metadata.items()}}
    with atomic_write(sidecar_path(engine)) as tmp:
        Path(tmp).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return sidecar_path(engine)


def check_compatible(name: str, built: dict, here: dict) -> None:
    """One UsageError line when the engine ``name`` was built (``built``: its sidecar's engine
    section) for another TensorRT version or GPU architecture than ``here`` (same keys). The
    GPU's name is reported, not compared: two GPUs of one compute capability run each other's
    engines (TensorRT warns; the latency is the fingerprint's business)."""
    keys = ("tensorrt_version", "compute_capability")
    if all(str(built.get(k)) == str(here.get(k)) for k in keys):
        return
    raise UsageError(f"{name} was built with TensorRT {built.get('tensorrt_version')} for {built.get('gpu')} "
                     f"(compute capability {built.get('compute_capability')}); here: TensorRT "
                     f"{here.get('tensorrt_version')} on {here.get('gpu')} (compute capability "
                     f"{here.get('compute_capability')}): engines do not move between TensorRT versions or "
                     f"GPU architectures; rebuild it here from its ONNX")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CalibrationFeeder:
    """The inputs an INT8 calibration sees, prepared before the build (TensorRT calls the
    calibrator from C++, where a Python exception cannot explain itself): up to ``limit``
    arrays of the network's input shape, from ``items`` (arrays, tensors or ``(input, label)``
    pairs, as a DataLoader of ``artifacts.int8.calibration_loader`` yields), else seeded random
    inputs, which give real INT8 kernels and timings but meaningless ranges (timing only)."""

    def __init__(self, items: Iterable | None = None, limit: int = DEFAULT_CALIBRATION_BATCHES, seed: int = 0):
        if limit < 1:
            raise UsageError(f"calibration batches must be >= 1, got {limit}")
        self.items, self.limit, self.seed = items, limit, seed

    @property
    def random(self) -> bool:
        return self.items is None

    def batches(self, shape: tuple[int, ...]) -> list[np.ndarray]:
        from edgeprune.runtime.base import example_input
        if self.items is None:
            return [example_input(shape, self.seed + i) for i in range(self.limit)]
        from edgeprune.artifacts.int8 import _as_input
        out = []
        for item in self.items:
            if len(out) == self.limit:
                break
            x = _as_input(item)
            if x.shape != tuple(shape):
                raise UsageError(f"calibration inputs have shape {list(x.shape)}, the engine takes {list(shape)}")
            out.append(x)
        if not out:
            raise UsageError("the calibration set is empty")
        return out

    def describe(self, n: int) -> dict:
        return {"batches": n, "source": "random (latency only)" if self.random else "data"}


# --- TensorRT -------------------------------------------------------------------------------------

def import_trt(what: str = "the tensorrt target"):
    """tensorrt, or MissingBackend with the install hint."""
    if importlib.util.find_spec("tensorrt") is None:
        raise MissingBackend("tensorrt", "tensorrt", what=what)
    import tensorrt
    return tensorrt


_LOGGER = None


def logger():
    """One ``trt.Logger`` per process (TensorRT expects a single logger), warnings and errors."""
    global _LOGGER
    if _LOGGER is None:
        trt = import_trt()
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def require_cuda(index: int = 0) -> None:
    import torch
    if not torch.cuda.is_available() or torch.cuda.device_count() <= index:
        raise UsageError(f"TensorRT needs an NVIDIA GPU (cuda:{index}); torch sees "
                         f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA device(s) here")
    torch.cuda.set_device(index)  # TensorRT builds and runs on the calling thread's current device


def here(index: int = 0) -> dict:
    """This machine's TensorRT version and GPU, as a sidecar records them."""
    import torch
    trt = import_trt()
    major, minor = torch.cuda.get_device_capability(index)
    return {"tensorrt_version": trt.__version__, "gpu": torch.cuda.get_device_name(index),
            "compute_capability": f"{major}.{minor}"}


def default_timing_cache(info: dict) -> Path:
    """``$XDG_CACHE_HOME/edgeprune/tensorrt/timing-<version>-sm<cc>.cache``: tactic timings are
    valid for one TensorRT version on one GPU architecture, so the name holds both."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cc = str(info["compute_capability"]).replace(".", "")
    return base / "edgeprune" / "tensorrt" / f"timing-{info['tensorrt_version']}-sm{cc}.cache"


@dataclass(frozen=True)
class BuildSettings:
    precision: str = "fp32"
    batch: int = 1
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    timing_cache: Path | None = None  # None: default_timing_cache
    device: int = 0


def build(onnx_file: Path, settings: BuildSettings, calibration: CalibrationFeeder | None = None) -> tuple[bytes, dict]:
    """(serialized engine, its sidecar's engine section) from ``onnx_file``."""
    trt = import_trt()
    check_supported(settings.precision, trt.__version__)
    require_cuda(settings.device)
    info = here(settings.device)
    builder = trt.Builder(logger())
    explicit = 0 if version_tuple(trt.__version__)[0] >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(explicit)
    parser = trt.OnnxParser(network, logger())
    if not parser.parse_from_file(str(onnx_file)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise UsageError(f"TensorRT cannot parse {Path(onnx_file).name}: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    inputs = {}
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs[tensor.name] = static_shape(tuple(tensor.shape), settings.batch, tensor.name)
        profile.set_shape(tensor.name, inputs[tensor.name], inputs[tensor.name], inputs[tensor.name])
    dynamic = any(d < 0 for i in range(network.num_inputs) for d in network.get_input(i).shape)
    if dynamic:
        config.add_optimization_profile(profile)
    calibrator = None
    if settings.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: FP32 means FP32 (TF32 keeps 10 mantissa bits)
    if settings.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif settings.precision == "int8":
        if len(inputs) != 1:
            raise UsageError(f"INT8 calibration feeds one input; {Path(onnx_file).name} has {len(inputs)}")
        config.set_flag(trt.BuilderFlag.INT8)
        feeder = calibration or CalibrationFeeder()
        batches = feeder.batches(next(iter(inputs.values())))
        calibrator = make_calibrator(trt, batches)
        config.int8_calibrator = calibrator
        if dynamic:
            config.set_calibration_profile(profile)
        info["calibration"] = feeder.describe(len(batches))
    cache_path = Path(settings.timing_cache) if settings.timing_cache else default_timing_cache(info)
    cache = config.create_timing_cache(_read_bytes(cache_path))
    config.set_timing_cache(cache, ignore_mismatch=True)  # a stale cache costs time, never correctness
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgepruneError(f"TensorRT could not build an engine from {Path(onnx_file).name} at {settings.precision} "
                             f"(workspace {settings.workspace_mb} MB); its log above says why")
    _save_timing_cache(cache_path, cache)
    outputs = {network.get_output(i).name: list(network.get_output(i).shape) for i in range(network.num_outputs)}
    info.update(precision=settings.precision, batch=settings.batch, workspace_mb=settings.workspace_mb,
                inputs={k: list(v) for k, v in inputs.items()}, outputs=outputs, timing_cache=str(cache_path))
    return bytes(plan), info


def make_calibrator(trt, batches: list[np.ndarray]):
    """An ``IInt8EntropyCalibrator2`` handing TensorRT the prepared ``batches`` one by one from
    a CUDA buffer torch owns (no pycuda). The class is made here: its base is TensorRT's."""
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.pending = list(batches)
            self.buffer = torch.empty(batches[0].shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self):
            return int(batches[0].shape[0])

        def get_batch(self, names):
            if not self.pending:
                return None
            self.buffer.copy_(torch.from_numpy(self.pending.pop(0)))
            torch.cuda.current_stream().synchronize()  # TensorRT reads it on its own stream
            return [int(self.buffer.data_ptr())] * len(names)

        def read_calibration_cache(self):
            return None  # calibrated afresh: a cache would hide the data it came from

        def write_calibration_cache(self, cache):
            return None

    return Calibrator()


def build_engine(onnx_file: Path, out: Path, settings: BuildSettings, calibration: CalibrationFeeder | None = None,
                 metadata: dict[str, object] | None = None) -> Path:
    """Build and save an engine at ``out`` with its sidecar (written first: a reader that finds
    the engine finds its sidecar), each atomically. ``metadata`` adds to the ONNX file's."""
    from edgeprune.artifacts.kind_onnx import read_metadata as onnx_metadata
    from edgeprune.artifacts.onnxio import atomic_write
    plan, info = build(Path(onnx_file), settings, calibration)
    out = Path(out)
    info["sha256"] = hashlib.sha256(plan).hexdigest()
    write_sidecar(out, info, {**onnx_metadata(Path(onnx_file)), **(metadata or {})})
    with atomic_write(out) as tmp:
        Path(tmp).write_bytes(plan)
    return out


def load(path: Path, device: int = 0):
    """(runtime, engine) of a saved engine, refused in one line when it is not this machine's."""
    import_trt()  # MissingBackend before anything is read
    check(path)
    require_cuda(device)
    check_compatible(path.name, read_sidecar(path)["engine"], here(device))
    return deserialize(path.read_bytes(), path.name)


def deserialize(plan: bytes, name: str):
    trt = import_trt()
    runtime = trt.Runtime(logger())
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise UsageError(f"TensorRT could not deserialize {name}; its log above says why")
    return runtime, engine


# --- the kind's interface (edgeprune.artifacts.kinds) ---------------------------------------------

def convert(onnx_file: Path, out: Path, kind) -> None:
    """An engine at the kind's precision (FP32 or FP16), batch as exported, default settings."""
    build_engine(onnx_file, out, BuildSettings(precision=kind.precision))


def runner(path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    from edgeprune.runtime.tensorrt import TrtCompiled
    runtime, engine = load(path)
    compiled = TrtCompiled(runtime, engine)
    return compiled.outputs


def read_metadata(path: Path) -> dict[str, str]:
    """The ONNX file's metadata, then what the engine was built for (as strings)."""
    data = read_sidecar(path)
    built = {k: v if isinstance(v, str) else json.dumps(v) for k, v in data["engine"].items()
             if k in ("tensorrt_version", "gpu", "compute_capability", "precision", "batch")}
    return {**data["metadata"], **built}


def write_metadata(path: Path, metadata: dict[str, object]) -> None:
    """Add to the sidecar's metadata (the engine itself is left as built)."""
    data = read_sidecar(path)
    write_sidecar(path, data["engine"], {**data["metadata"], **metadata})


def check(path: Path) -> None:
    """The sidecar is whole and describes this engine file (its SHA-256)."""
    path = Path(path)
    data = read_sidecar(path)
    if path.stat().st_size == 0:
        raise UsageError(f"{path} is empty, not a TensorRT engine")
    if sha256(path) != data["engine"]["sha256"]:
        raise UsageError(f"{sidecar_path(path).name} describes another engine than {path.name} (SHA-256 differs); "
                         "rebuild the engine or copy both files together")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _save_timing_cache(path: Path, cache) -> None:
    """Write the grown cache atomically; a cache that cannot be written only costs time next build."""
    from edgeprune.artifacts.onnxio import atomic_write
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            Path(tmp).write_bytes(bytes(cache.serialize()))
    except OSError:
        pass

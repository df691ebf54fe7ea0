"""Device artifacts: the kinds as data, one small function per kind, every artifact validated.

Every kind starts from the same ONNX file (metadata embedded there, so it travels into derived
formats) and ends with the artifact run on random inputs and compared with PyTorch: a file that
lands at ``path`` is one whose outputs matched. Anything else leaves no file behind.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from edgeprune.artifacts.onnxio import export_onnx
from edgeprune.errors import EdgepruneError, MissingBackend, UsageError, unknown

ORT_MAGIC = b"ORTM"  # bytes 4..8 of an ORT-format (flatbuffer) file
VALIDATION_INPUTS = 3
VALIDATION_SEED = 0
IR_METADATA = "edgeprune"  # the OpenVINO IR rt_info section holding the metadata
FP32_TOLERANCE = (1e-4, 1e-3)  # (atol, rtol) against PyTorch
FP16_TOLERANCE = (1e-2, 1e-2)  # FP16 weights: each rounded to 11 significant bits


@dataclass(frozen=True)
class ArtifactKind:
    """One artifact format: what it is called, its file suffix, and what it needs."""

    name: str
    suffix: str
    aliases: tuple[str, ...]
    needs_gpu: bool
    package: str | None
    extra: str | None
    description: str
    companions: tuple[str, ...] = ()  # suffixes of files that go with it (the IR's .bin)
    tolerance: tuple[float, float] = FP32_TOLERANCE  # default (atol, rtol) of its validation


@dataclass(frozen=True)
class ExportResult:
    """Where the artifact is and how closely it reproduces the PyTorch model."""

    path: Path
    kind: str
    max_abs_diff: float
    max_rel_diff: float
    ok: bool
    size_bytes: int


KINDS: dict[str, ArtifactKind] = {k.name: k for k in (
    ArtifactKind("onnx", ".onnx", ("onnx",), False, "onnxruntime", None,
                 "ONNX model (opset 17), validated with ONNX Runtime"),
    ArtifactKind("ort", ".ort", ("ort", "ort_format"), False, "onnxruntime", None,
                 "ONNX Runtime mobile format (pre-optimised flatbuffer, portable: no NCHWc)"),
    ArtifactKind("openvino", ".xml", ("ir", "openvino_ir", "openvino-fp32", "openvino_fp32", "ir-fp32"),
                 False, "openvino", "openvino",
                 "OpenVINO IR (.xml + .bin), FP32 weights, validated with OpenVINO CPU", (".bin",)),
    ArtifactKind("openvino-fp16", ".xml", ("openvino_fp16", "ir-fp16", "ir_fp16"), False, "openvino",
                 "openvino", "OpenVINO IR (.xml + .bin), weights compressed to FP16 (half the size; "
                 "the device computes at its own inference precision)", (".bin",), FP16_TOLERANCE),
    ArtifactKind("tensorrt", ".plan", ("trt", "engine"), True, "tensorrt", "tensorrt",
                 "TensorRT serialized engine, built for the GPU it runs on"),
)}


def resolve_kind(name: str) -> ArtifactKind:
    """The kind called ``name`` or one of its aliases, case-insensitively."""
    key = name.strip().lower()
    for kind in KINDS.values():
        if key == kind.name or key in kind.aliases:
            return kind
    names = set(KINDS) | {a for k in KINDS.values() for a in k.aliases}
    raise unknown("export format", name, names)


# --- one function per kind: ONNX file with metadata -> artifact file --------------------------

def _to_onnx(onnx_file: Path, out: Path) -> None:
    os.replace(onnx_file, out)


def _to_ort(onnx_file: Path, out: Path) -> None:
    from edgeprune.runtime.ort import to_ort_format
    to_ort_format(onnx_file, out)


def _to_openvino(onnx_file: Path, out: Path, fp16: bool) -> None:
    """``openvino.convert_model`` from the ONNX file, its metadata copied into the IR's rt_info
    (section ``edgeprune``), saved with FP16 compression chosen explicitly: ``save_model``
    compresses to FP16 unless told not to."""
    import openvino as ov

    model = ov.convert_model(str(onnx_file))
    for key, value in read_metadata(onnx_file).items():
        model.set_rt_info(value, [IR_METADATA, key])
    ov.save_model(model, str(out), compress_to_fp16=fp16)


_CONVERTERS: dict[str, Callable[[Path, Path], None]] = {
    "onnx": _to_onnx, "ort": _to_ort,
    "openvino": functools.partial(_to_openvino, fp16=False),
    "openvino-fp16": functools.partial(_to_openvino, fp16=True),
}


def _converter(kind: ArtifactKind) -> Callable[[Path, Path], None]:
    """The kind's function, refused before any work when it cannot run here."""
    if kind.name not in _CONVERTERS:
        raise UsageError(f"export kind {kind.name} is not implemented yet")
    if kind.package and importlib.util.find_spec(kind.package) is None:
        raise MissingBackend(kind.package, kind.extra, what=f"export format {kind.name}")
    return _CONVERTERS[kind.name]


# --- the pipeline ------------------------------------------------------------------------------

def export_artifact(model: nn.Module, kind: str, path: str | os.PathLike,
                    input_shape: tuple[int, ...], metadata: dict[str, object] | None = None,
                    atol: float | None = None, rtol: float | None = None) -> ExportResult:
    """Export, embed metadata, validate against PyTorch, then rename into place.

    Everything is written in a hidden work directory beside ``path`` and moved out only once
    validated (an IR's .bin first, then the .xml that names it); the tolerances default to the
    kind's."""
    k = resolve_kind(kind)
    convert = _converter(k)
    atol = k.tolerance[0] if atol is None else atol
    rtol = k.tolerance[1] if rtol is None else rtol
    final = Path(path)
    if k.companions and final.suffix != k.suffix:
        raise UsageError(f"{k.name} export path must end in {k.suffix} (its "
                         f"{', '.join(k.companions)} goes beside it), got {final.name}")
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        onnx_tmp = export_onnx(model, input_shape, work / "source" / "model.onnx")
        write_metadata(onnx_tmp, {**(metadata or {}), "edgeprune_version": _version()})
        tmp = work / final.name
        convert(onnx_tmp, tmp)
        abs_diff, rel_diff, ok = validate(model, tmp, input_shape, atol, rtol)
        if not ok:
            raise EdgepruneError(
                f"{k.name} export does not match PyTorch: max abs diff {abs_diff:.3g}, max rel "
                f"diff {rel_diff:.3g} (atol {atol:g}, rtol {rtol:g}); nothing written to {final}")
        for suffix in k.companions:
            os.replace(tmp.with_suffix(suffix), final.with_suffix(suffix))
        os.replace(tmp, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = final.stat().st_size + sum(final.with_suffix(s).stat().st_size for s in k.companions)
    return ExportResult(final, k.name, abs_diff, rel_diff, ok, size)


def validate(model: nn.Module, artifact: Path, input_shape: tuple[int, ...],
             atol: float, rtol: float) -> tuple[float, float, bool]:
    """(max abs diff, max rel diff, allclose) over a few seeded random inputs."""
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    inputs = [torch.randn(*input_shape, generator=gen) for _ in range(VALIDATION_INPUTS)]
    run = _runner(Path(artifact))
    abs_diff = rel_diff = 0.0
    ok = True
    for x in inputs:
        got = run(x.numpy())
        want = _torch_outputs(model, x)
        shapes = [g.shape for g in got], [w.shape for w in want]
        if shapes[0] != shapes[1]:
            raise EdgepruneError(f"artifact output shapes {shapes[0]} differ from PyTorch's {shapes[1]}")
        for g, w in zip(got, want):
            err = np.abs(g.astype(np.float64) - w.astype(np.float64))
            abs_diff = max(abs_diff, float(err.max(initial=0.0)))
            rel_diff = max(rel_diff, float((err / np.maximum(np.abs(w), 1e-12)).max(initial=0.0)))
            ok = ok and bool(np.all(err <= atol + rtol * np.abs(w)))
    return abs_diff, rel_diff, ok


def _runner(path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Run an artifact on CPU: an OpenVINO IR (.xml) with OpenVINO, anything else with ORT."""
    if path.suffix == ".xml":
        return _openvino_runner(path)
    session = _session(path)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def _openvino_runner(path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The IR compiled for OpenVINO's CPU at FP32 inference precision (its default is BF16 on
    CPUs that have it), so validation sees the artifact's own error, FP16 weights included."""
    import openvino as ov

    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1})
    except RuntimeError as e:
        from edgeprune.runtime.openvino import ov_message
        raise UsageError(f"{path.name} is not a valid OpenVINO IR: {ov_message(e)}") from None
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> list[np.ndarray]:
        out = request.infer({0: x})
        return [np.array(out[o]) for o in compiled.outputs]
    return run


def _torch_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """The reference: the model in eval mode, no grad, outputs flattened to arrays."""
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            out = model.eval()(x.to(device))
    finally:
        model.train(was_training)
    return [t.detach().cpu().numpy() for t in _flatten(out)]


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in _flatten(item)]


# --- metadata and checks -----------------------------------------------------------------------

def write_metadata(onnx_path: str | os.PathLike, metadata: dict[str, object]) -> None:
    """Set ``metadata_props`` in place; non-string values are JSON-encoded."""
    import onnx

    model = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({str(k): v if isinstance(v, str) else json.dumps(v, default=str)
                  for k, v in metadata.items()})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(onnx_path))


def read_metadata(onnx_path: str | os.PathLike) -> dict[str, str]:
    """The artifact's metadata: metadata_props (ONNX or ORT format), or the ``edgeprune``
    section of an OpenVINO IR's rt_info."""
    path = Path(onnx_path)
    if path.suffix == ".xml":
        return read_ir_metadata(path)
    if _is_ort_format(path):
        return dict(_session(path).get_modelmeta().custom_metadata_map)
    return {p.key: p.value for p in check_onnx(path).metadata_props}


def read_ir_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``edgeprune`` rt_info section of an OpenVINO IR (.xml, its .bin beside it)."""
    import openvino as ov

    try:
        info = ov.Core().read_model(str(path)).get_rt_info()
    except RuntimeError as e:
        from edgeprune.runtime.openvino import ov_message
        raise UsageError(f"{path} is not a valid OpenVINO IR: {ov_message(e)}") from None
    if IR_METADATA not in info:
        return {}
    return {str(k): v.astype(str) for k, v in info[IR_METADATA].items()}


def check_onnx(path: str | os.PathLike):
    """Load and check an ONNX file; a missing or corrupt one is a one-line UsageError."""
    import onnx
    from google.protobuf.message import Error as ProtobufError

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (OSError, ProtobufError, onnx.checker.ValidationError, ValueError) as e:
        raise UsageError(f"{path} is not a valid ONNX model: {_first_line(e)}") from None
    return model


def _session(path: Path):
    import onnxruntime as ort

    so = _session_options()
    if _is_ort_format(path):  # ORT detects the format by suffix; temp files have none
        so.add_session_config_entry("session.load_model_format", "ORT")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _session_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


def _is_ort_format(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8)[4:8] == ORT_MAGIC
    except OSError:
        return False


def _version() -> str:
    """edgeprune's version, so an artifact says which code produced it."""
    import edgeprune

    version = getattr(edgeprune, "__version__", None)
    if version:
        return str(version)
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("edgeprune")
    except PackageNotFoundError:
        return "0.0.0"


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__

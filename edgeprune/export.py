"""Device artifacts: the kinds as data, one small function per kind, every artifact validated.

Every kind starts from the same ONNX file (metadata embedded there, so it travels into derived
formats) and ends with the artifact run on random inputs and compared with PyTorch: a file that
lands at ``path`` is one whose outputs matched. Anything else leaves no file behind.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from .errors import EdgepruneError, UsageError, unknown
from .onnxio import atomic_path, export_onnx

ORT_MAGIC = b"ORTM"  # bytes 4..8 of an ORT-format (flatbuffer) file
VALIDATION_INPUTS = 3
VALIDATION_SEED = 0


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
    ArtifactKind("openvino", ".xml", ("ir", "openvino_ir"), False, "openvino", "openvino",
                 "OpenVINO IR (.xml + .bin)"),
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
    """Same recipe as onnxruntime.tools.convert_onnx_models_to_ort (level 'all', no NCHWc)."""
    import onnxruntime as ort

    so = _session_options()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(out)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.add_session_config_entry("session.qdqisint8allowed", "0")
    ort.InferenceSession(str(onnx_file), so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["NchwcTransformer"])


_CONVERTERS: dict[str, Callable[[Path, Path], None]] = {"onnx": _to_onnx, "ort": _to_ort}


def _converter(kind: ArtifactKind) -> Callable[[Path, Path], None]:
    """The kind's function, refused before any work when it cannot run here."""
    if kind.name not in _CONVERTERS:
        raise UsageError(f"export kind {kind.name} is not implemented yet")
    return _CONVERTERS[kind.name]


# --- the pipeline ------------------------------------------------------------------------------

def export_artifact(model: nn.Module, kind: str, path: str | os.PathLike,
                    input_shape: tuple[int, ...], metadata: dict[str, object] | None = None,
                    atol: float = 1e-4, rtol: float = 1e-3) -> ExportResult:
    """Export, embed metadata, validate against PyTorch, then rename into place."""
    k = resolve_kind(kind)
    convert = _converter(k)
    final, tmp = atomic_path(path)
    _, onnx_tmp = atomic_path(final.with_name(final.name + ".onnx"))
    try:
        export_onnx(model, input_shape, onnx_tmp)
        write_metadata(onnx_tmp, {**(metadata or {}), "edgeprune_version": _version()})
        convert(onnx_tmp, tmp)
        abs_diff, rel_diff, ok = validate(model, tmp, input_shape, atol, rtol)
        if not ok:
            raise EdgepruneError(
                f"{k.name} export does not match PyTorch: max abs diff {abs_diff:.3g}, max rel "
                f"diff {rel_diff:.3g} (atol {atol:g}, rtol {rtol:g}); nothing written to {final}")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        onnx_tmp.unlink(missing_ok=True)
    return ExportResult(final, k.name, abs_diff, rel_diff, ok, final.stat().st_size)


def validate(model: nn.Module, artifact: Path, input_shape: tuple[int, ...],
             atol: float, rtol: float) -> tuple[float, float, bool]:
    """(max abs diff, max rel diff, allclose) over a few seeded random inputs."""
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    inputs = [torch.randn(*input_shape, generator=gen) for _ in range(VALIDATION_INPUTS)]
    session = _session(artifact)
    name = session.get_inputs()[0].name
    abs_diff = rel_diff = 0.0
    ok = True
    for x in inputs:
        got = session.run(None, {name: x.numpy()})
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
    """The artifact's metadata_props (ONNX or ORT format)."""
    path = Path(onnx_path)
    if _is_ort_format(path):
        return dict(_session(path).get_modelmeta().custom_metadata_map)
    return {p.key: p.value for p in check_onnx(path).metadata_props}


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
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("edgeprune")
    except PackageNotFoundError:
        return "0.0.0"


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__

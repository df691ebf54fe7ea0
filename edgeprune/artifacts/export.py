"""Device artifacts: every kind exported the same way, every artifact validated.

Every kind starts from the same ONNX file (metadata embedded there, so it travels into derived
formats) and ends with the artifact run on random inputs and compared with PyTorch: a file that
lands at ``path`` is one whose outputs matched. Anything else leaves no file behind. What is
particular to a kind (suffix, converter, runner, metadata, tolerance) lives in its entry of
``edgeprune.artifacts.kinds``; the names re-exported below keep older imports working.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgeprune.artifacts.kind_onnx import check_onnx  # noqa: F401  (re-exported)
from edgeprune.artifacts.kind_openvino import SECTION as IR_METADATA  # noqa: F401
from edgeprune.artifacts.kinds import (  # noqa: F401  (re-exported)
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    KINDS,
    ArtifactKind,
    kind_of,
    move_together,
    read_metadata,
    resolve_kind,
)
from edgeprune.artifacts.onnxio import export_onnx
from edgeprune.errors import EdgepruneError, UsageError

VALIDATION_INPUTS = 3
VALIDATION_SEED = 0


@dataclass(frozen=True)
class ExportResult:
    """Where the artifact is and how closely it reproduces the PyTorch model."""

    path: Path
    kind: str
    max_abs_diff: float
    max_rel_diff: float
    ok: bool
    size_bytes: int


# --- the pipeline ------------------------------------------------------------------------------

def export_artifact(model: nn.Module, kind: str, path: str | os.PathLike,
                    input_shape: tuple[int, ...], metadata: dict[str, object] | None = None,
                    atol: float | None = None, rtol: float | None = None) -> ExportResult:
    """Export, embed metadata, validate against PyTorch, then rename into place.

    Everything is written in a hidden work directory beside ``path`` and moved out only once
    validated (an IR's .bin first, then the .xml that names it); the tolerances default to the
    kind's."""
    k = resolve_kind(kind)
    k.require()  # an unimplemented kind or a missing package, before any work
    atol = k.tolerance[0] if atol is None else atol
    rtol = k.tolerance[1] if rtol is None else rtol
    final = k.destination(path)
    if final.is_dir():  # else the rename fails after the export, as an internal error
        raise UsageError(f"--out {final} is an existing directory; name the artifact file to write")
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        onnx_tmp = export_onnx(model, input_shape, work / "source" / "model.onnx")
        write_metadata(onnx_tmp, {**(metadata or {}), "edgeprune_version": _version()})
        tmp = work / final.name
        k.convert(onnx_tmp, tmp)
        abs_diff, rel_diff, ok = validate(model, tmp, input_shape, atol, rtol, k)
        if not ok:
            raise EdgepruneError(
                f"{k.name} export does not match PyTorch: max abs diff {abs_diff:.3g}, max rel "
                f"diff {rel_diff:.3g} (atol {atol:g}, rtol {rtol:g}); nothing written to {final}")
        move_together(tmp, final, k)  # an IR's .bin first, then the .xml that names it
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(final, k.name, abs_diff, rel_diff, ok, k.size_bytes(final))


def validate(model: nn.Module, artifact: Path, input_shape: tuple[int, ...], atol: float, rtol: float,
             kind: ArtifactKind | None = None) -> tuple[float, float, bool]:
    """(max abs diff, max rel diff, allclose) over a few seeded random inputs, the artifact run
    by its kind's runner (``kind``, else the kind its file name says)."""
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    inputs = [torch.randn(*input_shape, generator=gen) for _ in range(VALIDATION_INPUTS)]
    run = (kind or kind_of(artifact)).runner(artifact)
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


# --- metadata, through the kinds' registry -----------------------------------------------------

def write_metadata(path: str | os.PathLike, metadata: dict[str, object]) -> None:
    """Add ``metadata`` to the artifact at ``path`` in place (an ONNX file's ``metadata_props``,
    an IR's rt_info); non-string values are JSON-encoded."""
    kind_of(path).write_metadata(path, metadata)


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

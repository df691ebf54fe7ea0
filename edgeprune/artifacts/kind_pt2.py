"""The AOTInductor kinds (``pt2`` for the CPU, ``pt2-cuda`` for an NVIDIA GPU): a ``.pt2``
package compiled ahead of time by ``torch._inductor.aoti_compile_and_package`` from the
``torch.export`` of the ONNX graph (``edgeprune.artifacts.onnx_torch``), so this kind converts
from the ONNX file like every other and its outputs are checked against PyTorch the same way.

Metadata lives in a JSON file beside the package (``model.json`` for ``model.pt2``, a
companion): AOTInductor can embed metadata in the compiled library, but reading it back means
loading that library, which a CUDA package refuses on a machine without the GPU; the JSON is
readable anywhere and rewritten in place atomically. It also records the device and input
shape the package was compiled for. torch is imported inside the functions.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import UsageError

SIDECAR = ".json"


def sidecar(path: Path) -> Path:
    return Path(path).with_suffix(SIDECAR)


def convert(onnx_file: Path, out: Path, kind) -> None:
    """Compile the ONNX file into a package for the kind's device, its metadata beside it."""
    from edgeprune.artifacts.kind_onnx import read_metadata as onnx_metadata

    device = "cuda" if kind.needs_gpu else "cpu"
    shape = compile_package(onnx_file, out, device)
    _write_json(sidecar(out), {**onnx_metadata(onnx_file), "device": device,
                               "input_shape": json.dumps(list(shape)), **_versions()})


def compile_package(onnx_file: str | os.PathLike, out: str | os.PathLike, device: str, batch: int = 1) -> tuple[int, ...]:
    """``torch.export`` the ONNX graph on ``device`` and AOT-compile it into the package ``out``
    (written beside, then renamed); returns the input shape it is compiled for (static: AOTInductor
    specialises on it)."""
    import torch

    from edgeprune.artifacts import onnx_torch

    onnx_model = onnx_torch.check_onnx(onnx_file)
    shape = onnx_torch.input_shape(onnx_model, batch)
    module = onnx_torch.OnnxModule(onnx_model).eval().to(device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:  # AOTInductor wants a name ending in .pt2: compiled in a work directory, then renamed
        with torch.no_grad():
            program = torch.export.export(module, (torch.zeros(shape, device=device),))
            torch._inductor.aoti_compile_and_package(program, package_path=str(work / "model.pt2"))
        os.replace(work / "model.pt2", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return shape


def load_package(path: str | os.PathLike, device_index: int = -1):
    """The compiled model (a callable on tensors); a file that is not a package is a UsageError."""
    import torch

    check(Path(path))
    try:
        return torch._inductor.aoti_load_package(str(path), device_index=device_index)
    except RuntimeError as e:
        raise UsageError(f"cannot load the AOTInductor package {path}: {_first_line(e)}") from None


def runner(path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Run the package on its own device; outputs come back as float32 arrays."""
    import torch

    device = read_metadata(path).get("device", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"{path.name} is compiled for {device} and this host has no CUDA device")
    model = load_package(path)

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(x)).to(device))
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [o.detach().float().cpu().numpy() for o in outs]
    return run


def read_metadata(path: Path) -> dict[str, str]:
    meta = sidecar(path)
    if not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text())
    except ValueError as e:
        raise UsageError(f"{meta} is not valid JSON: {e}") from None
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def write_metadata(path: Path, metadata: dict[str, object]) -> None:
    """Add ``metadata`` to the sidecar, rewritten whole then renamed (the package is untouched)."""
    current = read_metadata(path)
    current.update({str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in metadata.items()})
    _write_json(sidecar(path), current)


def check(path: Path) -> None:
    """A .pt2 package is a zip archive: anything else is refused in one line."""
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path} is not an AOTInductor .pt2 package (not a zip archive)")


def _write_json(path: Path, data: dict) -> None:
    from edgeprune.artifacts.onnxio import atomic_write
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))


def _versions() -> dict[str, str]:
    import torch
    return {"torch_version": torch.__version__, "cuda_version": str(torch.version.cuda)}


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__

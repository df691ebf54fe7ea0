"""The OpenVINO IR kinds (FP32 and FP16 weights): an ``.xml`` graph naming its ``.bin`` weights.

Metadata lives in the ``edgeprune`` section of the IR's rt_info, copied there from the ONNX
file on conversion. ``save_model`` compresses weights to FP16 unless told not to, so the
precision is always passed explicitly (the kind's ``precision``). Validation compiles for the
CPU at FP32 inference precision (OpenVINO's default is BF16 on CPUs that have it), so it sees
the artifact's own error. openvino is imported inside the functions.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import UsageError

SECTION = "edgeprune"  # the rt_info section holding the metadata


def convert(onnx_file: Path, out: Path, kind) -> None:
    """``openvino.convert_model`` from the ONNX file, its metadata copied into rt_info."""
    import openvino as ov

    from edgeprune.artifacts.kind_onnx import read_metadata as onnx_metadata

    model = ov.convert_model(str(onnx_file))
    set_metadata(model, onnx_metadata(onnx_file))
    ov.save_model(model, str(out), compress_to_fp16=kind.precision == "fp16")


def runner(path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    import openvino as ov

    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1})
    except RuntimeError as e:
        raise UsageError(f"{path.name} is not a valid OpenVINO IR: {_ov_message(e)}") from None
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> list[np.ndarray]:
        out = request.infer({0: x})
        return [np.array(out[o]) for o in compiled.outputs]
    return run


def read_metadata(path: Path) -> dict[str, str]:
    """The ``edgeprune`` rt_info section ({} when the IR has none)."""
    info = _read(path).get_rt_info()
    if SECTION not in info:
        return {}
    return {str(k): v.astype(str) for k, v in info[SECTION].items()}


def write_metadata(path: Path, metadata: dict[str, object]) -> None:
    """Add ``metadata`` to the IR's section in place: saved beside it at the weights' own
    precision (nothing recompressed), then the .bin and the .xml renamed over the old ones."""
    import openvino as ov

    from edgeprune.artifacts.kinds import move_together

    model = _read(path)
    set_metadata(model, metadata)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        ov.save_model(model, str(work / path.name), compress_to_fp16=False)
        del model
        move_together(work / path.name, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def set_metadata(model, metadata: dict[str, object]) -> None:
    """Put ``metadata`` (non-strings JSON-encoded) in an ``ov.Model``'s ``edgeprune`` section."""
    for key, value in metadata.items():
        model.set_rt_info(value if isinstance(value, str) else json.dumps(value, default=str), [SECTION, str(key)])


def _read(path: Path):
    import openvino as ov

    try:
        return ov.Core().read_model(str(path))
    except RuntimeError as e:
        raise UsageError(f"{path} is not a valid OpenVINO IR: {_ov_message(e)}") from None


def _ov_message(e: BaseException) -> str:
    from edgeprune.runtime.openvino import ov_message
    return ov_message(e)

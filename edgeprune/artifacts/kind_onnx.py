"""The ONNX kind: the file every other kind is converted from.

Metadata lives in the model's ``metadata_props`` (strings; other values JSON-encoded), so it
travels into every format converted from it. Validation runs the file with ONNX Runtime's CPU
provider, the reference runtime for the format. onnx and onnxruntime are imported inside the
functions: the registry imports nothing heavy.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import UsageError


def convert(onnx_file: Path, out: Path, kind) -> None:
    """The ONNX file is the artifact: moved into place, not copied."""
    os.replace(onnx_file, out)


def runner(path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    return ort_runner(path, ort_format=False)


def read_metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in check_onnx(path).metadata_props}


def write_metadata(path: Path, metadata: dict[str, object]) -> None:
    """Set ``metadata_props`` in place; non-string values are JSON-encoded."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({str(k): v if isinstance(v, str) else json.dumps(v, default=str)
                  for k, v in metadata.items()})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def check(path: Path) -> None:
    check_onnx(path)


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


def ort_session(path: Path, ort_format: bool):
    """An ONNX Runtime CPU session, quiet; ``ort_format`` says so explicitly, because ORT tells
    the formats apart by suffix and a file being validated may be named otherwise."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if ort_format:
        so.add_session_config_entry("session.load_model_format", "ORT")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_runner(path: Path, ort_format: bool) -> Callable[[np.ndarray], list[np.ndarray]]:
    session = ort_session(path, ort_format)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__

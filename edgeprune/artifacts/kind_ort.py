"""The ORT kind: ONNX Runtime's mobile format, a pre-optimised flatbuffer.

Converted from the ONNX file (``runtime.ort.to_ort_format``: every graph optimisation except
the x86-only NCHWc layouts, so the file is portable), which carries the metadata along: the
flatbuffer cannot be edited in place, so this kind has no ``write_metadata``. Validated and
read with ONNX Runtime, told the format explicitly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.artifacts.kind_onnx import ort_runner, ort_session


def convert(onnx_file: Path, out: Path, kind) -> None:
    from edgeprune.runtime.ort import to_ort_format
    to_ort_format(onnx_file, out)


def runner(path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    return ort_runner(path, ort_format=True)


def read_metadata(path: Path) -> dict[str, str]:
    return dict(ort_session(path, ort_format=True).get_modelmeta().custom_metadata_map)

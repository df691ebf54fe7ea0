"""INT8 post-training quantization of an OpenVINO model with NNCF, calibrated on training images.

``quantize_ir`` reads an ONNX file or an IR (.xml), runs ``nncf.quantize`` over a calibration
set (a seeded subset of the *training* split: the test split stays unseen), and writes an INT8
IR whose FakeQuantize ranges come from those images. Like ``edgeprune.artifacts.export``, everything is
written in a hidden work directory beside the output and moved into place (the .bin first, then
the .xml that names it) only after the IR loads again, runs, gives finite outputs of the
source's shape and holds quantized operations; the source's ``edgeprune`` metadata is copied
into its rt_info with the quantization settings added. nncf and openvino are imported lazily.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from edgeprune.errors import EdgepruneError, MissingBackend, UsageError

DEFAULT_SAMPLES = 300
PRESETS = ("performance", "mixed")  # symmetric / asymmetric activations (NNCF's presets)
QUANTIZED_OPS = ("FakeQuantize", "FakeConvert")
INT8_TYPES = ("i8", "u8")
CHECK_INPUTS = 3  # calibration inputs the written IR is run on before it is moved into place


def require_nncf() -> None:
    """MissingBackend (with the install hint) unless openvino and nncf can both be imported."""
    for package in ("openvino", "nncf"):
        if importlib.util.find_spec(package) is None:
            raise MissingBackend(package, "openvino", what="INT8 quantization")


VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def overflow_fix(nncf):
    """NNCF's overflow fix for every layer on x86 CPUs without VNNI, else its default (first
    layer only). Without VNNI, u8×s8 products are summed in saturating 16-bit lanes; 7-bit
    weights avoid the saturation. Measured on a 2-core AVX2 host (tests/test_quantize.py's
    tiny_resnet): INT8 78.3% → 84.2% (FP32 93.1%; BENCHMARKS.md)."""
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
    )

    from edgeprune.runtime.base import host_fingerprint
    host = host_fingerprint()
    x86 = host["host_arch"] in ("x86_64", "AMD64")
    fix = OverflowFix.ENABLE if x86 and not VNNI_FLAGS & set(host["host_isa"]) else OverflowFix.FIRST_LAYER
    return AdvancedQuantizationParameters(overflow_fix=fix)


def import_nncf():
    """nncf, its own log lowered to errors (INFO by default); MissingBackend when absent."""
    require_nncf()
    with _quiet():
        import nncf
    nncf.set_log_level(logging.ERROR)
    return nncf


@contextlib.contextmanager
def _quiet():
    """NNCF's progress bars to stderr (stdout is for results, e.g. --json), and no CUDA_HOME
    warning from torch.utils.cpp_extension, which NNCF imports: a CUDA build of torch on a host
    without a GPU warns there, and nothing here builds extensions."""
    cpp = logging.getLogger("torch.utils.cpp_extension")
    level = cpp.level
    cpp.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        cpp.setLevel(level)


def calibration_loader(dataset, samples: int = DEFAULT_SAMPLES, seed: int = 0, batch: int = 1) -> DataLoader:
    """A seeded random subset of ``samples`` items of ``dataset`` (all when it has fewer), in
    batches of the model's static batch size; the same seed gives the same images."""
    if samples < 1:
        raise UsageError(f"calibration samples must be >= 1, got {samples}")
    n = min(samples, len(dataset))
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return DataLoader(Subset(dataset, idx.tolist()), batch_size=batch, shuffle=False, drop_last=n >= batch)


def quantize_ir(source: str | os.PathLike, calibration: Iterable, out_xml: str | os.PathLike,
                subset_size: int = DEFAULT_SAMPLES, preset: str = "performance",
                metadata: dict[str, object] | None = None) -> Path:
    """Quantize ``source`` (ONNX or IR .xml) to an INT8 IR at ``out_xml`` (+ ``.bin``).

    ``calibration`` yields model inputs: arrays/tensors, or ``(input, label)`` pairs as a
    DataLoader gives them, in the model's input shape; at most ``subset_size`` are used.
    ``metadata`` is added to what the source carries. Returns the path of the .xml."""
    nncf = import_nncf()
    import openvino as ov

    from edgeprune.artifacts.kind_openvino import set_metadata
    from edgeprune.artifacts.kinds import KINDS, find_kind, move_together

    src, final = Path(source), Path(out_xml)
    ir = KINDS["openvino"]
    if find_kind(final) is not ir:
        raise UsageError(f"INT8 IR path must end in {ir.suffix} (its {', '.join(ir.companions)} goes beside it), "
                         f"got {final.name}")
    if preset not in PRESETS:
        raise UsageError(f"unknown quantization preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if subset_size < 1:
        raise UsageError(f"calibration subset size must be >= 1, got {subset_size}")
    model = _read(ov.Core(), src)
    meta = {**source_metadata(src), **{k: _text(v) for k, v in (metadata or {}).items()}}
    items = [_as_input(item) for _, item in zip(range(subset_size), calibration)]
    if not items:
        raise UsageError("the calibration set is empty")
    shape = model.input(0).get_partial_shape()
    expect = tuple(shape.to_shape()) if shape.is_static else None
    if expect is not None and items[0].shape != expect:
        raise UsageError(f"calibration inputs have shape {list(items[0].shape)}, the model takes {list(expect)}")
    overflow = overflow_fix(nncf)
    try:
        with _quiet():
            quantized = nncf.quantize(model, nncf.Dataset(items), preset=nncf.QuantizationPreset(preset),
                                      subset_size=len(items), advanced_parameters=overflow)
    except Exception as e:  # NNCF's own errors (nncf.ValidationError, InternalError) and OpenVINO's
        raise EdgepruneError(f"NNCF could not quantize {src.name}: {_first_line(e)}") from None
    meta.update({"precision": "int8", "quantized_from": src.name, "nncf_version": nncf.__version__,
                 "calibration": json.dumps({"samples": len(items), "preset": preset,
                                            "overflow_fix": str(overflow.overflow_fix.value)})})
    set_metadata(quantized, meta)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        tmp = work / final.name
        # FP32 for what stays float (biases, quantizer ranges): only quantization differs from FP32
        ov.save_model(quantized, str(tmp), compress_to_fp16=False)
        _check(tmp, model, items[:CHECK_INPUTS])
        move_together(tmp, final, ir)  # the .bin first, then the .xml that names it
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def quantized_ops(path_or_model) -> dict[str, int]:
    """Counts of what makes a model INT8: quantizer nodes (FakeQuantize) and 8-bit integer
    constants (weights NNCF stored compressed), by OpenVINO op."""
    import openvino as ov

    model = path_or_model
    if isinstance(path_or_model, (str, os.PathLike)):
        model = _read(ov.Core(), Path(path_or_model))
    ops = model.get_ops()
    fq = sum(op.get_type_name() in QUANTIZED_OPS for op in ops)
    int8 = sum(op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in INT8_TYPES
               for op in ops)
    return {"fake_quantize": int(fq), "int8_constants": int(int8)}


def source_metadata(src: Path) -> dict[str, str]:
    """The ``edgeprune`` metadata of an ONNX file or an IR, as strings ({} when it has none)."""
    from edgeprune.artifacts.kinds import read_metadata
    return read_metadata(src)


def _check(path: Path, source_model, inputs: list[np.ndarray]) -> None:
    """The written IR loads in a fresh Core, holds quantizers, and runs on calibration inputs
    to finite outputs shaped like the source's."""
    import openvino as ov

    core = ov.Core()
    model = _read(core, path)
    counts = quantized_ops(model)
    if not counts["fake_quantize"] and not counts["int8_constants"]:
        raise EdgepruneError(f"NNCF left {path.name} without quantized operations; nothing written")
    want = [tuple(o.get_partial_shape().to_shape()) for o in source_model.outputs
            if o.get_partial_shape().is_static]
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    for x in inputs:
        out = request.infer({0: x})
        got = [np.array(out[o]) for o in compiled.outputs]
        if want and [g.shape for g in got] != want:
            raise EdgepruneError(f"INT8 IR output shapes {[g.shape for g in got]} differ from the source's {want}")
        if not all(np.isfinite(g).all() for g in got):
            raise EdgepruneError("the INT8 IR gives non-finite outputs; nothing written")


def _read(core, path: Path):
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    try:
        return core.read_model(str(path))
    except RuntimeError as e:
        from edgeprune.runtime.openvino import ov_message
        raise UsageError(f"openvino cannot load {path}: {ov_message(e)}") from None


def _as_input(item) -> np.ndarray:
    """A calibration item (array, tensor, or (input, label) pair) as a float32 array."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    return np.ascontiguousarray(item, dtype=np.float32)


def _text(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__

"""Artifact kinds as one registry: the only place that knows which file suffix means what.

A kind is data (name, suffix, companion files, validation tolerance, whether it needs a GPU,
the package it needs) plus the name of the module that implements it. That module offers, by
fixed names: ``convert(onnx_file, out, kind)`` (from the ONNX file every kind starts from),
``runner(path)`` (a function input -> outputs, for validation against PyTorch),
``read_metadata(path)``, and optionally ``write_metadata(path, metadata)`` (in place) and
``check(path)`` (a one-line UsageError for a corrupt file). Adding a kind is one new module
plus one ``register`` line at the bottom of this file.

Why module *names*, not functions: the registry is imported by the CLI, the checks and
``import edgeprune`` paths, and must not load ONNX Runtime, OpenVINO or TensorRT (seconds of
import time, and optional packages); a kind's module is imported only when its kind is used.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from edgeprune.errors import MissingBackend, UsageError, unknown

FP32_TOLERANCE = (1e-4, 1e-3)  # (atol, rtol) against PyTorch
FP16_TOLERANCE = (1e-2, 1e-2)  # FP16 weights: each rounded to 11 significant bits


@dataclass(frozen=True)
class ArtifactKind:
    """One artifact format: what it is called, its file suffix, and what it needs."""

    name: str
    suffix: str
    aliases: tuple[str, ...]
    needs_gpu: bool
    package: str | None  # what converting and validating need (None: nothing optional)
    extra: str | None  # the pip extra that installs it, for the MissingBackend hint
    description: str
    companions: tuple[str, ...] = ()  # suffixes of files that go with it (the IR's .bin)
    tolerance: tuple[float, float] = FP32_TOLERANCE  # default (atol, rtol) of its validation
    module: str | None = None  # implementation (see the module docstring); None: not implemented
    magic: tuple[int, bytes] | None = None  # (offset, bytes) that name the kind whatever the file's name
    precision: str = "fp32"  # how its weights are stored (the converter reads it)

    # --- its files ---------------------------------------------------------------------------

    def files(self, path: str | os.PathLike) -> list[Path]:
        """The artifact's files, companions first and the named file last: moved or copied in
        this order, the named file's presence means the whole artifact is there."""
        path = Path(path)
        return [path.with_suffix(s) for s in self.companions] + [path]

    def size_bytes(self, path: str | os.PathLike) -> int:
        return sum(p.stat().st_size for p in self.files(path))

    def destination(self, path: str | os.PathLike) -> Path:
        """``path`` as somewhere to write this kind; a kind with companions needs its own suffix
        there (they are found by swapping it), any other takes any name."""
        path = Path(path)
        if self.companions and path.suffix != self.suffix:
            raise UsageError(f"{self.name} export path must end in {self.suffix} (its "
                             f"{', '.join(self.companions)} goes beside it), got {path.name}")
        return path

    def check(self, path: str | os.PathLike) -> None:
        """A one-line UsageError unless ``path`` is a whole, readable artifact of this kind: its
        files there, then the kind's own check of their contents where it has one."""
        self.check_files(path)
        impl = self._module() if self.module else None
        if impl is not None and hasattr(impl, "check"):
            impl.check(Path(path))

    def check_files(self, path: str | os.PathLike) -> None:
        """A one-line UsageError unless the file and all its companions are there."""
        *companions, main = self.files(path)
        if not main.is_file():
            raise UsageError(f"{main} {'is a directory, not an artifact file' if main.is_dir() else 'does not exist'}")
        for c, suffix in zip(companions, self.companions):
            if not c.is_file():
                raise UsageError(f"{c} is missing: the {self.name} artifact {main.name} needs its "
                                 f"{suffix} beside it")

    # --- what its module does ----------------------------------------------------------------

    def require(self, what: str = "export format") -> ModuleType:
        """The implementation, refused before any work when it cannot run here."""
        impl = self._module()
        if self.package and importlib.util.find_spec(self.package) is None:
            raise MissingBackend(self.package, self.extra, what=f"{what} {self.name}")
        return impl

    def convert(self, onnx_file: Path, out: Path) -> None:
        self.require().convert(Path(onnx_file), Path(out), self)

    def runner(self, path: str | os.PathLike) -> Callable:
        return self.require("validating").runner(Path(path))

    def read_metadata(self, path: str | os.PathLike) -> dict[str, str]:
        return self._module().read_metadata(Path(path))

    def write_metadata(self, path: str | os.PathLike, metadata: dict[str, object]) -> None:
        impl = self._module()
        if not hasattr(impl, "write_metadata"):
            raise UsageError(f"{self.name} artifacts cannot be edited in place: they carry the metadata of "
                             "the ONNX file they were converted from; write it there and convert again")
        impl.write_metadata(Path(path), metadata)

    def _module(self) -> ModuleType:
        if self.module is None:
            raise UsageError(f"export kind {self.name} is not implemented yet")
        return importlib.import_module(self.module)


KINDS: dict[str, ArtifactKind] = {}
_BY_SUFFIX: dict[str, ArtifactKind] = {}  # the first kind registered for each suffix


def register(kind: ArtifactKind) -> ArtifactKind:
    """Add ``kind``. Names and aliases are unique; a suffix may be shared only by variants that
    read, run and carry companions alike (``openvino-fp16`` beside ``openvino``): a file's name
    then says which base kind it is, and that is all a reader needs."""
    taken = set(KINDS) | {a for k in KINDS.values() for a in k.aliases}
    clash = {kind.name, *kind.aliases} & taken
    if clash:
        raise ValueError(f"artifact kind {kind.name}: {', '.join(sorted(clash))} already registered")
    base = _BY_SUFFIX.get(kind.suffix)
    if base and (base.module, base.companions, base.magic) != (kind.module, kind.companions, kind.magic):
        raise ValueError(f"artifact kind {kind.name}: suffix {kind.suffix} belongs to {base.name}, "
                         "which is read and run differently")
    KINDS[kind.name] = kind
    _BY_SUFFIX.setdefault(kind.suffix, kind)
    return kind


def resolve_kind(name: str) -> ArtifactKind:
    """The kind called ``name`` or one of its aliases, case-insensitively."""
    key = name.strip().lower()
    for kind in KINDS.values():
        if key == kind.name or key in kind.aliases:
            return kind
    names = set(KINDS) | {a for k in KINDS.values() for a in k.aliases}
    raise unknown("export format", name, names)


def find_kind(path: str | os.PathLike) -> ArtifactKind | None:
    """The kind of the file at ``path``, None when no kind claims it. The suffix decides, except
    that an existing file carrying a kind's magic bytes is that kind (ORT's flatbuffer saved
    under another name): what the bytes are beats what the name says."""
    path = Path(path)
    by_name = _BY_SUFFIX.get(path.suffix)
    if by_name is not None and by_name.magic is not None:
        return by_name
    return _sniff(path) or by_name


def kind_of(path: str | os.PathLike) -> ArtifactKind:
    """``find_kind``, or a one-line UsageError naming the suffixes that are known."""
    kind = find_kind(path)
    if kind is None:
        known = ", ".join(f"{s} ({k.name})" for s, k in _BY_SUFFIX.items())
        got = repr(Path(path).suffix) if Path(path).suffix else "no suffix"
        raise UsageError(f"{Path(path).name}: unknown artifact kind ({got}); known suffixes: {known}")
    return kind


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata embedded in the artifact at ``path``, as strings ({} when it has none)."""
    return kind_of(path).read_metadata(path)


def move_together(src: str | os.PathLike, dest: str | os.PathLike, kind: ArtifactKind | None = None) -> Path:
    """Rename the artifact ``src`` (of ``kind``, else the kind its name says) and its companions
    onto ``dest`` on the same file system: companions first, the named file last, each rename
    atomic, so a reader that finds the named file finds the whole artifact."""
    kind, src, dest = kind or kind_of(src), Path(src), Path(dest)
    for f, d in zip(kind.files(src), kind.files(dest)):  # by the kind's suffixes: ``.plan.json`` has two dots
        os.replace(f, d)
    return dest


def copy_together(src: str | os.PathLike, dest: str | os.PathLike, kind: ArtifactKind | None = None) -> Path:
    """Copy the artifact ``src`` and its companions to ``dest``, each file written whole then
    renamed, the named file last; a missing companion is a UsageError before anything is copied."""
    import shutil

    from edgeprune.artifacts.onnxio import atomic_write

    kind, src, dest = kind or kind_of(src), Path(src), Path(dest)
    kind.check_files(src)
    for f, d in zip(kind.files(src), kind.files(dest)):
        with atomic_write(d) as tmp:
            shutil.copyfile(f, tmp)
    return dest


def _sniff(path: Path) -> ArtifactKind | None:
    marked = [k for k in _BY_SUFFIX.values() if k.magic is not None]
    if not marked:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(max(off + len(b) for off, b in (k.magic for k in marked)))
    except OSError:
        return None
    return next((k for k in marked if head[k.magic[0]:k.magic[0] + len(k.magic[1])] == k.magic[1]), None)


# --- the built-in kinds: one line each --------------------------------------------------------

_IR = "edgeprune.artifacts.kind_openvino"
register(ArtifactKind("onnx", ".onnx", ("onnx",), False, "onnxruntime", None,
                      "ONNX model (opset 17), validated with ONNX Runtime", module="edgeprune.artifacts.kind_onnx"))
register(ArtifactKind("ort", ".ort", ("ort", "ort_format"), False, "onnxruntime", None,
                      "ONNX Runtime mobile format (pre-optimised flatbuffer, portable: no NCHWc)",
                      module="edgeprune.artifacts.kind_ort", magic=(4, b"ORTM")))
register(ArtifactKind("openvino", ".xml", ("ir", "openvino_ir", "openvino-fp32", "openvino_fp32", "ir-fp32"),
                      False, "openvino", "openvino",
                      "OpenVINO IR (.xml + .bin), FP32 weights, validated with OpenVINO CPU", (".bin",), module=_IR))
register(ArtifactKind("openvino-fp16", ".xml", ("openvino_fp16", "ir-fp16", "ir_fp16"), False, "openvino",
                      "openvino", "OpenVINO IR (.xml + .bin), weights compressed to FP16 (half the size; "
                      "the device computes at its own inference precision)", (".bin",), FP16_TOLERANCE,
                      module=_IR, precision="fp16"))
_TRT = "edgeprune.artifacts.kind_tensorrt"  # an engine + its .json sidecar (TensorRT version, GPU, precision)
register(ArtifactKind("tensorrt", ".plan", ("trt", "plan", "tensorrt-fp32"), True, "tensorrt", "tensorrt",
                      "TensorRT engine (FP32), built for the GPU and TensorRT version it runs on", (".plan.json",), module=_TRT))
register(ArtifactKind("tensorrt-fp16", ".plan", ("trt-fp16", "tensorrt_fp16"), True, "tensorrt", "tensorrt", "TensorRT "
                      "engine with FP16 kernels allowed", (".plan.json",), FP16_TOLERANCE, module=_TRT, precision="fp16"))
register(ArtifactKind("tensorrt-engine", ".engine", ("engine",), True, "tensorrt", "tensorrt",
                      "TensorRT engine (FP32) under trtexec's .engine name", (".engine.json",), module=_TRT))
_PT2 = "edgeprune.artifacts.kind_pt2"
register(ArtifactKind("pt2", ".pt2", ("aoti", "aotinductor", "pt2-cpu", "pt2_cpu"), False, "torch", None,
                      "AOTInductor package (.pt2 + metadata .json) compiled for the CPU, run with "
                      "torch._inductor.aoti_load_package", (".json",), module=_PT2))
register(ArtifactKind("pt2-cuda", ".pt2", ("aoti-cuda", "pt2_cuda", "aotinductor-cuda"), True, "torch", None,
                      "AOTInductor package (.pt2 + metadata .json) compiled for an NVIDIA GPU; checked at FP16 "
                      "tolerance because cuDNN runs FP32 convolutions in TF32 by default",
                      (".json",), FP16_TOLERANCE, module=_PT2))

"""``run.json``: the typed, versioned manifest of a prune run (DESIGN.md, "RunManifest").

Why a manifest beside report.json: the report is for people and grows with every study; the
commands that build on a run (``export --run``, ``quantize --run``, ``check --run``, ``report``)
need a small contract instead — what was pruned, at which input size, for which target, to which
widths and budget, and where its files are — validated on read, so a damaged or foreign run is
one clear line, not a KeyError three stages later or a silent CLI default.

Files of the run (weights, artifacts) are stored relative to the run directory, so a run
directory can be moved or copied to another machine and still be read. Files outside it (a
``--weights`` file given to prune, the latency table, a target YAML) are stored absolute.

Versioning: ``schema_version`` changes when a field is removed or changes meaning; a reader
refuses versions it does not know. New optional fields do not change it (unknown keys are
ignored, so an older edgeprune still reads a newer run of the same version).
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeprune.errors import UsageError

SCHEMA_VERSION = 1
FILENAME = "run.json"


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TargetRef(_Part):
    """The target the run was pruned and measured on."""

    name: str                                      # the target spec's name
    file: str | None = None                        # its YAML file when given as a path (absolute)
    fingerprint: dict[str, Any] = Field(default_factory=dict)  # runtime, device, host (check compares)

    @property
    def ref(self) -> str:
        """What ``load_spec`` takes to load it again: the file the run used, else the name."""
        return self.file or self.name


class DataRef(_Part):
    name: str                                      # the dataset's name as the report shows it
    source: str                                    # as prune took it: a built-in name or a folder (absolute)
    root: str | None = None                        # --data-root (absolute)


class TableRef(_Part):
    hash: str
    path: str | None = None


class Weights(_Part):
    pruned: str = "model.pt"                       # the pruned model's state dict, in the run
    baseline: str | None = None                    # the unpruned weights: --weights, or baseline.pt prune trained


class Artifact(_Part):
    kind: str                                      # edgeprune.artifacts.export.KINDS
    path: str                                      # in the run
    size_bytes: int | None = None


def _inside(path: str) -> str:
    """A file of the run: relative, and not climbing out of it (so the directory moves whole)."""
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"{path!r} is not a path inside the run directory")
    return path


class RunManifest(_Part):
    """What a finished prune run is, for the commands that build on it."""

    schema_version: int = SCHEMA_VERSION
    edgeprune_version: str
    model: str
    input_size: int = Field(gt=0)
    input_shape: list[int]
    data: DataRef | None = None
    target: TargetRef
    widths: dict[str, int]
    importance: str
    objective: str | None = None
    engine: str = "torch-pruning"                  # the pruning engine that removed the channels
    weights: Weights = Field(default_factory=Weights)
    table: TableRef | None = None
    budget_ms: float = Field(gt=0)
    budget_ratio: float | None = Field(default=None, gt=0, lt=1)  # --budget-ratio: budget_ms is this share of
    #                                                the unpruned model's latency in the run's final reading
    artifacts: dict[str, Artifact]                 # "onnx" always; "device" when the target deploys another
    #                                                format; "unpruned" (the deployed kind) with budget_ratio
    report: str = "report.json"

    @field_validator("weights")
    @classmethod
    def _pruned_inside(cls, w: Weights) -> Weights:
        _inside(w.pruned)
        return w

    @field_validator("artifacts")
    @classmethod
    def _artifacts_inside(cls, a: dict[str, Artifact]) -> dict[str, Artifact]:
        if "onnx" not in a:
            raise ValueError("has no onnx artifact")
        for art in a.values():
            _inside(art.path)
        return a

    def path(self, run_dir: str | Path, stored: str) -> Path:
        """A stored path made usable: relative ones are in ``run_dir`` (wherever it is now)."""
        p = Path(stored)
        return p if p.is_absolute() else Path(run_dir) / p

    def write(self, run_dir: str | Path) -> Path:
        """``run_dir``/run.json, written whole then renamed (a reader never sees half of it)."""
        from edgeprune.artifacts.onnxio import atomic_write
        final = Path(run_dir) / FILENAME
        with atomic_write(final) as tmp:
            tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return final


def read(run_dir: str | Path) -> RunManifest:
    """The manifest of ``run_dir``. Every way it can be unusable (no directory, no run.json,
    not JSON, an unknown schema version, a missing or mistyped field) is one UsageError line."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist")
    path = run_dir / FILENAME
    if not path.is_file():
        raise UsageError(f"{run_dir} has no {FILENAME}: not the output directory of a finished edgeprune prune")
    return read_versioned(path, RunManifest, SCHEMA_VERSION, "a run manifest", "a run made by another edgeprune version")


def read_versioned(path: Path, model: type[BaseModel], schema: int, what: str, other_version: str,
                   unversioned_ok: bool = False, damaged: str = ""):
    """A JSON file validated as ``model``: unreadable, not JSON, not an object, another schema
    version or a mistyped field is one UsageError line (run.json and report.json share it)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON ({e}); the file is damaged: run prune again") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path} is not {what}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("schema_version")
    if version != schema and not (unversioned_ok and version is None):
        raise UsageError(f"{path} has schema version {version!r}; this edgeprune reads version {schema} "
                         f"({other_version}: use that version, or run prune again)")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise UsageError(f"{path}: {first_error(e)}{damaged}") from None


def first_error(e: ValidationError) -> str:
    """Pydantic's first complaint as 'field.sub: message' (one line)."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{where}: {err['msg']}"


def stored_path(path: str | Path, run_dir: str | Path) -> str:
    """How a path is stored: relative (POSIX) when inside ``run_dir``, else absolute."""
    p, run = Path(path).resolve(), Path(run_dir).resolve()
    try:
        return p.relative_to(run).as_posix()
    except ValueError:
        return str(p)


def for_prune(s, out: Path, budget_ms: float, widths: dict[str, int], table, artifacts: list,
              objective: str | None, engine: str = "torch-pruning", budget_ratio: float | None = None,
              unpruned=None) -> RunManifest:
    """The manifest of a finished prune run: ``s`` its Session, ``artifacts`` the exported
    files (model.onnx first, then the target's own format when it has one); a relative run
    also keeps its ``unpruned`` model, which ``check --run`` reads the share against."""
    from edgeprune import __version__
    target_file = None
    given = s.cfg.target
    if Path(given).suffix in (".yaml", ".yml") or "/" in given or "\\" in given:
        target_file = str(Path(given).resolve())
    data = None
    if s.data is not None:
        source = s.cfg.data
        if Path(source).expanduser().is_dir():
            source = str(Path(source).expanduser().resolve())
        data = DataRef(name=s.data.name, source=source,
                       root=str(Path(s.cfg.data_root).resolve()) if s.cfg.data_root else None)
    if s.cfg.weights:
        baseline = stored_path(s.cfg.weights, out)
    else:
        baseline = "baseline.pt" if (out / "baseline.pt").is_file() else None
    arts = {("onnx" if i == 0 else "device"): Artifact(kind=a.kind, path=stored_path(a.path, out),
                                                       size_bytes=a.size_bytes)
            for i, a in enumerate(artifacts)}
    if unpruned is not None:
        arts["unpruned"] = Artifact(kind=unpruned.kind, path=stored_path(unpruned.path, out), size_bytes=unpruned.size_bytes)
    return RunManifest(
        edgeprune_version=__version__, model=s.cfg.model, input_size=s.cfg.input_size,
        input_shape=list(s.input_shape), data=data,
        target=TargetRef(name=s.spec.name, file=target_file, fingerprint=s.target.fingerprint()),
        widths=dict(widths), importance=s.cfg.importance, objective=objective, engine=engine,
        weights=Weights(pruned="model.pt", baseline=baseline),
        table=TableRef(hash=table.digest, path=str(table.path) if table.path else None),
        budget_ms=budget_ms, budget_ratio=budget_ratio, artifacts=arts)

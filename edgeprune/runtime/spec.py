"""TargetSpec: the typed, validated contents of a target file ``NAME.yaml``.

Unknown keys and wrong types are rejected naming the file and the key, so a typo in a
budget file fails loudly instead of silently measuring the wrong thing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeprune.errors import UsageError, suggest, unknown

TARGETS_ENV = "EDGEPRUNE_TARGETS"
BUILTIN_TARGETS = Path(__file__).resolve().parent / "targets"  # package data


class TimingSpec(BaseModel):
    """The timing protocol's knobs; the defaults give stable medians on a shared 2-core box."""

    model_config = ConfigDict(extra="forbid")
    warmup_s: float = Field(0.3, ge=0)
    min_runs: int = Field(30, ge=3)
    max_runs: int = Field(100_000, ge=3)
    min_time_s: float = Field(0.4, ge=0)        # per window
    max_time_s: float = Field(20.0, gt=0)       # per window
    windows: int = Field(3, ge=1)               # separated windows; see timing.measure


class TargetSpec(BaseModel):
    """One runtime on one device, with per-model latency budgets."""

    model_config = ConfigDict(extra="forbid")
    name: str
    runtime: str
    device: str = "cpu"
    threads: int = Field(1, ge=1)
    batch: int = Field(1, ge=1)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    input_size: int | None = Field(None, ge=8)
    budgets_ms: dict[str, float] = Field(default_factory=dict)
    timing: TimingSpec = Field(default_factory=TimingSpec)
    options: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    source: str = ""

    def budget_for(self, model: str) -> float | None:
        return self.budgets_ms.get(model)


def targets_dirs() -> list[Path]:
    """Where target files are looked up: $EDGEPRUNE_TARGETS (a team's board files), ./targets
    (a project's own), then the built-in ones shipped inside the package (found from any
    directory, in a wheel as in a checkout)."""
    dirs = []
    if os.environ.get(TARGETS_ENV):
        dirs.append(Path(os.environ[TARGETS_ENV]))
    dirs.append(Path.cwd() / "targets")
    dirs.append(BUILTIN_TARGETS)
    seen, out = set(), []
    for d in dirs:
        if d.resolve() not in seen and d.is_dir():
            seen.add(d.resolve())
            out.append(d)
    return out


def target_files() -> dict[str, Path]:
    """Target name -> file, first directory wins."""
    found: dict[str, Path] = {}
    for d in targets_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def resolve_target_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.is_file():
            raise UsageError(f"target file {name_or_path} does not exist")
        return p
    files = target_files()
    if name_or_path not in files:
        raise unknown("target", name_or_path, files)
    return files[name_or_path]


def load_spec(name_or_path: str) -> TargetSpec:
    """Load and validate a target by name (from targets/) or by YAML path."""
    path = resolve_target_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}:{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise UsageError(f"{path}: expected a mapping of keys, got {got}")
    raw.setdefault("name", path.stem)
    try:
        return TargetSpec.model_validate(raw)
    except ValidationError as e:
        raise UsageError(f"{path}: {_first_error(e)}") from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        model = TargetSpec
        for part in err["loc"][:-1]:
            field = model.model_fields.get(str(part))
            ann = getattr(field, "annotation", None) if field else None
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
        return f"unknown key {key!r}{suggest(str(err['loc'][-1]), model.model_fields)}"
    return f"key {key!r}: {err['msg']} (got {err.get('input')!r})"

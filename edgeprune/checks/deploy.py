"""Deploy files: the artifacts × targets × budgets a project ships, checked together by
``edgeprune check --all deploy.yaml`` (one JUnit test case each).

```yaml
defaults:                     # optional, for every check that does not say
  target: ort-cpu
  tolerance: 0.05
checks:
  - artifact: runs/r18/model.onnx
    target: [ort-cpu, board-a]    # one name/YAML path, or a list (one check per target)
    budget_ms: 0.30               # optional: else the target file's budget for the model
    baseline: profiles/{target}/r18.json   # optional: default profiles/TARGET/baseline-STEM.json
    tolerance: 0.03               # optional
  - artifact: runs/r18-half/model.onnx
    budget_ratio: 0.5             # or: at most this share of an unpruned model's latency,
    unpruned: runs/r18-half/unpruned.onnx   # read in pairs with it (prune --budget-ratio keeps it)
```

Relative paths are relative to the deploy file. Unknown keys and wrong types are rejected
naming the file and the key, like target files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeprune.checks.request import CheckRequest
from edgeprune.errors import UsageError, suggest


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str | None = None
    tolerance: float | None = Field(None, ge=0, lt=1)


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: str
    target: str | list[str] | None = None
    budget_ms: float | None = Field(None, gt=0)
    budget_ratio: float | None = Field(None, gt=0, lt=1)
    unpruned: str | None = None
    baseline: str | None = None
    tolerance: float | None = Field(None, ge=0, lt=1)


class DeployFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    defaults: Defaults = Field(default_factory=Defaults)
    checks: list[Entry] = Field(min_length=1)


@dataclass(frozen=True)
class DeployCheck:
    """One (artifact, target) pair to check, paths resolved."""

    artifact: str
    target: str | None
    budget_ms: float | None
    baseline: str | None
    tolerance: float | None
    budget_ratio: float | None = None
    unpruned: str | None = None


def load_deploy(path: str | os.PathLike) -> list[DeployCheck]:
    """Read, validate and expand a deploy file into one check per (artifact, target)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UsageError(f"cannot read deploy file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}:{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if isinstance(raw, list):
        raw = {"checks": raw}
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping with a 'checks' list, got {type(raw).__name__}")
    try:
        spec = DeployFile.model_validate(raw)
    except ValidationError as e:
        raise UsageError(f"{path}: {_first_error(e)}") from None
    return _expand(spec, path.parent)


def requests(base: CheckRequest) -> list[CheckRequest]:
    """The single checks of ``base.deploy``: each entry's artifact, target, baseline, budget and
    tolerance (else ``base``'s tolerance) with ``base``'s mode and flags. Baselines default to
    profiles/ beside the deploy file, so the file's checks find them from any directory."""
    root = Path(base.deploy).parent / "profiles"
    return [replace(base, deploy=None, artifact=c.artifact, target=c.target, baseline=c.baseline,
                    budget_ms=c.budget_ms, budget_ratio=c.budget_ratio, unpruned=c.unpruned,
                    budget_source="deploy file", baseline_root=root,
                    tolerance=c.tolerance if c.tolerance is not None else base.tolerance)
            for c in load_deploy(base.deploy)]


def _expand(spec: DeployFile, root: Path) -> list[DeployCheck]:
    out = []
    for i, e in enumerate(spec.checks):
        targets = e.target if isinstance(e.target, list) else [e.target or spec.defaults.target]
        if not targets:
            raise UsageError(f"checks[{i}].target: an empty list")
        if e.baseline and len(targets) > 1 and "{target}" not in e.baseline:
            raise UsageError(f"checks[{i}].baseline: several targets share one baseline file; "
                             "put {target} in its path")
        for t in targets:
            target = str(_resolve(root, t)) if t and _is_path(t) else t
            name = Path(t).stem if t and _is_path(t) else t
            baseline = str(_resolve(root, e.baseline.replace("{target}", name or "default"))) if e.baseline else None
            out.append(DeployCheck(str(_resolve(root, e.artifact)), target, e.budget_ms, baseline,
                                   e.tolerance if e.tolerance is not None else spec.defaults.tolerance,
                                   e.budget_ratio, str(_resolve(root, e.unpruned)) if e.unpruned else None))
    return out


def _is_path(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) or os.sep in target


def _resolve(root: Path, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else root / path


def _first_error(e: ValidationError) -> str:
    err = min(e.errors(), key=lambda x: x["type"] != "extra_forbidden")  # a typo explains a missing key
    loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "list")))]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if err["type"] == "extra_forbidden":
        parent = {"checks": Entry, "defaults": Defaults}.get(str(loc[0])) if len(loc) > 1 else DeployFile
        return f"unknown key {key!r}{suggest(str(loc[-1]), parent.model_fields if parent else ())}"
    if err["type"] == "missing":
        return f"missing key {key!r}"
    return f"key {key!r}: {err['msg']} (got {err.get('input')!r})"

"""Performance baselines (what one artifact measured on one target, kept to test later runs
against) and the other references a check compares with: the artifact's metadata and its budget.

A baseline is a versioned JSON file (``profiles/TARGET/baseline-KEY.json`` by default, KEY the artifact's
path, committed beside the latency tables) and a frozen copy of the artifact beside it (``baseline-KEY.frozen.onnx``):
a later check runs that copy and the new artifact in turn in one run, which a shared host's drift
cannot fool. The JSON keeps every window median of the measurement (the unit the
regression statistics resample), the least-disturbed window's raw samples, the timing protocol
used (a check repeats exactly that protocol), the target's fingerprint (runtime version, device,
host CPU...) and the date. A baseline whose fingerprint differs from the target's is reported as
incomparable, never silently compared.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edgeprune.errors import UsageError
from edgeprune.runtime.base import fingerprint_mismatches

SCHEMA_VERSION = 1
KIND = "edgeprune-baseline"


@dataclass
class Baseline:
    """One artifact's latency on one target, with everything needed to compare a later run."""

    artifact: dict                 # path, name, sha256, size_bytes, model (from its metadata)
    target: str
    fingerprint: dict
    timing: dict                   # the TimingSpec of each session; checks reuse it
    latency: dict                  # latency_ms (the statistic), median/p90/p99/min, runs,
    #                                window_medians_ms (all windows), samples_ms (best window)
    sessions: int = 2              # sessions per measurement; checks reuse it
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    edgeprune_version: str = ""
    schema: int = SCHEMA_VERSION

    @property
    def windows(self) -> list[float]:
        return [float(x) for x in self.latency["window_medians_ms"]]

    def to_dict(self) -> dict:
        return {"kind": KIND, **asdict(self)}

    def save(self, path: str | os.PathLike) -> Path:
        from edgeprune.artifacts.onnxio import atomic_write
        with atomic_write(path) as tmp:
            tmp.write_text(dumps(self.to_dict()))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Baseline":
        """Read and validate a baseline file; anything unreadable is a one-line UsageError."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except OSError as e:
            raise UsageError(f"cannot read baseline {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise UsageError(f"baseline {path} is not valid JSON: {e}") from None
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise UsageError(f"{path} is not an edgeprune baseline file")
        if d.get("schema") != SCHEMA_VERSION:
            raise UsageError(f"baseline {path} has schema {d.get('schema')!r}; this edgeprune reads "
                             f"schema {SCHEMA_VERSION}: re-create it with --update")
        d.pop("kind")
        try:
            base = cls(**d)
            windows = base.windows
            float(base.latency["latency_ms"])
            ok = (windows and min(windows) > 0 and isinstance(base.sessions, int) and base.sessions >= 1
                  and isinstance(base.fingerprint, dict) and isinstance(base.timing, dict))
        except (TypeError, KeyError, ValueError) as e:
            raise UsageError(f"baseline {path} is malformed: {type(e).__name__}: {e}") from None
        if not ok:
            raise UsageError(f"baseline {path} is malformed: it needs positive window medians, "
                             "a session count, a fingerprint and a timing block")
        return base


def record(path: Path, meta: dict, target: str, fingerprint: dict, timing: dict, sessions: int,
           attempts: list, latency_ms: float, frozen: str | None = None) -> Baseline:
    """A baseline from measurements (``check.Attempt``s) of the artifact at ``path``: all their
    window medians pooled, the summary and raw samples of the least-disturbed window."""
    from edgeprune import __version__
    windows = [w for a in attempts for w in a.windows_ms]
    best = min(attempts, key=lambda a: a.median_ms)
    s = sorted(best.samples_ms) or [best.median_ms]
    latency = {"latency_ms": round(latency_ms, 6), "median_ms": round(best.median_ms, 6),
               "p90_ms": round(best.p90_ms, 6), "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))], 6),
               "min_ms": round(s[0], 6), "runs": len(best.samples_ms),
               "cpu_wait": [a.cpu_wait for a in attempts],
               "window_medians_ms": [round(w, 6) for w in windows],
               "samples_ms": [round(x, 6) for x in best.samples_ms]}
    art = {"path": str(path), "name": path.name, "key": artifact_key(path), "sha256": file_digest(path),
           "size_bytes": path.stat().st_size, "model": meta.get("model"), "frozen": frozen}
    return Baseline(art, target, fingerprint, timing, latency, sessions=sessions, edgeprune_version=__version__)


def freeze(artifact: Path, baseline_path: Path) -> str:
    """Copy the artifact beside its baseline (``BASELINE.frozen.onnx``; its companions too), so
    later checks can run the old model next to the new one; the copy's file name. The ``.frozen``
    infix keeps the copy from ever being the artifact: ``--baseline deployed.json`` beside
    ``deployed.onnx`` once named the copy ``deployed.onnx``, so replacing the artifact replaced
    the copy and the paired comparison silently fell back to the absolute one."""
    dest = baseline_path.with_name(f"{baseline_path.stem}.frozen{artifact.suffix}")
    if dest.resolve() == artifact.resolve():
        raise UsageError(f"the baseline's frozen copy would overwrite the artifact {artifact}; name the baseline "
                         "file differently")
    from edgeprune.artifacts.kinds import copy_together
    copy_together(artifact, dest)  # an IR's .bin first, the .xml last: its presence means the copy is whole
    return dest.name


def frozen_artifact(base: Baseline, baseline_path: Path, notes: list[str]) -> Path | None:
    """The baseline's frozen copy of its artifact if it is there and intact, else None (with
    the reason in ``notes``)."""
    name = base.artifact.get("frozen")
    if not name:
        notes.append("the baseline keeps no copy of its artifact (re-create it with --update to get one)")
        return None
    copy = baseline_path.parent / Path(name).name
    if not copy.is_file():
        notes.append(f"the baseline's copy of its artifact, {copy}, is missing")
        return None
    if base.artifact.get("sha256") and file_digest(copy) != base.artifact["sha256"]:
        notes.append(f"the baseline's copy of its artifact, {copy}, has changed since it was recorded")
        return None
    return copy


def artifact_metadata(path: Path) -> dict:
    """The artifact's embedded metadata; a missing or corrupt file, or one of no known kind, is
    a UsageError."""
    from edgeprune.artifacts.kinds import kind_of
    if not path.is_file():
        raise UsageError(f"artifact {path} {'is a directory, not a file' if path.is_dir() else 'does not exist'}")
    kind = kind_of(path)
    kind.check(path)
    try:
        return kind.read_metadata(path)
    except UsageError:
        raise
    except Exception as e:  # ORT-format files are read by onnxruntime, which has its own errors
        raise UsageError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def mismatches(baseline_fp: dict, here_fp: dict) -> dict[str, tuple]:
    """{key: (baseline value, value here)} for every condition of the target's fingerprint
    that differs (``runtime.base.fingerprint_mismatches``)."""
    return fingerprint_mismatches(baseline_fp, here_fp)


def describe_mismatch(diff: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: baseline {b!r}, here {h!r}" for k, (b, h) in diff.items())


def default_path(target: str, artifact: str | os.PathLike, root: str | os.PathLike = "profiles") -> Path:
    """``profiles/TARGET/baseline-KEY.json``: one baseline per (artifact, target), where KEY is
    the artifact's path (``artifact_key``): two prune runs both write ``model.onnx``, and their
    baselines must not be one file."""
    target = Path(target).stem if target.endswith((".yaml", ".yml")) else target
    return Path(root) / target / f"baseline-{artifact_key(artifact)}.json"


def artifact_key(artifact: str | os.PathLike) -> str:
    """The artifact's path relative to the working directory (absolute outside it) without its
    suffix, as a file-name slug: ``m.onnx`` -> ``m``, ``runs/a/model.onnx`` -> ``runs_a_model``."""
    path = Path(os.path.abspath(artifact))
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    parts = [p for p in (*path.parent.parts, path.stem) if p not in ("/", ".", "")]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts)).strip("_") or "artifact"


def check_same_artifact(base: "Baseline", artifact: Path, baseline_path: Path) -> None:
    """UsageError when the baseline was recorded for another artifact (a new version of the same
    artifact keeps its path; another artifact needs its own baseline, ``--update``)."""
    recorded = base.artifact.get("key") or Path(str(base.artifact.get("name", ""))).stem
    here = artifact_key(artifact) if base.artifact.get("key") else artifact.stem
    if recorded and recorded != here:
        raise UsageError(f"baseline {baseline_path} was recorded for {base.artifact.get('path')}, not {artifact}; "
                         f"record one for this artifact with --update")


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dumps(d: dict) -> str:
    """Indented JSON with number lists kept on one line: readable, and diff-friendly."""
    text = json.dumps(d, indent=2, sort_keys=False)
    return re.sub(r"\[\s*(-?[0-9][-0-9.eE+,\s]*?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


"""A prune run's output directory, as the commands that build on it read it (export --run,
quantize --run, check --run, report): one reader, so each says the same thing about a missing,
damaged or unfinished run.

A run made since run.json exists is read from its manifest (``edgeprune.manifest``): typed,
versioned, paths relative to the run. A run made before has only report.json; it is still read,
from the same report keys as before (model, widths, input_size, target, data, device_artifact),
so those runs keep working. Either way report.json is validated on read
(``reports.model.load_report``): a damaged one is one line, not a KeyError later. A run.json that is present but unusable is an error, never a silent
fall-back to report.json: that would hide a damaged run behind older, looser defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeprune import manifest as manifest_mod
from edgeprune.errors import UsageError
from edgeprune.manifest import RunManifest
from edgeprune.reports.model import PruneReport, load_report


@dataclass
class Run:
    """What the commands need of a run, from its manifest or (older runs) its report."""

    dir: Path
    model: str | None
    widths: dict[str, int] | None
    input_size: int | None
    target: str | None            # what load_spec takes: the run's target file, else its name
    data: str | None              # what prune took as --data (None: not recorded)
    budget_ms: float | None
    weights: Path                 # the pruned model's state dict
    onnx: Path
    device_artifact: Path | None  # the target's own format beside model.onnx (model.ort, model.xml)
    device_kind: str | None
    report: PruneReport | None = None            # report.json (None when the run has none)
    manifest: RunManifest | None = None          # None: a run made before run.json
    data_root: str | None = None
    budget_ratio: float | None = None            # prune --budget-ratio: budget_ms was this share ...
    unpruned: Path | None = None                 # ... of this model's latency (artifact's kind), read in pairs

    @property
    def artifact(self) -> Path:
        """The file deployed on the run's target: its own format when it has one, else ONNX."""
        return self.device_artifact or self.onnx


def read_run(run: str | Path, finished: bool = True) -> Run:
    """The run in ``run``. ``finished``: also require what rebuilding the pruned model needs
    (model, widths, the pruned weights and model.onnx)."""
    run = Path(run)
    if not run.is_dir():
        raise UsageError(f"run directory {run} does not exist")
    if (run / manifest_mod.FILENAME).exists():
        r = _from_manifest(run, manifest_mod.read(run))
    elif (run / "report.json").exists():
        r = _from_report(run, load_report(run / "report.json"), finished)
    else:
        raise UsageError(f"{run} is not a prune output directory: it has neither run.json nor report.json")
    if finished:
        for path in (r.weights, r.onnx):
            if not path.is_file():
                raise UsageError(f"{run} has no {path.name}: the prune run did not finish, or its files were removed")
    return r


def _from_manifest(run: Path, m: RunManifest) -> Run:
    device, unpruned = m.artifacts.get("device"), m.artifacts.get("unpruned")
    report_path = m.path(run, m.report)
    return Run(run, m.model, dict(m.widths), m.input_size, m.target.ref, m.data.source if m.data else None,
               m.budget_ms, m.path(run, m.weights.pruned), m.path(run, m.artifacts["onnx"].path),
               m.path(run, device.path) if device else None, device.kind if device else None,
               load_report(report_path) if report_path.exists() else None, m, m.data.root if m.data else None,
               m.budget_ratio, m.path(run, unpruned.path) if unpruned else None)


def _from_report(run: Path, report: PruneReport, finished: bool) -> Run:
    """An older run (no run.json): the keys export and quantize always read from its report."""
    path = run / "report.json"
    if finished and report.widths is None:
        raise UsageError(f"{path} lacks widths: not a report written by edgeprune prune")
    if finished and isinstance(report.input_size, list):  # rebuilding the model needs the side
        raise UsageError(f"{path}: input_size: expected the side in pixels, got {report.input_size}")
    kind = report.device_artifact.kind if report.device_artifact else None
    own = {"openvino": "model.xml", "openvino-fp16": "model.xml", "ort": "model.ort"}.get(kind or "")
    return Run(run, report.model, report.widths, report.input_size, report.target, report.data, report.budget_ms,
               run / "model.pt", run / "model.onnx", run / own if own else None, kind, report, None)

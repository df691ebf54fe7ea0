"""A prune run's output directory, as the commands that build on it read it (export --run,
quantize, report): one reader, so each says the same thing about a missing or unfinished run."""
from __future__ import annotations

import json
from pathlib import Path

from edgeprune.errors import UsageError


def read_run(run: str | Path, finished: bool = True) -> dict:
    """The run's report.json. ``finished``: also require what rebuilding the pruned model needs
    (its model, widths, model.pt and model.onnx)."""
    run = Path(run)
    if not run.is_dir():
        raise UsageError(f"run directory {run} does not exist")
    path = run / "report.json"
    if not path.is_file():
        raise UsageError(f"{run} is not a prune output directory: it has no report.json")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if not isinstance(report, dict):
        raise UsageError(f"{path} is not a report written by edgeprune prune")
    if finished:
        missing = [k for k in ("model", "widths") if k not in report]
        if missing:
            raise UsageError(f"{path} lacks {', '.join(missing)}: not a report written by edgeprune prune")
        for name in ("model.pt", "model.onnx"):
            if not (run / name).is_file():
                raise UsageError(f"{run} has no {name}: the prune run did not finish")
    return report

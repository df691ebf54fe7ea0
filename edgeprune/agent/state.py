"""The agent's state directory (``agent serve --state-dir``): finished jobs' results as one JSON
file per job id, so a result survives a restart of the agent (killed, rebooted, upgraded in
place), and the uploads of jobs in progress.

Why files: a client that retries after the agent came back asks for the same job id; the agent
answers from ``results/ID.json`` without measuring again. A job that was running when the agent
died has no result file (it never finished), so its resubmission runs it once: nothing is lost
and nothing is measured twice. Results are written to a temp file and renamed (a reader never
sees half a file, a crash mid-write leaves the old state); ids are checked against
``protocol.JOB_ID`` before they name a file, so a client cannot reach outside the directory.

Layout::

    STATE_DIR/results/<job id>.json   JobStatus (done or failed), pydantic JSON
    STATE_DIR/uploads/                models of queued and running jobs (emptied at start)
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pydantic import ValidationError

from edgeprune.agent.protocol import JobStatus, valid_job_id

KEEP_FILES = 10_000  # finished results kept on disk; the oldest go first


def default_state_dir(port: int) -> Path:
    """``$XDG_CACHE_HOME/edgeprune/agent-PORT`` (else ``~/.cache/...``): a cache, since a
    result is only needed until its client has read it; per port, so two agents on one board
    never share (or race on) one directory."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "edgeprune" / f"agent-{port}"


def prepare(state_dir: Path) -> tuple[Path, Path]:
    """(results dir, an empty uploads dir) under ``state_dir``. Leftover uploads belong to jobs
    of a previous agent process that will never finish them; their clients resubmit."""
    results, uploads = state_dir / "results", state_dir / "uploads"
    results.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(uploads, ignore_errors=True)
    uploads.mkdir(parents=True)
    for tmp in results.glob(".*.tmp"):  # a write the previous process did not finish
        tmp.unlink(missing_ok=True)
    return results, uploads


class FileResults:
    """Finished jobs as ``DIR/<id>.json``: the ``ResultStore`` of ``jobs.JobStore``."""

    def __init__(self, directory: Path, keep: int = KEEP_FILES):
        self.dir, self.keep = directory, keep
        self._puts = 0

    def _path(self, job_id: str) -> Path:
        if not valid_job_id(job_id):  # the app checks too; a file name is never taken unchecked
            raise ValueError(f"invalid job id {job_id!r}")
        return self.dir / f"{job_id}.json"

    def get(self, job_id: str) -> JobStatus | None:
        try:
            return JobStatus.model_validate_json(self._path(job_id).read_text())
        except (OSError, ValueError, ValidationError):  # absent, or not ours: as if unknown
            return None

    def put(self, status: JobStatus) -> None:
        path = self._path(status.job_id)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{status.job_id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(status.model_dump_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._puts += 1
        if self._puts % 100 == 0:
            self.prune()

    def count(self) -> int:
        return sum(1 for _ in self.dir.glob("*.json"))

    def prune(self) -> None:
        """Drop the oldest results beyond ``keep`` (a long-lived agent's disk stays bounded)."""
        files = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for p in files[:max(0, len(files) - self.keep)]:
            p.unlink(missing_ok=True)

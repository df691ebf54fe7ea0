"""The agent's jobs: a store keyed by the client's job id, and one worker that runs them one at a
time, so two clients never measure on the board at once (each would disturb the other's numbers).

Idempotency: a job id is submitted once per logical measurement by the client and reused on a
retry, so a dropped connection neither loses a result nor measures twice. A finished id answers
with its stored result; a queued or running one is not started again. Finished results live in a
``ResultStore``: bounded memory here, or ``agent.state.FileResults`` (one JSON file per id under
``--state-dir``), which keeps them across restarts of the agent."""
from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgeprune.agent.protocol import (
    JobResult,
    JobSpec,
    JobStatus,
)
from edgeprune.errors import EdgepruneError, is_bad_input
from edgeprune.runtime.base import Target


def log(event: str, **fields) -> None:
    """One JSON line on stderr per event: machine-readable, and the tests read job intervals
    (``mono``: this process's monotonic clock) from it."""
    line = {"t": round(time.time(), 4), "mono": round(time.monotonic(), 6), "event": event, **fields}
    print(json.dumps(line, default=str), file=sys.stderr, flush=True)


class ResultStore(Protocol):
    """Where finished jobs are kept: ``get`` by id, ``put`` a final status."""

    def get(self, job_id: str) -> JobStatus | None: ...

    def put(self, status: JobStatus) -> None: ...


class MemoryResults:
    """The last ``keep`` finished jobs, oldest dropped first (a client polls for its result
    within seconds; the bound keeps a long-lived agent's memory flat)."""

    def __init__(self, keep: int = 256):
        self.keep = keep
        self._items: OrderedDict[str, JobStatus] = OrderedDict()

    def get(self, job_id: str) -> JobStatus | None:
        return self._items.get(job_id)

    def put(self, status: JobStatus) -> None:
        self._items[status.job_id] = status
        self._items.move_to_end(status.job_id)
        while len(self._items) > self.keep:
            self._items.popitem(last=False)


@dataclass
class Job:
    """A job not yet finished: its spec, the agent-named files of its models, its state."""

    id: str
    spec: JobSpec
    paths: list[Path]
    state: str = "queued"
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def status(self, position: int | None) -> JobStatus:
        return JobStatus(job_id=self.id, state=self.state, position=position)


def measure_job(target: Target, spec: JobSpec, paths: list[Path]) -> JobResult:
    """Run one job's measurement on the board's own target, wrapped in ``with_busy_share`` so the
    client learns how disturbed the board was (the client host's CPU says nothing about it)."""
    t0 = time.perf_counter()
    out = JobResult(kind=spec.kind, device_target=spec.device_target)
    if spec.kind in ("measure", "measure_many"):
        lats, busy = target.with_busy_share(lambda: target.measure_many(paths, spec.timing))
        out.latencies = list(lats)
    elif spec.kind == "measure_alternating":
        alt, busy = target.with_busy_share(lambda: target.measure_alternating(paths[0], paths[1], spec.timing))
        out.alternation = alt
    else:
        layers, busy = target.with_busy_share(lambda: target.layer_times(paths[0], spec.runs))
        out.layers = list(layers)
    out.busy_share = busy
    out.seconds = round(time.perf_counter() - t0, 4)
    return out


class JobStore:
    """Jobs by id and the queue of one worker. All bookkeeping runs on the event loop (no lock
    needed for it); only the measurement itself runs in a thread, one at a time."""

    def __init__(self, targets: dict[str, Target], workdir: Path, results: ResultStore | None = None):
        self.targets = targets
        self.workdir = workdir
        self.results = results or MemoryResults()
        self.live: dict[str, Job] = {}
        self.pending: deque[str] = deque()
        self.wakeup = asyncio.Event()
        self.running: str | None = None
        self.measurements = 0
        self.closing = False
        self._seq = 0
        self._current: asyncio.Future | None = None

    def status(self, job_id: str) -> JobStatus | None:
        job = self.live.get(job_id)
        if job is None:
            return self.results.get(job_id)
        return job.status(0 if job_id == self.running else list(self.pending).index(job_id) + 1)

    async def submit(self, job_id: str, spec: JobSpec, models: list[bytes]) -> JobStatus:
        """Queue a new job (the caller checked the id is unknown and the models are ONNX). Its
        files get names the agent chooses; they are deleted when the job ends."""
        self._seq += 1
        paths = [self.workdir / f"job{self._seq}-{i}.onnx" for i in range(len(models))]
        self.live[job_id] = Job(job_id, spec, paths)
        self.pending.append(job_id)  # registered before the await below: a resubmission finds it
        await asyncio.to_thread(_write_all, paths, models)
        self.wakeup.set()
        log("job_queued", job=job_id, kind=spec.kind, target=spec.device_target, position=len(self.pending))
        return self.status(job_id)

    async def wait(self, job_id: str, timeout: float) -> JobStatus | None:
        """The job's status once it is final or ``timeout`` seconds passed (a long poll)."""
        job = self.live.get(job_id)
        if job is not None and timeout > 0:
            try:
                await asyncio.wait_for(job.done.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return self.status(job_id)

    async def worker(self) -> None:
        """Take queued jobs in order and measure each in a thread; never two at once."""
        while not self.closing:
            if not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            job = self.live[self.pending.popleft()]
            self.running, job.state = job.id, "running"
            self._current = asyncio.ensure_future(asyncio.to_thread(self._run, job))
            final = await asyncio.shield(self._current)
            self._finish(job, final)

    def _run(self, job: Job) -> JobStatus:
        """The measurement (in the worker thread); its errors become the job's status."""
        log("job_start", job=job.id, kind=job.spec.kind, target=job.spec.device_target)
        self.measurements += 1
        t0 = time.perf_counter()
        try:
            result = measure_job(self.targets[job.spec.device_target], job.spec, job.paths)
            final = JobStatus(job_id=job.id, state="done", result=result)
        except Exception as e:  # noqa: BLE001 (reported to the client, the agent keeps serving)
            usage = isinstance(e, EdgepruneError) or is_bad_input(e, "onnxruntime", "onnx", "openvino")
            final = JobStatus(job_id=job.id, state="failed", error=_without_paths(e, job.paths),
                              error_kind="usage" if usage else "internal")
        finally:
            _remove(job.paths)
        log("job_end", job=job.id, kind=job.spec.kind, state=final.state, seconds=round(time.perf_counter() - t0, 4),
            busy_share=final.result.busy_share if final.result else None, error=final.error)
        return final

    def _finish(self, job: Job, final: JobStatus) -> None:
        if final.state in ("done", "failed"):
            self.results.put(final)
        self.live.pop(job.id, None)
        self.running = None
        job.state = final.state
        job.done.set()

    async def close(self, grace_s: float) -> None:
        """Shutdown: queued jobs are abandoned (their clients resubmit elsewhere or later); the
        running one gets ``grace_s`` to finish, else is abandoned; the upload dir is removed."""
        self.closing = True
        self.wakeup.set()
        while self.pending:
            job = self.live.pop(self.pending.popleft())
            _remove(job.paths)
            job.state = "abandoned"
            job.done.set()
            log("job_abandoned", job=job.id, why="agent shutting down")
        if self._current is not None and not self._current.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._current), grace_s)
            except asyncio.TimeoutError:
                log("job_abandoned", job=self.running, why=f"still running {grace_s} s into shutdown")
        shutil.rmtree(self.workdir, ignore_errors=True)


def _without_paths(e: Exception, paths: list[Path]) -> str:
    """The error's first line, the agent's file names replaced by ``upload N`` (they mean
    nothing to the client and need not be shown to it)."""
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    for i, p in enumerate(paths):
        text = text.replace(str(p), f"upload {i + 1}")
    return text


def _write_all(paths: list[Path], models: list[bytes]) -> None:
    for path, data in zip(paths, models):
        path.write_bytes(data)


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)

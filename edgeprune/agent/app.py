"""The agent's HTTP API (FastAPI). Every request carries ``Authorization: Bearer TOKEN``; uploads
are size-limited before they are read and must parse as ONNX; nothing the client sends is
unpickled or used as a file path.

  GET  /health              liveness
  GET  /info                version, the board's targets and their fingerprints, its host (CPU,
                            power: governors, clocks, Jetson power mode), counters
  POST /jobs                multipart: job_id, spec (JobSpec as JSON), models (1..n ONNX files)
                            -> JobStatus; 200 when final, else 202 with X-Queue-Position
  GET  /jobs/{id}?wait=S    long poll: the job's status once final or after S seconds; 404 unknown
"""
from __future__ import annotations

import asyncio
import hmac
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from edgeprune import __version__
from edgeprune.agent.jobs import JobStore, log
from edgeprune.agent.protocol import FINAL, MODELS_PER_KIND, AgentInfo, JobSpec, JobStatus, TargetInfo, valid_job_id
from edgeprune.runtime.base import Target, host_fingerprint
from edgeprune.runtime.hardware import hardware_info
from edgeprune.runtime.power import power_info

MAX_WAIT_S = 60.0


class Guard:
    """ASGI middleware in front of everything: the bearer token first (401), then the body size
    (413) from Content-Length, or counted while buffering a body sent without one, so neither an
    unknown client nor an oversized upload gets as far as the multipart parser."""

    def __init__(self, app, token: str, max_bytes: int):
        self.app, self.token, self.max_bytes = app, token.encode(), max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not authorized(headers.get(b"authorization", b""), self.token):
            return await _reply(scope, receive, send, 401, "missing or wrong bearer token",
                                {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await _reply(scope, receive, send, 413, self._too_large())
            return await self.app(scope, receive, send)
        body = await _read_limited(receive, self.max_bytes)
        if body is None:
            return await _reply(scope, receive, send, 413, self._too_large())
        return await self.app(scope, _replay(body), send)

    def _too_large(self) -> str:
        return f"upload larger than the agent's limit of {self.max_bytes / 2**20:g} MB (--max-upload-mb)"


def authorized(header: bytes, token: bytes) -> bool:
    """``Bearer TOKEN`` compared in constant time (a timing side channel must not leak it)."""
    scheme, _, given = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


async def _reply(scope, receive, send, status: int, detail: str, headers: dict | None = None) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


async def _read_limited(receive, max_bytes: int) -> bytes | None:
    chunks, size, more = [], 0, True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
        more = msg.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


def check_onnx(data: bytes, what: str) -> None:
    """415 unless ``data`` is a valid, self-contained ONNX model (parsed as protobuf, never
    unpickled). A tensor stored as external data names a file by path, which the runtime would
    open on the board (``location: /etc/passwd``): nothing the client sends is used as a path,
    so such a model is refused, not loaded."""
    import onnx
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 (any parse failure means "not ONNX")
        raise HTTPException(415, f"{what} is not a valid ONNX model: {_first_line(e)}") from None
    external = next(_external_tensors(model.graph), None)
    if external is not None:
        raise HTTPException(415, f"{what} keeps tensor {external!r} in an external file; the agent takes "
                                 "self-contained models only (onnx.save without save_as_external_data)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 (any checker failure means "not ONNX")
        raise HTTPException(415, f"{what} is not a valid ONNX model: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _external_tensors(graph):
    """Names of tensors stored outside the model: initializers, and tensor attributes of nodes,
    subgraphs (If/Loop/Scan bodies) included."""
    from onnx import TensorProto
    tensors = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _external_tensors(sub)
    for t in tensors:
        if t.data_location == TensorProto.EXTERNAL:
            yield t.name


def create_app(targets: dict[str, Target], token: str, max_upload_bytes: int = 64 * 2**20,
               keep: int = 256, grace_s: float = 30.0, state_dir: Path | None = None) -> FastAPI:
    """The agent for ``targets`` (name -> the board's own Target) behind ``token``. With
    ``state_dir`` finished results are files there and survive a restart (``agent.state``);
    without, the last ``keep`` are kept in memory."""
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app):
        workdir, results = _storage(state_dir, keep)
        store = state["store"] = JobStore(targets, workdir, results)
        worker = asyncio.create_task(store.worker())
        log("agent_start", version=__version__, targets=sorted(targets), workdir=str(workdir),
            state_dir=str(state_dir) if state_dir else None,
            stored_results=results.count() if hasattr(results, "count") else 0)
        try:
            yield
        finally:
            await store.close(grace_s)
            worker.cancel()
            shutil.rmtree(workdir, ignore_errors=True)
            log("agent_stop", measurements=store.measurements)

    app = FastAPI(title="edgeprune agent", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, token=token, max_bytes=max_upload_bytes)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> AgentInfo:
        store: JobStore = state["store"]
        if "infos" not in state:  # asked once: a fingerprint does not change while the agent runs
            state["infos"] = await asyncio.to_thread(_target_infos, targets)
        infos = state["infos"]
        if "hardware" not in state:  # fixed while the agent runs
            state["hardware"] = await asyncio.to_thread(hardware_info)
        host = {**host_fingerprint(), "hardware": state["hardware"],
                "power": await asyncio.to_thread(power_info)}  # read each time: nvpmodel -m
        return AgentInfo(version=__version__, targets=infos, host=host,
                         max_upload_bytes=max_upload_bytes, measurements=store.measurements, queued=len(store.pending))

    @app.post("/jobs")
    async def submit(job_id: str = Form(...), spec: str = Form(...), models: list[UploadFile] = File(...)):
        store: JobStore = state["store"]
        if not valid_job_id(job_id):
            raise HTTPException(422, "job_id must be 8-64 letters, digits, '-' or '_'")
        known = store.status(job_id)
        if known is not None:  # idempotent: never measured twice, never started twice
            return _answer(known)
        job = _parse_spec(spec, targets, len(models))
        data = [await m.read() for m in models]
        for i, d in enumerate(data):
            await asyncio.to_thread(check_onnx, d, f"upload {i + 1}")
        if store.closing:
            raise HTTPException(503, "the agent is shutting down")
        if store.status(job_id) is not None:  # submitted again while this one was being read
            return _answer(store.status(job_id))
        return _answer(await store.submit(job_id, job, data))

    @app.get("/jobs/{job_id}")
    async def poll(job_id: str, wait: float = Query(0.0, ge=0, le=MAX_WAIT_S)):
        if not valid_job_id(job_id):
            raise HTTPException(422, "job_id must be 8-64 letters, digits, '-' or '_'")
        status = await state["store"].wait(job_id, wait)
        if status is None:
            raise HTTPException(404, f"no job {job_id} on this agent (finished long ago, or the agent restarted)")
        return _answer(status)

    return app


def _storage(state_dir: Path | None, keep: int):
    """(uploads dir, result store): files under ``state_dir``, else a temp dir and memory."""
    from edgeprune.agent.jobs import MemoryResults
    from edgeprune.agent.state import FileResults, prepare
    if state_dir is None:
        return Path(tempfile.mkdtemp(prefix="edgeprune-agent-")), MemoryResults(keep)
    results, uploads = prepare(state_dir)
    return uploads, FileResults(results)


def _parse_spec(text: str, targets: dict[str, Target], n_models: int) -> JobSpec:
    try:
        spec = JobSpec.model_validate_json(text)
    except ValidationError as e:
        err = e.errors()[0]
        raise HTTPException(422, f"spec: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if spec.device_target not in targets:
        raise HTTPException(422, f"this agent has no target {spec.device_target!r}; "
                                 f"it has: {', '.join(sorted(targets))}")
    lo, hi = MODELS_PER_KIND[spec.kind]
    if not lo <= n_models <= hi:
        raise HTTPException(422, f"{spec.kind} takes {lo}..{hi} models, got {n_models}")
    return spec


def _answer(status: JobStatus) -> JSONResponse:
    final = status.state in FINAL
    headers = {} if final or status.position is None else {"X-Queue-Position": str(status.position)}
    return JSONResponse(status.model_dump(mode="json"), status_code=200 if final else 202, headers=headers)


def _target_infos(targets: dict[str, Target]) -> dict[str, TargetInfo]:
    return {name: TargetInfo(name=name, runtime=t.runtime, artifact_kind=t.artifact_kind(),
                             fingerprint=t.fingerprint()) for name, t in targets.items()}

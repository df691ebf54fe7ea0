"""A board over the network: the ``remote`` runtime sends each measurement to an edgeprune agent
(``edgeprune agent serve`` on the board, ``edgeprune.agent``), which runs it on one of its own
targets and returns the same dataclasses a local target returns.

Target options (``options:`` in the target file, checked by ``RemoteOptions``):
  url: https://board:8765    the agent
  token_file: ~/.edgeprune/board.token   the bearer token (relative paths: from the working dir)
  device_target: ort-cpu     the agent's target that measures
  connect_timeout_s, read_timeout_s, retries   the client's patience (retries: connection
                             errors and 5xx, with exponential backoff)
  ca_file: board-ca.pem      CA bundle to verify a self-signed agent certificate

Each logical measurement gets one job id, reused by every retry of it, so a dropped
connection neither loses the result nor measures twice (the agent answers a known id with its
stored result). Outside a ``job_scope`` the id is a fresh uuid; inside one (a profile's chunk)
it is a hash of the scope's key, the job's place in the scope, its spec and its models, so a
client killed and run again sends the same ids and the agent (with ``--state-dir``, across its
own restarts too) answers the finished ones from its store. The fingerprint is the board's (its target's and host's, from ``/info``, with
its power mode and CPU governors) plus the agent's host name: never this client's host, whose CPU
plays no part in the numbers.
"""
from __future__ import annotations

import hashlib
import importlib.util
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeprune.agent.protocol import (
    FINAL,
    PROTOCOL,
    AgentInfo,
    JobResult,
    JobSpec,
    JobStatus,
)
from edgeprune.errors import UsageError
from edgeprune.runtime.base import Compiled, NodeTime, Target
from edgeprune.runtime.hardware import compared_hardware
from edgeprune.runtime.power import compared_power
from edgeprune.runtime.timing import Alternation, Latency

T = TypeVar("T")
CLIENT_PACKAGES = ("httpx", "tenacity")
UPLOAD_SHARE = 0.99  # of the agent's upload limit a job's models may use: room for the multipart envelope


class RemoteOptions(BaseModel):
    """The ``options`` of a ``runtime: remote`` target file."""

    model_config = ConfigDict(extra="forbid")
    url: str
    token_file: str
    device_target: str = Field(min_length=1)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(4, ge=0, le=20)
    ca_file: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return v.rstrip("/")


class _Retryable(Exception):
    """A 5xx answer: the agent may be restarting; worth another try."""

    def __init__(self, response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class RemoteTarget(Target):
    runtime = "remote"
    package = "httpx"
    extra = "remote"

    @classmethod
    def installed(cls) -> bool:
        return all(importlib.util.find_spec(p) is not None for p in CLIENT_PACKAGES)

    @classmethod
    def device_present(cls, spec) -> bool | None:
        """Unknown without asking the board (listing targets makes no network calls)."""
        return None

    def __init__(self, spec):
        super().__init__(spec)
        self.options = self.options_as(RemoteOptions)
        self.url = self.options.url
        self.token = _read_token(self.options.token_file, spec.name)
        self._info: AgentInfo | None = None
        self._client = None
        self._busy: list[tuple[float | None, float]] | None = None
        self._scope: list | None = None  # [key, jobs sent in it so far] inside job_scope

    # --- the Target interface, answered by the board ------------------------------------------

    def runtime_version(self) -> str:
        return str(self._board()["runtime_version"])

    def fingerprint(self) -> dict:
        """The board target's fingerprint, the board's configured power state (Jetson power mode,
        CPU governors: ``power.compared_power``), its board model and GPUs
        (``hardware.compared_hardware``; an agent too old to report them adds nothing) and the
        agent's host name."""
        board = self._board()
        power, hardware = self._info.host.get("power"), self._info.host.get("hardware")
        return {**board, **(compared_power(power) if isinstance(power, dict) else {}),
                **(compared_hardware(hardware) if isinstance(hardware, dict) else {}),
                "agent_host": urlparse(self.url).hostname}

    def artifact_kind(self) -> str:
        """ONNX: what the agent accepts; it converts to its target's own format itself."""
        return "onnx"

    def compile(self, onnx_path) -> Compiled:
        raise UsageError(f"target {self.spec.name!r} runs models on the board at {self.url}; there is "
                         "nothing to compile here (measure, measure_many, measure_alternating, layer_times)")

    def measure_many(self, onnx_paths: list, timing=None) -> list[Latency]:
        """Interleaved on the board, in as few jobs as the agent's upload limit allows: a
        profile's chunk of six ResNet-18s is 100 MB against the default 64 MB, and was refused.
        Each job still interleaves its own models; only one model over the limit is an error."""
        out = []
        for batch in self._batches(onnx_paths):
            kind = "measure" if len(batch) == 1 else "measure_many"
            out += self._job(kind, batch, timing).latencies
        return out

    def _batches(self, paths: list) -> list[list]:
        """``paths`` in order, cut where the next model would take a job past the upload limit."""
        self._board()
        limit = self._info.max_upload_bytes * UPLOAD_SHARE if self._info.max_upload_bytes else float("inf")
        batches, size = [[]], 0
        for path in paths:
            n = Path(path).stat().st_size
            if batches[-1] and size + n > limit:
                batches.append([])
                size = 0
            batches[-1].append(path)
            size += n
        return batches

    def measure_alternating(self, path_a, path_b, timing=None) -> Alternation:
        return self._job("measure_alternating", [path_a, path_b], timing).alternation

    def layer_times(self, onnx_path, runs: int = 10) -> list[NodeTime]:
        return self._job("layer_times", [onnx_path], None, runs).layers

    def with_busy_share(self, run: Callable[[], T]) -> tuple[T, float | None]:
        """``run()`` and the board's busy share over the jobs it sent, weighted by their time
        (the agent wraps each job in its own target's ``with_busy_share``)."""
        outer, self._busy = self._busy, []
        try:
            out = run()
            readings = self._busy
        finally:
            if outer is not None:
                outer.extend(self._busy)
            self._busy = outer
        known = [(s, w) for s, w in readings if s is not None and w > 0]
        total = sum(w for _, w in known)
        return out, (round(sum(s * w for s, w in known) / total, 4) if total else None)

    @contextmanager
    def job_scope(self, key: str):
        """Job ids derived from ``key`` inside (see the module's docstring); scopes nest, the
        innermost wins."""
        outer, self._scope = self._scope, [key, 0]
        try:
            yield
        finally:
            self._scope = outer

    # --- jobs ----------------------------------------------------------------------------------

    def _job_id(self, spec: JobSpec, models: list[bytes]) -> str:
        """A uuid, or inside a job scope the same id for the same n-th job of the same scope:
        the n keeps a deliberate repeat (the same model measured twice) two measurements."""
        if self._scope is None:
            return uuid.uuid4().hex
        self._scope[1] += 1
        h = hashlib.sha256()
        for part in (self._scope[0], str(self._scope[1]), spec.model_dump_json(), *models):
            part = part.encode() if isinstance(part, str) else part
            h.update(len(part).to_bytes(8, "big") + part)
        return h.hexdigest()[:40]

    def _job(self, kind: str, paths: list, timing, runs: int = 10) -> JobResult:
        """Submit one job (``_job_id``) and poll it to the end. A 404 (the agent restarted and
        lost it) or an abandoned job is submitted again under the same id."""
        spec = JobSpec(kind=kind, device_target=self.options.device_target, timing=timing or self._timing(), runs=runs)
        models = [Path(p).read_bytes() for p in paths]
        job_id = self._job_id(spec, models)
        self._board()  # the agent is there, has the target, and takes uploads this large
        limit, size = self._info.max_upload_bytes, sum(map(len, models))
        if limit and size > limit * UPLOAD_SHARE:
            raise UsageError(f"{len(models)} model(s) of {size / 2**20:.1f} MB in all exceed the upload limit of the "
                             f"agent at {self.url} ({limit / 2**20:g} MB): raise its --max-upload-mb")
        status, resubmits = self._submit(job_id, spec, models), 0
        while status.state not in FINAL or status.state == "abandoned":
            if status.state == "abandoned":
                if resubmits >= self.options.retries:
                    raise UsageError(f"the agent at {self.url} abandoned job {job_id} {resubmits + 1} times "
                                     "(shutting down?)")
                resubmits += 1
                status = self._submit(job_id, spec, models)
                continue
            r = self._call("GET", f"/jobs/{job_id}", params={"wait": self._poll_s()})
            status = self._submit(job_id, spec, models) if r.status_code == 404 else self._status(r)
        if status.state == "failed":
            if status.error_kind == "usage":
                raise UsageError(f"the agent at {self.url} ({self.options.device_target}): {status.error}")
            raise RuntimeError(f"the agent at {self.url} failed: {status.error}")
        if self._busy is not None:
            self._busy.append((status.result.busy_share, status.result.seconds))
        return status.result

    def _timing(self):
        """This file's timing protocol if it sets one, else None: the board's target's own (a slow
        board's file may need longer windows than a build machine's defaults)."""
        return self.spec.timing if "timing" in self.spec.model_fields_set else None

    def _submit(self, job_id: str, spec: JobSpec, models: list[bytes]) -> JobStatus:
        files = [("models", (f"model{i}.onnx", data, "application/octet-stream")) for i, data in enumerate(models)]
        return self._status(self._call("POST", "/jobs", data={"job_id": job_id, "spec": spec.model_dump_json()},
                                       files=files))

    def _poll_s(self) -> float:
        """Long-poll length: well inside the read timeout."""
        return round(max(0.5, min(30.0, self.options.read_timeout_s * 0.5)), 2)

    def _status(self, r) -> JobStatus:
        if r.status_code not in (200, 202):
            raise UsageError(f"the agent at {self.url} refused the request: HTTP {r.status_code}: {_detail(r)}")
        return JobStatus.model_validate(r.json())

    def _board(self) -> dict:
        """The fingerprint of the agent's ``device_target``, from ``/info`` (asked once)."""
        if self._info is None:
            r = self._call("GET", "/info")
            if r.status_code != 200:
                raise UsageError(f"the agent at {self.url} did not answer /info: HTTP {r.status_code}: {_detail(r)}")
            info = AgentInfo.model_validate(r.json())
            if info.protocol != PROTOCOL:
                raise UsageError(f"the agent at {self.url} speaks protocol {info.protocol}, this client {PROTOCOL}: "
                                 "install the same edgeprune version on both")
            self._info = info
        name = self.options.device_target
        if name not in self._info.targets:
            raise UsageError(f"the agent at {self.url} has no target {name!r}; it has: "
                             f"{', '.join(sorted(self._info.targets))}")
        return dict(self._info.targets[name].fingerprint)

    # --- HTTP ------------------------------------------------------------------------------------

    def _http(self):
        if self._client is None:
            import httpx
            o = self.options
            self._client = httpx.Client(
                base_url=self.url, headers={"Authorization": f"Bearer {self.token}"},
                timeout=httpx.Timeout(o.read_timeout_s, connect=o.connect_timeout_s),
                verify=str(Path(o.ca_file).expanduser()) if o.ca_file else True)
        return self._client

    def _call(self, method: str, path: str, **kw):
        """One request, retried with exponential backoff on connection errors and 5xx; a refused
        token and an unreachable agent each become one line naming the file or the URL."""
        import httpx
        import tenacity
        attempts = self.options.retries + 1
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts), reraise=True,
            wait=tenacity.wait_exponential(multiplier=0.25, max=8),
            retry=tenacity.retry_if_exception_type((httpx.TransportError, _Retryable)))
        try:
            for attempt in retrying:
                with attempt:
                    r = self._http().request(method, path, **kw)
                    if r.status_code >= 500:
                        raise _Retryable(r)
        except httpx.TransportError as e:
            raise UsageError(f"cannot reach the agent at {self.url} after {attempts} attempts: "
                             f"{type(e).__name__}: {e}") from None
        except _Retryable as e:
            raise UsageError(f"the agent at {self.url} failed {attempts} times: HTTP "
                             f"{e.response.status_code}: {_detail(e.response)}") from None
        if r.status_code == 401:
            raise UsageError(f"the agent at {self.url} refused the token in {self.options.token_file}")
        return r


def _read_token(path: str, target: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"target {target!r}: token file {path} does not exist")
    token = p.read_text().strip()
    if not token:
        raise UsageError(f"target {target!r}: token file {path} is empty")
    return token


def _detail(r) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:300]

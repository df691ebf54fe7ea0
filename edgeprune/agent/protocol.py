"""The wire format between the agent and the ``remote`` target: typed requests and results, and
explicit conversions to and from the runtime's dataclasses (``Latency``, ``Alternation``,
``NodeTime``), so a caller cannot tell a remote measurement from a local one. JSON floats round
trip exactly, so the rebuilt dataclasses compare equal to the agent's.

Only pydantic here: the client imports this module without FastAPI."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeprune.runtime.base import NodeTime
from edgeprune.runtime.spec import TimingSpec
from edgeprune.runtime.timing import Alternation, Latency

PROTOCOL = 1
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
Kind = Literal["measure", "measure_many", "measure_alternating", "layer_times"]
State = Literal["queued", "running", "done", "failed", "abandoned"]
FINAL: tuple[State, ...] = ("done", "failed", "abandoned")
# how many uploaded models each kind takes: (at least, at most)
MODELS_PER_KIND: dict[str, tuple[int, int]] = {
    "measure": (1, 1), "measure_many": (1, 64), "measure_alternating": (2, 2), "layer_times": (1, 1)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSpec(_Strict):
    """What to measure, sent beside the uploaded model(s). ``device_target`` is a target name of
    the agent's own (its ``--targets``); the models are never named by a client path."""

    kind: Kind
    device_target: str = Field(min_length=1, max_length=200)
    timing: TimingSpec | None = None
    runs: int = Field(10, ge=1, le=10_000)  # layer_times' profiled runs


def valid_job_id(job_id: str) -> bool:
    """Client-chosen ids are plain tokens (uuid hex): they key the store, never a path."""
    return bool(JOB_ID.match(job_id))


class JobResult(_Strict):
    """A finished measurement: exactly one of ``latencies`` (measure, measure_many),
    ``alternation`` or ``layers`` is set, plus the board's busy share during it and how long it
    took (the client weights busy shares by it)."""

    kind: Kind
    device_target: str
    latencies: list[Latency] | None = None   # the dataclasses themselves: pydantic validates and
    alternation: Alternation | None = None   # serialises them field by field, so the wire format
    layers: list[NodeTime] | None = None     # cannot drift from what a local target returns
    busy_share: float | None = None
    seconds: float = 0.0


class JobStatus(_Strict):
    """The agent's answer about a job. ``position``: 0 while it runs; n while queued, when it is
    the n-th to run next (the running job, if any, is not counted). ``error_kind``: ``usage``
    for bad input (the model does not load on the board's runtime), ``internal`` for the
    agent's own failure."""

    job_id: str
    state: State
    position: int | None = None
    result: JobResult | None = None
    error: str | None = None
    error_kind: Literal["usage", "internal"] | None = None


class TargetInfo(_Strict):
    name: str
    runtime: str
    artifact_kind: str
    fingerprint: dict


class AgentInfo(_Strict):
    """``GET /info``: what the board offers, and what must match for its numbers to count."""

    version: str
    protocol: int = PROTOCOL
    targets: dict[str, TargetInfo]
    host: dict
    max_upload_bytes: int = 0  # one job's request body, all its models together
    measurements: int = 0  # measurements actually run since start (idempotent replays do not count)
    queued: int = 0


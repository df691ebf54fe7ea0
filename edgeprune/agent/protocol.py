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


class LatencyModel(_Strict):
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    iqr_ms: float
    runs: int
    samples_ms: list[float] = []
    window_medians_ms: list[float] = []

    @classmethod
    def of(cls, lat: Latency) -> "LatencyModel":
        return cls(median_ms=lat.median_ms, p90_ms=lat.p90_ms, p99_ms=lat.p99_ms, mean_ms=lat.mean_ms,
                   min_ms=lat.min_ms, iqr_ms=lat.iqr_ms, runs=lat.runs, samples_ms=list(lat.samples_ms),
                   window_medians_ms=list(lat.window_medians_ms))

    def latency(self) -> Latency:
        return Latency(self.median_ms, self.p90_ms, self.p99_ms, self.mean_ms, self.min_ms, self.iqr_ms,
                       self.runs, tuple(self.samples_ms), tuple(self.window_medians_ms))


class AlternationModel(_Strict):
    rounds_ms: list[list[tuple[float, float]]]
    latencies: tuple[LatencyModel, LatencyModel]

    @classmethod
    def of(cls, alt: Alternation) -> "AlternationModel":
        return cls(rounds_ms=[[tuple(r) for r in w] for w in alt.rounds_ms],
                   latencies=(LatencyModel.of(alt.latencies[0]), LatencyModel.of(alt.latencies[1])))

    def alternation(self) -> Alternation:
        rounds = tuple(tuple((float(a), float(b)) for a, b in w) for w in self.rounds_ms)
        return Alternation(rounds, (self.latencies[0].latency(), self.latencies[1].latency()))


class NodeTimeModel(_Strict):
    name: str
    op: str
    ms: float

    @classmethod
    def of(cls, t: NodeTime) -> "NodeTimeModel":
        return cls(name=t.name, op=t.op, ms=t.ms)

    def node_time(self) -> NodeTime:
        return NodeTime(self.name, self.op, self.ms)


class JobResult(_Strict):
    """A finished measurement: exactly one of ``latencies`` (measure, measure_many),
    ``alternation`` or ``layers`` is set, plus the board's busy share during it and how long it
    took (the client weights busy shares by it)."""

    kind: Kind
    device_target: str
    latencies: list[LatencyModel] | None = None
    alternation: AlternationModel | None = None
    layers: list[NodeTimeModel] | None = None
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


"""The files ``trtexec`` exports, read into typed models (pure JSON: no TensorRT needed).

``trtexec --exportProfile --exportLayerInfo --exportTimes --separateProfileRun`` writes:

- the profile: ``[{"count": N}, {"name", "timeMs", "averageMs", "medianMs", "percentage"}, ...]``,
  one row per engine layer, timed over N profiled iterations (``medianMs`` only in newer
  versions);
- the layer information: ``{"Layers": [...], "Bindings": [...]}``, each layer a dict with
  ``Name``, ``LayerType``, ``Inputs``/``Outputs`` (tensor ``Name`` and ``Dimensions``) and, from
  TensorRT 10 with ``--profilingVerbosity=detailed``, ``Metadata`` naming its ONNX nodes
  (``[ONNX Layer: /conv1/Conv]\\x1e[ONNX Layer: /relu/Relu]``); TensorRT 8 has no Metadata, and
  without detailed verbosity ``Layers`` is a list of plain name strings;
- the times: one record per iteration of the timed (unprofiled) run, ``computeMs`` and
  ``latencyMs`` among them;
- and, from trex's ``process_engine.py`` (not trtexec itself), a ``*.profile.metadata.json``
  whose ``performance_summary`` lists ``GPU Compute Time`` and ``Latency`` as
  [min, max, mean, median, p90, p95, p99] in ms.

Every reader turns a missing, empty, malformed or truncated file, or one of the wrong kind,
into one ``UsageError`` line naming the file and what is wrong: these files come off boards
by hand, and a half-copied one is the common failure.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from edgeprune.errors import UsageError

MEDIAN_INDEX = 3  # performance_summary lists: [min, max, mean, median, p90, p95, p99]
SUMMARY_LABELS = ("min", "max", "mean", "median", "p90", "p95", "p99")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ProfileRow(_Model):
    name: str
    time_ms: float = Field(alias="timeMs", ge=0)
    average_ms: float = Field(alias="averageMs", ge=0)
    median_ms: float | None = Field(None, alias="medianMs", ge=0)
    percentage: float | None = None


class Profile(_Model):
    count: int = Field(ge=1)
    rows: list[ProfileRow]

    @property
    def sum_average_ms(self) -> float:
        """The per-layer averages added up: what the profiled run says one inference costs."""
        return sum(r.average_ms for r in self.rows)


class Tensor(_Model):
    name: str = Field(alias="Name")
    dimensions: list[int] = Field(default_factory=list, alias="Dimensions")


class LayerInfo(_Model):
    name: str = Field(alias="Name")
    layer_type: str = Field("", alias="LayerType")
    inputs: list[Tensor] = Field(default_factory=list, alias="Inputs")
    outputs: list[Tensor] = Field(default_factory=list, alias="Outputs")
    metadata: str | None = Field(None, alias="Metadata")
    origin: str | None = Field(None, alias="Origin")
    groups: int | None = Field(None, alias="Groups")


class LayerGraph(_Model):
    layers: list[LayerInfo] = Field(alias="Layers", min_length=1)
    bindings: list[str] = Field(default_factory=list, alias="Bindings")

    @field_validator("layers", mode="before")
    @classmethod
    def _names_only(cls, v: Any) -> Any:
        """Exported without ``--profilingVerbosity=detailed``, a layer is just its name."""
        return [{"Name": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @property
    def detailed(self) -> bool:
        return any(l.inputs or l.outputs or l.layer_type for l in self.layers)

    def tensor_dims(self, name: str) -> list[int] | None:
        """Dimensions of the tensor ``name`` wherever a layer reads or writes it."""
        for layer in self.layers:
            for t in layer.inputs + layer.outputs:
                if t.name == name and t.dimensions:
                    return t.dimensions
        return None


class TimingRecord(_Model):
    compute_ms: float = Field(alias="computeMs", ge=0)
    latency_ms: float = Field(alias="latencyMs", ge=0)


class Summary(_Model):
    gpu_compute: list[float] = Field(alias="GPU Compute Time", min_length=MEDIAN_INDEX + 1)
    latency: list[float] = Field(default_factory=list, alias="Latency")


class ProfileMetadata(_Model):
    performance_summary: Summary
    device_information: dict[str, Any] = Field(default_factory=dict)

    @property
    def device(self) -> str | None:
        d = self.device_information.get("Selected Device")
        return str(d) if d else None


@dataclass
class EndToEnd:
    """The whole engine's time one per-layer sum is calibrated to, and where it came from."""

    median_ms: float | None
    source: str
    samples: list[float] = field(default_factory=list)  # per-iteration times, or the summary's statistics
    basis: str = ""  # what ``samples`` are, for the table's error


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON of ``path``; one line saying whether it is missing, empty, cut short or
    malformed (a truncated copy fails at its last character, anything else earlier)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the trtexec {what} {p}: {getattr(e, 'strerror', None) or e}") from None
    if not text.strip():
        raise UsageError(f"{p} is empty, not a trtexec {what}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        cut = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")  # both reach the end
        why = "it is truncated (the JSON ends early)" if cut else "malformed JSON"
        raise UsageError(f"{p} is not a trtexec {what}: {why} ({e.msg}, line {e.lineno} column {e.colno})") from None


def _validate(model: type[BaseModel], data: Any, path: Path, what: str, offset: int = 0) -> Any:
    """``model`` from ``data``, or one line naming the first bad field (entries counted from
    ``offset``, so a profile row is numbered as it appears in the file)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p + offset) if isinstance(p, int) and offset else str(p) for p in err["loc"]]
        where = f" at {'.'.join(loc)}" if loc else ""
        raise UsageError(f"{path} is not a trtexec {what}: {err['msg'].lower()}{where}") from None


def load_profile(path: str | Path) -> Profile:
    """A ``--exportProfile`` file: the ``{"count": N}`` header, then at least one layer row."""
    p, what = Path(path), "profile (--exportProfile)"
    data = read_json(p, what)
    if not isinstance(data, list) or not data or not isinstance(data[0], dict) or "count" not in data[0]:
        raise UsageError(f"{p} is not a trtexec {what}: it must be a list starting with the "
                         '{"count": N} header trtexec writes')
    if len(data) < 2:
        raise UsageError(f"{p} is not a trtexec {what}: no layer rows after the count header")
    return _validate(Profile, {"count": data[0]["count"], "rows": data[1:]}, p, what, offset=1)


def load_layer_graph(path: str | Path) -> LayerGraph:
    """A ``--exportLayerInfo`` file."""
    p, what = Path(path), "layer info (--exportLayerInfo)"
    data = read_json(p, what)
    if not isinstance(data, dict) or "Layers" not in data:
        raise UsageError(f'{p} is not a trtexec {what}: it must be an object with a "Layers" list')
    return _validate(LayerGraph, data, p, what)


def check_same_layers(profile: Profile, graph: LayerGraph, graph_path: str | Path) -> None:
    """The two files must describe one engine: every profiled layer named in the layer info."""
    known = {l.name for l in graph.layers}
    missing = [r.name for r in profile.rows if r.name not in known]
    if missing:
        raise UsageError(f"{graph_path} does not describe the profiled engine: {len(missing)} of "
                         f"{len(profile.rows)} profiled layers are not in it (first: {missing[0]!r})")


def load_times(path: str | Path) -> list[TimingRecord]:
    """A ``--exportTimes`` file: one record per timed iteration."""
    p, what = Path(path), "times file (--exportTimes)"
    data = read_json(p, what)
    if not isinstance(data, list) or not data:
        raise UsageError(f"{p} is not a trtexec {what}: it must be a non-empty list of per-iteration records")
    try:
        return TypeAdapter(list[TimingRecord]).validate_python(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(f"{p} is not a trtexec {what}: {err['msg'].lower()} at "
                         f"{'.'.join(map(str, err['loc']))}") from None


def load_metadata(path: str | Path) -> ProfileMetadata:
    """A trex ``*.profile.metadata.json`` (the parsed trtexec log of the timed run)."""
    p, what = Path(path), "profile metadata (performance_summary)"
    return _validate(ProfileMetadata, read_json(p, what), p, what)


def end_to_end(e2e_ms: float | None = None, times: str | Path | None = None,
               metadata: ProfileMetadata | None = None, metadata_path: str | Path | None = None) -> EndToEnd:
    """The end-to-end time to calibrate to, by precedence: an explicit ``--e2e-ms``, the median
    GPU compute time of the ``--times`` iterations, the metadata's GPU compute median.

    GPU compute (not latency with host transfers) because the profile's layers are GPU work
    too; trex runs with ``--noDataTransfers``, where the two are equal."""
    if e2e_ms is not None:
        if not 0 < e2e_ms < float("inf"):
            raise UsageError(f"--e2e-ms must be a positive number of milliseconds, got {e2e_ms}")
        return EndToEnd(float(e2e_ms), "--e2e-ms", [float(e2e_ms)], "the given end-to-end time (in-sample)")
    if times is not None:
        compute = [r.compute_ms for r in load_times(times)]
        return EndToEnd(statistics.median(compute), f"median GPU compute of {len(compute)} iterations in {Path(times).name}",
                        compute, "per-iteration GPU compute times of the timed run")
    if metadata is not None:
        s = metadata.performance_summary.gpu_compute
        labels = SUMMARY_LABELS[:len(s)]
        return EndToEnd(s[MEDIAN_INDEX], f"GPU compute median in {Path(metadata_path or '').name}",
                        [v for k, v in zip(labels, s) if k != "max"],
                        "GPU compute " + "/".join(k for k in labels if k != "max") + " of the timed run")
    return EndToEnd(None, "none (uncalibrated: scale 1)")

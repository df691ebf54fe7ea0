"""LatencyTable: per-layer latency as a function of the widths of the groups it touches.

Each layer has a grid over the widths of its input and output groups (0, 1 or 2 axes),
measured in context on the target; a configuration's latency is the calibrated sum of the
layers' interpolated costs plus per-group end-to-end terms (``edgeprune.latency.calibration``). The file records the conditions it was measured under and its
own prediction error, and refuses to load where those conditions do not hold.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeprune.artifacts.onnxio import atomic_write
from edgeprune.errors import UsageError
from edgeprune.latency.calibration import Calibration
from edgeprune.runtime.base import fingerprint_mismatches

if TYPE_CHECKING:
    from edgeprune.latency.landings import Landings

SCHEMA_VERSION = 2  # 2: per-group calibration terms


@dataclass
class LayerEntry:
    """A layer's measured cost on a grid over ``axes`` (group names) at ``levels``."""

    axes: list[str]
    levels: list[list[int]]
    ms: list  # nested list, shape = [len(l) for l in levels]; the smoothed surface used to predict
    measured: list | None = None  # the per-cell medians as profiled, kept for provenance

    def predict(self, widths: dict[str, int]) -> float:
        return interpolate(self.levels, np.asarray(self.ms, dtype=float), [widths[a] for a in self.axes])


@dataclass
class TableError:
    """How well the table predicts whole-model latency on configurations it was not built from."""

    n: int = 0
    within_10pct: float = float("nan")
    rmspe: float = float("nan")
    max_abs_pct: float = float("nan")
    samples: list[dict] = field(default_factory=list)

    @classmethod
    def from_pairs(cls, predicted: list[float], measured: list[float], widths: list[dict] | None = None):
        if not len(predicted):
            return cls()
        p, m = np.asarray(predicted), np.asarray(measured)
        rel = (p - m) / m
        samples = [{"predicted_ms": round(float(a), 5), "measured_ms": round(float(b), 5)}
                   for a, b in zip(p, m)]
        for s, w in zip(samples, widths or []):
            s["widths"] = w
        return cls(int(len(p)), float(np.mean(np.abs(rel) <= 0.10)), float(np.sqrt(np.mean(rel ** 2))),
                   float(np.max(np.abs(rel))), samples)


@dataclass
class LatencyTable:
    meta: dict
    groups: dict[str, int]
    layers: dict[str, LayerEntry]
    overhead_ms: float
    calibration: Calibration = field(default_factory=Calibration)
    error: TableError = field(default_factory=TableError)
    path: Path | None = None
    # per layer [in_group, out_group, in_channels, out_channels, kernel area, depthwise]: the
    # weight size at any widths, for the calibration's memory term (empty in older tables)
    weights: dict[str, list] = field(default_factory=dict)
    # this host's trusted loop readings at the search's picks (edgeprune.latency.landings); not part
    # of the table's digest
    landings: "Landings | None" = field(default=None, repr=False, compare=False)

    def raw(self, widths: dict[str, int]) -> float:
        """Sum of the per-layer (profiler) times, before calibration to end-to-end."""
        return self.overhead_ms + sum(e.predict(widths) for e in self.layers.values())

    @property
    def full_ms(self) -> float:
        """The unpruned model's prediction: the unit a relative budget is a share of."""
        return self.predict(self.groups)

    def predict(self, widths: dict[str, int]) -> float:
        """Predicted end-to-end median latency (ms) of the model at ``widths``, corrected by the
        landings near ``widths`` when the table has any."""
        w = self._complete(widths)
        ms = self.calibrated(w)
        return ms * self.landings.factor(w) if self.landings else ms

    def calibrated(self, widths: dict[str, int]) -> float:
        """The profile's own prediction: the calibrated sum of the layers, without landings."""
        w = self._complete(widths)
        mb = self.weight_mb(w) if self.calibration.knee_mb is not None else 0.0
        return self.calibration.total_ms(self.raw(w), w, self.groups, mb)

    def attach_landings(self, landings: "Landings | None" = None) -> "Landings":
        """Correct predictions with ``landings`` (default: the sidecar file beside the table, or
        an empty in-memory set for a table never saved)."""
        from edgeprune.latency.landings import Landings
        if landings is None:
            landings = (Landings.load(self.path, self.groups, self.calibrated, self.digest) if self.path
                        else Landings(self.groups, self.calibrated, self.digest))
        self.landings = landings
        return landings

    def weight_mb(self, widths: dict[str, int]) -> float:
        """FP32 weights of the Conv/Linear layers at ``widths``, in MB (10^6 bytes)."""
        total = 0
        for in_g, out_g, c_in, c_out, kernel, depthwise in self.weights.values():
            ci, co = widths.get(in_g, c_in) if in_g else c_in, widths.get(out_g, c_out) if out_g else c_out
            total += co * kernel if depthwise else ci * co * kernel
        return 4 * total / 1e6

    def group_ms(self, group: str, width: int) -> float:
        """The calibration's end-to-end term for ``group`` at ``width``."""
        return self.calibration.group_ms(group, width, self.groups[group])

    @property
    def scale(self) -> float:
        return self.calibration.scale

    def layer_ms(self, widths: dict[str, int]) -> dict[str, float]:
        w = self._complete(widths)
        return {name: self.scale * e.predict(w) for name, e in self.layers.items()}

    def entries_touching(self, group: str) -> list[LayerEntry]:
        return [e for e in self.layers.values() if group in e.axes]

    def _complete(self, widths: dict[str, int]) -> dict[str, int]:
        return {**self.groups, **widths}

    def to_dict(self) -> dict:
        return {"schema": SCHEMA_VERSION, "meta": self.meta, "groups": self.groups,
                "calibration": {**asdict(self.calibration), "overhead_ms": self.overhead_ms},
                "error": asdict(self.error),
                "layers": {k: asdict(v) for k, v in self.layers.items()},
                **({"weights": self.weights} if self.weights else {})}

    @property
    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> Path:
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        self.path = Path(path)
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike, expect: dict | None = None, allow_mismatch: bool = False) -> "LatencyTable":
        """Read a table; if ``expect`` is given (the target's fingerprint plus the table's own
        conditions, ``profile.table_conditions``), every key of it the table records must agree."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            table = cls._from_dict(d)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"{path} is not a readable latency table: {e}") from None
        if expect and not allow_mismatch:
            diff = mismatches(table.meta, expect)
            if diff:
                raise TableMismatch(f"latency table {path} was measured under other conditions "
                                 f"({diff}); re-profile or pass --allow-table-mismatch")
        table.path = path
        return table

    @classmethod
    def _from_dict(cls, d: dict) -> "LatencyTable":
        if d.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"schema {d.get('schema')} (this edgeprune reads {SCHEMA_VERSION})")
        cal = dict(d["calibration"])
        overhead = float(cal.pop("overhead_ms"))
        return cls(d["meta"], {k: int(v) for k, v in d["groups"].items()},
                   {k: LayerEntry(**v) for k, v in d["layers"].items()},
                   overhead, Calibration(**cal), TableError(**d.get("error", {})), weights=d.get("weights", {}))


class TableMismatch(UsageError):
    """A table measured under other conditions (runtime, device, threads, model, input)."""


def mismatches(meta: dict, expect: dict) -> str:
    """'key: table X, here Y; ...' for the conditions that differ."""
    return "; ".join(f"{k}: table {a!r}, here {b!r}" for k, (a, b) in fingerprint_mismatches(meta, expect).items())


def interpolate(levels: list[list[int]], values: np.ndarray, point: list[int]) -> float:
    """Multilinear interpolation on a grid; outside the grid the edge cell is extended linearly."""
    if not levels:
        return float(values)
    lv = np.asarray(levels[0], dtype=float)
    x = float(point[0])
    if len(lv) == 1:
        return interpolate(levels[1:], values[0], point[1:])
    i = int(np.clip(np.searchsorted(lv, x) - 1, 0, len(lv) - 2))
    t = (x - lv[i]) / (lv[i + 1] - lv[i]) if lv[i + 1] > lv[i] else 0.0
    a = interpolate(levels[1:], values[i], point[1:])
    b = interpolate(levels[1:], values[i + 1], point[1:])
    return max(a + t * (b - a), 0.0)

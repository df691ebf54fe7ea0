"""Landings: the closed loop's own measurements, kept beside the table to correct it where
budgets land.

The table is calibrated on random configurations; the search's picks are not random (they sit
on a budget, often near the cache cliff where the weights outgrow L2/L3), and there the table was
off by −29% to +59% on a shared AVX2 host while its random-configuration check said 97–100%
within ±10% (issue 9, item 7). Every round of the loop measures a pick end to end, so those
readings are calibration data exactly where it matters. They are kept in a sidecar file
(``<table>.landings.json``) keyed to the table's digest, and the prediction at widths ``w``
becomes

    predict(w) = calibrated(w) · exp( Σ_i k(w, w_i) r_i / (PRIOR + Σ_i k(w, w_i)) )

with ``r_i = log(measured_i / calibrated(w_i))`` and a Gaussian kernel ``k`` on the RMS of the
per-group width differences (as fractions of each group's channels). Far from every landing the
table is unchanged; at a landing read once it moves 1/(1+PRIOR) (91%) of the way to the reading
in log terms, and readings that agree accumulate. The loop keeps every round's reading: one far from
the prediction was already confirmed by a second measurement (``LoopConfig.confirm``). They apply
from the next run on: within a run the loop corrects by scaling its budget, and applying both
would count one miss twice. The file never changes the table's digest: the table is the profile,
the landings are this host's corrections to it.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.artifacts.onnxio import atomic_write

BANDWIDTH = 0.10   # kernel width: RMS width difference (fraction of channels) at which a landing weighs e^-1
PRIOR = 0.1        # pseudo-weight of the table itself at a landing (readings kept are trusted ones)
KEEP = 64          # newest landings kept per table
SCHEMA = 1


@dataclass
class Landing:
    widths: dict[str, int]
    measured_ms: float
    when: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class Landings:
    """The trusted loop readings of one table, with their log-residuals against its calibrated
    prediction (``base``: widths -> ms, the table without landings)."""

    def __init__(self, groups: dict[str, int], base: Callable[[dict[str, int]], float],
                 digest: str, path: Path | None = None, items: list[Landing] | None = None):
        self.groups, self.base, self.digest, self.path = dict(groups), base, digest, path
        self._names = sorted(groups)
        self._channels = np.array([groups[g] for g in self._names], float)
        self.items: list[Landing] = []
        self._x = np.zeros((0, len(self._names)))
        self._r = np.zeros(0)
        for item in items or []:
            self.add(item.widths, item.measured_ms, item.when)

    def __len__(self) -> int:
        return len(self.items)

    def _point(self, widths: dict[str, int]) -> np.ndarray:
        return np.array([widths.get(g, self.groups[g]) for g in self._names], float) / self._channels

    def add(self, widths: dict[str, int], measured_ms: float, when: str | None = None) -> None:
        """Keep one trusted reading of the model at ``widths``."""
        if not measured_ms > 0:
            return
        full = {**self.groups, **{g: int(w) for g, w in widths.items() if g in self.groups}}
        self.items.append(Landing(full, float(measured_ms), when or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        self._x = np.vstack([self._x, self._point(full)])
        self._r = np.append(self._r, math.log(measured_ms / self.base(full)))
        if len(self.items) > KEEP:
            self.items, self._x, self._r = self.items[-KEEP:], self._x[-KEEP:], self._r[-KEEP:]

    def factor(self, widths: dict[str, int]) -> float:
        """The multiplicative correction at ``widths`` (1.0 far from every landing)."""
        if not len(self._r):
            return 1.0
        d2 = np.mean((self._x - self._point(widths)) ** 2, axis=1)
        k = np.exp(-d2 / BANDWIDTH ** 2)
        return float(math.exp(float(k @ self._r) / (PRIOR + float(k.sum()))))

    # --- the sidecar file -----------------------------------------------------------------------

    @staticmethod
    def sidecar(table_path: str | os.PathLike) -> Path:
        p = Path(table_path)
        return p.with_name(p.name.removesuffix(".json") + ".landings.json")

    @classmethod
    def load(cls, table_path: str | os.PathLike, groups: dict[str, int], base, digest: str) -> "Landings":
        """The landings kept for this table; none when the file is absent, unreadable, or was
        written for another version of the table (a re-profiled table starts afresh)."""
        path = cls.sidecar(table_path)
        items: list[Landing] = []
        try:
            d = json.loads(path.read_text())
            if d.get("schema") == SCHEMA and d.get("table") == digest:
                items = [Landing({k: int(v) for k, v in x["widths"].items()}, float(x["measured_ms"]), str(x.get("when", "")))
                         for x in d["landings"]]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            print(f"edgeprune: ignoring unreadable landings {path}: {e}", file=sys.stderr)
        return cls(groups, base, digest, path, items)

    def save(self) -> Path | None:
        if self.path is None:
            return None
        with atomic_write(self.path) as tmp:
            tmp.write_text(json.dumps({"schema": SCHEMA, "table": self.digest,
                                       "landings": [x.to_dict() for x in self.items]}, indent=1) + "\n")
        return self.path

"""Leave-one-out check of the landings model: each kept landing predicted from the others.

    python tools/landings_loo.py TABLE.json TABLE.landings.json

Prints the profile's median |error| at the landings, then the landings' own at several kernel
bandwidths, local only (``edgeprune.latency.landings``) and with a global level term added (the mean
residual of all landings, the kernel then correcting what is left)."""
from __future__ import annotations

import json
import math
import statistics
import sys

import numpy as np

import edgeprune.latency.landings as L
from edgeprune.latency.table import LatencyTable


def predict(table, rest: list, widths: dict, global_level: bool) -> float:
    lds = L.Landings(table.groups, table.calibrated, table.digest, None, rest)
    if not global_level:
        return table.calibrated(widths) * lds.factor(widths)
    g = lds._r.sum() / (len(lds._r) + 1.0)
    k = np.exp(-np.mean((lds._x - lds._point(widths)) ** 2, axis=1) / L.BANDWIDTH ** 2)
    return table.calibrated(widths) * math.exp(g + float(k @ (lds._r - g)) / (L.PRIOR + k.sum()))


def main() -> int:
    table = LatencyTable.load(sys.argv[1])
    kept = [L.Landing(x["widths"], x["measured_ms"]) for x in json.loads(open(sys.argv[2]).read())["landings"]]
    profile = [table.calibrated(x.widths) / x.measured_ms - 1 for x in kept]
    print(f"{len(kept)} landings; profile alone: median |error| {statistics.median(map(abs, profile)):.1%}")
    default = L.BANDWIDTH
    for bw in (0.05, 0.1, 0.2, 0.4):
        L.BANDWIDTH = bw
        for global_level in (False, True):
            errs = [predict(table, kept[:i] + kept[i + 1:], x.widths, global_level) / x.measured_ms - 1
                    for i, x in enumerate(kept)]
            print(f"bandwidth {bw:<4} {'global + local' if global_level else 'local':<14} median |error| "
                  f"{statistics.median(map(abs, errs)):.1%}  ({', '.join(f'{100 * e:+.0f}%' for e in errs)})")
    L.BANDWIDTH = default
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Why two runtimes prune the same model differently (issue 3): per pruning group, what its
layers cost at full width in each runtime's latency table, what removing half its channels
saves there, and the width each pruning run kept. Prints a markdown table.

    python tools/compare_runtimes.py --tables runs/bench3/profiles/resnet18-32px.json \\
        runs/bench-ov/profiles/resnet18-32px.json --runs runs/bench3/resnet18-50 runs/bench-ov/resnet18-50
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeprune.latency.table import LatencyTable


def group_costs(table: LatencyTable) -> dict[str, tuple[float, float]]:
    """{group: (share of the full model's predicted latency spent in layers touching it,
    predicted saving of halving it, as a share of the full model)}."""
    full = dict(table.groups)
    total = table.predict(full)
    out = {}
    for g, width in full.items():
        share = sum(e.predict(full) for e in table.entries_touching(g)) * table.scale / total
        half = table.predict({**full, g: max(8, width // 2)})
        out[g] = (share, (total - half) / total)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs=2, type=Path, required=True, help="two latency tables of one model")
    p.add_argument("--runs", nargs="*", type=Path, default=[], help="prune runs (report.json), one per table")
    args = p.parse_args()
    tables = [LatencyTable.load(t, allow_mismatch=True) for t in args.tables]
    names = [f"{t.meta.get('target', '?')}" for t in tables]
    costs = [group_costs(t) for t in tables]
    kept = [json.loads((r / "report.json").read_text())["widths"] for r in args.runs]
    head = ["group", "channels"] + [f"{n}: share / saving of ½" for n in names] + [f"kept ({n})" for n in names[:len(kept)]]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for g, width in tables[0].groups.items():
        cells = [g, str(width)] + [f"{c[g][0]:.1%} / {c[g][1]:.1%}" for c in costs] + [str(k.get(g, "-")) for k in kept]
        print("| " + " | ".join(cells) + " |")
    for n, t in zip(names, tables):
        print(f"\n{n}: full model predicted {t.predict(dict(t.groups)):.3f} ms; table {t.meta.get('runtime')} "
              f"{t.meta.get('runtime_version')}")


if __name__ == "__main__":
    main()

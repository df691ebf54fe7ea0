"""Does the best shape survive scaling? (why ``ShapePlanner.RESEARCH`` is 5%, issue 9)

    python tools/rescale_study.py --run runs/sbs-eff --searched 0.2949 --to 0.2716 0.2599

Searches at ``--searched`` ms with the adaptive-BN search of a side-by-side run, then at each
``--to`` budget compares three picks by the search's own full score (validation accuracy after
BN re-estimation): the searched finalists scaled down and re-scored (what the loop does for a
small move), the uniform shape, and a fresh search at that budget.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgeprune.runtime.cpus import passive_openmp  # noqa: E402

passive_openmp()  # before torch loads


def main() -> int:
    import torch
    from side_by_side import open_session

    from edgeprune.search.accuracy import AbnConfig, AdaptiveBN, abn_search
    from edgeprune.search.knapsack import SearchConfig
    from edgeprune.search.shapes import fit_shape
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--searched", type=float, required=True, help="budget (ms) of the first search")
    p.add_argument("--to", type=float, nargs="+", required=True, help="lower budgets (ms) the loop moves to")
    a = p.parse_args()
    cfg = json.loads((Path(a.run) / "config.json").read_text())
    s = open_session(cfg)
    table, scfg = s.table(), SearchConfig()
    scorer = AdaptiveBN(s.model, s.input_shape, s.data, "l1", AbnConfig(**cfg["abn"]))
    first = abn_search(table, scorer, a.searched, scfg, s.scores())
    print(f"searched {a.searched:.4f} ms: best {first.best.final.accuracy:.1%} ({first.best.origin}), "
          f"uniform {first.by_origin('uniform').score.accuracy:.1%}, {first.seconds:.0f} s", flush=True)
    finalists = [c for c in first.candidates if c.final is not None]
    for b in a.to:
        rescaled = max(scorer(fit_shape(table, c.shape, b, scfg)).accuracy for c in finalists)
        t0 = time.perf_counter()
        fresh = abn_search(table, scorer, b, scfg, s.scores())
        print(f"{b:.4f} ms ({b / a.searched - 1:+.0%}): finalists rescaled {rescaled:.1%}, "
              f"uniform {fresh.by_origin('uniform').score.accuracy:.1%}, "
              f"fresh search {fresh.best.final.accuracy:.1%} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

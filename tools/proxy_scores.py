"""The accuracy search's full score of each method's model in a side-by-side run (issue 9).

Scores the pruned models that ``side_by_side.py plan`` saved (each method's own weights) with
the adaptive-BN scorer, optionally after ``--finetune-steps`` distillation steps, to see whether
the score ranks the methods as their fine-tuned accuracy does.

    python tools/proxy_scores.py --run runs/sbs-eff-25 --budget 0.25 --finetune-steps 100
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a side_by_side.py output directory")
    p.add_argument("--budget", default="0.25", help="the budget key in its plan.json")
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.finetune_steps < 0 or a.threads < 1:
        p.error("--finetune-steps must be >= 0 and --threads >= 1")
    plan_path = Path(a.run) / "plan.json"
    if not plan_path.is_file():
        p.error(f"{plan_path} missing: run side_by_side.py plan first")
    methods = json.loads(plan_path.read_text())["budgets"].get(a.budget, {}).get("methods", {})
    if not methods:
        p.error(f"no budget {a.budget!r} in {plan_path}")
    import torch

    from side_by_side import open_session

    from edgeprune.search.accuracy import AbnConfig, AdaptiveBN
    torch.set_num_threads(a.threads)
    s = open_session(json.loads((Path(a.run) / "config.json").read_text()))
    scorer = AdaptiveBN(s.model, s.input_shape, s.data, "l1", AbnConfig(finetune_steps=a.finetune_steps))
    for name, m in methods.items():
        if "widths" not in m:
            continue
        t0 = time.perf_counter()
        score = scorer.score(s.pruned(m["widths"], m["weights"]))
        print(f"{name}: val accuracy {score.accuracy:.1%}, loss {score.loss:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

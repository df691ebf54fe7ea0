"""Which cheap feature of a shape ranks it as a *long* fine-tune does? (issue 9)

Reads a ``tools/proxy_rank.py`` study (RUN/proxy-rank.json and its fine-tuned results, seed 0)
and, for every shape, computes features that need no training: MACs and parameters (as a share
of the unpruned model's), NASWOT (Mellor et al., ICML'21: log-det of the activation-pattern
kernel over a batch) on the pruned weights and on a fresh initialisation, and gradient norm and
SNIP on both. Prints Spearman's rho of each against the fine-tuned accuracy, on the first
``--first`` shapes, on the rest (held out: the features were chosen looking at the first ones
only), and on all. Features are cached in RUN/rank-features.json.

    python tools/rank_features.py --run runs/sbs13-eff35 --first 7
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def naswot(model, xb) -> float:
    import torch
    import torch.nn as nn
    codes = []
    hooks = [m.register_forward_hook(lambda m, i, o: codes.append((o > 0).flatten(1).float()))
             for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    with torch.no_grad():
        model(xb)
    for h in hooks:
        h.remove()
    c = torch.cat(codes, 1)
    return torch.slogdet((c @ c.T + (1 - c) @ (1 - c).T).double())[1].item()


def gradients(model, batches) -> tuple[float, float]:
    import torch.nn as nn
    model.eval()  # BN and dropout fixed; gradients still flow
    model.zero_grad()
    for xb, yb in batches:
        nn.functional.cross_entropy(model(xb), yb).backward()
    ps = [p.detach() for p in model.parameters() if p.grad is not None]
    gs = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    return (float(sum(g.norm() ** 2 for g in gs) ** 0.5),  # gradient norm
            float(sum((g * p).abs().sum() for g, p in zip(gs, ps))))  # SNIP: |g * w|


def features(s, widths, batches, base_macs, base_params) -> dict[str, float]:
    import torch

    from edgeprune.pruning.baselines import macs
    from edgeprune.training.finetune import recalibrate_bn
    m = s.pruned(widths)
    recalibrate_bn(m, batches, len(batches))
    m.eval()
    f = {"macs": macs(m, s.input_shape) / base_macs, "-params": -sum(p.numel() for p in m.parameters()) / base_params,
         "naswot": sum(naswot(m, b[0]) for b in batches[:3]) / 3}
    f["gradnorm"], f["snip"] = gradients(m, batches[:4])
    fresh = copy.deepcopy(m)
    torch.manual_seed(0)
    for mod in fresh.modules():
        if mod is not fresh and hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    recalibrate_bn(fresh, batches, len(batches))
    fresh.eval()
    f["naswot_init"] = sum(naswot(fresh, b[0]) for b in batches[:3]) / 3
    f["gradnorm_init"], f["snip_init"] = gradients(fresh, batches[:4])
    return f


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a directory proxy_rank.py has run in")
    p.add_argument("--first", type=int, default=7, help="shapes the features were chosen on")
    a = p.parse_args()
    run = Path(a.run)
    if a.first < 0:
        p.error(f"--first is a count of shapes, >= 0 (got {a.first})")
    if not (run / "proxy-rank.json").is_file():
        p.error(f"no {run / 'proxy-rank.json'}: run tools/proxy_rank.py first")
    import torch
    from scipy.stats import spearmanr
    from side_by_side import open_session, save_json

    from edgeprune.pruning.baselines import macs
    torch.set_num_threads(1)
    s = open_session(json.loads((run / "config.json").read_text()))
    shapes = json.loads((run / "proxy-rank.json").read_text())["shapes"]
    results = {f.name.removeprefix("rank-").removesuffix("-s0.json"): json.loads(f.read_text())["finetuned"]
               for f in (run / "results").glob("rank-*-s0.json")}
    x, y = s.data.train.tensors
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:640]
    batches = [(x[idx[i:i + 64]], y[idx[i:i + 64]]) for i in range(0, 640, 64)]
    path = run / "rank-features.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    base = (macs(s.model, s.input_shape), sum(q.numel() for q in s.model.parameters()))
    for name, row in shapes.items():
        if name not in cache:
            cache[name] = {"bn_only": row["bn_only"], **{k: v for k, v in row.items() if k.startswith("steps")},
                           **features(s, row["widths"], batches, *base)}
            save_json(path, cache)
    names = [n for n in shapes if n in results]  # in the order the study drew them
    for label, part in (("first", names[:a.first]), ("held out", names[a.first:]), ("all", names)):
        if len(part) > 2:
            rhos = {k: spearmanr([cache[n][k] for n in part], [results[n] for n in part]).statistic for k in cache[part[0]]}
            print(f"{label} (n = {len(part)}): " + ", ".join(f"{k} {v:+.2f}" for k, v in rhos.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What one adaptive-BN score costs: --model at --size px, half widths, one CPU thread.

Why it matters: the accuracy search screens ~50 candidates and fully scores ~9, so on a CPU
at 224 px it takes tens of minutes; on a GPU host the scorer runs on the GPU (issue 12). It also times counting the pruned model's
MACs, which every candidate now gets (``Candidate.macs``; the ``capacity`` objective ranks by it).

    python tools/abn_cost.py --size 224
    python tools/abn_cost.py --size 32 --model efficientnet_lite0
"""
from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="resnet18")
    a = p.parse_args()
    if a.size < 32:
        p.error("--size must be >= 32")
    import torch

    from edgeprune.errors import UsageError
    from edgeprune.pruning.baselines import macs
    from edgeprune.pruning.groups import analyse
    from edgeprune.pruning.prune import prune_to_widths
    from edgeprune.search.accuracy import AbnConfig, AdaptiveBN
    from edgeprune.training.data import DataConfig, load_data
    from edgeprune.training.models import build_model
    from edgeprune.training.distributed import resolve_device
    try:
        device = resolve_device(a.device)
    except UsageError as e:
        p.error(str(e))
    torch.set_num_threads(1)
    shape = (1, 3, a.size, a.size)
    data = load_data(DataConfig(name="fashion-mnist", input_size=a.size, train_samples=1000, val_samples=1000,
                                test_samples=64))
    model = build_model(a.model, num_classes=10).eval()
    half = {g: max(8, w // 2 // 8 * 8) for g, w in analyse(model, shape).full_widths().items()}
    scorer = AdaptiveBN(model, shape, data, "l1", AbnConfig(), device=device)
    for screen in (True, False):
        t0 = time.perf_counter()
        scorer(half, screen=screen)
        print(f"{'screen' if screen else 'full score'}: {time.perf_counter() - t0:.2f} s", flush=True)
    pruned = prune_to_widths(model, shape, half)
    counts = []
    for _ in range(5):
        t0 = time.perf_counter()
        macs(pruned, shape)
        counts.append(time.perf_counter() - t0)
    print(f"MACs count: {sorted(counts)[2]:.3f} s (median of 5)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

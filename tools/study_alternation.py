"""How noisy is a paired (alternating-block) measurement of two identical models? (issue 4)

The same ONNX file is compiled twice per session and the two run in alternating blocks; for
each block length it prints the spread of per-round log ratios, of window medians and of
session medians, and the range of window ratios. Identical models: every deviation is noise,
which is what sets `check`'s windows, sessions and block length.

    python tools/study_alternation.py runs/bench_check/base.onnx --target ort-cpu
"""
from __future__ import annotations

import argparse

import numpy as np

from edgeprune.runtime import get_target
from edgeprune.runtime.cpus import pinned
from edgeprune.runtime.spec import TimingSpec
from edgeprune.runtime.timing import measure_alternating


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx")
    p.add_argument("--target", default="ort-cpu")
    p.add_argument("--blocks-ms", nargs="+", type=float, default=[0, 2, 5, 20])
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--window-s", type=float, default=0.4)
    args = p.parse_args()
    target = get_target(args.target)
    spec = TimingSpec(warmup_s=0.2, min_time_s=args.window_s, windows=args.windows)
    print("| block ms | rounds / window | per-round SD | window SD | session SD | window ratios |")
    print("|---|---|---|---|---|---|")
    for block in args.blocks_ms:
        windows, sessions, rounds_sd, n = [], [], [], []
        for _ in range(args.sessions):
            a, b = target.compile(args.onnx), target.compile(args.onnx)
            with pinned(target.spec.threads):
                alt = measure_alternating(a.run_once, b.run_once, spec, block_s=block / 1e3)
            logs = [np.asarray(w) for w in alt.log_ratios]
            windows += [float(np.median(w)) for w in logs]
            sessions.append(float(np.median(np.concatenate(logs))))
            rounds_sd += [float(np.std(w)) for w in logs]
            n += [len(w) for w in logs]
        w = np.asarray(windows)
        print(f"| {block:g} | {np.median(n):.0f} | {np.median(rounds_sd):.3f} | {w.std():.3f} | "
              f"{np.std(sessions):.3f} | {np.exp(w.min()):.3f}–{np.exp(w.max()):.3f} |", flush=True)


if __name__ == "__main__":
    main()

"""Two measuring processes at once: stacked on one CPU (the old fixed "last CPU" choice) and with
the CPUs they claim (cpus.pinned now: a free CPU each, else wait). Prints each one's median.

    python tools/bench_pinning.py resnet18 --target openvino-cpu     # a model name, or an .onnx file
"""
from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import sys, edgeprune.runtime.cpus as tm
if sys.argv[3] == "stacked":  # the old choice: always the last CPU, no claims between processes
    tm.claim = lambda preferred, n, claims: [max(tm.os.sched_getaffinity(0))]
from edgeprune.runtime import get_target
print(get_target(sys.argv[2]).measure(sys.argv[1]).median_ms)
"""


def run_pair(onnx: str, target: str, mode: str) -> list[float]:
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, onnx, target, mode], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def export(name: str) -> str:
    import tempfile

    from edgeprune.artifacts.export import export_artifact
    from edgeprune.training.models import build_model
    path = f"{tempfile.mkdtemp()}/{name}.onnx"
    export_artifact(build_model(name, num_classes=10).eval(), "onnx", path, (1, 3, 32, 32), {"model": name})
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an .onnx file, or a model name (random weights, 32 px)")
    p.add_argument("--target", default="openvino-cpu")
    args = p.parse_args()
    args.onnx = args.model if args.model.endswith(".onnx") else export(args.model)
    alone = subprocess.run(
        [sys.executable, "-c", CHILD, args.onnx, args.target, "free"], capture_output=True, text=True)
    print(f"alone: {float(alone.stdout.strip().splitlines()[-1]):.3f} ms")
    for mode in ("stacked", "claimed"):
        print(f"two at once, {mode}: " + ", ".join(f"{ms:.3f} ms" for ms in run_pair(args.onnx, args.target, mode)))


if __name__ == "__main__":
    main()

"""What measuring through the agent costs (issue 11): remote against local medians of one model,
and the wall time of a profile through the agent against the same profile locally.

An agent (`edgeprune agent serve`, real ort-cpu) is started on 127.0.0.1 of this machine, so the
board and the build machine share the CPUs: the figure is the protocol's overhead (HTTP, upload,
the agent compiling the model anew), not a network's. Medians are read in alternating rounds
(local, remote, local, ...) so the host's drift hits both; each round's remote/local ratio is
kept and their median reported.

    python tools/bench_remote.py --model resnet18 --input-size 32 --rounds 7 --profiles 1 \
        --out runs/bench-remote.json
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(root: Path) -> tuple[subprocess.Popen, str, Path]:
    """An agent serving ort-cpu on a free loopback port; returns (process, url, token file)."""
    token = root / "token"
    token.write_text(secrets.token_urlsafe(32) + "\n")
    token.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeprune.cli", "agent", "serve", "--port", str(port),
                             "--token-file", str(token), "--targets", "ort-cpu", "--state-dir", str(root / "state")],
                            stderr=(root / "agent.log").open("w"), stdout=subprocess.DEVNULL, cwd=root)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"agent exited: {(root / 'agent.log').read_text()}")
        try:
            if httpx.get(url + "/health", headers=headers, timeout=2).status_code == 200:
                return proc, url, token
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("agent not healthy after 60 s")


def remote_target_file(root: Path, url: str, token: Path) -> Path:
    path = root / "board.yaml"
    path.write_text(f"name: board\nruntime: remote\noptions:\n  url: {url}\n  token_file: {token}\n"
                    f"  device_target: ort-cpu\n")
    return path


def medians(onnx: Path, local, remote, rounds: int) -> dict:
    rows = []
    for i in range(rounds):
        order = (("local", local), ("remote", remote)) if i % 2 == 0 else (("remote", remote), ("local", local))
        row = {name: t.measure(onnx).median_ms for name, t in order}
        rows.append({**row, "ratio": row["remote"] / row["local"]})
    return {"rounds": rows,
            "local_median_ms": statistics.median(r["local"] for r in rows),
            "remote_median_ms": statistics.median(r["remote"] for r in rows),
            "ratio_median": statistics.median(r["ratio"] for r in rows),
            "ratio_range": [min(r["ratio"] for r in rows), max(r["ratio"] for r in rows)]}


def profile_seconds(model: str, target: str, size: int, out: Path, cfg) -> float:
    from edgeprune.api import profile
    t0 = time.perf_counter()
    profile(model, target, input_size=size, out=str(out), profile=cfg)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--profiles", type=int, default=1, help="profiles per side (0: medians only)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if a.rounds < 1 or a.profiles < 0 or a.input_size < 8:
        raise SystemExit("--rounds >= 1, --profiles >= 0, --input-size >= 8")
    from edgeprune.artifacts.onnxio import export_onnx
    from edgeprune.latency.profile import ProfileConfig
    from edgeprune.runtime import get_target
    from edgeprune.training.models import build_model
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        onnx = export_onnx(build_model(a.model).eval(), (1, 3, a.input_size, a.input_size), root / "m.onnx")
        proc, url, token = start_agent(root)
        try:
            board = remote_target_file(root, url, token)
            result = {"model": a.model, "input_size": a.input_size, "cpus": os.cpu_count(),
                      "medians": medians(onnx, get_target("ort-cpu"), get_target(str(board)), a.rounds)}
            cfg = ProfileConfig(levels=3, runs=5, calibrate=6, validate=2, progress=False)
            runs = []
            for i in range(a.profiles):
                for side, target in ((("local", "ort-cpu"), ("remote", str(board))) if i % 2 == 0
                                     else (("remote", str(board)), ("local", "ort-cpu"))):
                    runs.append({"side": side, "seconds": profile_seconds(a.model, target, a.input_size,
                                                                         root / f"{side}-{i}.json", cfg)})
            if runs:
                loc = [r["seconds"] for r in runs if r["side"] == "local"]
                rem = [r["seconds"] for r in runs if r["side"] == "remote"]
                result["profile"] = {"config": "levels 3, runs 5, calibrate 6, validate 2", "runs": runs,
                                     "ratio": statistics.median(rem) / statistics.median(loc)}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "medians"} | {
        "medians": {k: v for k, v in result["medians"].items() if k != "rounds"}}, indent=1))


if __name__ == "__main__":
    main()

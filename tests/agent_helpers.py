"""Helpers of test_agent.py and test_remote.py: a real ``edgeprune agent serve`` process on
loopback (a free port, its JSON-lines log in a file), a tiny two-convolution ONNX model, and a
short timing protocol. Importing it skips the importing module (or test) when the agent's or the
remote target's libraries are missing, with the install hint."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

for _pkg in ("fastapi", "uvicorn", "multipart", "httpx", "tenacity"):
    pytest.importorskip(_pkg, reason=f"the agent and remote target need {_pkg}: pip install 'edgeprune[remote]'")

import httpx  # noqa: E402
from conftest import write_fake_target  # noqa: E402

from edgeprune.runtime import get_target  # noqa: E402
from edgeprune.runtime.spec import TargetSpec, TimingSpec  # noqa: E402

TOKEN = "test-token-0123456789"
FAST = TimingSpec(warmup_s=0.05, min_runs=5, min_time_s=0.08, windows=3)
FAST_YAML = "timing: {warmup_s: 0.05, min_runs: 5, min_time_s: 0.08, windows: 3}\n"


def tiny_onnx(path: Path, channels: int = 16, size: int = 32) -> Path:
    """Two 3x3 convolutions with ReLU: a real (sub-millisecond) model, no torch needed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3)).astype(np.float32), "w2")
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", **conv),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", **conv),
             helper.make_node("Relu", ["c2"], ["y"], name="relu2")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])
    graph = helper.make_graph(nodes, "tiny", [x], [y], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    """A running ``edgeprune agent serve`` process and what its tests read from it."""

    def __init__(self, root: Path, targets: str = "ort-cpu,fake", max_upload_mb: float = 1.0,
                 tls: tuple[Path, Path] | None = None, port: int | None = None, log_name: str = "agent.log"):
        """``--state-dir ROOT/state``: a second Agent on the same root and ``port`` is the first
        one restarted (``log_name`` keeps each process's log apart)."""
        self.root = root
        self.token_file = root / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.targets_dir = write_fake_target(root / "targets").parent
        self.port = port or free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify: str | bool = str(tls[0]) if tls else True
        self.log = root / log_name
        self.state_dir = root / "state"
        env = {**os.environ, "EDGEPRUNE_TARGETS": str(self.targets_dir)}
        args = [sys.executable, "-m", "edgeprune.cli", "agent", "serve", "--port", str(self.port),
                "--token-file", str(self.token_file), "--targets", targets, "--max-upload-mb", str(max_upload_mb),
                "--state-dir", str(self.state_dir)]
        args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []
        self.proc = subprocess.Popen(args, env=env, cwd=root, stderr=self.log.open("w"), stdout=subprocess.DEVNULL)
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                if self.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"agent not healthy after {timeout} s: {self.log.read_text()}")

    def get(self, path: str, token: str | None = TOKEN, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.url + path, headers=headers, timeout=30, verify=self.verify, **kw)

    def post_job(self, job_id: str, spec: dict, models: list[bytes], **kw) -> httpx.Response:
        files = [("models", (f"m{i}.onnx", m)) for i, m in enumerate(models)]
        return httpx.post(self.url + "/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                          data={"job_id": job_id, "spec": json.dumps(spec)}, files=files, timeout=60, **kw)

    def info(self) -> dict:
        return self.get("/info").json()

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def target(self, device_target: str = "ort-cpu", timing: TimingSpec | None = FAST, **options):
        """A ``remote`` target on this agent (``timing`` None: the file sets none)."""
        opts = {"url": self.url, "token_file": str(self.token_file), "device_target": device_target,
                "retries": 2, **options}
        return get_target(TargetSpec(name="board", runtime="remote", options=opts,
                                     **({"timing": timing} if timing else {})))

    def target_file(self, directory: Path, device_target: str = "ort-cpu", name: str = "board") -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.yaml"
        path.write_text(f"name: {name}\nruntime: remote\n{FAST_YAML}options:\n  url: {self.url}\n"
                        f"  token_file: {self.token_file}\n  device_target: {device_target}\n  retries: 2\n")
        return path

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup (a power cut, an OOM kill)."""
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def self_signed(directory: Path) -> tuple[Path, Path] | None:
    """A certificate for 127.0.0.1 and its key (openssl), or None where openssl is missing."""
    import shutil
    if not shutil.which("openssl"):
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


CHUNK_TIMING = TimingSpec(warmup_s=0.05, min_runs=5, min_time_s=0.2, windows=3)  # ~0.7 s a chunk


def measure_chunks(url: str, token_file: str, model: str, out: str, n: int, device_target: str = "ort-cpu") -> dict:
    """A profile's skeleton: ``n`` chunks measured on the agent through ``Partial`` (the profile's
    own resume file and job scopes), with enough retries to outlive an agent restart."""
    from edgeprune.latency.profile import Partial
    board = get_target(TargetSpec(name="board", runtime="remote", options={
        "url": url, "token_file": token_file, "device_target": device_target, "retries": 8}))
    partial = Partial(Path(out), "chunks-key")
    for k in range(n):
        partial.measure(str(k), board, lambda: {"ms": board.measure(model, CHUNK_TIMING).median_ms})
    return partial.samples


if __name__ == "__main__":  # a client process the tests kill: URL TOKEN_FILE MODEL OUT N
    url, token_file, model, out, n = sys.argv[1:6]
    print(json.dumps(measure_chunks(url, token_file, model, out, int(n))), flush=True)

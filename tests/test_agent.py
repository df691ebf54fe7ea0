"""The measurement agent and the ``remote`` target, end to end: a real agent process on loopback
(``edgeprune agent serve``), driven through ``RemoteTarget``, raw HTTP and the CLI.

Timing is kept short (a few windows of 50-100 ms) and compared with generous bounds: the host is
shared. The ``fake`` device target is deterministic, so remote and local results must be equal."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

for _pkg in ("fastapi", "uvicorn", "multipart", "httpx", "tenacity"):
    pytest.importorskip(_pkg, reason=f"the agent and remote target need {_pkg}: pip install 'edgeprune[remote]'")

import httpx  # noqa: E402

from conftest import run_cli, write_fake_target  # noqa: E402
from edgeprune.errors import UsageError  # noqa: E402
from edgeprune.runtime import get_target  # noqa: E402
from edgeprune.runtime.spec import TargetSpec, TimingSpec  # noqa: E402
from edgeprune.runtime.timing import Alternation, Latency  # noqa: E402

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
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
                              [w1, w2])
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

    def __init__(self, root: Path, targets: str = "ort-cpu,fake", max_upload_mb: float = 1.0):
        self.root = root
        self.token_file = root / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.targets_dir = write_fake_target(root / "targets").parent
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "agent.log"
        env = {**os.environ, "EDGEPRUNE_TARGETS": str(self.targets_dir)}
        args = [sys.executable, "-m", "edgeprune.cli", "agent", "serve", "--port", str(self.port),
                "--token-file", str(self.token_file), "--targets", targets, "--max-upload-mb", str(max_upload_mb)]
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
        return httpx.get(self.url + path, headers=headers, timeout=30, **kw)

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

    def target(self, device_target: str = "ort-cpu", **options) -> "RemoteTarget":  # noqa: F821
        opts = {"url": self.url, "token_file": str(self.token_file), "device_target": device_target,
                "retries": 2, **options}
        return get_target(TargetSpec(name="board", runtime="remote", timing=FAST, options=opts))

    def target_file(self, directory: Path, device_target: str = "ort-cpu", name: str = "board") -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.yaml"
        path.write_text(f"name: {name}\nruntime: remote\n{FAST_YAML}options:\n  url: {self.url}\n"
                        f"  token_file: {self.token_file}\n  device_target: {device_target}\n  retries: 2\n")
        return path

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("agent"))
    yield a
    a.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("models") / "tiny.onnx")


# --- the HTTP surface ------------------------------------------------------------------------

def test_every_request_needs_the_token(agent):
    assert agent.get("/health", token=None).status_code == 401
    assert agent.get("/health", token="wrong").status_code == 401
    assert agent.get("/info", token=TOKEN[:-1]).status_code == 401
    r = agent.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    info = agent.info()
    assert set(info["targets"]) == {"ort-cpu", "fake"}
    assert info["targets"]["ort-cpu"]["fingerprint"]["runtime"] == "onnxruntime"
    assert info["host"]["host_cores"] == os.cpu_count()


def test_oversized_upload_is_refused_with_413(agent):
    big = b"\0" * (2 * 2**20)  # the agent's --max-upload-mb is 1
    assert agent.post_job("big-job-0001", {"kind": "measure", "device_target": "fake"}, [big]).status_code == 413
    # without Content-Length (chunked), counted while read
    r = httpx.post(agent.url + "/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                   content=(b"\0" * 2**16 for _ in range(40)), timeout=30)
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]


def test_a_body_that_is_not_onnx_is_refused_with_415(agent, model):
    before = agent.info()["measurements"]
    r = agent.post_job("not-onnx-0001", {"kind": "measure", "device_target": "fake"}, [b"import os; os.system('x')"])
    assert r.status_code == 415, r.text
    r = agent.post_job("not-onnx-0002", {"kind": "measure_alternating", "device_target": "fake"},
                       [model.read_bytes(), b"\x08\x01garbage"])
    assert r.status_code == 415, r.text
    assert agent.info()["measurements"] == before


def test_bad_specs_are_refused_in_one_line(agent, model):
    data = [model.read_bytes()]
    r = agent.post_job("bad-spec-0001", {"kind": "measure", "device_target": "nope"}, data)
    assert r.status_code == 422 and "has no target 'nope'" in r.json()["detail"]
    r = agent.post_job("bad-spec-0002", {"kind": "measure_alternating", "device_target": "fake"}, data)
    assert r.status_code == 422 and "takes 2..2 models" in r.json()["detail"]
    assert agent.post_job("../../etc/passwd", {"kind": "measure", "device_target": "fake"}, data).status_code == 422


def test_the_same_job_id_is_measured_once(agent, model):
    before = agent.info()["measurements"]
    spec = {"kind": "measure", "device_target": "fake"}
    first = agent.post_job("same-id-00000001", spec, [model.read_bytes()])
    while first.json()["state"] != "done":
        first = agent.get("/jobs/same-id-00000001", params={"wait": 5})
    again = agent.post_job("same-id-00000001", spec, [model.read_bytes()])
    assert again.status_code == 200
    assert again.json() == first.json()
    assert agent.info()["measurements"] == before + 1
    assert sum(e["event"] == "job_start" and e["job"] == "same-id-00000001" for e in agent.events()) == 1


def test_a_retry_after_a_lost_answer_reuses_the_job_id(agent, model, monkeypatch):
    """The answer to the submission is lost (as if the connection dropped after the agent got
    it): the client retries with the same id and gets the result without a second measurement."""
    board = agent.target("fake")
    client = board._http()
    real, lost = client.request, []

    def drop_first_answer(method, path, **kw):
        r = real(method, path, **kw)
        if method == "POST" and not lost:
            lost.append(kw["data"]["job_id"])
            raise httpx.ReadError("connection reset")
        return r
    monkeypatch.setattr(client, "request", drop_first_answer)
    before = agent.info()["measurements"]
    lat = board.measure(model)
    assert lost and lat.median_ms > 0
    assert agent.info()["measurements"] == before + 1
    assert sum(e["event"] == "job_start" and e["job"] == lost[0] for e in agent.events()) == 1


# --- the remote target -------------------------------------------------------------------------

def test_remote_results_are_the_local_dataclasses(agent, model):
    """On the deterministic fake runtime the board's results equal a local run's exactly."""
    board, local = agent.target("fake"), get_target(TargetSpec(name="fake", runtime="fake"))
    lat = board.measure(model, FAST)
    assert isinstance(lat, Latency) and lat == local.measure(model, FAST)
    assert board.measure_many([model, model]) == local.measure_many([model, model])
    alt = board.measure_alternating(model, model, FAST)
    assert isinstance(alt, Alternation) and alt == local.measure_alternating(model, model, FAST)
    assert board.layer_times(model) == local.layer_times(model)
    with pytest.raises(UsageError, match="nothing to compile here"):
        board.compile(model)


def test_remote_and_local_ort_agree(agent, model):
    """The same ONNX on ort-cpu here and through the agent (same host): interleaved readings,
    the best of each within a factor of 1.5 (the host is shared; this is not a timing test)."""
    board, local = agent.target("ort-cpu"), get_target("ort-cpu")
    remote_ms, local_ms = [], []
    for _ in range(3):
        local_ms.append(local.measure(model, FAST).median_ms)
        lat = board.measure(model, FAST)
        remote_ms.append(lat.median_ms)
        assert len(lat.window_medians_ms) == FAST.windows and len(lat.samples_ms) == lat.runs >= FAST.min_runs
    ratio = min(remote_ms) / min(local_ms)
    assert 1 / 1.5 < ratio < 1.5, (remote_ms, local_ms)
    layers = board.layer_times(model, runs=3)
    assert [t.name for t in layers] and all(t.ms >= 0 for t in layers)
    out, busy = board.with_busy_share(lambda: board.measure(model, TimingSpec(min_time_s=0.1, windows=3)))
    assert isinstance(out, Latency) and (busy is None or 0 <= busy <= 1)


def test_the_fingerprint_is_the_boards(agent, monkeypatch):
    import edgeprune.runtime.base as base
    info = agent.info()
    monkeypatch.setattr(base, "host_fingerprint", lambda: {"host_cpu": "the client's CPU", "host_cores": 999})
    fp = agent.target("fake").fingerprint()
    assert fp == {**info["targets"]["fake"]["fingerprint"], "agent_host": "127.0.0.1"}
    assert fp["runtime"] == "fake" and fp["host_cpu"] != "the client's CPU" and fp["host_cores"] == os.cpu_count()
    board = agent.target("ort-cpu")
    assert board.fingerprint()["runtime"] == "onnxruntime" and board.runtime_version() == fp_version(info)


def fp_version(info: dict) -> str:
    return info["targets"]["ort-cpu"]["fingerprint"]["runtime_version"]


def test_two_clients_are_measured_one_at_a_time(agent, model):
    t = TimingSpec(warmup_s=0.05, min_runs=5, min_time_s=0.1, windows=2)
    done, errors = [], []

    def client():
        try:
            board = agent.target("ort-cpu")
            done.extend(board.measure(model, t) for _ in range(2))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=client) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors and len(done) == 4
    ev = agent.events()
    starts = {e["job"]: e["mono"] for e in ev if e["event"] == "job_start"}
    ends = {e["job"]: e["mono"] for e in ev if e["event"] == "job_end"}
    spans = sorted((starts[j], ends[j]) for j in ends if j in starts)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans
    # and the clients did overlap: some job was queued behind a running one
    queued_behind = [e for e in ev if e["event"] == "job_queued"
                     and any(s < e["mono"] < end for s, end in spans)]
    assert queued_behind


def test_refused_token_and_unreachable_agent_are_one_line(agent, tmp_path, model):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    with pytest.raises(UsageError, match=f"the agent at {agent.url} refused the token in {wrong}"):
        agent.target("fake", token_file=str(wrong)).measure(model)
    gone = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UsageError, match=f"cannot reach the agent at {gone} after 2 attempts"):
        agent.target("fake", url=gone, retries=1, connect_timeout_s=1).measure(model)
    with pytest.raises(UsageError, match="option url"):
        agent.target("fake", url="ftp://x")
    with pytest.raises(UsageError, match="option nope"):
        agent.target("fake", nope=1)


# --- the CLI -------------------------------------------------------------------------------------

def test_cli_measure_and_check_through_a_remote_target_file(agent, model, tmp_path):
    """``measure`` on the board's ort-cpu; ``check --update`` then ``check`` on its fake runtime
    (deterministic: the subject is the plumbing, and a busy shared host would only make a real
    check retry and wait)."""
    target = agent.target_file(tmp_path / "boards")
    r = run_cli(["measure", model, "--target", target, "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["median_ms"] > 0
    target = agent.target_file(tmp_path / "boards", device_target="fake", name="board-fake")
    before = agent.info()["measurements"]
    r = run_cli(["check", model, "--target", target, "--update"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    base = json.loads(next((tmp_path / "profiles" / "board-fake").glob("baseline-*.json")).read_text())
    assert base["fingerprint"]["runtime"] == "fake" and base["fingerprint"]["agent_host"] == "127.0.0.1"
    r = run_cli(["check", model, "--target", target, "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)["checks"][0]
    assert out["status"] == "pass" and out["comparison"] is not None, out  # paired with the frozen copy
    assert agent.info()["measurements"] > before


def test_agent_serve_refuses_bad_input_in_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    r = run_cli(["agent", "serve", "--token-file", empty], cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is empty" in r.stderr
    r = run_cli(["agent", "serve", "--token-file", tmp_path / "missing"], cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr
    (tmp_path / "tok").write_text(TOKEN)
    r = run_cli(["agent", "serve", "--token-file", tmp_path / "tok", "--tls-cert", "c.pem"], cwd=tmp_path)
    assert r.returncode == 2 and "both --tls-cert and --tls-key" in r.stderr


def test_shutdown_finishes_the_running_job_and_removes_uploads(tmp_path, model):
    a = Agent(tmp_path, targets="ort-cpu")
    try:
        slow = {"kind": "measure", "device_target": "ort-cpu",
                "timing": {"warmup_s": 0.05, "min_runs": 5, "min_time_s": 0.5, "windows": 3}}
        assert a.post_job("slow-job-0001", slow, [model.read_bytes()]).status_code == 202
        while not any(e["event"] == "job_start" for e in a.events()):
            time.sleep(0.05)
        assert a.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    finally:
        a.stop()
    ev = a.events()
    workdir = next(e["workdir"] for e in ev if e["event"] == "agent_start")
    end = next(e for e in ev if e["event"] == "job_end")
    assert end["job"] == "slow-job-0001" and end["state"] == "done"
    assert ev[-1]["event"] == "agent_stop" and not Path(workdir).exists()

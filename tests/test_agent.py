"""The measurement agent over HTTP: a real ``edgeprune agent serve`` process on loopback. Auth,
upload limits, ONNX-only bodies, idempotent job ids, one measurement at a time, shutdown."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from agent_helpers import TOKEN, Agent, tiny_onnx
from conftest import run_cli

from edgeprune.errors import UsageError
from edgeprune.runtime.spec import TimingSpec


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


def test_oversized_upload_is_refused_with_413(agent, tmp_path):
    big = b"\0" * (2 * 2**20)  # the agent's --max-upload-mb is 1
    assert agent.post_job("big-job-0001", {"kind": "measure", "device_target": "fake"}, [big]).status_code == 413
    # without Content-Length (chunked), counted while read
    r = httpx.post(agent.url + "/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                   content=(b"\0" * 2**16 for _ in range(40)), timeout=30)
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]
    big_model = tiny_onnx(tmp_path / "big.onnx", channels=200)  # 1.4 MB of weights
    with pytest.raises(UsageError, match="exceed the upload limit of the agent at .* raise its --max-upload-mb"):
        agent.target("fake").measure(big_model)


def test_a_body_that_is_not_onnx_is_refused_with_415(agent, model):
    before = agent.info()["measurements"]
    r = agent.post_job("not-onnx-0001", {"kind": "measure", "device_target": "fake"}, [b"import os; os.system('x')"])
    assert r.status_code == 415, r.text
    r = agent.post_job("not-onnx-0002", {"kind": "measure_alternating", "device_target": "fake"},
                       [model.read_bytes(), b"\x08\x01garbage"])
    assert r.status_code == 415, r.text
    assert agent.info()["measurements"] == before


def test_a_model_with_external_data_is_refused_not_loaded(agent, model):
    """An external-data tensor names a file by path; on the board the runtime would open it
    (here /etc/passwd). The agent refuses the model before any runtime sees it."""
    import onnx
    from onnx.external_data_helper import set_external_data
    m = onnx.load(str(model))
    w = m.graph.initializer[1]
    set_external_data(w, location="/etc/passwd")
    w.ClearField("raw_data")
    before = agent.info()["measurements"]
    r = agent.post_job("external-0001", {"kind": "measure", "device_target": "fake"}, [m.SerializeToString()])
    assert r.status_code == 415 and "external file" in r.json()["detail"] and "w2" in r.json()["detail"], r.text
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


def test_shutdown_finishes_the_running_job_and_removes_uploads(tmp_path, model):
    """SIGTERM with one job running and one queued: the running one finishes, the queued one is
    abandoned (never started), and the upload directory is gone."""
    a = Agent(tmp_path, targets="ort-cpu")
    try:
        slow = {"kind": "measure", "device_target": "ort-cpu",
                "timing": {"warmup_s": 0.05, "min_runs": 5, "min_time_s": 0.5, "windows": 3}}
        r = a.post_job("slow-job-0001", slow, [model.read_bytes()])
        assert r.status_code == 202 and r.headers["X-Queue-Position"] == "1" and r.json()["position"] == 1
        while not any(e["event"] == "job_start" for e in a.events()):
            time.sleep(0.05)
        r = a.post_job("queued-job-0002", slow, [model.read_bytes()])
        assert r.status_code == 202 and r.json() == {"job_id": "queued-job-0002", "state": "queued", "position": 1,
                                                     "result": None, "error": None, "error_kind": None}
        assert a.get("/jobs/slow-job-0001").json()["position"] == 0  # running
        assert a.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    finally:
        a.stop()
    ev = a.events()
    workdir = next(e["workdir"] for e in ev if e["event"] == "agent_start")
    assert [(e["job"], e["state"]) for e in ev if e["event"] == "job_end"] == [("slow-job-0001", "done")]
    assert [e["job"] for e in ev if e["event"] == "job_abandoned"] == ["queued-job-0002"]
    assert ev[-1]["event"] == "agent_stop" and not Path(workdir).exists()


def test_only_loopback_addresses_go_without_the_tls_warning():
    from edgeprune.agent.serve import is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("board.lab")


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


def test_importing_edgeprune_loads_no_http_library():
    code = ("import sys, edgeprune, edgeprune.cli, edgeprune.runtime.remote, edgeprune.agent.protocol; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'httpx', 'tenacity', 'multipart') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_missing_http_library_is_the_install_hint(agent, monkeypatch, tmp_path, capsys):
    import importlib.util

    from edgeprune.cli import main
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("httpx", "fastapi") else real(n, *a))
    with pytest.raises(UsageError, match=r"httpx is not installed for target 'board'; install it with: "
                                         r"pip install 'edgeprune\[remote\]'"):
        agent.target("fake")
    assert main(["agent", "serve", "--token-file", str(agent.token_file)]) == 2
    assert "fastapi is not installed for the agent; install it with: pip install 'edgeprune[remote]'" in \
        capsys.readouterr().err

"""Resume across restarts: finished results in the agent's --state-dir survive it; a profile's
chunks (``Partial`` + job scopes) resume with no measurement lost or repeated when the agent is
SIGKILLed and restarted mid-chunk, and when the client is killed and run again."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from agent_helpers import Agent, measure_chunks

HELPERS = Path(__file__).with_name("agent_helpers.py")
CHUNKS = 4


def _wait_for(pred, timeout: float = 60, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _of(events: list[dict], name: str) -> list[str]:
    return [e["job"] for e in events if e["event"] == name]


def test_a_finished_result_survives_a_restart(tmp_path, model):
    a = Agent(tmp_path, targets="fake")
    spec = {"kind": "measure", "device_target": "fake"}
    try:
        r = a.post_job("kept-job-0001", spec, [model.read_bytes()])
        while r.json()["state"] != "done":
            r = a.get("/jobs/kept-job-0001", params={"wait": 5})
        first = r.json()
    finally:
        a.kill()
    assert (a.state_dir / "results" / "kept-job-0001.json").is_file()
    b = Agent(tmp_path, targets="fake", port=a.port, log_name="agent2.log")
    try:
        assert a.get("/jobs/kept-job-0001").json() == first
        again = b.post_job("kept-job-0001", spec, [model.read_bytes()])
        assert again.status_code == 200 and again.json() == first
        assert b.info()["measurements"] == 0 and not _of(b.events(), "job_start")
        assert b.get("/jobs/never-sent-0001").status_code == 404
    finally:
        b.stop()


def test_agent_sigkilled_mid_chunk_resumes_with_nothing_lost_or_repeated(tmp_path, model):
    """The agent is killed while measuring a chunk and restarted on the same port and state
    dir: the client retries, the lost chunk is measured once by the new agent (it never
    finished before), the finished ones never again, and every chunk has its result."""
    a = Agent(tmp_path, targets="ort-cpu")
    out, got, errors = tmp_path / "table.json", {}, []

    def client():
        try:
            got.update(measure_chunks(a.url, str(a.token_file), str(model), str(out), CHUNKS))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    th = threading.Thread(target=client)
    th.start()
    _wait_for(lambda: len(_of(a.events(), "job_start")) == 2, what="the second chunk to start")
    a.kill()
    before = a.events()
    b = Agent(tmp_path, targets="ort-cpu", port=a.port, log_name="agent2.log")
    try:
        th.join(120)
        assert not th.is_alive() and not errors, errors
    finally:
        b.stop()
    after = b.events()
    killed = [j for j in _of(before, "job_start") if j not in _of(before, "job_end")]
    assert len(killed) == 1, "the agent was killed while a chunk ran"
    done = [e["job"] for e in before + after if e["event"] == "job_end" and e["state"] == "done"]
    assert len(done) == CHUNKS and set(Counter(done).values()) == {1}  # each chunk measured once
    assert _of(after, "job_start") == [j for j in done if j not in _of(before, "job_end")]
    assert killed[0] in _of(after, "job_start")  # re-run once: it never finished
    assert sorted(got) == [str(k) for k in range(CHUNKS)] and all(v["ms"] > 0 for v in got.values())
    assert json.loads(out.with_name("table.partial.json").read_text())["samples"] == got


def test_client_killed_mid_chunk_resumes_with_nothing_lost_or_repeated(tmp_path, model):
    """The client process is SIGKILLed while the agent measures its third chunk; run again, it
    skips the chunks its partial file holds and gets the third from the agent's store (the
    same derived job id), so the agent measures each chunk exactly once."""
    a = Agent(tmp_path, targets="ort-cpu")
    out = tmp_path / "table.json"
    args = [sys.executable, str(HELPERS), a.url, str(a.token_file), str(model), str(out), str(CHUNKS)]
    try:
        first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_for(lambda: len(_of(a.events(), "job_start")) == 3 or first.poll() is not None,
                  what="the third chunk to start")
        first.kill()
        first.wait()
        in_flight = _of(a.events(), "job_start")[2]
        _wait_for(lambda: in_flight in _of(a.events(), "job_end"), what="the abandoned chunk to finish")
        again = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        samples = json.loads(again.stdout)
    finally:
        a.stop()
    starts = _of(a.events(), "job_start")
    assert len(starts) == CHUNKS and set(Counter(starts).values()) == {1}, Counter(starts)
    assert sorted(samples) == [str(k) for k in range(CHUNKS)]
    assert json.loads(out.with_name("table.partial.json").read_text())["samples"] == samples

"""The ``remote`` target against a real agent: the same dataclasses as a local target, the board's
fingerprint, one-line errors, and the CLI end to end. Timing is short and compared with generous
bounds (the host is shared); the ``fake`` device target is deterministic, so its remote and
local results must be equal."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from agent_helpers import FAST, Agent, free_port, self_signed, tiny_onnx
from conftest import run_cli, write_fake_target

from edgeprune.checks.baseline import mismatches as baseline_mismatches
from edgeprune.errors import UsageError
from edgeprune.runtime import get_target
from edgeprune.runtime.spec import TargetSpec, TimingSpec
from edgeprune.runtime.timing import Alternation, Latency


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
    # the protocol: the remote file's timing when it sets one, else the board's target's own
    two = TimingSpec(warmup_s=0.05, min_runs=5, min_time_s=0.08, windows=2)
    assert len(agent.target("fake", timing=two).measure_alternating(model, model).rounds_ms) == 2
    assert len(agent.target("fake", timing=None).measure_alternating(model, model).rounds_ms) == TimingSpec().windows


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
    assert isinstance(out, Latency)
    if Path("/proc/self/schedstat").exists():  # the agent read its measuring thread's CPU wait
        assert isinstance(busy, float) and 0 <= busy <= 1


def test_the_fingerprint_is_the_boards(agent, monkeypatch):
    import edgeprune.runtime.base as base
    info = agent.info()
    monkeypatch.setattr(base, "host_fingerprint", lambda: {"host_cpu": "the client's CPU", "host_cores": 999})
    fp = agent.target("fake").fingerprint()
    power = {"power_mode": None, "cpu_governor": info["host"]["power"]["cpu_governor"]}  # no nvpmodel here
    hw = info["host"]["hardware"]
    hardware = {"board_model": hw["board_model"], "gpus": sorted(g["name"] for g in hw["gpus"]) if hw["gpus"] else None}
    assert fp == {**info["targets"]["fake"]["fingerprint"], **power, **hardware, "agent_host": "127.0.0.1"}
    assert "cpu_cur_mhz" not in fp  # volatile: reported in /info, never compared
    assert fp["runtime"] == "fake" and fp["host_cpu"] != "the client's CPU" and fp["host_cores"] == os.cpu_count()
    board = agent.target("ort-cpu")
    assert board.fingerprint()["runtime"] == "onnxruntime" and board.runtime_version() == fp_version(info)
    here = board.fingerprint()  # baselines compare every key of it, the agent's host included
    assert set(baseline_mismatches({k: f"other-{v}" for k, v in here.items()}, here)) == set(here)


def fp_version(info: dict) -> str:
    return info["targets"]["ort-cpu"]["fingerprint"]["runtime_version"]


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


def test_cli_check_through_a_remote_target_file_fails_for_a_slower_model(agent, model, tmp_path):
    """The baseline recorded through the board, then the artifact replaced by one with four times
    the channels (the fake runtime's cost grows with MACs): a paired regression, exit 1."""
    target = agent.target_file(tmp_path / "boards", device_target="fake", name="board-fake")
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(model.read_bytes())
    r = run_cli(["check", artifact, "--target", target, "--update"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    tiny_onnx(artifact, channels=64)
    r = run_cli(["check", artifact, "--target", target, "--json"], cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)["checks"][0]
    assert (out["status"], out["regression"]) == ("fail", True), out
    assert out["comparison"]["method"] == "paired" and out["comparison"]["ratio"] > 2, out


def test_a_changed_power_state_makes_the_baseline_incomparable(agent):
    """The Jetson power mode and the governors are part of the board's fingerprint, so a baseline
    recorded under others is not compared; the current frequency is not (it moves all the time).
    The board's power state is changed in the client's copy of /info."""
    board = agent.target("fake")
    recorded = board.fingerprint()
    board._info.host["power"] = {**board._info.host["power"], "cpu_governor": ["test-governor"],
                                 "cpu_cur_mhz": [1], "nvpmodel": {"name": "MAXN", "id": 0}}
    assert set(baseline_mismatches(recorded, board.fingerprint())) == {"power_mode", "cpu_governor"}


def test_tls_with_the_boards_certificate(tmp_path, model):
    tls = self_signed(tmp_path)
    if tls is None:
        pytest.skip("openssl is not installed (makes the test certificate)")
    a = Agent(tmp_path, targets="fake", tls=tls)
    try:
        assert a.url.startswith("https://")
        local = get_target(TargetSpec(name="fake", runtime="fake"))
        assert a.target("fake", ca_file=str(tls[0])).measure(model) == local.measure(model)
        with pytest.raises(UsageError, match=f"cannot reach the agent at {a.url}.*CERTIFICATE_VERIFY_FAILED"):
            a.target("fake", retries=0).measure(model)  # the system CAs do not know a self-signed board
    finally:
        a.stop()


def test_a_model_the_boards_runtime_cannot_load_is_one_line_and_the_agent_goes_on(agent, model, tmp_path):
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    odd = tmp_path / "odd.onnx"
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(odd))
    board = agent.target("ort-cpu")
    refused = f"the agent at {agent.url} \\(ort-cpu\\): UsageError: onnxruntime cannot load upload 1: "
    with pytest.raises(UsageError, match=refused):
        board.measure(odd)
    assert board.measure(model, FAST).median_ms > 0


def _answer_once(monkeypatch, board, method: str, status: int):
    """The board's first ``method`` request gets ``status`` instead of reaching the agent; the
    requests sent, as (method, job_id or path), are returned."""
    import httpx
    client = board._http()
    real, sent, stubbed = client.request, [], []

    def request(m, path, **kw):
        sent.append((m, kw.get("data", {}).get("job_id", path)))
        if m == method and not stubbed:
            stubbed.append(path)
            return httpx.Response(status, json={"detail": "stub"}, request=httpx.Request(m, board.url + path))
        return real(m, path, **kw)
    monkeypatch.setattr(client, "request", request)
    return sent


def test_a_5xx_answer_is_retried(agent, model, monkeypatch):
    board = agent.target("fake")
    board._board()  # /info first, so the stub's 503 hits the submission
    sent = _answer_once(monkeypatch, board, "POST", 503)
    before = agent.info()["measurements"]
    assert board.measure(model).median_ms > 0
    posts = [j for m, j in sent if m == "POST"]
    assert len(posts) == 2 and posts[0] == posts[1]  # retried, under the same job id
    assert agent.info()["measurements"] == before + 1


def test_a_404_while_polling_resubmits_the_same_job(agent, model, monkeypatch):
    """A poll answered 404 (the agent restarted and lost the job): the client submits it again
    under the same id, and the agent, which has it, measures nothing twice."""
    board = agent.target("fake")
    board._board()
    sent = _answer_once(monkeypatch, board, "GET", 404)
    before = agent.info()["measurements"]
    board.measure(model)
    posts = [j for m, j in sent if m == "POST"]
    assert [m for m, _ in sent][:3] == ["POST", "GET", "POST"]  # submitted (202), polled: 404, again
    assert len(posts) == 2 and posts[0] == posts[1]
    assert agent.info()["measurements"] == before + 1


def test_serving_a_non_loopback_address_without_tls_warns(tmp_path):
    """The warning comes before the bind. 192.0.2.1 (TEST-NET-1, RFC 5737) is assigned to no
    host, so the bind fails and the agent exits: the test never listens beyond loopback."""
    import subprocess
    import sys
    (tmp_path / "tok").write_text("a-long-enough-token\n")
    proc = subprocess.run([sys.executable, "-m", "edgeprune.cli", "agent", "serve", "--host", "192.0.2.1",
                           "--port", str(free_port()), "--token-file", str(tmp_path / "tok"), "--targets", "fake",
                           "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "EDGEPRUNE_TARGETS": str(write_fake_target(tmp_path / "targets").parent)})
    line = proc.stderr.splitlines()[0]
    assert "warning: serving 192.0.2.1 without TLS" in line and "--tls-cert" in line
    assert proc.returncode != 0  # could not bind: nothing served


def test_models_over_the_upload_limit_together_are_measured_in_several_jobs(agent, tmp_path):
    """A profile's chunk of six ResNet-18s is 100 MB against the agent's default 64 MB limit,
    and `profile --target board.yaml` stopped with "raise its --max-upload-mb" (seen running
    tools/bench_remote.py). Models that fit one by one are sent in as many jobs as the limit
    needs, in order; only a single model over the limit is refused."""
    limit = agent.info()["max_upload_bytes"]
    paths = [tiny_onnx(tmp_path / f"m{i}.onnx", channels=120) for i in range(3)]
    each = paths[0].stat().st_size
    assert each < limit < 2 * each  # one model fits, two do not
    before = agent.info()["measurements"]
    lats = agent.target("fake").measure_many(paths)
    assert len(lats) == 3 and all(isinstance(x, Latency) and x.median_ms > 0 for x in lats)
    assert agent.info()["measurements"] - before == 3


def test_search_and_prune_through_a_remote_board(agent, tmp_path):
    """The pipeline's own commands on a board: `search` profiles its table through the agent and
    `prune` runs the closed loop and the final paired measurement there (the board's fake
    runtime: the subject is that nothing in the pipeline needs a local device)."""
    target = agent.target_file(tmp_path / "boards", device_target="fake", name="board-fake")
    r = run_cli(["measure", "tiny_resnet", "--target", target, "--input-size", "16", "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    budget = f"{0.8 * json.loads(r.stdout)['median_ms']:.5f}"
    small = ["--input-size", "16", "--levels", "3", "--calibrate", "6", "--validate", "2", "--runs", "2"]
    r = run_cli(["search", "tiny_resnet", "--target", target, *small, "--budget-ms", budget, "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    table = next((tmp_path / "profiles" / "board-fake").glob("tiny_resnet-16px.json"))
    assert json.loads(table.read_text())["meta"]["agent_host"] == "127.0.0.1"  # keyed by the board
    before = agent.info()["measurements"]
    r = run_cli(["prune", "tiny_resnet", "--target", target, *small, "--budget-ms", budget, "--epochs", "0",
                 "--baseline-epochs", "1", "--objective", "importance", "--out", tmp_path / "run", "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["target"] == "board-fake" and report["rounds"] and report["speedup"] > 1
    assert report["budget_verdict"]["verdict"] == "fits"
    assert agent.info()["measurements"] > before  # the loop and the final pair ran on the board

"""The device farm: lanes (one per board, one for all local targets) run in parallel, a lane's
items one at a time, results in the caller's order; ``profile --target a,b,c`` against two real
agents writes one table per board with that board's fingerprint, progress lines per board."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgeprune.errors import UsageError
from edgeprune.runtime.farm import lane_of, run_lanes, split_targets, worst_exit


def test_lanes_overlap_but_a_lanes_items_never_do():
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    both = []
    lock = threading.Lock()

    def work(item):
        lane, value = item
        with lock:
            running[lane] = running.get(lane, 0) + 1
            peak[lane] = max(peak.get(lane, 0), running[lane])
            both.append(sum(running.values()))
        time.sleep(0.05)
        with lock:
            running[lane] -= 1
        if value == "bad":
            raise UsageError("bad item")
        return value
    items = [("local", "a"), ("b1", "b"), ("local", "c"), ("b2", "bad"), ("local", "e")]
    out = run_lanes(items, [v for _, v in items], [lane for lane, _ in items], work)
    assert [o.value for o in out] == ["a", "b", "c", None, "e"]  # the caller's order
    assert isinstance(out[3].error, UsageError) and worst_exit(out) == 2
    assert peak["local"] == 1  # local targets never measured side by side
    assert max(both) >= 2  # but the lanes ran at once


def test_split_targets_and_lanes(tmp_path):
    assert split_targets("a, b,c") == ["a", "b", "c"]
    with pytest.raises(UsageError, match="more than once"):
        split_targets("a,b,a")
    with pytest.raises(UsageError, match="empty name"):
        split_targets("a,,b")
    board = tmp_path / "pi.yaml"
    board.write_text("name: pi\nruntime: remote\noptions: {url: 'http://pi:1/', token_file: t, device_target: x}\n")
    assert lane_of(str(board)) == "remote:http://pi:1" and lane_of("fake") == "local" and lane_of(None) == "local"


for _pkg in ("fastapi", "uvicorn", "multipart", "httpx", "tenacity"):
    if __import__("importlib").util.find_spec(_pkg) is None:
        pytestmark = pytest.mark.skip(reason=f"the farm's agents need {_pkg}")


PROFILE = ["--input-size", "16", "--levels", "3", "--runs", "1", "--calibrate", "2", "--validate", "1",
           "--profiles-dir", "profs"]


@contextmanager
def two_boards(tmp_path: Path):
    """Two agents (fake runtime) and a remote target file for each: (agents, target files)."""
    from agent_helpers import Agent
    agents = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            agents.append(Agent(tmp_path / name, targets="fake"))
        yield agents, [a.target_file(tmp_path / "boards", "fake", f"board-{n}") for a, n in zip(agents, "ab")]
    finally:
        for a in agents:
            a.stop()


def assert_boards_overlapped(events: dict[str, list[dict]]) -> None:
    """The boards' measurement spans (first job_start to last job_end) overlap in time."""
    spans = {n: (min(e["t"] for e in ev if e["event"] == "job_start"),
                 max(e["t"] for e in ev if e["event"] == "job_end")) for n, ev in events.items()}
    (a0, a1), (b0, b1) = spans.values()
    assert a0 < b1 and b0 < a1, spans


def test_profile_on_two_boards_and_a_local_target_in_one_command(tmp_path):
    import json

    from conftest import run_cli, write_fake_target
    with two_boards(tmp_path) as ((a, b), boards):
        local = write_fake_target(tmp_path / "local", "here")
        r = run_cli(["profile", "tiny_resnet", "--target", ",".join(map(str, [*boards, local])), *PROFILE],
                    cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        infos = {"board-a": a.info(), "board-b": b.info()}
        events = {"board-a": a.events(), "board-b": b.events()}
    for name in ("board-a", "board-b"):
        table = json.loads((tmp_path / "profs" / name / "tiny_resnet-16px.json").read_text())
        fp = {**infos[name]["targets"]["fake"]["fingerprint"], "agent_host": "127.0.0.1"}
        assert table["meta"]["target"] == name
        assert {k: table["meta"][k] for k in fp} == fp  # keyed by the board's own fingerprint
        assert infos[name]["measurements"] > 0
        assert f"{name}: wrote " in r.stdout and f"\n{name}: profile tiny_resnet " in "\n" + r.stderr
    assert (tmp_path / "profs" / "here" / "tiny_resnet-16px.json").is_file()
    assert_boards_overlapped(events)  # the boards were profiled at the same time


def test_profile_farm_refuses_one_out_for_several_targets(tmp_path):
    from conftest import run_cli
    r = run_cli(["profile", "tiny_resnet", "--target", "fake,ort-cpu", "--out", "t.json"], cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "{target}" in r.stderr
    r = run_cli(["profile", "tiny_resnet", "--target", "fake,fake"], cwd=tmp_path)
    assert r.returncode == 2 and "more than once" in r.stderr


def test_check_all_runs_two_boards_at_once_in_the_files_order(tmp_path):
    import json

    from agent_helpers import tiny_onnx
    from conftest import run_cli
    with two_boards(tmp_path) as ((a, b), files):
        tiny_onnx(tmp_path / "m.onnx")
        (tmp_path / "deploy.yaml").write_text(
            "checks:\n" + "".join(f"  - artifact: m.onnx\n    target: {f}\n" for f in [*files, *files]))
        r = run_cli(["check", "--all", "deploy.yaml", "--update", "--json"], cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        events = {"a": a.events(), "b": b.events()}
    checks = json.loads(r.stdout)["checks"]
    assert [Path(c["target"]).stem for c in checks] == ["board-a", "board-b", "board-a", "board-b"], checks
    assert_boards_overlapped(events)  # the boards were checked at the same time

"""Training on a chosen device and as DDP ranks under torchrun (training/distributed.py).

The two-process run is real: ``python -m torch.distributed.run --nproc_per_node 2`` starts
tests/ddp_worker.py twice, gloo on the CPU, and its results are compared with the same training
in this process. Tolerances: without BatchNorm the two must agree to float rounding (same global
batches, averaged gradients); with BatchNorm each rank normalises its half batch, so tiny_resnet
is held to train losses within 5% and validation accuracy within 10 points of one process.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import data, setup

from edgeprune.errors import UsageError
from edgeprune.training import distributed
from edgeprune.training.finetune import train

TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(processes: int, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *map(str, args)]


def worker_env() -> dict:
    """This checkout and tests/ importable, one thread a process, no torchrun of our own."""
    paths = [str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """OUT of one torchrun of ddp_worker.py with two CPU processes (gloo)."""
    out = tmp_path_factory.mktemp("ddp")
    done = subprocess.run(torchrun(2, TESTS / "ddp_worker.py", out), env=worker_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def one_process():
    """{kind: (state dict, TrainResult)} of the worker's runs trained here, in one process."""
    bundle, runs = data(), {}
    for kind in ("plain", "bn"):
        model, teacher, cfg = setup(kind)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        runs[kind] = (model.state_dict(), train(model, bundle, cfg, teacher=teacher), start)
    return runs


def ranked(out: Path, kind: str):
    weights = torch.load(out / "rank0" / f"weights-{kind}.pt", weights_only=True)
    return weights, json.loads((out / "rank0" / f"result-{kind}.json").read_text())


def test_two_processes_without_batchnorm_match_one_after_an_interruption(two_ranks, one_process):
    weights, result = ranked(two_ranks, "plain")
    single, single_result, start = one_process["plain"]
    assert result["resumed_from"] == 1 and result["epochs_run"] == 2  # the rank-0 checkpoint, on both ranks
    assert max((single[k] - start[k]).abs().max().item() for k in single) > 1e-3  # it did train
    for k, v in single.items():
        assert torch.allclose(weights[k], v, atol=1e-5), k
    assert [h["train_loss"] for h in result["history"]] == pytest.approx(
        [h.train_loss for h in single_result.history], rel=1e-5)
    assert result["best_val"]["accuracy"] == pytest.approx(single_result.best_val.accuracy, abs=1e-9)


def test_two_processes_with_batchnorm_match_one_within_tolerance(two_ranks, one_process):
    weights, result = ranked(two_ranks, "bn")
    single, single_result, _ = one_process["bn"]
    assert weights.keys() == single.keys() and result["epochs_run"] == 2
    assert [h["train_loss"] for h in result["history"]] == pytest.approx(
        [h.train_loss for h in single_result.history], rel=0.05)
    assert result["best_val"]["accuracy"] == pytest.approx(single_result.best_val.accuracy, abs=0.10)
    assert result["best_val"]["accuracy"] > 0.25  # learnt something (chance: 0.10)


def test_only_rank_0_writes(two_ranks):
    assert sorted(p.name for p in (two_ranks / "rank0").iterdir()) == [
        "bn.ckpt", "plain.ckpt", "result-bn.json", "result-plain.json", "weights-bn.pt", "weights-plain.pt"]
    assert list((two_ranks / "rank1").iterdir()) == []
    ck = torch.load(two_ranks / "rank0" / "bn.ckpt", weights_only=True)
    assert ck["epoch"] == 2 and all(t.device.type == "cpu" for t in ck["model"].values())


@pytest.mark.slow
def test_prune_under_torchrun_reports_once(tmp_path, fake_target_file):
    """``torchrun --nproc_per_node 2 -m edgeprune prune``: rank 0 profiles, searches, measures
    and writes; rank 1 trains the baseline and the fine-tune beside it and prints nothing."""
    done = subprocess.run(torchrun(2, "-m", "edgeprune", "prune", "tiny_resnet", "--target", fake_target_file,
                                   "--input-size", "16", "--budget-ms", "0.15", "--objective", "importance",
                                   "--epochs", "1", "--baseline-epochs", "1", "--calibrate", "6", "--levels", "3",
                                   "--train-samples", "256", "--val-samples", "128", "--test-samples", "128",
                                   "--out", "out", "--profiles-dir", "p", "--device", "cpu", "--json"),
                          cwd=tmp_path, env=worker_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # one report: rank 1 printed nothing
    assert report == json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["finetune"]["history"]) == 1 and (tmp_path / "out" / "run.json").exists()
    assert (tmp_path / "out" / "baseline.pt").exists() and not list((tmp_path / "out").glob("*.tmp*"))


# ---------------------------------------------------------------- the device choice

def test_device_names_resolve(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.resolve_device("auto") == torch.device("cpu")
    assert distributed.resolve_device("CPU") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UsageError, match="no CUDA device is available"):
            distributed.resolve_device(name)
    with pytest.raises(UsageError, match="must be auto, cpu, cuda or cuda:N"):
        distributed.resolve_device("tpu")


def test_mixed_precision_is_off_on_the_cpu_and_refused_there():
    cpu = torch.device("cpu")
    assert distributed.precision(cpu).dtype is None and distributed.precision(cpu, False).scaler is None
    with pytest.raises(UsageError, match="mixed precision .* needs a CUDA device"):
        distributed.precision(cpu, True)


def test_prune_with_device_cuda_and_no_cuda_is_one_line_exit_2(monkeypatch, capsys, tmp_path, fake_target_file):
    from edgeprune.cli import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["prune", "tiny_resnet", "--target", str(fake_target_file), "--out", str(tmp_path / "run"),
                 "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no CUDA device is available" in err
    assert not (tmp_path / "run").exists()  # refused before any work
    assert main(["prune", "tiny_resnet", "--out", str(tmp_path / "run"), "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected auto, cpu, cuda or cuda:N" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fine_tune_on_cuda_with_mixed_precision_returns_a_cpu_model(tmp_path):
    model, _, cfg = setup("bn", epochs=3)
    cfg.device, cfg.amp = "cuda", True
    result = train(model, data(), cfg, checkpoint=tmp_path / "ck.pt", key="gpu")
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in ck["model"].values()) and ck["config"]["device"] == "cuda"
    assert result.best_val.accuracy > 0.3

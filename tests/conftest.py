"""Shared fixtures: a fake target file, a tiny model, and fake-target latency tables.

The fake runtime is deterministic and additive, so tables built on it are exact enough to test
the table, the search and the CLI without timing noise; real ONNX Runtime is used only by the
integration tests.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeprune.runtime.fake import FakeTarget as _FakeTarget
from edgeprune.runtime.spec import TargetSpec
from edgeprune.runtime.timing import Latency

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
TARGETS_DIR = REPO / "edgeprune" / "runtime" / "targets"
INPUT_SHAPE = (1, 3, 32, 32)
FAKE_YAML = "name: fake\nruntime: fake\n"
TINY_PROFILE = dict(levels=3, runs=2, validate=3, calibrate=6, progress=False)


def write_fake_target(directory: Path, name: str = "fake") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(FAKE_YAML.replace("name: fake", f"name: {name}"))
    return path


@pytest.fixture
def fake_target_file(tmp_path) -> Path:
    """Path of a fake-runtime target YAML in its own directory (usable as EDGEPRUNE_TARGETS)."""
    return write_fake_target(tmp_path / "targets")


@pytest.fixture(scope="session")
def fake_target():
    from edgeprune.runtime import get_target
    from edgeprune.runtime.spec import TargetSpec
    return get_target(TargetSpec(name="fake", runtime="fake"))


@pytest.fixture
def tiny_model():
    from edgeprune.training.models import build_model
    torch.manual_seed(0)
    return build_model("tiny_resnet", num_classes=10).eval()


@pytest.fixture(scope="session")
def tiny_table(tmp_path_factory, fake_target):
    """Fake-target LatencyTable of tiny_resnet at 32 px (levels=3, runs=2, validate=3)."""
    from edgeprune.latency.profile import ProfileConfig, build_table
    from edgeprune.training.models import build_model
    torch.manual_seed(0)
    model = build_model("tiny_resnet", num_classes=10).eval()
    out = tmp_path_factory.mktemp("tables") / "tiny_resnet-32px.json"
    return build_table(model, fake_target, INPUT_SHAPE, out, "tiny_resnet", ProfileConfig(**TINY_PROFILE))


@pytest.fixture(scope="session")
def resnet18_setup(tmp_path_factory, fake_target):
    """(model, fake-target table, l1 scores) for torchvision resnet18 at 32 px."""
    from edgeprune.latency.profile import ProfileConfig, build_table
    from edgeprune.pruning.importance import importances
    from edgeprune.training.models import build_model
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10).eval()
    out = tmp_path_factory.mktemp("tables") / "resnet18-32px.json"
    table = build_table(model, fake_target, INPUT_SHAPE, out, "resnet18",
                        ProfileConfig(levels=3, runs=1, validate=1, calibrate=6, progress=False))
    return model, table, importances(model, INPUT_SHAPE)


def run_cli(args, cwd, env_targets: Path | None = None, extra_env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m edgeprune.cli ARGS`` in ``cwd``; EDGEPRUNE_TARGETS set only when asked."""
    env = {k: v for k, v in os.environ.items() if k != "EDGEPRUNE_TARGETS"}
    if env_targets is not None:
        env["EDGEPRUNE_TARGETS"] = str(env_targets)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "edgeprune.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    """The ``run_cli`` helper, as a fixture."""
    return run_cli


class SlowerHost(_FakeTarget):
    """The fake runtime, ``factor`` times slower (or, below 1, faster) than the table it was
    profiled into: a host where the profile is off at the picks, as ResNet-18's was near the
    cache cliff."""

    def __init__(self, factor: float):
        super().__init__(TargetSpec(name="slower", runtime="fake"))
        self.factor = factor

    def measure(self, onnx_path, timing=None):
        ms = super().measure(onnx_path, timing).median_ms * self.factor
        return Latency.from_samples([ms] * 5)


@pytest.fixture(scope="session")
def agent(tmp_path_factory):
    """One ``edgeprune agent serve`` (ort-cpu and fake, 1 MB uploads) shared by the agent and
    remote tests: each module started its own. Skips where the agent's libraries are missing."""
    from agent_helpers import Agent
    a = Agent(tmp_path_factory.mktemp("agent"))
    yield a
    a.stop()


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> Path:
    """A tiny two-convolution ONNX file (no torch), for the agent and remote tests."""
    from agent_helpers import tiny_onnx
    return tiny_onnx(tmp_path_factory.mktemp("models") / "tiny.onnx")


def assert_fits_as_measured(report: dict, budget: float | None = None, ratio: float | None = None) -> None:
    """A prune report's budget claims: fits, or inconclusive on a busy host (said, with its
    interval), never shown over; the kept widths are the search's answer to its round's budget,
    which may lie above the budget where the table over-predicts (the loop grows the search
    budget after a reading under its prediction that was confirmed, or that fell more than
    ``LoopConfig.grow`` under the aim, rather than keep a model smaller than the budget allows;
    a paired reading is never taken twice). A relative budget (``ratio``) is in this run's ms in the
    report, and in the table's units (a share of its unpruned prediction) in the rounds."""
    import pytest
    if ratio is None:
        assert report["budget_ms"] == pytest.approx(budget)
    else:
        assert report["budget_ratio"] == pytest.approx(ratio)
        assert report["budget_ms"] == pytest.approx(ratio * report["baseline_ms"], rel=0.2)
        budget = ratio * report["steps"][0]["search"]["full_ms"]
    assert report["within_budget"] is True and report["measured_runs"] > 0
    assert report["budget_verdict"]["verdict"] in ("fits", "inconclusive")
    if report["budget_verdict"]["verdict"] == "fits":
        assert report["measured_ms"] <= report["budget_ms"]
    kept = [r for r in report["rounds"] if r["predicted_ms"] == pytest.approx(report["predicted_ms"], abs=1e-5)]  # rounds keep 5 decimals
    assert kept and any(r["predicted_ms"] <= r["search_budget_ms"] * (1 + 1e-6) for r in kept)
    if report["predicted_ms"] > budget:
        assert any(r["measured_ms"] < r["predicted_ms"] for r in report["rounds"])

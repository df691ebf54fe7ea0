"""pytest plugin: latency budgets as assertions in your own test suite.

    def test_classifier_fits_the_board(assert_latency):
        assert_latency("build/model.onnx", target="ort-cpu", budget_ms=8)

The ``assert_latency`` fixture is registered through the ``pytest11`` entry point when edgeprune
is installed; the same function can be imported (``from edgeprune.pytest_plugin import
assert_latency``). ``pytest --edgeprune-target NAME`` runs every such assertion that names no
target on another target (a board's YAML, say) without editing the tests.

The measurement is the one ``edgeprune check`` makes (lower quartile of >= 10 window medians,
pinned, least disturbance wins), and a measurement over budget is repeated once: the assertion
fails only when both are over, so a busy CI machine does not fail the suite by itself.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

DEFAULT_TARGET = "ort-cpu"


def assert_latency(model_or_onnx, target: str | None = None, budget_ms: float | None = None,
                   input_size: int | None = None, confirm: bool = True) -> float:
    """Measure ``model_or_onnx`` (an ONNX/.ort file, a model name edgeprune knows, or an
    ``nn.Module``) on ``target`` and raise AssertionError if its latency exceeds ``budget_ms``
    (default: the target file's budget for the model). Returns the measured latency in ms."""
    from edgeprune.checks.budget import check_budget
    from edgeprune.checks.check import run_check
    from edgeprune.checks.request import CheckRequest, Mode
    from edgeprune.errors import UsageError
    from edgeprune.runtime import get_target
    tgt = get_target(target or DEFAULT_TARGET)
    with tempfile.TemporaryDirectory(prefix="edgeprune-latency-") as tmp:
        path, meta, label = _artifact(model_or_onnx, tgt.spec, input_size, Path(tmp))
        # the budget is resolved here, not by the check: a model exported from its name carries
        # no metadata naming it, and the message names what the test passed, not a temporary file
        budget = check_budget(budget_ms, tgt.spec, meta, "budget_ms=" if budget_ms is not None else None)
        if budget is None:
            raise UsageError(f"no budget for {label} on {tgt.spec.name}: pass budget_ms= or add it to "
                             f"the target file's budgets_ms")
        res = run_check(CheckRequest(str(path), target or DEFAULT_TARGET, Mode.BUDGET, budget_ms=budget.ms,
                                     budget_source=budget.source, confirm=confirm))
    latency = min(a.latency_ms for a in res.attempts)
    if res.over_budget or res.status == "inconclusive":
        measured = " and ".join(f"{a.latency_ms:.4f} ms" for a in res.attempts)
        busy = "; inconclusive: the machine was too busy to confirm it" if res.status == "inconclusive" else ""
        raise AssertionError(
            f"{label} on {tgt.spec.name}: measured {measured} > budget {budget.ms:.4f} ms "
            f"({budget.source}){busy}; latency = lower quartile of {len(res.attempts[-1].windows_ms)} "
            "window medians")
    return latency


def _artifact(obj, spec, input_size: int | None, tmp: Path) -> tuple[Path, dict, str]:
    """(ONNX path, metadata, label) for a file, a model name, or an nn.Module."""
    from edgeprune.artifacts.kinds import find_kind
    from edgeprune.checks.baseline import artifact_metadata
    if isinstance(obj, (str, os.PathLike)) and (Path(obj).is_file() or find_kind(obj) is not None):
        return Path(obj), artifact_metadata(Path(obj)), str(obj)
    from edgeprune.artifacts.onnxio import export_onnx
    size = input_size or spec.input_size or 224
    if isinstance(obj, (str, os.PathLike)):
        from edgeprune.training.models import build_model, check_input_size
        name = str(obj)
        model = build_model(name).eval()
        check_input_size(model, size, 3, name)
        return export_onnx(model, (spec.batch, 3, size, size), tmp / "model.onnx"), {"model": name}, name
    from edgeprune.training.models import input_channels
    shape = (spec.batch, input_channels(obj), size, size)
    return export_onnx(obj, shape, tmp / "model.onnx"), {}, type(obj).__name__


def pytest_addoption(parser) -> None:
    group = parser.getgroup("edgeprune")
    group.addoption("--edgeprune-target", default=None, metavar="TARGET",
                    help=f"target for assert_latency calls that name none (default {DEFAULT_TARGET})")


@pytest.fixture(name="assert_latency")
def assert_latency_fixture(request):
    """``assert_latency`` with ``--edgeprune-target`` as the default target."""
    default = request.config.getoption("--edgeprune-target", default=None)

    def check(model_or_onnx, target: str | None = None, budget_ms: float | None = None,
              input_size: int | None = None, confirm: bool = True) -> float:
        return assert_latency(model_or_onnx, target or default, budget_ms, input_size, confirm)

    return check

"""What must match before a latency measured elsewhere counts here: defined once, by the target.

Tables and baselines kept two lists of keys, and they had diverged: a baseline recorded with
ONNX Runtime's ORT format compared equal to one recorded as plain ONNX (provider, device_name
and model_format were missing from the baseline's list), and a table profiled on another CPU
architecture was accepted (host_arch was missing from the table's list)."""
from __future__ import annotations

import pytest
from test_lut import small_table

from edgeprune.checks.baseline import mismatches as baseline_mismatches
from edgeprune.errors import UsageError
from edgeprune.latency.table import LatencyTable
from edgeprune.runtime import RUNTIMES, get_target, target_class
from edgeprune.runtime.spec import TargetSpec


def installed_runtimes():
    return [pytest.param(name, marks=pytest.mark.skipif(not target_class(name).installed(),
                                                         reason=f"{name} runtime package not installed"))
            for name in RUNTIMES if name != "remote"]  # needs a running agent: tests/test_agent.py


@pytest.mark.parametrize("runtime", installed_runtimes())
def test_tables_and_baselines_compare_every_key_of_the_targets_fingerprint(runtime, tmp_path):
    target = get_target(TargetSpec(name="t", runtime=runtime))
    here = target.fingerprint()
    other = {k: f"other-{v}" for k, v in here.items()}
    assert set(baseline_mismatches(other, here)) == set(here)
    path = small_table(**other).save(tmp_path / "t.json")
    with pytest.raises(UsageError) as info:
        LatencyTable.load(path, expect=here)
    named = str(info.value).split("(", 1)[1]
    assert all(f"{k}:" in named for k in here)


def test_a_baseline_in_another_model_format_is_incomparable():
    here = get_target("ort-cpu").fingerprint()
    assert baseline_mismatches(dict(here, model_format="ort"), here) == {"model_format": ("ort", here["model_format"])}
    assert baseline_mismatches(dict(here, provider="CUDAExecutionProvider"), here)


def test_a_table_from_another_architecture_is_refused(tmp_path):
    here = get_target("ort-cpu").fingerprint()
    path = small_table(**dict(here, host_arch="aarch64" if here["host_arch"] != "aarch64" else "x86_64")).save(
        tmp_path / "t.json")
    with pytest.raises(UsageError, match="host_arch"):
        LatencyTable.load(path, expect=here)

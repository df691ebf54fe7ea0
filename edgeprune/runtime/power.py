"""A board's power state: CPU frequency governors and clocks (Linux cpufreq in sysfs) and, on a
Jetson, the ``nvpmodel`` power mode. The agent reports all of it in ``/info`` (``host.power``);
each reader returns None when it cannot read its value and never raises, because a board without
cpufreq (a container, a VM) must still serve.

What is *compared* (``compared_power``, added to a ``remote`` target's fingerprint, which tables
and baselines compare key by key) is only what is configured and stays put while nothing is
reconfigured: the Jetson power mode (MAXN, 15W, ...: it caps clocks and cores, so a baseline
recorded in another mode measures another machine) and the set of CPU governors (``performance``
against ``schedutil`` changes latency as much). Current frequencies move every millisecond under
a dynamic governor and would make every comparison a mismatch, so they are reported, never
compared; so are the maximum frequencies and whether clocks are locked (``jetson_clocks``), which
``nvpmodel`` and the governor already mostly decide. A local target's fingerprint does not take
these keys: a build machine's or CI runner's governor is switched by power daemons (AC/battery)
without anyone reconfiguring it, and would refuse tables for no reason there.
"""
from __future__ import annotations

import re
from pathlib import Path

from edgeprune.runtime.hardware import tool_output

CPUFREQ = "sys/devices/system/cpu"
NVPMODEL_TIMEOUT_S = 2.0
_CPU_DIR = re.compile(r"cpu(\d+)$")
_MODE = re.compile(r"NV Power Mode\s*:\s*(\S.*?)\s*$")


def _cpufreq_dirs(root: Path) -> list[Path]:
    """``cpuN/cpufreq`` directories under ``root``, in CPU order (cpu10 after cpu9)."""
    base = Path(root) / CPUFREQ
    try:
        cpus = [(int(m.group(1)), d) for d in base.iterdir() if (m := _CPU_DIR.match(d.name))]
    except OSError:
        return []
    return [d / "cpufreq" for _, d in sorted(cpus) if (d / "cpufreq").is_dir()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _per_cpu(root: Path, name: str) -> list[str] | None:
    """The file ``name`` of every CPU that has it; None when none has."""
    values = [v for d in _cpufreq_dirs(root) if (v := _read(d / name)) is not None]
    return values or None


def cpu_governors(root: Path | str = "/") -> list[str] | None:
    """The distinct ``scaling_governor`` values, sorted (one per cpufreq policy, usually one)."""
    values = _per_cpu(Path(root), "scaling_governor")
    return sorted(set(values)) if values else None


def cpu_mhz(root: Path | str = "/", name: str = "scaling_cur_freq") -> list[int] | None:
    """``name`` (kHz in sysfs) of each CPU in MHz: ``scaling_cur_freq`` now, ``scaling_max_freq``
    the ceiling the governor may use. None when unreadable or not a number."""
    values = _per_cpu(Path(root), name)
    try:
        return [round(int(v) / 1000) for v in values] if values else None
    except ValueError:
        return None


def clocks_locked(root: Path | str = "/") -> bool | None:
    """Whether every CPU's minimum frequency equals its maximum (what ``jetson_clocks`` does, read
    without its root-only ``--show``); None when unreadable."""
    lo, hi = cpu_mhz(root, "scaling_min_freq"), cpu_mhz(root, "scaling_max_freq")
    if not lo or not hi or len(lo) != len(hi):
        return None
    return lo == hi


def parse_nvpmodel(text: str) -> dict | None:
    """``nvpmodel -q`` output (``NV Power Mode: MAXN`` then the mode's number on its own line)
    as {"name": "MAXN", "id": 0}; the id is None when absent; None without a mode line."""
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        m = _MODE.search(line)
        if m:
            following = next((x for x in lines[i + 1:] if x), "")
            return {"name": m.group(1), "id": int(following) if following.isdigit() else None}
    return None


def nvpmodel_mode(binary: str = "nvpmodel") -> dict | None:
    """The Jetson power mode from ``nvpmodel -q``; None where there is no ``nvpmodel`` (not a
    Jetson) or it fails or takes longer than ``NVPMODEL_TIMEOUT_S``."""
    out = tool_output(binary, "-q", timeout_s=NVPMODEL_TIMEOUT_S)
    return parse_nvpmodel(out) if out is not None else None


def power_info(root: Path | str = "/", nvpmodel: str = "nvpmodel") -> dict:
    """Everything readable about the power state, for ``/info``; absent values are None."""
    return {"cpu_governor": cpu_governors(root), "cpu_cur_mhz": cpu_mhz(root, "scaling_cur_freq"),
            "cpu_max_mhz": cpu_mhz(root, "scaling_max_freq"), "clocks_locked": clocks_locked(root),
            "nvpmodel": nvpmodel_mode(nvpmodel)}


def compared_power(power: dict) -> dict:
    """The fingerprint keys taken from ``power_info`` (see the module's docstring for why only
    these): the Jetson power mode's name and the governors; None where unreadable, so a board
    whose mode can no longer be read does not silently match a baseline recorded in one."""
    mode = power.get("nvpmodel") or {}
    name = mode.get("name") or (str(mode["id"]) if mode.get("id") is not None else None)
    return {"power_mode": name, "cpu_governor": power.get("cpu_governor")}

"""The power-state readers (``edgeprune.runtime.power``) on fake sysfs trees and sample ``nvpmodel
-q`` output, and the agent's ``/info`` reporting them; the remote fingerprint's compared keys
are in test_remote.py."""
from __future__ import annotations

import os
from pathlib import Path


from edgeprune.runtime import hardware, power

MAXN = "NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n"  # a Xavier (JetPack 4/5)
ORIN_15W = "NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n2\n"  # an Orin Nano (JetPack 6)


def sysfs(root: Path, cpus: dict[int, dict[str, str]]) -> Path:
    """A fake ``sys/devices/system/cpu`` with ``cpus``: {n: {file: content}} under cpuN/cpufreq."""
    base = root / power.CPUFREQ
    (base / "cpufreq").mkdir(parents=True)  # policy dirs and other entries are not CPUs
    (base / "online").write_text("0-3\n")
    for n, files in cpus.items():
        d = base / f"cpu{n}" / "cpufreq"
        d.mkdir(parents=True)
        for name, text in files.items():
            (d / name).write_text(text + "\n")
    return root


def cpu(gov: str, cur: int, lo: int, hi: int) -> dict[str, str]:
    return {"scaling_governor": gov, "scaling_cur_freq": str(cur), "scaling_min_freq": str(lo),
            "scaling_max_freq": str(hi)}


def test_parse_nvpmodel_samples():
    assert power.parse_nvpmodel(MAXN) == {"name": "MAXN", "id": 0}
    assert power.parse_nvpmodel(ORIN_15W) == {"name": "15W", "id": 2}
    assert power.parse_nvpmodel("NV Power Mode:MODE_10W  \n") == {"name": "MODE_10W", "id": None}
    assert power.parse_nvpmodel("") is None and power.parse_nvpmodel("nvpmodel: permission denied") is None


def test_a_big_little_board(tmp_path):
    """Two clusters with their own policy; cpu10 sorts after cpu2; a CPU without cpufreq is skipped."""
    root = sysfs(tmp_path, {0: cpu("schedutil", 600000, 408000, 1800000), 2: cpu("schedutil", 1416000, 408000, 1800000),
                            10: cpu("performance", 2400000, 2400000, 2400000)})
    (tmp_path / power.CPUFREQ / "cpu11").mkdir()
    assert power.cpu_governors(root) == ["performance", "schedutil"]
    assert power.cpu_mhz(root) == [600, 1416, 2400]
    assert power.cpu_mhz(root, "scaling_max_freq") == [1800, 1800, 2400]
    assert power.clocks_locked(root) is False


def test_jetson_clocks_locks_min_to_max(tmp_path):
    root = sysfs(tmp_path, {n: cpu("schedutil", 2201600, 2201600, 2201600) for n in range(4)})
    assert power.clocks_locked(root) is True and power.cpu_governors(root) == ["schedutil"]


def test_unreadable_is_none_never_an_error(tmp_path):
    assert power.power_info(tmp_path / "nothing", nvpmodel="no-such-nvpmodel") == {
        "cpu_governor": None, "cpu_cur_mhz": None, "cpu_max_mhz": None, "clocks_locked": None, "nvpmodel": None}
    root = sysfs(tmp_path / "odd", {0: {"scaling_governor": "", "scaling_cur_freq": "<unknown>"}})
    assert power.cpu_governors(root) is None and power.cpu_mhz(root) is None and power.clocks_locked(root) is None


def fake_nvpmodel(tmp_path: Path, body: str) -> str:
    path = tmp_path / "nvpmodel"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_nvpmodel_is_run_with_a_timeout(tmp_path, monkeypatch):
    assert power.nvpmodel_mode(fake_nvpmodel(tmp_path, f"printf '{MAXN}'")) == {"name": "MAXN", "id": 0}
    assert power.nvpmodel_mode(fake_nvpmodel(tmp_path, "echo denied >&2; exit 1")) is None
    monkeypatch.setattr(power, "NVPMODEL_TIMEOUT_S", 0.2)
    assert power.nvpmodel_mode(fake_nvpmodel(tmp_path, "exec sleep 5")) is None
    assert power.nvpmodel_mode("no-such-nvpmodel") is None


def test_compared_keys_are_the_configured_ones():
    """Mode and governors only: current and maximum frequencies are reported, never compared."""
    info = {"cpu_governor": ["performance"], "cpu_cur_mhz": [1400], "cpu_max_mhz": [2200], "clocks_locked": True,
            "nvpmodel": {"name": "MAXN", "id": 0}}
    assert power.compared_power(info) == {"power_mode": "MAXN", "cpu_governor": ["performance"]}
    assert power.compared_power({**info, "nvpmodel": {"name": "", "id": 3}})["power_mode"] == "3"
    assert power.compared_power({}) == {"power_mode": None, "cpu_governor": None}


def test_the_agents_info_reports_power(tmp_path):
    from agent_helpers import Agent  # skips without the agent's libraries
    a = Agent(tmp_path, targets="fake")
    try:
        host = a.info()["host"]
    finally:
        a.stop()
    assert set(host["power"]) == {"cpu_governor", "cpu_cur_mhz", "cpu_max_mhz", "clocks_locked", "nvpmodel"}
    assert host["hardware"] == hardware.hardware_info()  # this host's board model and GPUs, or None
    assert host["power"]["cpu_governor"] == power.cpu_governors()  # this host's, whatever it has
    if not os.path.exists("/" + power.CPUFREQ + "/cpu0/cpufreq"):
        assert host["power"]["cpu_governor"] is None


def test_board_model_and_gpus_are_read_and_compared(tmp_path, monkeypatch):
    """A Jetson's device tree names the board (NUL-terminated); nvidia-smi's CSV names a
    workstation's GPUs; the compared keys are the board model and the GPU names, not the driver."""
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    assert hardware.board_model(tmp_path) == "NVIDIA Jetson AGX Orin Developer Kit"
    assert hardware.board_model(tmp_path / "nothing") is None
    smi = "NVIDIA H200, 580.65.06\nNVIDIA RTX A2000, 580.65.06\n"
    gpus = hardware.parse_nvidia_smi(smi)
    assert gpus == [{"name": "NVIDIA H200", "driver": "580.65.06"}, {"name": "NVIDIA RTX A2000", "driver": "580.65.06"}]
    assert hardware.parse_nvidia_smi("No devices were found\n") is None
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    assert hardware.nvidia_gpus() is None  # no nvidia-smi: not an error
    assert hardware.compared_hardware({"board_model": "Orin", "gpus": gpus}) == {
        "board_model": "Orin", "gpus": ["NVIDIA H200", "NVIDIA RTX A2000"]}
    assert hardware.compared_hardware({}) == {"board_model": None, "gpus": None}


def test_gpus_are_counted_without_torch(tmp_path):
    """What `edgeprune targets` says of a GPU target: nvidia-smi's list (a real executable here),
    or one integrated GPU on a Jetson, whose nvidia-smi lists none; none on a plain host."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf 'NVIDIA H200, 580.65.06\\nNVIDIA H200, 580.65.06\\n'\n")
    smi.chmod(0o755)
    assert hardware.gpu_count(tmp_path / "no-board", str(smi)) == 2
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    assert hardware.gpu_count(tmp_path, str(tmp_path / "absent-smi")) == 1
    assert hardware.gpu_count(tmp_path / "no-board", str(tmp_path / "absent-smi")) == 0

"""What board an agent runs on, beyond the CPU that ``host_fingerprint`` names: the board model
(``/proc/device-tree/model`` on a Jetson, a Raspberry Pi or another ARM board: "NVIDIA Jetson
AGX Orin Developer Kit") and the NVIDIA GPUs ``nvidia-smi`` lists on a workstation or server.
Both are fixed hardware, so a remote target's fingerprint compares them: a baseline recorded on
an Orin must not be judged on a Nano with the same CPU cores. Each reader returns None when it
cannot read its value and never raises (a container or VM has neither)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

NVIDIA_SMI_TIMEOUT_S = 3.0


def cuda_index(device: str, what: str = "device", cpu: bool = False) -> int | None:
    """The GPU index a device name means: ``cuda``/``gpu`` -> 0, ``cuda:N``/``gpu:N`` -> N, and
    ``cpu`` -> None where ``cpu`` is allowed; anything else is one UsageError line naming ``what``
    (the target or flag). The one parser of device names for every GPU runtime and for training,
    so a name means the same thing everywhere."""
    from edgeprune.errors import UsageError
    d = (device or "").strip().lower()
    if cpu and d == "cpu":
        return None
    head, colon, index = d.partition(":")
    if head in ("cuda", "gpu") and (index.isdigit() or not colon):
        return int(index or 0)
    raise UsageError(f"{what} must be {'cpu, ' if cpu else ''}cuda or cuda:N, got {device!r}")


def board_model(root: Path | str = "/") -> str | None:
    """The device tree's model string (NUL-terminated in the file), None where there is none."""
    try:
        text = (Path(root) / "proc/device-tree/model").read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    return text.replace("\x00", "").strip() or None


def parse_nvidia_smi(text: str) -> list[dict] | None:
    """``nvidia-smi --query-gpu=name,driver_version --format=csv,noheader`` lines as
    [{"name", "driver"}]; None when no line has both fields."""
    gpus = []
    for line in text.splitlines():
        name, _, driver = (part.strip() for part in line.rpartition(","))
        if name and driver:
            gpus.append({"name": name, "driver": driver})
    return gpus or None


def tool_output(binary: str, *args: str, timeout_s: float) -> str | None:
    """stdout of a board tool (``nvidia-smi``, ``nvpmodel``); None where it is not installed,
    fails, or takes longer than ``timeout_s`` (the agent's /info must answer regardless)."""
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        done = subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def nvidia_gpus(binary: str = "nvidia-smi") -> list[dict] | None:
    """The NVIDIA GPUs and driver; None without ``nvidia-smi`` (a Jetson has none: its GPU is in
    the board model), or when it fails or takes longer than ``NVIDIA_SMI_TIMEOUT_S``."""
    out = tool_output(binary, "--query-gpu=name,driver_version", "--format=csv,noheader",
                      timeout_s=NVIDIA_SMI_TIMEOUT_S)
    return parse_nvidia_smi(out) if out is not None else None


def gpu_count(root: Path | str = "/", smi: str = "nvidia-smi") -> int:
    """NVIDIA GPUs on this host without importing torch or a GPU runtime (``edgeprune targets``
    asks every target whether its device is here, and torch costs seconds to import): those
    ``nvidia-smi`` lists, or one on a Jetson, whose integrated GPU it does not list."""
    gpus = nvidia_gpus(smi)
    if gpus:
        return len(gpus)
    return 1 if "jetson" in (board_model(root) or "").lower() else 0


def hardware_info(root: Path | str = "/", smi: str = "nvidia-smi") -> dict:
    """For the agent's ``/info`` (read once: hardware does not change while it runs)."""
    return {"board_model": board_model(root), "gpus": nvidia_gpus(smi)}


def compared_hardware(hardware: dict) -> dict:
    """The fingerprint keys taken from ``hardware_info``: the board model and the GPU names (not
    the driver, which the board target's runtime version already stands for where it matters)."""
    gpus = hardware.get("gpus")
    return {"board_model": hardware.get("board_model"),
            "gpus": sorted(g.get("name") for g in gpus) if gpus else None}

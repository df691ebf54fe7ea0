"""tools/board: the agent's installer in --dry-run (no root, nothing changed) prints the commands
that make the token private and install the unit, and the unit's ExecStart is parsed by the real
CLI parser, so the unit and ``edgeprune agent serve`` cannot drift apart."""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeprune.agent.serve import GRACE_S, serve
from edgeprune.cli import build_parser

BOARD = Path(__file__).resolve().parent.parent / "tools" / "board"
SCRIPT = BOARD / "install-agent.sh"
TOKEN = "/etc/edgeprune/agent.token"


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, timeout=60)


def unit_of(stdout: str) -> str:
    """The unit the dry run would write (between ``cat > ... <<'UNIT'`` and ``UNIT``)."""
    m = re.search(r"^cat > /etc/systemd/system/edgeprune-agent\.service <<'UNIT'\n(.*?)^UNIT$", stdout, re.S | re.M)
    assert m, stdout
    return m.group(1)


def exec_start(unit: str) -> list[str]:
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def pip_target(lines: list[str]) -> str:
    """What the venv's pip installs edgeprune from (the dry run prints shell-quoted commands)."""
    line = next(x for x in lines if " -m pip install " in x and "--upgrade" not in x)
    return shlex.split(line)[-1]


def parse_serve(argv: list[str]):
    """``argv`` (the unit's ExecStart) through ``edgeprune.cli.build_parser``: it must be the
    venv's ``edgeprune agent serve`` and every flag must be one the parser accepts."""
    assert argv[0] == "/opt/edgeprune/venv/bin/edgeprune" and argv[1:3] == ["agent", "serve"], argv
    parser = build_parser()
    known = {o for action in _subparser(_subparser(parser, "agent"), "serve")._actions for o in action.option_strings}
    assert {x for x in argv if x.startswith("--")} <= known, argv  # whole names, not abbreviations argparse takes
    a = parser.parse_args(argv[1:])
    assert a.func is serve
    return a


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_the_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


def test_dry_run_arm_makes_a_private_token_and_installs_the_unit():
    r = dry_run("--kind", "arm", "--port", "9000")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    token = next(i for i, x in enumerate(lines) if "secrets.token_urlsafe(32)" in x)
    assert lines[token].startswith("umask 077 && ") and lines[token].endswith(f"> {TOKEN}")
    assert lines[token + 1:token + 3] == [f"chown edgeprune:edgeprune {TOKEN}", f"chmod 0600 {TOKEN}"]
    assert lines[0].startswith("useradd --system") and lines[0].endswith(" edgeprune")
    assert "python3 -m venv /opt/edgeprune/venv" in lines  # no system site packages off a Jetson
    assert pip_target(lines).endswith("[remote]")
    assert "install -d -o edgeprune -g edgeprune -m 0700 /var/lib/edgeprune" in lines
    assert lines[-3:] == ["systemctl daemon-reload", "systemctl enable edgeprune-agent.service",
                          "systemctl restart edgeprune-agent.service"]
    unit = unit_of(r.stdout)
    assert "User=edgeprune" in unit and "ReadWritePaths=/var/lib/edgeprune" in unit
    assert not re.search(r"^[^#].*@[A-Z_]+@", unit, re.M)  # every field filled in
    a = parse_serve(exec_start(unit))
    assert (a.host, a.port, a.token_file, a.state_dir, a.targets) == (
        "0.0.0.0", 9000, TOKEN, "/var/lib/edgeprune", "ort-mobile,ort-cpu")
    assert a.tls_cert is None and not a.no_state_dir
    assert "without TLS" in r.stderr and f"sudo cat {TOKEN}" in r.stderr  # and how to copy the token


def test_tls_and_the_other_kinds(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert")
    key.write_text("key")
    r = dry_run("--kind", "jetson", "--tls-cert", str(cert), "--tls-key", str(key), "--host", "10.0.0.7")
    assert r.returncode == 0, r.stderr
    assert "python3 -m venv --system-site-packages /opt/edgeprune/venv" in r.stdout
    assert f"install -o edgeprune -g edgeprune -m 0600 {key} /etc/edgeprune/agent-key.pem" in r.stdout
    a = parse_serve(exec_start(unit_of(r.stdout)))
    assert (a.tls_cert, a.tls_key, a.host, a.targets) == (
        "/etc/edgeprune/agent.pem", "/etc/edgeprune/agent-key.pem", "10.0.0.7", "ort-cpu")
    assert "without TLS" not in r.stderr
    r = dry_run("--kind", "fpga", "--targets", "openvino-cpu")
    assert r.returncode == 0 and pip_target(r.stdout.splitlines()).endswith("[remote,openvino]")
    assert parse_serve(exec_start(unit_of(r.stdout))).targets == "openvino-cpu"


def test_the_unit_outlasts_the_agents_shutdown_grace():
    unit = (BOARD / "edgeprune-agent.service").read_text()
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    assert "KillSignal=SIGTERM" in unit and stop > GRACE_S + 5  # + uvicorn's own graceful 5 s
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                   "Restart=on-failure"):
        assert f"\n{option}\n" in unit, option


@pytest.mark.parametrize("args, fragment", [
    ([], "--kind is required"),
    (["--kind", "riscv"], "--kind must be jetson, arm or fpga"),
    (["--kind", "arm", "--port", "70000"], "--port must be in 1..65535"),
    (["--kind", "arm", "--tls-cert", "x.pem"], "give both --tls-cert and --tls-key"),
    (["--kind", "arm", "--targets", "ort-cpu;rm -rf /"], "--targets must be"),
    (["--kind", "arm", "--bogus"], "unknown argument --bogus"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment):
    r = dry_run(*args)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("install-agent.sh: error: ") and fragment in r.stderr

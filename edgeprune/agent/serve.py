"""``edgeprune agent serve``: its arguments, their checks, and uvicorn. Registered from
``edgeprune.cli`` by ``add_commands``; FastAPI and uvicorn are imported only when it runs."""
from __future__ import annotations

import importlib.util
import ipaddress
import os
import sys
from pathlib import Path

from edgeprune.errors import MissingBackend, UsageError

AGENT_PACKAGES = ("fastapi", "uvicorn", "multipart")  # multipart: python-multipart, for uploads
GRACE_S = 30.0  # shutdown: how long a measurement in progress may take to finish


def add_commands(cmd) -> None:
    """``agent serve`` under the CLI's ``cmd(name, func, help)`` helper (cli.build_parser)."""
    agent = cmd("agent", None, "run the measurement agent on a board (the remote target drives it)")
    agent.set_defaults(func=lambda a: agent.print_help() or 2)
    sub = agent.add_subparsers(title="agent commands")
    c = sub.add_parser("serve", help="serve measurements over HTTP", description=serve.__doc__)
    c.set_defaults(func=serve)
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    c.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    c.add_argument("--token-file", required=True, help="file holding the bearer token clients must send")
    c.add_argument("--targets", default="ort-cpu", help="comma-separated target names or YAML paths the "
                   "agent measures on (default ort-cpu)")
    c.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key)")
    c.add_argument("--tls-key", help="PEM private key of --tls-cert")
    c.add_argument("--max-upload-mb", type=float, default=64.0, help="largest request body (default 64)")
    c.add_argument("--state-dir", help="where finished results are kept across restarts (default "
                   "$XDG_CACHE_HOME/edgeprune/agent-PORT, else ~/.cache/edgeprune/agent-PORT)")
    c.add_argument("--no-state-dir", action="store_true", help="keep results in memory only (lost on restart)")


def serve(a) -> int:
    """Measure ONNX models uploaded by `remote` targets, one at a time, on this board's targets."""
    missing = [p for p in AGENT_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise MissingBackend("python-multipart" if missing[0] == "multipart" else missing[0], "remote",
                             what="the agent")
    token = read_token(a.token_file)
    if not 0 < a.max_upload_mb < float("inf"):
        raise UsageError(f"--max-upload-mb must be a positive number, got {a.max_upload_mb}")
    if not 0 <= a.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {a.port}")
    tls = tls_files(a.tls_cert, a.tls_key)
    targets = load_targets(a.targets)
    state_dir = None if a.no_state_dir else usable_state_dir(a.state_dir, a.port)
    if not tls and not is_loopback(a.host):
        print(f"edgeprune: warning: serving {a.host} without TLS: the token and models cross the network "
              "in clear; give --tls-cert and --tls-key", file=sys.stderr)
    import uvicorn

    from edgeprune.agent.app import create_app
    app = create_app(targets, token, int(a.max_upload_mb * 2**20), grace_s=GRACE_S, state_dir=state_dir)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5, **({"ssl_certfile": tls[0], "ssl_keyfile": tls[1]} if tls else {}))
    return 0


def usable_state_dir(given: str | None, port: int) -> Path:
    """``--state-dir`` (or the default for ``port``), created; refused in one line when it is a
    file or cannot be written."""
    from edgeprune.agent.state import default_state_dir
    if not given and port == 0:
        raise UsageError("--port 0 has no stable default state directory; give --state-dir or --no-state-dir")
    path = Path(given).expanduser() if given else default_state_dir(port)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--state-dir {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"--state-dir {path} is not writable")
    return path


def read_token(path: str) -> str:
    """The token, read once at startup; a missing or empty file is refused."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"token file {path} does not exist")
    token = p.read_text().strip()
    if not token:
        raise UsageError(f"token file {path} is empty; put a long random secret in it, e.g. "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def tls_files(cert: str | None, key: str | None) -> tuple[str, str] | None:
    if bool(cert) != bool(key):
        raise UsageError("give both --tls-cert and --tls-key, or neither")
    for f in (cert, key):
        if f and not Path(f).is_file():
            raise UsageError(f"TLS file {f} does not exist")
    return (cert, key) if cert else None


def load_targets(names: str) -> dict:
    """The board's own targets by their spec name (what clients put in ``device_target``)."""
    from edgeprune.runtime import get_target
    targets = {}
    for name in filter(None, (n.strip() for n in names.split(","))):
        t = get_target(name)
        if t.runtime == "remote":
            raise UsageError(f"target {name!r} is itself remote; an agent measures on its own device")
        targets[t.spec.name] = t
    if not targets:
        raise UsageError("--targets names no target")
    return targets


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

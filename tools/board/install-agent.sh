#!/usr/bin/env bash
# Installs the edgeprune measurement agent on a board as a systemd service (tools/board/README.md):
# a system user, a venv with edgeprune[remote] and the board's runtime, a token file only that
# user can read, a state directory, and the unit (edgeprune-agent.service beside this script).
#
#   sudo tools/board/install-agent.sh --kind arm [--targets ort-mobile,ort-cpu] [--host 0.0.0.0]
#        [--port 8765] [--tls-cert board.pem --tls-key board-key.pem] [--source DIR_OR_SPEC]
#        [--ort-wheel FILE] [--python PY] [--dry-run]
#
# --kind jetson|arm|fpga picks the venv (Jetson: --system-site-packages, so JetPack's TensorRT and
# CUDA Python modules are visible), the extras (fpga: openvino) and the default --targets.
# --dry-run prints every command instead of running it (no root needed). Rerunning keeps the token.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
KIND="" TARGETS="" HOST="0.0.0.0" PORT="8765" TLS_CERT="" TLS_KEY="" DRY_RUN=0
SOURCE="" ORT_WHEEL="" PYTHON="python3"
USER_NAME="edgeprune"
PREFIX="/opt/edgeprune"
CONF_DIR="/etc/edgeprune"
STATE_DIR="/var/lib/$USER_NAME"
TOKEN_FILE="$CONF_DIR/agent.token"
UNIT_PATH="/etc/systemd/system/edgeprune-agent.service"

die() { echo "install-agent.sh: error: $*" >&2; exit 2; }

# One command, printed (--dry-run) or run. Arguments are quoted as a shell would need them.
run() {
  if [ "$DRY_RUN" = 1 ]; then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi
}

# A command that needs a shell (a redirection, umask), printed or run as one bash -c string.
run_sh() {
  if [ "$DRY_RUN" = 1 ]; then echo "$1"; else bash -c "$1"; fi
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --kind|--targets|--host|--port|--tls-cert|--tls-key|--source|--ort-wheel|--python)
        [ $# -ge 2 ] || die "$1 needs a value"
        case "$1" in
          --kind) KIND="$2" ;; --targets) TARGETS="$2" ;; --host) HOST="$2" ;; --port) PORT="$2" ;;
          --tls-cert) TLS_CERT="$2" ;; --tls-key) TLS_KEY="$2" ;; --source) SOURCE="$2" ;;
          --ort-wheel) ORT_WHEEL="$2" ;; --python) PYTHON="$2" ;;
        esac
        shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument $1 (see --help)" ;;
    esac
  done
}

# Checks of the arguments, each refused in one line; fills in the kind's defaults.
check_args() {
  case "$KIND" in
    jetson) VENV_FLAGS="--system-site-packages" EXTRAS="remote" GROUPS_="video"
            DEFAULT_TARGETS="ort-cpu" ;;
    arm)    VENV_FLAGS="" EXTRAS="remote" GROUPS_="" DEFAULT_TARGETS="ort-mobile,ort-cpu" ;;
    fpga)   VENV_FLAGS="" EXTRAS="remote,openvino" GROUPS_="render" DEFAULT_TARGETS="openvino-cpu,openvino-fpga" ;;
    "") die "--kind is required: jetson, arm or fpga" ;;
    *) die "--kind must be jetson, arm or fpga, got '$KIND'" ;;
  esac
  TARGETS="${TARGETS:-$DEFAULT_TARGETS}"
  [[ "$TARGETS" =~ ^[A-Za-z0-9._/,-]+$ ]] || die "--targets must be comma-separated target names or paths, got '$TARGETS'"
  [[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "--port must be in 1..65535, got '$PORT'"
  [[ "$HOST" =~ ^[A-Za-z0-9.:-]+$ ]] || die "--host must be an address or host name, got '$HOST'"
  if { [ -n "$TLS_CERT" ] && [ -z "$TLS_KEY" ]; } || { [ -z "$TLS_CERT" ] && [ -n "$TLS_KEY" ]; }; then
    die "give both --tls-cert and --tls-key, or neither"
  fi
  for f in "$TLS_CERT" "$TLS_KEY" "$ORT_WHEEL"; do
    [ -z "$f" ] || [ -f "$f" ] || die "file $f does not exist"
  done
  if [ -z "$SOURCE" ]; then
    SOURCE="$(cd "$HERE/../.." && pwd)"
    [ -f "$SOURCE/pyproject.toml" ] || die "no edgeprune checkout above $HERE; give --source DIR_OR_SPEC"
  fi
  if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then die "run as root (sudo), or with --dry-run"; fi
  if [ -z "$TLS_CERT" ] && [ "$HOST" != 127.0.0.1 ] && [ "$HOST" != localhost ] && [ "$HOST" != ::1 ]; then
    echo "install-agent.sh: warning: serving $HOST without TLS: the token and models cross the network in" \
         "clear; give --tls-cert and --tls-key, or --host 127.0.0.1 and an SSH tunnel" >&2
  fi
}

create_user() {
  if id "$USER_NAME" >/dev/null 2>&1 && [ "$DRY_RUN" = 0 ]; then return; fi
  run useradd --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
}

create_venv() {
  run install -d -m 0755 "$PREFIX"
  # shellcheck disable=SC2086  # VENV_FLAGS is empty or one flag
  run "$PYTHON" -m venv $VENV_FLAGS "$PREFIX/venv"
  run "$PREFIX/venv/bin/python" -m pip install --upgrade pip
  run "$PREFIX/venv/bin/python" -m pip install "${SOURCE}[${EXTRAS}]"
  if [ -n "$ORT_WHEEL" ]; then  # e.g. an onnxruntime built with --use_xnnpack for ort-mobile
    run "$PREFIX/venv/bin/python" -m pip install --force-reinstall --no-deps "$ORT_WHEEL"
  fi
}

# The token: 32 random bytes, URL-safe, in a file only the agent's user can read (created under
# umask 077, then owned by the user with mode 0600). An existing token is kept.
create_token() {
  run install -d -o root -g "$USER_NAME" -m 0750 "$CONF_DIR"
  if [ -s "$TOKEN_FILE" ]; then
    echo "keeping the token in $TOKEN_FILE" >&2
  else
    run_sh "umask 077 && $PREFIX/venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' > $TOKEN_FILE"
  fi
  run chown "$USER_NAME:$USER_NAME" "$TOKEN_FILE"
  run chmod 0600 "$TOKEN_FILE"
}

# TLS files copied beside the token: the key readable only by the agent's user.
install_tls() {
  TLS_ARGS=""
  [ -n "$TLS_CERT" ] || return 0
  run install -o root -g "$USER_NAME" -m 0644 "$TLS_CERT" "$CONF_DIR/agent.pem"
  run install -o "$USER_NAME" -g "$USER_NAME" -m 0600 "$TLS_KEY" "$CONF_DIR/agent-key.pem"
  TLS_ARGS="--tls-cert $CONF_DIR/agent.pem --tls-key $CONF_DIR/agent-key.pem"
}

create_state_dir() {
  run install -d -o "$USER_NAME" -g "$USER_NAME" -m 0700 "$STATE_DIR"
}

add_groups() {
  local kept="" g
  for g in $GROUPS_; do
    if getent group "$g" >/dev/null; then
      run usermod -aG "$g" "$USER_NAME"
      kept="$kept $g"
    fi
  done
  GROUPS_="${kept# }"
}

render_unit() {
  sed -e "s|@USER@|$USER_NAME|g" -e "s|@GROUPS@|$GROUPS_|g" -e "s|@VENV@|$PREFIX/venv|g" \
      -e "s|@HOST@|$HOST|g" -e "s|@PORT@|$PORT|g" -e "s|@TOKEN_FILE@|$TOKEN_FILE|g" \
      -e "s|@STATE_DIR@|$STATE_DIR|g" -e "s|@STATE_NAME@|${STATE_DIR#/var/lib/}|g" \
      -e "s|@TARGETS@|$TARGETS|g" -e "s|@TLS_ARGS@|$TLS_ARGS|g" \
      -e 's| *$||' "$HERE/edgeprune-agent.service"
}

install_unit() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "cat > $UNIT_PATH <<'UNIT'"
    render_unit
    echo "UNIT"
  else
    (umask 022 && render_unit > "$UNIT_PATH")
  fi
  run systemctl daemon-reload
  run systemctl enable edgeprune-agent.service
  run systemctl restart edgeprune-agent.service
}

next_steps() {
  local scheme=http board
  [ -z "$TLS_CERT" ] || scheme=https
  board="$(hostname 2>/dev/null || echo BOARD)"
  cat >&2 <<EOF

The agent serves $TARGETS at $scheme://$board:$PORT (systemctl status edgeprune-agent;
journalctl -u edgeprune-agent). Its token is in $TOKEN_FILE (mode 0600, user $USER_NAME).
On the build machine, copy it into a file only you can read:
  (umask 077; mkdir -p ~/.edgeprune; ssh $board sudo cat $TOKEN_FILE > ~/.edgeprune/$board.token)
and name it in a runtime: remote target file (tools/board/README.md):
  options: {url: $scheme://$board:$PORT, token_file: ~/.edgeprune/$board.token, device_target: ${TARGETS%%,*}}
EOF
}

main() {
  umask 022  # the venv and unit readable by the agent's user whatever root's umask; secrets set their own
  parse_args "$@"
  check_args
  create_user
  create_venv
  create_token
  install_tls
  create_state_dir
  add_groups
  install_unit
  next_steps
}

main "$@"

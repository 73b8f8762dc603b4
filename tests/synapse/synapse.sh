#!/usr/bin/env bash
# Starts or stops the test Synapse (Matrix homeserver) on 127.0.0.1 with fresh data.
#   tests/synapse/synapse.sh start [PORT]    # prints "synapse on 127.0.0.1:PORT (pid N)"
#   tests/synapse/synapse.sh stop
#   tests/synapse/synapse.sh register USER PASSWORD
# State lives in $IM_SYNAPSE_DIR (default /tmp/im-synapse); Synapse runs from the virtual
# environment $IM_SYNAPSE_VENV (default /tmp/synapse-venv; make one with
# `python3 -m venv DIR && DIR/bin/pip install matrix-synapse==1.163.2`). The server is
# stopped by its PID. The signing key is generated into the data directory; the only secret
# in the repository is the test registration secret of homeserver.yaml.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${IM_SYNAPSE_DIR:-/tmp/im-synapse}"
venv="${IM_SYNAPSE_VENV:-/tmp/synapse-venv}"
py="$venv/bin/python"
pidfile="$dir/synapse.pid"
case "${1:-}" in
start)
    port="${2:-8008}"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "synapse already running (pid $(cat "$pidfile"))" >&2
        exit 1
    fi
    [ -x "$py" ] || { echo "no Synapse venv at $venv (set IM_SYNAPSE_VENV)" >&2; exit 1; }
    rm -rf "$dir"
    mkdir -p "$dir/media"
    echo "$port" > "$dir/port"
    # What differs per run: paths and the port. Synapse merges it over homeserver.yaml.
    cat > "$dir/runtime.yaml" <<YAML
pid_file: $dir/homeserver.pid
listeners:
  - port: $port
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: $dir/homeserver.db
media_store_path: $dir/media
signing_key_path: $dir/signing.key
log_config: $here/log.yaml
YAML
    "$py" -m synapse.app.homeserver -c "$here/homeserver.yaml" -c "$dir/runtime.yaml" \
        --generate-missing-configs >/dev/null 2>"$dir/generate.log"
    "$py" -m synapse.app.homeserver -c "$here/homeserver.yaml" -c "$dir/runtime.yaml" \
        >"$dir/stdout.log" 2>&1 &
    echo $! > "$pidfile"
    for _ in $(seq 1 300); do
        if "$py" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/_matrix/client/versions', timeout=1)" 2>/dev/null; then
            echo "synapse on 127.0.0.1:$port (pid $(cat "$pidfile"))"
            exit 0
        fi
        kill -0 "$(cat "$pidfile")" 2>/dev/null || break
        sleep 0.1
    done
    echo "synapse did not start; its log:" >&2
    cat "$dir/generate.log" "$dir/stdout.log" >&2 || true
    exit 1
    ;;
stop)
    if [ -f "$pidfile" ]; then
        pid="$(cat "$pidfile")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    fi
    ;;
register)
    port="$(cat "$dir/port" 2>/dev/null || echo 8008)"
    "$venv/bin/register_new_matrix_user" -c "$here/homeserver.yaml" -u "$2" -p "$3" \
        --no-admin "http://127.0.0.1:$port"
    ;;
*)
    echo "usage: $0 start [PORT] | stop | register USER PASSWORD" >&2
    exit 2
    ;;
esac

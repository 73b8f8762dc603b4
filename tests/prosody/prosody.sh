#!/usr/bin/env bash
# Starts or stops the test Prosody on 127.0.0.1 with fresh data.
#   tests/prosody/prosody.sh start [PORT]   # prints "prosody on 127.0.0.1:PORT (pid N)"
#   tests/prosody/prosody.sh stop
#   tests/prosody/prosody.sh register USER PASSWORD
# State lives in $IM_PROSODY_DIR (default /tmp/im-prosody); the server is stopped by its PID.
# IM_PROSODY_FAKETIME_FILE (optional, needs libfaketime) lets tests move the server's clock.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export IM_PROSODY_DIR="${IM_PROSODY_DIR:-/tmp/im-prosody}"
cfg="$here/prosody.cfg.lua"
case "${1:-}" in
start)
    export IM_PROSODY_PORT="${2:-5222}"
    if [ -f "$IM_PROSODY_DIR/prosody.pid" ] && kill -0 "$(cat "$IM_PROSODY_DIR/prosody.pid")" 2>/dev/null; then
        echo "prosody already running (pid $(cat "$IM_PROSODY_DIR/prosody.pid"))" >&2
        exit 1
    fi
    rm -rf "$IM_PROSODY_DIR"
    mkdir -p "$IM_PROSODY_DIR/data" "$IM_PROSODY_DIR/certs"
    echo "$IM_PROSODY_PORT" > "$IM_PROSODY_DIR/port"
    # With IM_PROSODY_FAKETIME_FILE, the server's wall clock is what that file says (a
    # libfaketime offset such as "-15d", re-read on every call): tests move it to store
    # messages in the past, so history windows of weeks can be read back through MAM.
    launcher=()
    if [ -n "${IM_PROSODY_FAKETIME_FILE:-}" ]; then
        lib="$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -n 1)"
        if [ -z "$lib" ]; then
            echo "IM_PROSODY_FAKETIME_FILE is set but libfaketime is missing (apt-get install faketime)" >&2
            exit 1
        fi
        [ -f "$IM_PROSODY_FAKETIME_FILE" ] || echo "+0" > "$IM_PROSODY_FAKETIME_FILE"
        launcher=(env LD_PRELOAD="$lib" FAKETIME_TIMESTAMP_FILE="$IM_PROSODY_FAKETIME_FILE"
            FAKETIME_NO_CACHE=1 DONT_FAKE_MONOTONIC=1)
    fi
    "${launcher[@]}" prosody --config "$cfg" > "$IM_PROSODY_DIR/stdout.log" 2>&1 &
    echo $! > "$IM_PROSODY_DIR/prosody.pid"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$IM_PROSODY_PORT") 2>/dev/null; then
            echo "prosody on 127.0.0.1:$IM_PROSODY_PORT (pid $(cat "$IM_PROSODY_DIR/prosody.pid"))"
            exit 0
        fi
        sleep 0.1
    done
    echo "prosody did not start; its log:" >&2
    cat "$IM_PROSODY_DIR"/*.log >&2 || true
    exit 1
    ;;
stop)
    if [ -f "$IM_PROSODY_DIR/prosody.pid" ]; then
        pid="$(cat "$IM_PROSODY_DIR/prosody.pid")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$IM_PROSODY_DIR/prosody.pid"
    fi
    ;;
register)
    export IM_PROSODY_PORT="$(cat "$IM_PROSODY_DIR/port" 2>/dev/null || echo 5222)"
    prosodyctl --config "$cfg" register "$2" im.test "$3"
    ;;
*)
    echo "usage: $0 start [PORT] | stop | register USER PASSWORD" >&2
    exit 2
    ;;
esac

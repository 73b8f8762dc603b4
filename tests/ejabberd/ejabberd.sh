#!/usr/bin/env bash
# Starts or stops the test ejabberd on 127.0.0.1 with fresh data.
#   tests/ejabberd/ejabberd.sh start [PORT]   # (default 5322) prints "ejabberd on 127.0.0.1:PORT (pid N)"
#   tests/ejabberd/ejabberd.sh stop
#   tests/ejabberd/ejabberd.sh register USER PASSWORD
# State (config, spool, logs) lives in $IM_EJABBERD_DIR (default /tmp/im-ejabberd); the admin
# API listens on PORT+1 (IM_EJABBERD_API_PORT overrides), on 127.0.0.1 only. The Erlang node is
# named after the port (IM_EJABBERD_NODE overrides), so two instances do not clash. The server
# runs as the `ejabberd` user (ejabberdctl switches to it), so the directory is chowned to it.
# IM_EJABBERDCTL (default: ejabberdctl) is the control command.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${IM_EJABBERD_DIR:-/tmp/im-ejabberd}"
ctl="${IM_EJABBERDCTL:-ejabberdctl}"
domain="im.test"

# The same flags on every call: an empty ctl config (Debian's /etc/default/ejabberd would force
# its own config path back), our config, spool, logs and node.
flags() {
    local node
    node="$(cat "$dir/node")"
    echo --ctl-config "$dir/ctl.cfg" --config "$dir/ejabberd.yml" --spool "$dir/spool" \
        --logs "$dir/logs" --node "$node"
}

# POSTs JSON $2 to the admin API's command $1 and prints the HTTP answer (plain HTTP over
# bash's /dev/tcp: no HTTP client needed; 10 s at most).
api() {
    local port
    port="$(cat "$dir/api_port" 2>/dev/null || echo 5323)"
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    LC_ALL=C printf 'POST /api/%s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
        "$1" "$(LC_ALL=C; echo "${#2}")" "$2" >&3
    timeout 10 cat <&3 || echo "HTTP/1.0 000 no answer from the admin API on $port"
    exec 3<&-
}

case "${1:-}" in
start)
    port="${2:-5322}"
    api_port="${IM_EJABBERD_API_PORT:-$((port + 1))}"
    node="${IM_EJABBERD_NODE:-im-ejabberd-$port@localhost}"
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        echo "ejabberd already running (pid $(cat "$dir/pid"))" >&2
        exit 1
    fi
    rm -rf "$dir"
    mkdir -p "$dir/spool" "$dir/logs"
    : > "$dir/ctl.cfg"
    echo "$port" > "$dir/port"
    echo "$api_port" > "$dir/api_port"
    echo "$node" > "$dir/node"
    sed -e "s/@C2S_PORT@/$port/" -e "s/@API_PORT@/$api_port/" "$here/ejabberd.yml" > "$dir/ejabberd.yml"
    if id ejabberd >/dev/null 2>&1; then
        chown -R ejabberd: "$dir"
    fi
    # ejabberdctl starts Erlang's port mapper (epmd) when none runs; then it is ours to stop.
    epmd_before="$(pgrep -x epmd || true)"
    # shellcheck disable=SC2046
    "$ctl" $(flags) start
    deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null \
        && (exec 3<>"/dev/tcp/127.0.0.1/$api_port") 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ] || grep -qs "Failed to start" "$dir"/logs/*.log; then
            echo "ejabberd did not start (60 s at most); its log:" >&2
            cat "$dir"/logs/*.log >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    # The node's OS pid (beam.smp), for stopping by PID if ejabberdctl cannot.
    pid="$(pgrep -u ejabberd -f -- "-sname ${node%@*}|-name ${node}" | head -n 1 || true)"
    echo "$pid" > "$dir/pid"
    if [ -z "$epmd_before" ]; then
        pgrep -x epmd > "$dir/epmd_pid" || true
    fi
    echo "ejabberd on 127.0.0.1:$port, admin API 127.0.0.1:$api_port (pid ${pid:-?})"
    ;;
stop)
    [ -f "$dir/node" ] || exit 0
    # shellcheck disable=SC2046
    timeout 30 "$ctl" $(flags) stop >/dev/null 2>&1 || true
    if [ -s "$dir/pid" ]; then
        pid="$(cat "$dir/pid")"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid"
    # The epmd this script started, once no Erlang node is registered with it any more.
    if [ -s "$dir/epmd_pid" ]; then
        epmd_pid="$(cat "$dir/epmd_pid")"
        epmd_bin="$(readlink -f "/proc/$epmd_pid/exe" 2>/dev/null || true)"
        if [ -n "$epmd_bin" ] && ! "$epmd_bin" -names 2>/dev/null | grep -q "^name "; then
            kill "$epmd_pid" 2>/dev/null || true
        fi
        rm -f "$dir/epmd_pid"
    fi
    ;;
register)
    # Through the admin API (no Erlang start per account); an existing account gets the new
    # password, as `prosodyctl register` does.
    body="$(printf '{"user":"%s","host":"%s","password":"%s"}' "$2" "$domain" "$3")"
    out="$(api register "$body")"
    if grep -q "already registered" <<< "$out"; then
        body="$(printf '{"user":"%s","host":"%s","newpass":"%s"}' "$2" "$domain" "$3")"
        out="$(api change_password "$body")"
    fi
    status="$(head -n 1 <<< "$out" | cut -d' ' -f2)"
    if [ "$status" != 200 ]; then
        echo "register $2 failed ($status): $(tail -n 1 <<< "$out")" >&2
        exit 1
    fi
    ;;
*)
    echo "usage: $0 start [PORT] | stop | register USER PASSWORD" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Starts or stops a private PostgreSQL cluster on 127.0.0.1 with fresh data, for the archive's
# PostgreSQL store (issue 23).
#   tests/postgres/postgres.sh start [PORT]   # (default 5433) prints "postgres on 127.0.0.1:PORT (pid N)"
#   tests/postgres/postgres.sh stop
#   tests/postgres/postgres.sh url            # the connection URL the tests take (IM_POSTGRES_URL)
#   tests/postgres/postgres.sh down           # stops the server, keeping its data (a restart's first half)
#   tests/postgres/postgres.sh up             # starts it again on the same data and port
# The cluster lives in $IM_POSTGRES_DIR (default /tmp/im-postgres): initdb there (trust
# authentication, superuser `postgres`, listening on 127.0.0.1 only, its socket in the same
# directory), never the distribution's own cluster. Run as root, the server runs as the
# `postgres` user (PostgreSQL refuses to run as root). IM_POSTGRES_BIN overrides the directory
# of initdb/pg_ctl (default: Debian's newest /usr/lib/postgresql/*/bin).
set -euo pipefail
dir="${IM_POSTGRES_DIR:-/tmp/im-postgres}"
bin="${IM_POSTGRES_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "no PostgreSQL server found (install Debian's postgresql, or set IM_POSTGRES_BIN)" >&2
    exit 1
fi

# Runs a server command as the cluster's owner.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "${1:-}" in
start)
    port="${2:-5433}"
    if [ -f "$dir/data/postmaster.pid" ] && kill -0 "$(head -n 1 "$dir/data/postmaster.pid")" 2>/dev/null; then
        echo "postgres already running (pid $(head -n 1 "$dir/data/postmaster.pid"))" >&2
        exit 1
    fi
    rm -rf "$dir"
    mkdir -p "$dir/data"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    # Fast and small: a test cluster, fsync kept on (the archive's durability is under test).
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
        -o "-k $dir -p $port -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=128MB" \
        start >/dev/null
    echo "$port" > "$dir/port"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/port"
    echo "postgres on 127.0.0.1:$port (pid $(head -n 1 "$dir/data/postmaster.pid"))"
    ;;
stop)
    [ -f "$dir/data/postmaster.pid" ] || exit 0
    pid="$(head -n 1 "$dir/data/postmaster.pid")"
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    # By PID: wait until the postmaster is gone.
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || exit 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    ;;
url)
    echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
    ;;
down)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
    ;;
up)
    port="$(cat "$dir/port")"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
        -o "-k $dir -p $port -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=128MB" \
        start >/dev/null
    ;;
*)
    echo "usage: $0 start [PORT] | stop | url | down | up" >&2
    exit 2
    ;;
esac

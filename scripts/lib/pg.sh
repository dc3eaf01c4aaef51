# shellcheck shell=bash
# Throwaway PostgreSQL 15 + PgBouncer (transaction mode) on loopback, for tests and benchmarks.
# Source this file, call pg_start, and pg_stop when done (or trap it on EXIT).
# Exports EMBQ_TEST_DATABASE_URL, EMBQ_TEST_PGBOUNCER_URL, EMBQ_TEST_PGDATA, EMBQ_TEST_PG_BIN.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

_as_pg() {
  # initdb and pgbouncer refuse to run as root; use the postgres account there.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

pg_install() {
  local missing=()
  [ -x "$PG_BIN/initdb" ] || missing+=(postgresql-15)
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "missing ${missing[*]}: install them (apt-get install ${missing[*]})" >&2
      return 1
    fi
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  pgvector_install
}

# pgvector from ../shared/vendor (no registry carries it). Its script takes a present pg_config
# for the server headers, which ship apart (postgresql-server-dev-15): install those first.
pgvector_install() {
  local share vendor
  share=$("$PG_BIN/pg_config" --sharedir 2>/dev/null || true)
  [ -n "$share" ] && [ -f "$share/extension/vector.control" ] && return 0
  vendor="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/../shared/vendor"
  if [ ! -f "$vendor/install-pgvector.sh" ]; then
    echo "pgvector is not installed and $vendor/install-pgvector.sh is missing" >&2
    return 1
  fi
  if [ ! -f "$("$PG_BIN/pg_config" --includedir-server 2>/dev/null)/postgres.h" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "pgvector needs the server headers: apt-get install postgresql-server-dev-15" >&2
      return 1
    fi
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-server-dev-15 >/dev/null
  fi
  bash "$vendor/install-pgvector.sh" "$PG_BIN/pg_config"
}

pg_start() {
  pg_install || return 1
  EMBQ_PG_DIR=$(mktemp -d /tmp/embq-pg.XXXXXX)
  chmod 755 "$EMBQ_PG_DIR"
  [ "$(id -u)" = 0 ] && chown postgres: "$EMBQ_PG_DIR"
  local port bport
  port=$(_free_port)
  bport=$(_free_port)
  _as_pg "$PG_BIN/initdb" -D "$EMBQ_PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-instructions >"$EMBQ_PG_DIR/initdb.log" 2>&1 || {
    cat "$EMBQ_PG_DIR/initdb.log" >&2
    return 1
  }
  cat >>"$EMBQ_PG_DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$EMBQ_PG_DIR'
max_connections = 300
shared_buffers = 256MB
CONF
  _as_pg "$PG_BIN/pg_ctl" -D "$EMBQ_PG_DIR/data" -l "$EMBQ_PG_DIR/postgres.log" -w -t 60 start >/dev/null || {
    cat "$EMBQ_PG_DIR/postgres.log" >&2
    return 1
  }
  # embq_owner: the non-superuser owner of the Supabase-like test databases.
  printf '"postgres" ""\n"embq_owner" ""\n' >"$EMBQ_PG_DIR/userlist.txt"
  cat >"$EMBQ_PG_DIR/pgbouncer.ini" <<CONF
[databases]
* = host=127.0.0.1 port=$port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = trust
auth_file = $EMBQ_PG_DIR/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 40
ignore_startup_parameters = extra_float_digits
pidfile = $EMBQ_PG_DIR/pgbouncer.pid
logfile = $EMBQ_PG_DIR/pgbouncer.log
CONF
  [ "$(id -u)" = 0 ] && chown postgres: "$EMBQ_PG_DIR"/*.txt "$EMBQ_PG_DIR"/*.ini
  local pgb
  pgb=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
  _as_pg "$pgb" -d "$EMBQ_PG_DIR/pgbouncer.ini" || {
    cat "$EMBQ_PG_DIR/pgbouncer.log" >&2
    return 1
  }
  export EMBQ_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export EMBQ_TEST_PGBOUNCER_URL="postgres://postgres@127.0.0.1:$bport/postgres"
  export EMBQ_TEST_PGDATA="$EMBQ_PG_DIR/data"
  export EMBQ_TEST_PG_BIN="$PG_BIN"
  export EMBQ_PG_DIR
  echo "PostgreSQL on 127.0.0.1:$port, PgBouncer (transaction mode) on 127.0.0.1:$bport" >&2
}

pg_stop() {
  [ -n "${EMBQ_PG_DIR:-}" ] || return 0
  if [ -f "$EMBQ_PG_DIR/pgbouncer.pid" ]; then
    kill "$(cat "$EMBQ_PG_DIR/pgbouncer.pid")" 2>/dev/null || true
  fi
  _as_pg "$PG_BIN/pg_ctl" -D "$EMBQ_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$EMBQ_PG_DIR"
  EMBQ_PG_DIR=
}

# A new, empty database on the server pg_start started; prints its URL.
fresh_db() {
  local db
  db="bench_$(date +%s%N)"
  psql -q "$EMBQ_TEST_DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
  echo "${EMBQ_TEST_DATABASE_URL%/*}/$db"
}

# Drops a database fresh_db made, given its URL (WITH (FORCE): a peer may leave a connection behind).
drop_db() { psql -q "$EMBQ_TEST_DATABASE_URL" -c "DROP DATABASE ${1##*/} WITH (FORCE)" >/dev/null; }

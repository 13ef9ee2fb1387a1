#!/usr/bin/env bash
# The scale-out stack in one command: redis-server and PostgreSQL (Debian's,
# on 127.0.0.1, their files under one local directory) and N troupe
# instances on ports 8080, 8081, ... sharing them (TROUPE_QUEUE, TROUPE_STORE).
# Ctrl-C (or SIGTERM) stops the instances first (they drain and acknowledge
# what they hold), then PostgreSQL and Redis. Running it again reuses the
# directory: the streams (append-only file) and the database survive.
#
#   scripts/stack.sh [N]              # N instances, default 2
#
# Environment (all optional):
#   STACK_DIR=./data/stack  BASE_PORT=8080  REDIS_PORT=6379  PG_PORT=5432
#   TROUPE_RUNTIME=deno|bun   APPENDFSYNC=everysec|always
#   and any TROUPE_* setting, passed on to every instance (TROUPE_TOKEN, ...).
#
# Needs: redis-server (apt-get install redis-server), PostgreSQL 15
# (apt-get install postgresql), deno or bun. As root, PostgreSQL runs as the
# `postgres` user (it refuses root), through setpriv.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-2}
STACK_DIR=${STACK_DIR:-./data/stack}
BASE_PORT=${BASE_PORT:-8080}
REDIS_PORT=${REDIS_PORT:-6379}
PG_PORT=${PG_PORT:-5432}
RUNTIME=${TROUPE_RUNTIME:-deno}
APPENDFSYNC=${APPENDFSYNC:-everysec}

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number (got \"$N\")"
command -v redis-server >/dev/null || die "redis-server is missing: apt-get install redis-server"
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] || die "PostgreSQL is missing: apt-get install postgresql"
command -v "$RUNTIME" >/dev/null || die "$RUNTIME is missing"

mkdir -p "$STACK_DIR"
STACK_DIR=$(cd "$STACK_DIR" && pwd)
mkdir -p "$STACK_DIR/redis" "$STACK_DIR/pg"

# PostgreSQL will not run as root: run its binaries as `postgres`.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    "$@"
  fi
}

# Every child runs in a session of its own (setsid), so Ctrl-C in the terminal reaches only
# this script, which stops them in order: troupe first (it still needs Redis and PostgreSQL to
# commit and acknowledge what it holds), then PostgreSQL and Redis.
pids=()
cleanup() {
  trap - INT TERM EXIT
  log "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -f "$STACK_DIR/pg/data/postmaster.pid" ] &&
    as_pg "$PG_BIN/pg_ctl" -D "$STACK_DIR/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  if [ -n "${REDIS_PID:-}" ]; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  log "stopped"
}
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

# Redis: the append-only file keeps acknowledged (202) records across a restart.
# everysec may lose the last second on a power cut (never on a crash of redis-server
# alone); APPENDFSYNC=always syncs each write, at a cost in throughput.
setsid redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STACK_DIR/redis" \
  --save '' --appendonly yes --appendfsync "$APPENDFSYNC" --daemonize no \
  --logfile "$STACK_DIR/redis/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do
  redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
  kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server did not start: see $STACK_DIR/redis/redis.log"
  sleep 0.1
done
log "redis://127.0.0.1:$REDIS_PORT (appendfsync $APPENDFSYNC)"

# PostgreSQL: a cluster of its own under $STACK_DIR/pg, password auth on 127.0.0.1.
PW_FILE="$STACK_DIR/pg/password"
if [ ! -f "$STACK_DIR/pg/data/PG_VERSION" ]; then
  head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$PW_FILE"
  chmod 600 "$PW_FILE"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$STACK_DIR/pg"
  as_pg "$PG_BIN/initdb" -D "$STACK_DIR/pg/data" -U troupe --pwfile="$PW_FILE" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >"$STACK_DIR/pg/initdb.log" ||
    die "initdb failed: see $STACK_DIR/pg/initdb.log"
fi
as_pg "$PG_BIN/pg_ctl" -D "$STACK_DIR/pg/data" -l "$STACK_DIR/pg/postgres.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $STACK_DIR/pg" start >/dev/null ||
  die "PostgreSQL did not start: see $STACK_DIR/pg/postgres.log"
as_pg "$PG_BIN/psql" -h "$STACK_DIR/pg" -p "$PG_PORT" -U troupe -d postgres -Atq \
  -c "SELECT 1 FROM pg_database WHERE datname = 'troupe'" | grep -q 1 ||
  as_pg "$PG_BIN/createdb" -h "$STACK_DIR/pg" -p "$PG_PORT" -U troupe troupe
PW=$(cat "$PW_FILE")
log "postgres://troupe:***@127.0.0.1:$PG_PORT/troupe (password in $PW_FILE)"

export TROUPE_QUEUE="redis://127.0.0.1:$REDIS_PORT"
export TROUPE_STORE="postgres://troupe:$PW@127.0.0.1:$PG_PORT/troupe"
for i in $(seq 0 $((N - 1))); do
  port=$((BASE_PORT + i))
  data="$STACK_DIR/troupe-$port"
  mkdir -p "$data"
  if [ "$RUNTIME" = bun ]; then
    setsid bun main.ts serve --port "$port" --data "$data" >>"$data/troupe.log" 2>&1 &
  else
    setsid deno run -A main.ts serve --port "$port" --data "$data" >>"$data/troupe.log" 2>&1 &
  fi
  pids+=($!)
done
for i in $(seq 0 $((N - 1))); do
  port=$((BASE_PORT + i))
  for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "${pids[$i]}" 2>/dev/null || die "troupe on :$port exited: see $STACK_DIR/troupe-$port/troupe.log"
    sleep 0.1
  done
  log "troupe http://127.0.0.1:$port (logs in $STACK_DIR/troupe-$port/troupe.log)"
done
log "ready: $N instance(s); Ctrl-C stops everything"
wait -n "${pids[@]}" || true
log "an instance exited"

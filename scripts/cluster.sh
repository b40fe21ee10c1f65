#!/usr/bin/env bash
# A local multi-node Ray cluster on this machine, as a user's remote cluster would be:
#   scripts/cluster.sh up       # PostgreSQL + a Ray head and two worker nodes (make cluster)
#   scripts/cluster.sh deploy   # serve deploy configs/cluster.yaml through the dashboard
#   scripts/cluster.sh status   # ray status + serve status
#   scripts/cluster.sh down     # stop it all (make cluster-down)
#
# Nodes: the head (num-cpus 0, resource `head`: the controller, the writer, the limiter),
# `llm` (resource `llm_node`: stands in for a GPU node; the LLM replicas land here) and
# `cpu` (resource `cpu_node`). Each is its own raylet with its own processes; they share
# this machine's files, so the model directory, the governance artifacts and var/ are a
# shared path here, as a ReadOnlyMany/ReadWriteMany volume is on KubeRay (README).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
STATE=${PROMETHIOS_CLUSTER_DIR:-$REPO/var/cluster}
RAY=$REPO/.venv/bin/ray
SERVE=$REPO/.venv/bin/serve
GCS_PORT=${PROMETHIOS_CLUSTER_GCS_PORT:-6390}
DASH_PORT=${PROMETHIOS_CLUSTER_DASHBOARD_PORT:-8265}
PG_PORT=${PROMETHIOS_CLUSTER_PG_PORT:-55432}
# Ray's token authentication, one token for every node (and for `serve deploy`).
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$STATE/ray-token
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/pg_ctl" ] && echo "$d"; done | sort -V | tail -1
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

database_url() { echo "postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/promethios"; }

up() {
  mkdir -p "$STATE"
  [ -s "$RAY_AUTH_TOKEN_PATH" ] || python3 -c 'import secrets; print(secrets.token_hex(32))' >"$RAY_AUTH_TOKEN_PATH"
  chmod 600 "$RAY_AUTH_TOKEN_PATH"
  local bin; bin=$(pg_bin)
  [ -n "$bin" ] || { echo "PostgreSQL binaries not found (apt-get install postgresql)" >&2; exit 1; }
  if [ ! -d "$STATE/pg/data" ]; then
    mkdir -p "$STATE/pg"
    [ "$(id -u)" = 0 ] && chown postgres "$STATE/pg"
    as_postgres "$bin/initdb" -D "$STATE/pg/data" -A trust -U postgres >"$STATE/pg-init.log"
  fi
  if ! as_postgres "$bin/pg_ctl" -D "$STATE/pg/data" status >/dev/null 2>&1; then
    as_postgres "$bin/pg_ctl" -D "$STATE/pg/data" -l "$STATE/pg/server.log" -w \
      -o "-p $PG_PORT -h 127.0.0.1 -k $STATE/pg" start >/dev/null
  fi
  as_postgres "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'promethios'" | grep -q 1 \
    || as_postgres "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres promethios
  echo "PostgreSQL on 127.0.0.1:$PG_PORT"
  # The embedded model and the schema before any node starts (a replica never builds them).
  "$REPO/.venv/bin/python" -m serve_app.model.build >/dev/null
  DATABASE_URL=$(database_url) "$REPO/.venv/bin/promethios" db upgrade >/dev/null
  export DATABASE_URL; DATABASE_URL=$(database_url)
  "$RAY" start --head --port "$GCS_PORT" --dashboard-port "$DASH_PORT" --num-cpus 0 \
    --resources '{"head": 1}' --temp-dir "$STATE/ray" --disable-usage-stats >"$STATE/head.log" 2>&1
  "$RAY" start --address "127.0.0.1:$GCS_PORT" --num-cpus 2 --resources '{"llm_node": 1}' \
    --disable-usage-stats >"$STATE/node-llm.log" 2>&1
  "$RAY" start --address "127.0.0.1:$GCS_PORT" --num-cpus 2 --resources '{"cpu_node": 1}' \
    --disable-usage-stats >"$STATE/node-cpu.log" 2>&1
  echo "Ray: head + 2 worker nodes; dashboard http://127.0.0.1:$DASH_PORT"
  echo "next: scripts/cluster.sh deploy   (serve deploy configs/cluster.yaml)"
}

deploy() {
  "$SERVE" deploy configs/cluster.yaml --address "http://127.0.0.1:$DASH_PORT"
  local deadline=$((SECONDS + ${PROMETHIOS_CLUSTER_DEPLOY_TIMEOUT_S:-600}))
  until "$SERVE" status --address "http://127.0.0.1:$DASH_PORT" 2>/dev/null | grep -q "status: RUNNING"; do
    if [ $SECONDS -gt $deadline ]; then
      "$SERVE" status --address "http://127.0.0.1:$DASH_PORT" || true
      echo "the application is not RUNNING in time" >&2; exit 1
    fi
    sleep 5
  done
  "$SERVE" status --address "http://127.0.0.1:$DASH_PORT"
}

status() {
  RAY_ADDRESS=127.0.0.1:$GCS_PORT "$RAY" status || true
  "$SERVE" status --address "http://127.0.0.1:$DASH_PORT" || true
}

# This cluster's processes only: its GCS and raylets (found by the GCS address, on any of
# this machine's IPs, or the
# head's temp dir in their command lines) and everything under them (workers, agents,
# vLLM's engine). `ray stop` would stop every Ray process of this user on the machine.
tree() { local p=$1 c; echo "$p"; for c in $(pgrep -P "$p" || true); do tree "$c"; done; }

stop_ray() {
  local roots pids="" r
  roots=$(pgrep -f -- "([0-9]{1,3}\.){3}[0-9]{1,3}:$GCS_PORT( |$)|:$GCS_PORT --|--gcs_server_port=$GCS_PORT|$STATE/ray" || true)
  for r in $roots; do [ "$r" != "$$" ] && pids="$pids $(tree "$r")"; done
  [ -z "${pids// /}" ] && return 0
  kill -TERM $pids 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    kill -0 $pids 2>/dev/null || return 0
    sleep 1
  done
  kill -KILL $pids 2>/dev/null || true
}

down() {
  stop_ray
  local bin; bin=$(pg_bin)
  if [ -n "$bin" ] && [ -d "$STATE/pg/data" ]; then
    as_postgres "$bin/pg_ctl" -D "$STATE/pg/data" -m fast stop >/dev/null 2>&1 || true
  fi
  echo "cluster stopped (state kept in $STATE; rm -rf it for a fresh one)"
}

case "${1:-}" in
  up) up ;;
  deploy) deploy ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up|deploy|status|down" >&2; exit 2 ;;
esac

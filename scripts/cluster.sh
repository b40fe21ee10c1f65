#!/usr/bin/env bash
# A local multi-node Ray cluster on this machine, as a user's remote cluster would be:
#   scripts/cluster.sh up       # PostgreSQL + a Ray head and two worker nodes (make cluster)
#   scripts/cluster.sh deploy   # serve deploy configs/cluster.yaml through the dashboard
#   scripts/cluster.sh status   # ray status + serve status
#   scripts/cluster.sh down     # stop it all (make cluster-down)
#   scripts/cluster.sh kill-node llm|cpu|head   # SIGKILL a node's Ray processes (node loss)
#   scripts/cluster.sh node-up llm|cpu     # start that worker node again (it rejoins)
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
CLIENT_PORT=${PROMETHIOS_CLUSTER_CLIENT_PORT:-10001}
CONFIG=${PROMETHIOS_CLUSTER_CONFIG:-configs/cluster.yaml}
# Ray's token authentication, one token for every node (and for `serve deploy`).
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$STATE/ray-token
# Without GCS fault tolerance a lost head is the cluster's end: worker nodes stop after
# trying to reach it this long (Ray's default: 60 s).
export RAY_gcs_rpc_server_reconnect_timeout_s=${RAY_gcs_rpc_server_reconnect_timeout_s:-20}
# The Serve proxy answers a lost replica's requests in the API's error shape (proxy_guard.py).
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy_guard:middlewares
# Serve's calls between deployments (and the proxy's) over gRPC: docs/benchmarks.md.
export RAY_SERVE_USE_GRPC_BY_DEFAULT=${RAY_SERVE_USE_GRPC_BY_DEFAULT:-1}
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
  # The embedded model, the governance encoder's export and the schema before any node
  # starts (a replica never builds them; two scorers would race on the export).
  "$REPO/.venv/bin/python" -m serve_app.model.build >/dev/null
  "$REPO/.venv/bin/python" -m serve_app.governance.semantic >/dev/null  # the scorer's encoder export
  DATABASE_URL=$(database_url) "$REPO/.venv/bin/promethios" db upgrade >/dev/null
  export DATABASE_URL; DATABASE_URL=$(database_url)
  # How soon the GCS declares a silent node dead (Ray's default: 3 s x 5 missed checks, and
  # until then requests routed to its replicas wait): a check a second, 5 missed.
  RAY_health_check_period_ms=${RAY_health_check_period_ms:-1000} \
  RAY_health_check_timeout_ms=${RAY_health_check_timeout_ms:-1000} \
  "$RAY" start --head --port "$GCS_PORT" --dashboard-port "$DASH_PORT" --num-cpus 0 \
    --ray-client-server-port "$CLIENT_PORT" \
    --resources '{"head": 1}' --temp-dir "$STATE/ray" --disable-usage-stats >"$STATE/head.log" 2>&1
  node_up llm
  node_up cpu
  echo "Ray: head + 2 worker nodes; dashboard http://127.0.0.1:$DASH_PORT"
  echo "next: scripts/cluster.sh deploy   (serve deploy configs/cluster.yaml)"
}

# A worker node: `llm` carries the resource `llm_node` (the GPU node's stand-in), `cpu`
# carries `cpu_node`; 2 CPUs each. The node's environment (DATABASE_URL) is its workers'.
node_up() {
  case "$1" in llm|cpu) ;; *) echo "node: llm or cpu" >&2; exit 2 ;; esac
  export DATABASE_URL; DATABASE_URL=${DATABASE_URL:-$(database_url)}
  "$RAY" start --address "127.0.0.1:$GCS_PORT" --num-cpus 2 --resources "{\"$1_node\": 1}" \
    --disable-usage-stats >"$STATE/node-$1.log" 2>&1
}

# Node loss: SIGKILL, at once, the node's raylet and every process it started (its
# workers, replicas included, and agents), as a crashed machine or `ray stop --force`
# would. Processes the replicas themselves started (vLLM's engine) are not signalled:
# they must end by themselves (serve_app/engine/lifeline.py); the test checks they do.
# `head` also takes the GCS, the dashboard and the autoscaler monitor: without GCS fault
# tolerance (it needs Redis) the cluster ends with them (README).
kill_node() {
  local raylet pids marker
  case "$1" in llm|cpu) marker="$1_node" ;; head) marker=head ;; *) echo "node: llm, cpu or head" >&2; exit 2 ;; esac
  raylet=$(pgrep -f -- "--static_resource_list=$marker,.*--resource_dir=$STATE/ray/" || true)
  [ -n "$raylet" ] || { echo "no $1 node of this cluster is running" >&2; exit 1; }
  pids="$raylet $(pgrep -P "$raylet" | tr '\n' ' ')"
  if [ "$1" = head ]; then
    pids="$pids $(pgrep -f -- "gcs_server .*--log_dir=$STATE/ray/|dashboard/dashboard.py .*$STATE/ray|autoscaler/_private/monitor.py .*$STATE/ray" | tr '\n' ' ')"
  fi
  kill -KILL $pids 2>/dev/null || true
  echo "killed node $1: $pids"
}

deploy() {
  "$SERVE" deploy "$CONFIG" --address "http://127.0.0.1:$DASH_PORT"
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
  kill-node) kill_node "${2:-}" ;;
  node-up) node_up "${2:-}" ;;
  *) echo "usage: $0 up|deploy|status|down|kill-node NODE|node-up NODE" >&2; exit 2 ;;
esac

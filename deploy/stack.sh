#!/usr/bin/env bash
# A whole local Prefect stack for accountability: a server on 127.0.0.1 (SQLite), the cpu and gpu
# process work pools, the deployments of deploy/prefect.yaml, and one worker per pool.
#   deploy/stack.sh up      start it (state, logs and pids in $STACK_DIR, default .stack/)
#   deploy/stack.sh status  which of its processes run, and whether the server answers
#   deploy/stack.sh down    stop every process it started
# Settings (environment): PORT (4200), STACK_DIR (.stack), ACCOUNTABILITY_REPORTS (reports),
# ACCOUNTABILITY_GPUS (0: the CUDA devices the gpu worker's runs see), GPU_COUNT (1: the gpu pool's limit),
# PREFECT_SERVER_API_AUTH_STRING (user:password: the server then answers 401 without it).
set -Eeuo pipefail  # -E: the ERR trap of `up` fires inside the functions it calls
cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=${PORT:-4200}
STACK_DIR=$(mkdir -p "${STACK_DIR:-.stack}" && cd "${STACK_DIR:-.stack}" && pwd)
PREFECT=${PREFECT:-$ROOT/.venv/bin/prefect}
export PREFECT_HOME=${PREFECT_HOME:-$STACK_DIR/prefect-home}
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export ACCOUNTABILITY_ROOT=$ROOT
export ACCOUNTABILITY_REPORTS=$(mkdir -p "${ACCOUNTABILITY_REPORTS:-reports}" && cd "${ACCOUNTABILITY_REPORTS:-reports}" && pwd)
export ACCOUNTABILITY_GPUS=${ACCOUNTABILITY_GPUS:-0}
if [ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]; then  # a protected API: this script and its workers log in
  export PREFECT_API_AUTH_STRING=${PREFECT_API_AUTH_STRING:-$PREFECT_SERVER_API_AUTH_STRING}
fi
CURL_AUTH=()
[ -n "${PREFECT_API_AUTH_STRING:-}" ] && CURL_AUTH=(-u "$PREFECT_API_AUTH_STRING")

NAMES=(server worker-cpu worker-gpu)

start() {  # start NAME CMD...: in its own process group, pid in $STACK_DIR/NAME.pid; the log is appended to
  local name=$1; shift
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) stack.sh up: $*" >> "$STACK_DIR/$name.log"
  setsid "$@" >> "$STACK_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$STACK_DIR/$name.pid"
}

alive() {  # alive NAME: its process group is running
  local pidfile=$STACK_DIR/$1.pid
  [ -f "$pidfile" ] && kill -0 -- "-$(cat "$pidfile")" 2> /dev/null
}

port_taken() {
  (exec 3<> "/dev/tcp/127.0.0.1/$PORT") 2> /dev/null
}

hint_env() {  # the variables a shell needs to talk to this stack
  local line="PREFECT_API_URL=$PREFECT_API_URL"
  [ -n "${PREFECT_API_AUTH_STRING:-}" ] && line="$line PREFECT_API_AUTH_STRING='<user:password>'"
  echo "$line"
}

up() {
  for name in "${NAMES[@]}"; do
    if alive "$name"; then
      echo "stack.sh: already running ($name, pid $(cat "$STACK_DIR/$name.pid")): 'deploy/stack.sh status', or 'down' first" >&2
      exit 1
    fi
  done
  if port_taken; then
    echo "stack.sh: port $PORT on 127.0.0.1 is taken by another program: set PORT=... to use another" >&2
    exit 1
  fi
  trap 'echo "stack.sh up failed: stopping what it started (logs in $STACK_DIR)" >&2; down' ERR
  start server "$PREFECT" server start --host 127.0.0.1 --port "$PORT"
  for _ in $(seq 1 120); do
    curl -sf "${CURL_AUTH[@]}" "$PREFECT_API_URL/health" > /dev/null && break
    sleep 1
  done
  curl -sf "${CURL_AUTH[@]}" "$PREFECT_API_URL/health" > /dev/null || { echo "server did not start: see $STACK_DIR/server.log" >&2; down; exit 1; }
  for pool in cpu gpu; do
    "$PREFECT" work-pool inspect "$pool" > /dev/null 2>&1 || "$PREFECT" work-pool create "$pool" --type process > /dev/null
  done
  "$PREFECT" work-pool set-concurrency-limit gpu "${GPU_COUNT:-1}" > /dev/null
  "$(dirname "$PREFECT")/python" deploy/deploy.py > "$STACK_DIR/deploy.log" 2>&1 \
    || { echo "deploying failed: see $STACK_DIR/deploy.log" >&2; down; exit 1; }
  start worker-cpu "$PREFECT" worker start --pool cpu --name cpu-worker
  start worker-gpu "$PREFECT" worker start --pool gpu --name gpu-worker
  trap - ERR
  echo "Prefect UI: http://127.0.0.1:$PORT  (API $PREFECT_API_URL); reports in $ACCOUNTABILITY_REPORTS"
  echo "run one now: $(hint_env) $PREFECT deployment run compliance_report/monthly"
}

status() {  # exit 0 when every process runs and the server answers, else 1
  local ok=0
  for name in "${NAMES[@]}"; do
    if alive "$name"; then echo "$name: running (pid $(cat "$STACK_DIR/$name.pid"))"; else echo "$name: stopped"; ok=1; fi
  done
  if curl -sf "${CURL_AUTH[@]}" "$PREFECT_API_URL/health" > /dev/null; then
    echo "server: answers at $PREFECT_API_URL"
    echo "use it: $(hint_env)"
  else
    echo "server: does not answer at $PREFECT_API_URL"; ok=1
  fi
  return $ok
}

down() {
  for name in worker-cpu worker-gpu server; do  # workers first: they report to the server as they stop
    local pidfile=$STACK_DIR/$name.pid
    [ -f "$pidfile" ] || continue
    local pid; pid=$(cat "$pidfile")
    kill -INT -- "-$pid" 2> /dev/null || true
    for _ in $(seq 1 30); do kill -0 -- "-$pid" 2> /dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2> /dev/null || true
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|status|down" >&2; exit 2 ;;
esac

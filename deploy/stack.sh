#!/usr/bin/env bash
# A whole local Prefect stack for accountability: a server on 127.0.0.1 (SQLite), the cpu and gpu
# process work pools, the deployments of deploy/prefect.yaml, and one worker per pool.
#   deploy/stack.sh up      start it (state, logs and pids in $STACK_DIR, default .stack/)
#   deploy/stack.sh down    stop every process it started
# Settings (environment): PORT (4200), STACK_DIR (.stack), ACCOUNTABILITY_REPORTS (reports),
# ACCOUNTABILITY_GPUS (0: the CUDA devices the gpu worker's runs see), GPU_COUNT (1: the gpu pool's limit),
# PREFECT_SERVER_API_AUTH_STRING (user:password: the server then answers 401 without it).
set -euo pipefail
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

start() {  # start NAME CMD...: in its own process group, pid in $STACK_DIR/NAME.pid
  local name=$1; shift
  setsid "$@" > "$STACK_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$STACK_DIR/$name.pid"
}

up() {
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
  echo "Prefect UI: http://127.0.0.1:$PORT  (API $PREFECT_API_URL); reports in $ACCOUNTABILITY_REPORTS"
  echo "run one now: PREFECT_API_URL=$PREFECT_API_URL $PREFECT deployment run compliance_report/monthly"
}

down() {
  for name in worker-cpu worker-gpu server; do
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
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

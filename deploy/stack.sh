#!/usr/bin/env bash
# A whole local Prefect stack for accountability: a server on 127.0.0.1 (SQLite, or PostgreSQL), the cpu and
# gpu process work pools, the deployments of deploy/prefect.yaml, one worker per pool, and a read-only HTTP
# server of the reports directory (what the UI's report links open).
#   deploy/stack.sh up      start it (state, logs and pids in $STACK_DIR, default .stack/)
#   deploy/stack.sh status  which of its processes run, and whether the server answers
#   deploy/stack.sh down    stop every process it started
# Settings (environment): PORT (4200: the UI and API), REPORTS_PORT (PORT+1: the reports), STACK_DIR (.stack),
# ACCOUNTABILITY_REPORTS (reports), ACCOUNTABILITY_GPUS (0: the CUDA devices the gpu worker's runs see),
# GPU_COUNT (1: the gpu pool's limit), PREFECT_SERVER_API_AUTH_STRING (user:password: the API and the reports
# then answer 401 without it), DATABASE (sqlite, or postgres: a PostgreSQL server of its own on 127.0.0.1,
# PG_PORT (PORT+2), its data in PG_DATA ($STACK_DIR/postgres), run as the postgres user when started by root).
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
REPORTS_PORT=${REPORTS_PORT:-$((PORT + 1))}
export ACCOUNTABILITY_REPORTS_URL=${ACCOUNTABILITY_REPORTS_URL:-http://127.0.0.1:$REPORTS_PORT}  # the runs' PDF links
if [ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]; then  # a protected API: this script and its workers log in
  export PREFECT_API_AUTH_STRING=${PREFECT_API_AUTH_STRING:-$PREFECT_SERVER_API_AUTH_STRING}
  export ACCOUNTABILITY_REPORTS_AUTH=${ACCOUNTABILITY_REPORTS_AUTH:-$PREFECT_SERVER_API_AUTH_STRING}
fi
CURL_AUTH=()
[ -n "${PREFECT_API_AUTH_STRING:-}" ] && CURL_AUTH=(-u "$PREFECT_API_AUTH_STRING")
# `status` and `down` read what `up` started (its postgres.pid), not this shell's DATABASE
if [ -z "${DATABASE:-}" ] && [ "${1:-}" != up ] && [ -f "$STACK_DIR/postgres.pid" ]; then DATABASE=postgres; fi
DATABASE=${DATABASE:-sqlite}
PG_PORT=${PG_PORT:-$((PORT + 2))}
PG_DATA=${PG_DATA:-$STACK_DIR/postgres}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2> /dev/null | sort -V | tail -n 1 || true)}
PG_AS=()  # PostgreSQL refuses to run as root: root runs it as the postgres user
[ "$(id -u)" != 0 ] || PG_AS=(runuser -u postgres --)
DATABASE_URL=  # set by start_postgres, given to the server process only

case "$DATABASE" in
  sqlite) NAMES=(server reports worker-cpu worker-gpu) ;;
  postgres) NAMES=(postgres server reports worker-cpu worker-gpu) ;;
  *) echo "stack.sh: DATABASE must be sqlite or postgres, got '$DATABASE'" >&2; exit 2 ;;
esac

start() {  # start NAME CMD...: in its own process group, pid in $STACK_DIR/NAME.pid; the log is appended to
  local name=$1; shift
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) stack.sh up: $*" >> "$STACK_DIR/$name.log"
  # A background job of a script starts with SIGINT ignored: give it back, so that `down` stops it cleanly.
  setsid env --default-signal=INT "$@" >> "$STACK_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$STACK_DIR/$name.pid"
}

alive() {  # alive NAME: its process group is running
  local pidfile=$STACK_DIR/$1.pid
  [ -f "$pidfile" ] && kill -0 -- "-$(cat "$pidfile")" 2> /dev/null
}

port_taken() {  # port_taken PORT: something on 127.0.0.1 accepts connections there
  (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null
}

start_postgres() {  # a cluster of its own in $PG_DATA (created on the first start), on 127.0.0.1:$PG_PORT only
  [ -x "$PG_BIN/postgres" ] || { echo "stack.sh: PostgreSQL not found (Debian: apt-get install postgresql)" >&2; return 1; }
  local password_file=$STACK_DIR/postgres.password
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    mkdir -p "$PG_DATA" && chmod 700 "$PG_DATA"
    [ "$(id -u)" != 0 ] || chown postgres: "$PG_DATA"
    "${PG_AS[@]}" test -w "$PG_DATA" || { echo "stack.sh: the postgres user cannot reach $PG_DATA: set PG_DATA" >&2; return 1; }
    (umask 077 && head -c 24 /dev/urandom | base64 | tr '+/' '-_' > "$password_file")
    local pwdir; pwdir=$(mktemp -d)  # initdb reads the password from a file its user alone can read
    cp "$password_file" "$pwdir/password"
    [ "$(id -u)" != 0 ] || chown -R postgres: "$pwdir"
    "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U prefect --auth=scram-sha-256 --pwfile="$pwdir/password" -E UTF8 \
      --locale=C.UTF-8 >> "$STACK_DIR/postgres.log" 2>&1 || { rm -rf "$pwdir"; return 1; }
    rm -rf "$pwdir"
  fi
  start postgres "${PG_AS[@]}" "$PG_BIN/postgres" -D "$PG_DATA" -c listen_addresses=127.0.0.1 -p "$PG_PORT" \
    -c unix_socket_directories=
  for _ in $(seq 1 60); do "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.5; done
  local password; password=$(cat "$password_file")
  PGPASSWORD=$password "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U prefect -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'prefect'" | grep -q 1 \
    || PGPASSWORD=$password "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U prefect prefect
  DATABASE_URL="postgresql+asyncpg://prefect:$password@127.0.0.1:$PG_PORT/prefect"
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
  local ports=("PORT=$PORT" "REPORTS_PORT=$REPORTS_PORT")
  [ "$DATABASE" != postgres ] || ports+=("PG_PORT=$PG_PORT")
  for setting in "${ports[@]}"; do
    if port_taken "${setting#*=}"; then
      echo "stack.sh: port ${setting#*=} on 127.0.0.1 is taken by another program: set ${setting%%=*}=... to use another" >&2
      exit 1
    fi
  done
  trap 'echo "stack.sh up failed: stopping what it started (logs in $STACK_DIR)" >&2; down' ERR
  [ "$DATABASE" != postgres ] || start_postgres
  start reports "$(dirname "$PREFECT")/accountability" serve-reports "$ACCOUNTABILITY_REPORTS" --port "$REPORTS_PORT"
  (  # the database's password goes to the server's environment alone (not to its command line, not to the workers)
    [ -z "$DATABASE_URL" ] || export PREFECT_API_DATABASE_CONNECTION_URL=$DATABASE_URL
    start server "$PREFECT" server start --host 127.0.0.1 --port "$PORT"
  )
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
  echo "Prefect UI: http://127.0.0.1:$PORT  (API $PREFECT_API_URL, database $DATABASE)"
  echo "reports: $ACCOUNTABILITY_REPORTS, served at http://127.0.0.1:$REPORTS_PORT (the runs' PDF links point to $ACCOUNTABILITY_REPORTS_URL)"
  echo "run one now: $(hint_env) $PREFECT deployment run compliance_report/monthly"
}

status() {  # exit 0 when every process runs and the server answers, else 1
  local ok=0
  for name in "${NAMES[@]}"; do
    if alive "$name"; then echo "$name: running (pid $(cat "$STACK_DIR/$name.pid"))"; else echo "$name: stopped"; ok=1; fi
  done
  local health; health=$(curl -s -o /dev/null -w '%{http_code}' "${CURL_AUTH[@]}" "$PREFECT_API_URL/health" || true)
  if [ "$health" = 200 ]; then
    echo "server: answers at $PREFECT_API_URL"
    echo "use it: $(hint_env)"
  elif [ "$health" = 401 ]; then
    echo "server: answers at $PREFECT_API_URL, and asks for credentials (set PREFECT_API_AUTH_STRING=user:password)"
  else
    echo "server: does not answer at $PREFECT_API_URL"; ok=1
  fi
  local code; code=$(curl -s -o /dev/null -w '%{http_code}' "${CURL_AUTH[@]}" "http://127.0.0.1:$REPORTS_PORT/" || true)
  if [ "$code" = 200 ] || [ "$code" = 401 ]; then  # 401: it answers, and asks for the auth string
    echo "reports: served at http://127.0.0.1:$REPORTS_PORT$([ "$code" = 401 ] && echo ' (asks for credentials)')" \
         "(the runs' PDF links point to $ACCOUNTABILITY_REPORTS_URL)"
  else
    echo "reports: not served at http://127.0.0.1:$REPORTS_PORT"; ok=1
  fi
  return $ok
}

down() {
  for name in worker-cpu worker-gpu reports server postgres; do  # workers first: they report to the server as they stop
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

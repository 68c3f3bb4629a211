#!/usr/bin/env bash
# A throwaway ClickHouse HTTP endpoint: chdb_server.py (the ClickHouse engine from the chdb Python
# package behind a small HTTP front) with its own data dir and port.
#   clickhouse.sh start DIR     prints the URL (http://127.0.0.1:PORT); PORT=... reuses a port
#   clickhouse.sh stop DIR      SIGTERM, wait
#   clickhouse.sh kill DIR      SIGKILL (crash tests)
# Data lives in DIR/data and survives a stop/start on the same DIR. CLICKHOUSE_USER/CLICKHOUSE_PASSWORD,
# if set, are the only credentials accepted; CLICKHOUSE_TLS_CERT/CLICKHOUSE_TLS_KEY, if set, make it
# serve https (the printed URL says so). If CLICKHOUSE_URL is set, `start` only prints it (the
# tests then run against that real server) and stop/kill do nothing.
set -euo pipefail
cmd=${1:?start|stop|kill}; dir=${2:?datadir}
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${CLICKHOUSE_URL:-}" ]; then
  [ "$cmd" = start ] && echo "$CLICKHOUSE_URL"
  exit 0
fi
case "$cmd" in
start)
  mkdir -p "$dir/data"; dir=$(cd "$dir" && pwd)
  port=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  auth=()
  [ -n "${CLICKHOUSE_USER:-}" ] && auth=(--user "$CLICKHOUSE_USER" --password "${CLICKHOUSE_PASSWORD:-}")
  scheme=http; tls=()
  if [ -n "${CLICKHOUSE_TLS_CERT:-}" ]; then
    scheme=https; tls=(--tls-cert "$CLICKHOUSE_TLS_CERT" --tls-key "$CLICKHOUSE_TLS_KEY")
  fi
  nohup python3 "$here/chdb_server.py" --port "$port" --path "$dir/data" "${auth[@]}" "${tls[@]}" \
    >>"$dir/server.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  echo "$port" >"$dir/port"
  for _ in $(seq 1 300); do
    if curl -sfk "$scheme://127.0.0.1:$port/ping" >/dev/null 2>&1; then
      echo "$scheme://127.0.0.1:$port"; exit 0
    fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
    sleep 0.1
  done
  echo "chdb_server did not start; see $dir/server.log" >&2; tail -20 "$dir/server.log" >&2 || true; exit 1
  ;;
stop|kill)
  sig=TERM; [ "$cmd" = kill ] && sig=KILL
  pid=$(cat "$dir/pid" 2>/dev/null || true)
  [ -n "$pid" ] || exit 0
  kill -s "$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  kill -s KILL "$pid" 2>/dev/null || true
  ;;
*) echo "usage: $0 start|stop|kill DIR" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# An S3-compatible server (moto) on a free loopback port, for the s3:// tests.
#   moto.sh start DIR    prints the endpoint URL (http://127.0.0.1:PORT; https with
#                        MOTO_TLS_CERT/MOTO_TLS_KEY set)
#   moto.sh stop DIR
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?dir}
case "$cmd" in
start)
  mkdir -p "$dir"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  scheme=http; tls=()
  if [ -n "${MOTO_TLS_CERT:-}" ]; then
    scheme=https; tls=(-c "$MOTO_TLS_CERT" -k "$MOTO_TLS_KEY")
  fi
  nohup python3 -m moto.server -H 127.0.0.1 -p "$port" "${tls[@]}" >"$dir/moto.log" 2>&1 &
  echo $! >"$dir/moto.pid"
  for _ in $(seq 1 100); do
    if python3 -c "import ssl, urllib.request; urllib.request.urlopen('$scheme://127.0.0.1:$port/moto-api/', context=ssl._create_unverified_context())" 2>/dev/null; then
      echo "$scheme://127.0.0.1:$port"; exit 0
    fi
    sleep 0.1
  done
  echo "moto did not start; see $dir/moto.log" >&2; exit 1 ;;
stop)
  kill "$(cat "$dir/moto.pid" 2>/dev/null)" 2>/dev/null || true ;;
esac

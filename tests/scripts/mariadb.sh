#!/usr/bin/env bash
# A throwaway MariaDB server with its own datadir and port.
#   mariadb.sh start DIR [SERVER_ID] [extra mariadbd options...]   prints the port
#   mariadb.sh stop DIR                                             SIGTERM, wait
#   mariadb.sh kill DIR                                             SIGKILL (crash tests)
# Root connects over DIR/sock without a password; user binlake/binlake has the grants binlake needs.
set -euo pipefail
cmd=${1:?start|stop|kill}; dir=${2:?datadir}
MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
case "$cmd" in
start)
  server_id=${3:-1}; shift 3 2>/dev/null || shift $#
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  # Its own tmpdir: temp files in a shared /tmp left by a killed server with a reused PID break
  # the bootstrap of the next one.
  mkdir -p "$dir/tmp"
  if [ ! -d "$dir/data/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$dir/data" --tmpdir="$dir/tmp" --user=root \
      --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 || { cat "$dir/install.log" >&2; exit 1; }
  fi
  port=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  nohup "$MARIADBD" --no-defaults --datadir="$dir/data" --tmpdir="$dir/tmp" --socket="$dir/sock" --port="$port" --bind-address=127.0.0.1 \
    --user=root --server-id="$server_id" --log-bin="$dir/data/binlog" --binlog-format=ROW --binlog-row-image=FULL \
    --binlog-row-metadata=FULL --pid-file="$dir/mariadbd.pid" --log-error="$dir/error.log" \
    --innodb-buffer-pool-size=256M --innodb-log-file-size=256M --skip-name-resolve --max-connections=200 \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
    "$@" >/dev/null 2>&1 &
  echo $! >"$dir/launcher.pid"
  echo "$port" >"$dir/port"
  for _ in $(seq 1 150); do
    if mariadb --no-defaults --socket="$dir/sock" -uroot -e "SELECT 1" >/dev/null 2>&1; then
      mariadb --no-defaults --socket="$dir/sock" -uroot -e "
        CREATE USER IF NOT EXISTS 'binlake'@'%' IDENTIFIED BY 'binlake';
        GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT ON *.* TO 'binlake'@'%';
        CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
        GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
      echo "$port"; exit 0
    fi
    sleep 0.2
  done
  echo "mariadbd did not start; see $dir/error.log" >&2; tail -20 "$dir/error.log" >&2 || true; exit 1
  ;;
stop|kill)
  sig=TERM; [ "$cmd" = kill ] && sig=KILL
  pid=$(cat "$dir/mariadbd.pid" 2>/dev/null || cat "$dir/launcher.pid" 2>/dev/null || true)
  [ -n "$pid" ] || exit 0
  kill -s "$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  kill -s KILL "$pid" 2>/dev/null || true
  ;;
*) echo "usage: $0 start|stop|kill DIR" >&2; exit 2 ;;
esac

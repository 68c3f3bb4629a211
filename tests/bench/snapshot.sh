#!/usr/bin/env bash
# Snapshot benchmark (issue 5): a ROWS-row sysbench-style table (default 5,000,000) loaded by
# `binlake replicate` (the default start, --start-at snapshot) into Parquet and into Delta, next
# to `mariadb-dump --quick --single-transaction` of the same table to /dev/null, all measured in
# the same run on the same server, RUNS times (default 3) interleaved: dump, then each sink.
# Prints every run, then the median seconds, rows/s, peak RSS and the ratio of medians to the
# dump (targets: >= 1x with snapshot_parallelism 2, RSS < 500 MiB). Each replica is checked to
# hold ROWS keys. The server's buffer pool holds the whole table (it is warmed first), so both
# sides read from memory.
#   ROWS=5000000 RUNS=3 bash tests/bench/snapshot.sh   (SINKS="parquet delta", KEEP=1 keeps the temp dir,
#   BINLAKE=/path/to/binlake measures that binary instead of building this tree's)
# TLS=1: the server gets a throwaway CA's certificate, and both the dump and binlake read over
# verified TLS (binlake's chunks then go through mysql_async: its snapshot client is plain TCP).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${ROWS:-5000000}
SINKS=${SINKS:-parquet delta}
RUNS=${RUNS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/binlake/target}
# BINLAKE=/path: that binary (e.g. an older build, to compare in the same run); else this tree's
if [ -n "${BINLAKE:-}" ]; then
  B=$BINLAKE
else
  cargo build --release --quiet --all-features
  B=$CARGO_TARGET_DIR/release/binlake
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/binlake-sbench.XXXXXX")
trap 'bash tests/scripts/mariadb.sh stop "$W/db" >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
TLS_SERVER=(); TLS_DUMP=(); TLS_URL=""; TLS_FLAGS=()
if [ -n "${TLS:-}" ]; then
  bash tests/scripts/tls_certs.sh "$W/certs"
  TLS_SERVER=(--ssl-ca="$W/certs/ca.pem" --ssl-cert="$W/certs/server.pem" --ssl-key="$W/certs/server-key.pem")
  TLS_DUMP=(--ssl --ssl-ca="$W/certs/ca.pem" --ssl-verify-server-cert)
  TLS_URL="?require_ssl=true"; TLS_FLAGS=(--tls-ca "$W/certs/ca.pem")
fi
P=$(bash tests/scripts/mariadb.sh start "$W/db" 1 --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 --innodb-buffer-pool-size=2G "${TLS_SERVER[@]}")
sql() { mariadb --no-defaults -h127.0.0.1 -P"$P" -uroot "$@"; }
sql -e "CREATE DATABASE bench; CREATE TABLE bench.sbtest1 (id INT NOT NULL PRIMARY KEY, k INT NOT NULL DEFAULT 0, c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '', KEY k_1(k));"
t0=$(date +%s.%N)
# generated without the binlog: only a snapshot can bring these rows over
for ((i = 0; i < ROWS; i += 500000)); do
  n=$(( ROWS - i < 500000 ? ROWS - i : 500000 ))
  sql bench -e "SET SESSION sql_log_bin = 0; INSERT INTO sbtest1 SELECT $i + seq, FLOOR(RAND()*1000000), REPEAT(LPAD(FLOOR(RAND()*1e10), 10, '0'), 12), REPEAT(LPAD(FLOOR(RAND()*1e10), 10, '0'), 6) FROM seq_1_to_$n;"
done
sql -e "ANALYZE TABLE bench.sbtest1" >/dev/null
echo "generated $ROWS rows in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
secs_of() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b-a}'; }
# Measure an idle server: the load leaves InnoDB flushing dirty pages and purging for a while
# (a first run measured against that background work was 30% slower than the next ones).
sql -e "SET GLOBAL innodb_max_dirty_pages_pct = 0, GLOBAL innodb_max_dirty_pages_pct_lwm = 0"
for _ in $(seq 1 240); do
  dirty=$(sql -N -e "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_PAGES_DIRTY'")
  [ "${dirty:-0}" -lt 100 ] && break
  sleep 0.5
done
sleep 2
# warm the buffer pool the same way for everyone
sql -N -e "SELECT COUNT(*), SUM(LENGTH(c)) FROM bench.sbtest1" >/dev/null
declare -A secs rss
for ((run = 1; run <= RUNS; run++)); do
  s0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$W/dump.rss" mariadb-dump --no-defaults -h127.0.0.1 -P"$P" -uroot "${TLS_DUMP[@]}" --quick --single-transaction bench sbtest1 >/dev/null
  secs[dump]+="$(secs_of "$s0") "; rss[dump]+="$(awk '{printf "%.0f", $1/1024}' "$W/dump.rss") "
  for sink in $SINKS; do
    rm -rf "$W/$sink"
    s0=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$W/$sink.rss" "$B" replicate --source "mysql://binlake:binlake@127.0.0.1:$P$TLS_URL" "${TLS_FLAGS[@]}" --tables 'bench.*' \
      --target "$W/$sink" --sink "$sink" --exit-when-caught-up ${BINLAKE_ARGS:-} 2>"$W/$sink.log" || { tail "$W/$sink.log"; exit 1; }
    secs[$sink]+="$(secs_of "$s0") "; rss[$sink]+="$(awk '{printf "%.0f", $1/1024}' "$W/$sink.rss") "
  done
  echo "run $run: dump $(echo ${secs[dump]} | awk '{print $NF}') s$(for sink in $SINKS; do printf ', %s %s s' "$sink" "$(echo ${secs[$sink]} | awk '{print $NF}')"; done)"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
maxof() { tr ' ' '\n' | grep -v '^$' | sort -g | tail -1; }
for sink in $SINKS; do
  case $sink in
  parquet) n=$(python3 -c "import duckdb, sys; print(duckdb.sql(\"SELECT count(DISTINCT id) FROM read_parquet('\" + sys.argv[1] + \"/bench/sbtest1/**/*.parquet')\").fetchall()[0][0])" "$W/parquet") ;;
  delta) n=$(python3 -c "import os, sys; from deltalake import DeltaTable; t=DeltaTable(sys.argv[1]).to_pyarrow_table(columns=['id']); print(len(set(t.column('id').to_pylist())), flush=True); os._exit(0)" "$W/delta/bench/sbtest1") ;;
  *) n=$ROWS ;;
  esac
  [ "$n" = "$ROWS" ] || { echo "$sink replica holds $n keys, expected $ROWS"; exit 1; }
done
echo "machine: $(nproc) CPU, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), $RUNS runs, medians${TLS:+, everything over TLS}"
dump=$(echo "${secs[dump]}" | median)
printf '%-22s %10s %8s %10s %9s %8s\n' what rows seconds rows/s "RSS MiB" "vs dump"
printf '%-22s %10s %8s %10.0f %9s %8s\n' "mariadb-dump" "$ROWS" "$dump" "$(awk -v r="$ROWS" -v s="$dump" 'BEGIN{print r/s}')" "$(echo "${rss[dump]}" | maxof)" "1.00x"
for sink in $SINKS; do
  t=$(echo "${secs[$sink]}" | median)
  printf '%-22s %10s %8s %10.0f %9s %7.2fx\n' "binlake -> $sink" "$ROWS" "$t" "$(awk -v r="$ROWS" -v s="$t" 'BEGIN{print r/s}')" "$(echo "${rss[$sink]}" | maxof)" "$(awk -v d="$dump" -v s="$t" 'BEGIN{print d/s}')"
done

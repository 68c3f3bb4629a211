#!/usr/bin/env bash
# ClickHouse catch-up benchmark (issue 4): ROWS/2 inserts then ROWS/2 updates of the same keys
# (ROWS row changes in all) into a sysbench-style table, replicated from the binlog into ClickHouse
# (rows/s, peak RSS), next to the practical limit measured in the same run: the same current-state
# rows as ONE Parquet file inserted through the HTTP interface (`INSERT ... FORMAT Parquet`) into
# an identical table. Target: binlake >= 0.5x of that limit's rows/s. Against the chdb front by
# default; CLICKHOUSE_URL=http://... measures a real server.
#   ROWS=1000000 bash tests/bench/clickhouse.sh        (KEEP=1 keeps the temp dir)
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/sbtest.sh
ROWS=${ROWS:-1000000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/binlake/target}
cargo build --release --quiet
B=$CARGO_TARGET_DIR/release/binlake
W=$(mktemp -d "${TMPDIR:-/tmp}/binlake-chbench.XXXXXX")
trap 'bash tests/scripts/mariadb.sh stop "$W/db" >/dev/null 2>&1 || true; bash tests/scripts/clickhouse.sh stop "$W/ch" >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
P=$(bash tests/scripts/mariadb.sh start "$W/db" 1 --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 --innodb-autoinc-lock-mode=1)
CH=$(bash tests/scripts/clickhouse.sh start "$W/ch")
sql() { mariadb --no-defaults -h127.0.0.1 -P"$P" -uroot "$@"; }
chq() { curl -sfS --data-binary @- "$CH/?query=$(python3 -c 'import sys,urllib.parse;print(urllib.parse.quote(sys.argv[1]))' "$1")"; }
sql -e "CREATE DATABASE bench; CREATE TABLE bench.sbtest1 (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL DEFAULT 0, c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '', KEY k_1(k));"
half=$((ROWS / 2))
sbtest_workload "$half" | sql bench
rows=$(sql -N -e "SELECT COUNT(*) FROM bench.sbtest1"); changes=$((rows * 2))
echo "machine: $(nproc) CPU, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo); ClickHouse at $CH"
s0=$(date +%s.%N)
/usr/bin/time -f "%M" -o "$W/rss" "$B" replicate --source "mysql://binlake:binlake@127.0.0.1:$P" --tables 'bench.*' \
  --sink clickhouse --target "$CH" --database-prefix cb_ ${CH_ARGS:-} --start-at earliest --exit-when-caught-up 2>"$W/ch.log" || { tail "$W/ch.log"; exit 1; }
secs=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b-a}')
rss=$(awk '{printf "%.0f", $1/1024}' "$W/rss")
n=$(echo "" | chq "SELECT count() FROM cb_bench.sbtest1_current")
[ "$n" = "$rows" ] || { echo "ClickHouse _current holds $n rows, expected $rows"; exit 1; }
# The practical limit: the same rows (current state, with the metadata columns) as one Parquet file.
echo "" | chq "SELECT * FROM cb_bench.sbtest1_current FORMAT Parquet" >"$W/rows.parquet"
echo "" | chq "CREATE TABLE cb_bench.limit AS cb_bench.sbtest1"
l0=$(date +%s.%N)
chq "INSERT INTO cb_bench.limit FORMAT Parquet" <"$W/rows.parquet"
lsecs=$(awk -v a="$l0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b-a}')
printf '%-40s %10s %8s %12s %8s\n' "" rows seconds rows/s "RSS MiB"
printf '%-40s %10s %8s %12.0f %8s\n' "binlake catch-up (row changes)" "$changes" "$secs" "$(awk -v c="$changes" -v s="$secs" 'BEGIN{print c/s}')" "$rss"
printf '%-40s %10s %8s %12.0f %8s\n' "one Parquet file, INSERT FORMAT Parquet" "$rows" "$lsecs" "$(awk -v c="$rows" -v s="$lsecs" 'BEGIN{print c/s}')" "-"
awk -v c="$changes" -v s="$secs" -v r="$rows" -v l="$lsecs" 'BEGIN{x=(c/s)/(r/l); printf "binlake / limit (rows/s): %.2fx   target >= 0.5x   %s\n", x, (x >= 0.5 ? "PASS" : "MISS")}'

#!/usr/bin/env bash
# Delta catch-up benchmark (issue 3): ROWS inserts into a sysbench-style table, then an update of
# every row (the same keys), replicated from the same binlog to Parquet and to Delta, one after
# the other. Prints rows/s, peak RSS and the Delta/Parquet ratio (target >= 0.5). The Delta table
# is read back with the Python `deltalake` reader and must hold exactly ROWS keys.
#   ROWS=1000000 bash tests/bench/delta.sh        (KEEP=1 keeps the temp dir)
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/sbtest.sh
ROWS=${ROWS:-1000000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/binlake/target}
cargo build --release --quiet --features delta
B=$CARGO_TARGET_DIR/release/binlake
W=$(mktemp -d "${TMPDIR:-/tmp}/binlake-dbench.XXXXXX")
trap 'bash tests/scripts/mariadb.sh stop "$W/db" >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
P=$(bash tests/scripts/mariadb.sh start "$W/db" 1 --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 --innodb-autoinc-lock-mode=1)
sql() { mariadb --no-defaults -h127.0.0.1 -P"$P" -uroot "$@"; }
sql -e "CREATE DATABASE bench; CREATE TABLE bench.sbtest1 (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL DEFAULT 0, c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '', KEY k_1(k));"
t0=$(date +%s.%N)
sbtest_workload "$ROWS" | sql bench
rows=$(sql -N -e "SELECT COUNT(*) FROM bench.sbtest1")
changes=$((rows * 2))
echo "generated $rows rows + $rows updates in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
declare -A secs rss
for sink in parquet delta; do
  s0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$W/$sink.rss" "$B" replicate --source "mysql://binlake:binlake@127.0.0.1:$P" --tables 'bench.*' \
    --target "$W/$sink" --sink "$sink" --start-at earliest --exit-when-caught-up 2>"$W/$sink.log" || { tail "$W/$sink.log"; exit 1; }
  secs[$sink]=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b-a}')
  rss[$sink]=$(awk '{printf "%.0f", $1/1024}' "$W/$sink.rss")
done
n=$(python3 -c "import os, sys; from deltalake import DeltaTable; t=DeltaTable(sys.argv[1]).to_pyarrow_table(columns=['id']); print(t.num_rows, len(set(t.column('id').to_pylist())), flush=True); os._exit(0)" "$W/delta/bench/sbtest1")
[ "$n" = "$rows $rows" ] || { echo "Delta table holds '$n' rows/keys, expected $rows"; exit 1; }
echo "machine: $(nproc) CPU, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
printf '%-8s %10s %8s %12s %10s\n' sink changes seconds changes/s "RSS MiB"
for sink in parquet delta; do
  printf '%-8s %10s %8s %12.0f %10s\n' "$sink" "$changes" "${secs[$sink]}" "$(awk -v c="$changes" -v s="${secs[$sink]}" 'BEGIN{print c/s}')" "${rss[$sink]}"
done
awk -v p="${secs[parquet]}" -v d="${secs[delta]}" 'BEGIN{r=p/d; printf "delta / parquet (changes/s): %.2fx   target >= 0.5x   %s\n", r, (r >= 0.5 ? "PASS" : "MISS")}'

#!/usr/bin/env bash
# Many-tables benchmark (issue 22): the same number of row changes written into ONE table and
# round-robin into TABLES tables, each binlog replicated by binlake (catch-up, --exit-when-caught-up)
# into SINK, one after the other on the same server. Prints rows/s, peak RSS, commits and the mean
# time per commit for both, and the ratio many/one (target >= 0.5: per-table state must not make
# every commit touch every table). The row count of each target is checked with DuckDB (Parquet)
# or the Python deltalake reader (Delta).
#   TABLES=1000 ROWS=1000000 SINK=parquet bash tests/bench/tables.sh      (KEEP=1 keeps the dir;
#   WRAP="perf record -g -o /tmp/p.data" profiles each timed run)
# ROWS rows are inserted in transactions of TX rows (default 100); in the many-tables run
# transaction i writes into table i % TABLES, so every commit batch holds many tables.
set -euo pipefail
cd "$(dirname "$0")/../.."
TABLES=${TABLES:-1000}
ROWS=${ROWS:-1000000}
TX=${TX:-100}
SINK=${SINK:-parquet}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/binlake/target}
features=parquet
[ "$SINK" = delta ] && features=delta
cargo build --release --quiet --features "$features"
B=$CARGO_TARGET_DIR/release/binlake
W=$(mktemp -d "${TMPDIR:-/tmp}/binlake-tables.XXXXXX")
trap 'bash tests/scripts/mariadb.sh stop "$W/db" >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
P=$(bash tests/scripts/mariadb.sh start "$W/db" 1 --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 --max-connections=50)
sql() { mariadb --no-defaults -h127.0.0.1 -P"$P" -uroot "$@"; }
ddl() { # $1 = table name
  echo "CREATE TABLE $1 (id INT NOT NULL PRIMARY KEY, k INT NOT NULL, c CHAR(60) NOT NULL, pad CHAR(30) NOT NULL);"
}
echo "machine: $(nproc) CPU, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo); $ROWS rows in transactions of $TX; sink $SINK"

# each transaction: TX rows with ids (i*TX, (i+1)*TX]
workload() { # $1 = number of tables, $2 = database
  local txs=$((ROWS / TX)) i t
  for ((i = 0; i < txs; i++)); do
    t=$((i % $1 + 1))
    echo "INSERT INTO $2.t$t SELECT $((i * TX)) + seq, seq, REPEAT('c', 60), REPEAT('p', 30) FROM seq_1_to_$TX;"
  done
}

declare -A secs rss commits
for run in one many; do
  n=1; [ "$run" = many ] && n=$TABLES
  sql -e "RESET MASTER; DROP DATABASE IF EXISTS $run; CREATE DATABASE $run"
  for ((t = 1; t <= n; t++)); do ddl "$run.t$t"; done | sql
  # the CREATE TABLEs first, replicated on their own (timed apart: each DDL is a commit
  # boundary), so the timed run below is the round-robin data only
  s0=$(date +%s.%N)
  "$B" replicate --source "mysql://binlake:binlake@127.0.0.1:$P" --tables "$run.*" --target "$W/$run" \
    --sink "$SINK" --start-at earliest --exit-when-caught-up 2>"$W/$run.ddl.log" || { tail "$W/$run.ddl.log"; exit 1; }
  echo "$run: $n CREATE TABLE replicated in $(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}') s ($(grep -o 'commits=[0-9]*' "$W/$run.ddl.log" | tail -1))"
  t0=$(date +%s.%N)
  workload "$n" "$run" | sql "$run"
  echo "$run: $n table(s), generated in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
  s0=$(date +%s.%N)
  # shellcheck disable=SC2086 # WRAP is a command prefix, e.g. "perf record -g -o /tmp/p.data"
  /usr/bin/time -f "%M" -o "$W/$run.rss" ${WRAP:-} "$B" replicate --source "mysql://binlake:binlake@127.0.0.1:$P" \
    --tables "$run.*" --target "$W/$run" --sink "$SINK" --start-at earliest --exit-when-caught-up \
    2>"$W/$run.log" || { tail "$W/$run.log"; exit 1; }
  secs[$run]=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b-a}')
  rss[$run]=$(awk '{printf "%.0f", $1/1024}' "$W/$run.rss")
  commits[$run]=$(grep -o 'commits=[0-9]*' "$W/$run.log" | tail -1 | cut -d= -f2)
  got=$(python3 - "$SINK" "$W/$run" "$n" <<'EOF'
import glob, os, sys
sink, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = os.path.basename(target)
total = 0
if sink == "parquet":
    import duckdb
    con = duckdb.connect()
    for t in range(1, n + 1):
        files = glob.glob(f"{target}/{db}/t{t}/*.parquet")
        if files:
            total += con.execute(f"SELECT count(DISTINCT id) FROM read_parquet({files!r}, union_by_name = true)").fetchone()[0]
else:
    from deltalake import DeltaTable
    for t in range(1, n + 1):
        p = f"{target}/{db}/t{t}"
        if os.path.exists(f"{p}/_delta_log"):
            total += DeltaTable(p).to_pyarrow_table(columns=["id"]).num_rows
print(total)
EOF
)
  [ "$got" = "$ROWS" ] || { echo "$run: the target holds $got rows, expected $ROWS"; exit 1; }
done
printf '%-6s %7s %9s %12s %9s %8s %14s\n' run tables seconds rows/s "RSS MiB" commits "ms per commit"
for run in one many; do
  n=1; [ "$run" = many ] && n=$TABLES
  printf '%-6s %7s %9s %12.0f %9s %8s %14.1f\n' "$run" "$n" "${secs[$run]}" \
    "$(awk -v r="$ROWS" -v s="${secs[$run]}" 'BEGIN{print r/s}')" "${rss[$run]}" "${commits[$run]:-?}" \
    "$(awk -v s="${secs[$run]}" -v c="${commits[$run]:-1}" 'BEGIN{print s*1000/(c>0?c:1)}')"
done
ratio=$(awk -v a="${secs[one]}" -v b="${secs[many]}" 'BEGIN{printf "%.2f", a/b}')
verdict=$(awk -v r="$ratio" 'BEGIN{print (r >= 0.5) ? "PASS" : "MISS"}')
echo "many / one (rows/s): ${ratio}x   target >= 0.5x   $verdict"

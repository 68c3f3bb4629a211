#!/usr/bin/env bash
# Catch-up benchmark: binlake vs mariadb-binlog vs python-mysql-replication, against the limit
# (the raw binlog transfer).
#
# Starts a throwaway MariaDB, writes ROWS rows into a sysbench-style table bench.sbtest1
# (INSERT ... SELECT from the SEQUENCE engine, CHUNK rows per statement, one transaction per
# statement), then lets three readers, one after another, read the whole binlog from its
# start to its end over TCP:
#   1. binlake replicate --sink parquet (output row count verified with duckdb/pyarrow)
#   2. mariadb-binlog --read-from-remote-server -v --to-last-log > /dev/null
#   3. python-mysql-replication (tests/bench/pyrepl_peer.py), decoding every row
#   4. the limit: mariadb-binlog --read-from-remote-server --raw (the same binlog copied, not
#      decoded) into a tmpfs directory (/dev/shm when it exists)
# and prints wall time, rows/s and peak RSS for each, the ratios and the targets.
#
# Environment:
#   ROWS=1000000        rows (= row events) to generate
#   CHUNK=1000          rows per INSERT ... SELECT statement (transaction)
#   BINLAKE=/path       binlake binary (default: $CARGO_TARGET_DIR/release/binlake, built if missing)
#   BINLAKE_ARGS="..."  extra flags for binlake replicate, e.g. "--max-batch-rows 200000"
#   PYTHON=python3      interpreter with pymysqlreplication, pyarrow and/or duckdb
#   KEEP=1              keep the server running and the temp directory at exit
#   SKIP_PYREPL=1       skip python-mysql-replication -- for quick local runs only
#   SERVER_OPTS="..."   extra mariadbd options, e.g. "--max-binlog-size=4M" to spread the binlog over files
#   RSS_POLL=1          measure peak RSS by polling /proc/PID/status even if /usr/bin/time exists
#
# Exit status: 0 when every reader succeeded and returned ROWS rows, whether or not the
# performance targets are met (they are printed as PASS/MISS); non-zero otherwise.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

ROWS=${ROWS:-1000000}
CHUNK=${CHUNK:-1000}
KEEP=${KEEP:-0}
PYTHON=${PYTHON:-python3}
BINLAKE_ARGS=${BINLAKE_ARGS:-}
SKIP_PYREPL=${SKIP_PYREPL:-0}
SERVER_OPTS=${SERVER_OPTS:-}
RSS_POLL=${RSS_POLL:-0}

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $ROWS =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive integer, got '$ROWS'"
[[ $CHUNK =~ ^[1-9][0-9]*$ ]] || die "CHUNK must be a positive integer, got '$CHUNK'"

# ---------------------------------------------------------------- prerequisites
for tool in mariadbd mariadb mariadb-binlog mariadb-install-db; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] ||
    die "$tool not found; run tests/scripts/install-deps.sh"
done
"$PYTHON" -c 'import pymysqlreplication' 2>/dev/null ||
  die "$PYTHON cannot import pymysqlreplication (pip package mysql-replication); run tests/scripts/install-deps.sh"
"$PYTHON" -c 'import duckdb' 2>/dev/null || "$PYTHON" -c 'import pyarrow' 2>/dev/null ||
  die "$PYTHON can import neither duckdb nor pyarrow (needed to count binlake's output); run tests/scripts/install-deps.sh"

if [ -n "${BINLAKE:-}" ]; then
  [ -x "$BINLAKE" ] || die "BINLAKE=$BINLAKE is not an executable file"
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/binlake/target}
  BINLAKE=$CARGO_TARGET_DIR/release/binlake
  if [ ! -x "$BINLAKE" ]; then
    log "no binary at $BINLAKE; running cargo build --release"
    cargo build --release
    [ -x "$BINLAKE" ] || die "cargo build --release did not produce $BINLAKE"
  fi
fi

# Peak RSS: GNU time if present (installed on Debian/Ubuntu when we are root), else /proc polling.
TIME_BIN=/usr/bin/time
if [ "$RSS_POLL" = 1 ]; then
  TIME_BIN=
elif ! { [ -x $TIME_BIN ] && $TIME_BIN -v true >/dev/null 2>&1; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing the Debian package 'time' for /usr/bin/time -v"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq time >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq time >/dev/null 2>&1; } ||
      log "could not install 'time'; measuring peak RSS by polling /proc/PID/status"
  fi
  { [ -x $TIME_BIN ] && $TIME_BIN -v true >/dev/null 2>&1; } || TIME_BIN=
fi

# ---------------------------------------------------------------- workspace, cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/binlake-bench.XXXXXX")
DB=$WORK/db
OUT=$WORK/parquet
LOGS=$WORK/logs
mkdir -p "$LOGS"
CHILD=
SERVER_STARTED=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$CHILD" ]; then kill "$CHILD" 2>/dev/null || true; wait "$CHILD" 2>/dev/null || true; fi
  if [ "$KEEP" = 1 ]; then
    log "KEEP=1: kept $WORK (logs in $LOGS)"
    [ "$SERVER_STARTED" = 1 ] && log "server still running on port $(cat "$DB/port" 2>/dev/null); stop it with: tests/scripts/mariadb.sh stop $DB"
  else
    [ "$SERVER_STARTED" = 1 ] && bash tests/scripts/mariadb.sh stop "$DB" || true
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ns() { date +%s%N; }
secs_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
rate() { awk -v r="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", r / s; else print 0 }'; }

# run_measured NAME STDOUT_FILE CMD...  -> sets M_RC, M_SECS, M_RSS_KB, M_CPU (user+sys s, or -);
# stderr goes to $LOGS/NAME.err
run_measured() {
  local name=$1 out=$2; shift 2
  local err=$LOGS/$name.err t0 t1 k v
  M_RC=0; M_RSS_KB=0; M_CPU=-
  if [ -n "$TIME_BIN" ]; then
    t0=$(now_ns)
    "$TIME_BIN" -v -o "$LOGS/$name.time" "$@" >"$out" 2>"$err" || M_RC=$?
    t1=$(now_ns)
    M_RSS_KB=$(awk -F': *' '/Maximum resident set size/ { print $2 }' "$LOGS/$name.time" 2>/dev/null || true)
    M_RSS_KB=${M_RSS_KB:-0}
    M_CPU=$(awk -F': *' '/User time|System time/ { s += $2; n++ } END { if (n == 2) printf "%.2f", s; else print "-" }' \
      "$LOGS/$name.time" 2>/dev/null || echo -)
  else
    t0=$(now_ns)
    "$@" >"$out" 2>"$err" &
    CHILD=$!
    while kill -0 "$CHILD" 2>/dev/null; do
      while read -r k v _; do
        if [ "$k" = VmHWM: ] && [ "$v" -gt "$M_RSS_KB" ]; then M_RSS_KB=$v; fi
      done <"/proc/$CHILD/status" 2>/dev/null || true
      sleep 0.05
    done
    wait "$CHILD" || M_RC=$?
    t1=$(now_ns)
    CHILD=
  fi
  M_SECS=$(secs_between "$t0" "$t1")
}

sql() { mariadb --no-defaults --socket="$DB/sock" -uroot -N -B "$@"; }

# ---------------------------------------------------------------- server and data
log "binlake: $BINLAKE ($("$BINLAKE" --version 2>/dev/null || echo '?'))"
log "workspace: $WORK"
log "starting MariaDB"
SERVER_STARTED=1
read -r -a server_opts <<<"$SERVER_OPTS"
PORT=$(bash tests/scripts/mariadb.sh start "$DB" 1 \
  --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 "${server_opts[@]}" | tail -n1)
[[ $PORT =~ ^[0-9]+$ ]] || die "tests/scripts/mariadb.sh start did not print a port (got '$PORT')"
log "MariaDB $(sql -e 'SELECT VERSION()') on 127.0.0.1:$PORT"

sql -e "
  CREATE DATABASE bench;
  CREATE TABLE bench.sbtest1 (
    id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    k INT NOT NULL DEFAULT 0,
    c CHAR(120) NOT NULL DEFAULT '',
    pad CHAR(60) NOT NULL DEFAULT '',
    KEY k_1(k)
  ) ENGINE=InnoDB;"

# sysbench's templates: c is 10 groups of 11 random digits joined by '-' (119 chars; 11 groups
# would be 131 chars and not fit CHAR(120)), pad is 5 groups (59 chars); k is uniform in 1..ROWS.
g11="LPAD(FLOOR(RAND() * 100000000000), 11, '0')"
groups() { local n=$1 s=$g11 i; for ((i = 1; i < n; i++)); do s="$s, $g11"; done; printf 'CONCAT_WS('"'-'"', %s)' "$s"; }
C_EXPR=$(groups 10)
PAD_EXPR=$(groups 5)
K_EXPR="FLOOR(1 + RAND() * $ROWS)"

gen_sql() {
  local left=$ROWS n
  echo "SET autocommit = 1;"
  while [ "$left" -gt 0 ]; do
    n=$((left < CHUNK ? left : CHUNK))
    echo "INSERT INTO sbtest1 (k, c, pad) SELECT $K_EXPR, $C_EXPR, $PAD_EXPR FROM seq_1_to_$n;"
    left=$((left - n))
  done
}

STATEMENTS=$(((ROWS + CHUNK - 1) / CHUNK))
log "generating $ROWS rows in $STATEMENTS INSERT ... SELECT transactions of up to $CHUNK rows"
t0=$(now_ns)
gen_sql | sql bench
t1=$(now_ns)
GEN_SECS=$(secs_between "$t0" "$t1")
have=$(sql -e 'SELECT COUNT(*) FROM bench.sbtest1')
[ "$have" = "$ROWS" ] || die "bench.sbtest1 has $have rows after generation, expected $ROWS"
FIRST_LOG=$(sql -e 'SHOW BINARY LOGS' | awk 'NR == 1 { print $1 }')
read -r NLOGS BINLOG_BYTES < <(sql -e 'SHOW BINARY LOGS' | awk '{ n++; s += $2 } END { print n, s }')
BINLOG_MIB=$(awk -v b="$BINLOG_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')
log "generated $ROWS rows in ${GEN_SECS}s ($(rate "$ROWS" "$GEN_SECS") rows/s); binlog: $NLOGS file(s) from $FIRST_LOG, $BINLOG_MIB MiB"

FAILURES=()
declare -A SECS CPU RSS RATE STATUS

record() { # record READER -> from M_*
  SECS[$1]=$M_SECS
  CPU[$1]=$M_CPU
  RSS[$1]=$(awk -v k="$M_RSS_KB" 'BEGIN { printf "%.1f", k / 1024 }')
  RATE[$1]=$(rate "$ROWS" "$M_SECS")
}
show_err() { log "last lines of $LOGS/$1.err:"; tail -n 20 "$LOGS/$1.err" >&2 || true; }

# ---------------------------------------------------------------- 1. binlake
read -r -a extra <<<"$BINLAKE_ARGS"
log "1/4 binlake replicate -> Parquet in $OUT"
run_measured binlake "$LOGS/binlake.out" "$BINLAKE" replicate \
  --source "mysql://binlake:binlake@127.0.0.1:$PORT" --tables 'bench.*' --sink parquet \
  --target "$OUT" --start-at earliest --exit-when-caught-up "${extra[@]}"
record binlake
STATUS[binlake]=ok
if [ "$M_RC" != 0 ]; then
  STATUS[binlake]="FAILED (exit $M_RC)"; FAILURES+=("binlake exited with status $M_RC"); show_err binlake
else
  # Count what binlake wrote: every Parquet file under bench/sbtest1.
  if ! counted=$("$PYTHON" - "$OUT/bench/sbtest1" <<'EOF' 2>"$LOGS/count.err"
import glob, os, sys
d = sys.argv[1]
files = sorted(glob.glob(os.path.join(d, "**", "*.parquet"), recursive=True))
if not files:
    sys.exit(f"no Parquet files under {d}")
try:
    import duckdb
    n, distinct = duckdb.connect().execute(
        "SELECT count(*), count(DISTINCT id) FROM read_parquet(?)", [files]
    ).fetchone()
except ImportError:
    import pyarrow.parquet as pq
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    distinct = len(set().union(*(set(pq.read_table(f, columns=["id"]).column(0).to_pylist()) for f in files)))
print(n, distinct, len(files))
EOF
  ); then
    STATUS[binlake]="FAILED (count)"; FAILURES+=("could not count binlake's Parquet output: $(tail -n1 "$LOGS/count.err")")
  else
    read -r pq_rows pq_ids pq_files <<<"$counted"
    log "binlake wrote $pq_rows rows ($pq_ids distinct ids) in $pq_files Parquet file(s)"
    if [ "$pq_rows" != "$ROWS" ] || [ "$pq_ids" != "$ROWS" ]; then
      STATUS[binlake]="WRONG ($pq_rows rows)"
      FAILURES+=("binlake's Parquet output has $pq_rows rows / $pq_ids distinct ids, expected $ROWS")
      show_err binlake
    fi
  fi
fi

# ---------------------------------------------------------------- 2. mariadb-binlog
log "2/4 mariadb-binlog --read-from-remote-server -v --to-last-log $FIRST_LOG > /dev/null"
run_measured mariadb-binlog /dev/null mariadb-binlog --no-defaults --read-from-remote-server \
  --host=127.0.0.1 --port="$PORT" --user=binlake --password=binlake -v --to-last-log "$FIRST_LOG"
record mariadb-binlog
STATUS[mariadb-binlog]=ok
if [ "$M_RC" != 0 ]; then
  STATUS[mariadb-binlog]="FAILED (exit $M_RC)"; FAILURES+=("mariadb-binlog exited with status $M_RC"); show_err mariadb-binlog
else
  # Untimed second pass: check that it really decoded every row (one '### INSERT INTO' per row).
  mb_rows=$(mariadb-binlog --no-defaults --read-from-remote-server --host=127.0.0.1 --port="$PORT" \
    --user=binlake --password=binlake -v --to-last-log "$FIRST_LOG" 2>>"$LOGS/mariadb-binlog.err" |
    grep -c '^### INSERT INTO `bench`.`sbtest1`' || true)
  if [ "$mb_rows" != "$ROWS" ]; then
    STATUS[mariadb-binlog]="WRONG ($mb_rows rows)"
    FAILURES+=("mariadb-binlog printed $mb_rows row inserts, expected $ROWS"); show_err mariadb-binlog
  fi
fi

# ---------------------------------------------------------------- 3. python-mysql-replication
PYREPL_VERSION=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("mysql-replication"))' 2>/dev/null || echo '?')
if [ "$SKIP_PYREPL" = 1 ]; then
  log "3/4 python-mysql-replication skipped (SKIP_PYREPL=1)"
  STATUS[python-mysql-replication]=skipped; SECS[python-mysql-replication]=-; CPU[python-mysql-replication]=-; RATE[python-mysql-replication]=0; RSS[python-mysql-replication]=-
else
  log "3/4 python-mysql-replication $PYREPL_VERSION (tests/bench/pyrepl_peer.py)"
  run_measured pyrepl "$LOGS/pyrepl.out" "$PYTHON" "$here/pyrepl_peer.py" --host 127.0.0.1 --port "$PORT" \
    --user binlake --password binlake --server-id $((3000000 + $$ % 100000)) --log-file "$FIRST_LOG"
  record python-mysql-replication
  STATUS[python-mysql-replication]=ok
  py_rows=$(tail -n1 "$LOGS/pyrepl.out" 2>/dev/null || true)
  if [ "$M_RC" != 0 ]; then
    STATUS[python-mysql-replication]="FAILED (exit $M_RC)"; FAILURES+=("pyrepl_peer.py exited with status $M_RC"); show_err pyrepl
  elif [ "$py_rows" != "$ROWS" ]; then
    STATUS[python-mysql-replication]="WRONG ($py_rows rows)"
    FAILURES+=("python-mysql-replication decoded '$py_rows' rows, expected $ROWS"); show_err pyrepl
  fi
fi

# ---------------------------------------------------------------- 4. raw transfer (the limit)
RAW=$WORK/raw
if [ -d /dev/shm ] && [ -w /dev/shm ]; then RAW=$(mktemp -d /dev/shm/binlake-bench-raw.XXXXXX); fi
mkdir -p "$RAW"
log "4/4 raw transfer: mariadb-binlog --read-from-remote-server --raw --to-last-log $FIRST_LOG into $RAW"
run_measured raw /dev/null mariadb-binlog --no-defaults --read-from-remote-server --raw \
  --host=127.0.0.1 --port="$PORT" --user=binlake --password=binlake --to-last-log \
  --result-file="$RAW/" "$FIRST_LOG"
record "raw transfer"
STATUS[raw transfer]=ok
raw_bytes=$(du -sb "$RAW" | awk '{ print $1 }')
if [ "$M_RC" != 0 ]; then
  STATUS[raw transfer]="FAILED (exit $M_RC)"; FAILURES+=("mariadb-binlog --raw exited with status $M_RC"); show_err raw
elif [ "$raw_bytes" -lt $((BINLOG_BYTES * 9 / 10)) ]; then
  STATUS[raw transfer]="WRONG ($raw_bytes bytes)"; FAILURES+=("the raw copy holds $raw_bytes bytes of a $BINLOG_BYTES-byte binlog")
fi
rm -rf "$RAW"

# ---------------------------------------------------------------- report
model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
[ -n "$model" ] || model=$(lscpu 2>/dev/null | awk -F': *' '/Model name/ { print $2; exit }' || true)
mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || echo '?')

echo
echo "== binlake catch-up benchmark =="
echo "machine:  $(nproc) CPU(s), ${model:-unknown CPU}, $mem RAM, $(uname -sr)"
echo "server:   MariaDB $(sql -e 'SELECT VERSION()'), binlog $BINLOG_MIB MiB in $NLOGS file(s), ROW/FULL"
echo "binlake:  $("$BINLAKE" --version 2>/dev/null || echo '?') $BINLAKE_ARGS"
echo "workload: $ROWS rows into bench.sbtest1, $STATEMENTS transactions of up to $CHUNK rows"
echo "generate: ${GEN_SECS}s ($(rate "$ROWS" "$GEN_SECS") rows/s)"
[ -n "$TIME_BIN" ] && echo "peak RSS: /usr/bin/time -v" || echo "peak RSS: VmHWM polled from /proc every 50 ms"
echo
printf '%-26s %10s %10s %12s %14s %10s  %s\n' reader rows seconds rows/s "peak RSS MiB" "CPU s" status
for r in binlake mariadb-binlog python-mysql-replication "raw transfer"; do
  printf '%-26s %10s %10s %12s %14s %10s  %s\n' "$r" "$ROWS" "${SECS[$r]}" "${RATE[$r]}" "${RSS[$r]}" "${CPU[$r]}" "${STATUS[$r]}"
done
echo "(seconds = wall time of the reader process, start to exit; CPU s = its user+sys time, excluding the server;"
echo " raw transfer = the binlog copied undecoded: rows/s is ROWS over its time, the rate no reader can beat)"
echo

target() { # target LABEL VALUE OP LIMIT UNIT
  local verdict
  verdict=$(awk -v v="$2" -v l="$4" -v op="$3" 'BEGIN {
    ok = (op == ">=") ? (v >= l) : (v < l); print ok ? "PASS" : "MISS" }')
  printf '%-44s %10s   target %s %s%s   %s\n' "$1" "$2$5" "$3" "$4" "$5" "$verdict"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print 0 }'; }
na() { printf '%-44s %10s   target %s\n' "$1" n/a "$2"; }
ok() { [ "${STATUS[$1]}" = ok ]; }
if [ "${STATUS[python-mysql-replication]}" = skipped ]; then :
elif ok binlake && ok python-mysql-replication; then
  target "binlake / python-mysql-replication (rows/s)" "$(ratio "${RATE[binlake]}" "${RATE[python-mysql-replication]}")" ">=" 10 x
else na "binlake / python-mysql-replication (rows/s)" ">= 10x   (a reader failed)"; fi
if ok binlake && ok mariadb-binlog; then
  target "binlake / mariadb-binlog (rows/s)" "$(ratio "${RATE[binlake]}" "${RATE[mariadb-binlog]}")" ">=" 1.0 x
else na "binlake / mariadb-binlog (rows/s)" ">= 1.0x   (a reader failed)"; fi
if ok binlake && ok "raw transfer"; then
  printf '%-44s %10s   (of the limit; mariadb-binlog -v: %sx)\n' "binlake / raw transfer (rows/s)" \
    "$(ratio "${RATE[binlake]}" "${RATE[raw transfer]}")x" "$(ratio "${RATE[mariadb-binlog]}" "${RATE[raw transfer]}")"
fi
if ok binlake; then target "binlake peak RSS" "${RSS[binlake]}" "<" 300 " MiB"
else na "binlake peak RSS" "< 300 MiB   (binlake failed)"; fi
echo "(targets are informational: a MISS does not fail the run)"

if [ "${#FAILURES[@]}" -gt 0 ]; then
  echo
  for f in "${FAILURES[@]}"; do echo "FAILED: $f" >&2; done
  [ "$KEEP" = 1 ] || echo "(rerun with KEEP=1 to keep the logs in $LOGS)" >&2
  exit 1
fi

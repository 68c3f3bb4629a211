#!/usr/bin/env bash
# Steady-state latency benchmark (issues 3 and 6). For SECONDS (default 60), against MariaDB:
# - sysbench `oltp_write_only` (Debian's sysbench, 4 tables of 10,000 rows) at SB_RATE
#   transactions/s (default 200; 0 = as fast as it goes) with SB_THREADS threads (default 2);
# - beside it, a probe load of RATE row changes/s (default 1,000: 10 transactions/s of 50
#   inserts + 50 updates) whose rows carry their commit time on the client's clock.
# Both are replicated live by `binlake replicate` with default settings (max_latency 1s) to each
# sink in turn. Prints commit-to-visible p50/p99 per sink for the probe transactions: source
# COMMIT to the target version holding them (Delta commit timestamp; binlake's commit log time
# for Parquet; for ClickHouse, polls of the `_current` view every 50 ms).
# Target: p99 <= max_latency + 1 s.
#   bash tests/bench/latency.sh     SINKS="parquet delta" RATE=1000 SB_RATE=200 SECONDS_=60 KEEP=1
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${RATE:-1000}
SB_RATE=${SB_RATE:-200}
SB_THREADS=${SB_THREADS:-2}
DURATION=${SECONDS_:-60}
SINKS=${SINKS:-parquet delta clickhouse}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/binlake/target}
cargo build --release --quiet --features delta
B=$CARGO_TARGET_DIR/release/binlake
W=$(mktemp -d "${TMPDIR:-/tmp}/binlake-lat.XXXXXX")
trap 'bash tests/scripts/mariadb.sh stop "$W/db" >/dev/null 2>&1 || true; bash tests/scripts/clickhouse.sh stop "$W/ch" >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
P=$(bash tests/scripts/mariadb.sh start "$W/db" 1)
echo "machine: $(nproc) CPU, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo); sysbench oltp_write_only at $SB_RATE tps ($SB_THREADS threads) + probe $RATE changes/s for $DURATION s; max_latency 1s"
SB=(sysbench oltp_write_only --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$P" --mysql-user=root
  --mysql-db=sbtest --tables=4 --table-size=10000)
fail=0
for sink in $SINKS; do
  mariadb --no-defaults -h127.0.0.1 -P"$P" -uroot -e "DROP DATABASE IF EXISTS bench; DROP DATABASE IF EXISTS sbtest; CREATE DATABASE sbtest"
  "${SB[@]}" prepare >"$W/$sink.sb-prepare.log" 2>&1
  target="$W/$sink"; extra=()
  if [ "$sink" = clickhouse ]; then
    target=$(bash tests/scripts/clickhouse.sh start "$W/ch"); extra=(--database-prefix lat_)
    export POLL_CLICKHOUSE=$target POLL_DB=lat_bench POLL_OUT="$W/ch.polls"
  fi
  "$B" replicate --source "mysql://binlake:binlake@127.0.0.1:$P" --tables 'bench.*,sbtest.*' --sink "$sink" \
    --target "$target" "${extra[@]}" --start-at current 2>"$W/$sink.log" &
  pid=$!
  sleep 2
  "${SB[@]}" --time="$DURATION" --rate="$SB_RATE" --threads="$SB_THREADS" --report-interval=0 run >"$W/$sink.sb.log" 2>&1 &
  sbpid=$!
  python3 tests/bench/latency.py load "$P" "$RATE" "$DURATION" "$W/$sink.stamps"
  wait $sbpid || { echo "sysbench failed:"; tail -20 "$W/$sink.sb.log"; exit 1; }
  echo "sysbench: $(grep -E 'transactions:' "$W/$sink.sb.log" | xargs)"
  unset POLL_CLICKHOUSE
  sleep 5
  kill -TERM $pid; wait $pid || true
  if [ "$sink" = delta ]; then
    python3 tests/bench/latency.py delta "$W/delta/bench/lat" "$W/$sink.stamps" || fail=1
  elif [ "$sink" = clickhouse ]; then
    python3 tests/bench/latency.py clickhouse "$W/ch.polls" "$W/$sink.stamps" || fail=1
  else
    python3 tests/bench/latency.py parquet "$W/$sink" "$W/$sink.stamps" || fail=1
  fi
done
exit $fail

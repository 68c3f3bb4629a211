#!/usr/bin/env bash
# Freshness benchmark (issue 19): commit-to-visible of live replication with default settings,
# per sink and load, against MariaDB. Loads (PROFILES, default all three), SECONDS_ each
# (default 30):
# - single:   500 single-row transactions/s (inserts and updates of bench.lat);
# - batch:    5,000 row changes/s in 100-row transactions (50/s);
# - sysbench: sysbench `oltp_write_only` (4 tables of 10,000 rows) at SB_RATE transactions/s
#             (default 200, SB_THREADS=2 threads), beside a probe of 50 single-row transactions/s.
# Latency is measured from the client's COMMIT (its clock, stamped into the row) to the moment a
# reader of the target can see the row: the log entry that makes it visible was written (Delta
# log version, binlake's Parquet commit log; file modification time, same machine and clock), or
# for ClickHouse the first poll of the `_current` view (every 20 ms) that shows it.
# Targets: p99 under 250 ms for Parquet and ClickHouse, under 500 ms for Delta. Not a test: it
# prints p50/p99/max per sink and load; it fails only if a change never became visible.
# EXTRA="--maintain-every 10s" passes flags to replicate; READS=1 samples the read time of the
# current state of bench.lat every 10 s meanwhile (tests/bench/readtime.py; Parquet and Delta).
# With compaction in EXTRA, Parquet's latency figures mean nothing: compaction deletes the log
# entries the measurement reads (use those runs for the read times only).
#   bash tests/bench/latency.sh     SINKS="parquet delta" PROFILES="single batch" SECONDS_=30 KEEP=1
set -euo pipefail
cd "$(dirname "$0")/../.."
SB_RATE=${SB_RATE:-200}
SB_THREADS=${SB_THREADS:-2}
DURATION=${SECONDS_:-30}
SINKS=${SINKS:-parquet delta clickhouse}
PROFILES=${PROFILES:-single batch sysbench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/binlake/target}
cargo build --release --quiet --features delta,clickhouse
B=$CARGO_TARGET_DIR/release/binlake
W=$(mktemp -d "${TMPDIR:-/tmp}/binlake-lat.XXXXXX")
trap 'bash tests/scripts/mariadb.sh stop "$W/db" >/dev/null 2>&1 || true; bash tests/scripts/clickhouse.sh stop "$W/ch" >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
P=$(bash tests/scripts/mariadb.sh start "$W/db" 1)
echo "machine: $(nproc) CPU, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo); $DURATION s per load; binlake defaults (max_latency 1s, per-sink min_commit_interval)"
SB=(sysbench oltp_write_only --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$P" --mysql-user=root
  --mysql-db=sbtest --tables=4 --table-size=10000)
CH=""
fail=0
for sink in $SINKS; do
  for profile in $PROFILES; do
    run="$sink-$profile"
    mariadb --no-defaults -h127.0.0.1 -P"$P" -uroot -e "DROP DATABASE IF EXISTS bench; DROP DATABASE IF EXISTS sbtest; CREATE DATABASE sbtest"
    target="$W/$run"; extra=()
    if [ "$sink" = clickhouse ]; then
      [ -n "$CH" ] || CH=$(bash tests/scripts/clickhouse.sh start "$W/ch")
      prefix="lat_${profile}_"
      target=$CH; extra=(--database-prefix "$prefix")
      export POLL_CLICKHOUSE=$CH POLL_DB="${prefix}bench" POLL_OUT="$W/$run.polls"
    fi
    case $profile in
      single) rate=500; rows=1 ;;
      batch) rate=5000; rows=100 ;;
      sysbench) rate=50; rows=1; "${SB[@]}" prepare >"$W/$run.sb-prepare.log" 2>&1 ;;
      *) echo "unknown profile $profile"; exit 2 ;;
    esac
    "$B" replicate --source "mysql://binlake:binlake@127.0.0.1:$P" --tables 'bench.*,sbtest.*' --sink "$sink" \
      --target "$target" "${extra[@]}" ${EXTRA:-} --start-at current 2>"$W/$run.log" &
    pid=$!
    rpid=""
    if [ -n "${READS:-}" ] && [ "$sink" != clickhouse ]; then
      python3 tests/bench/readtime.py "$sink" "$target" 10 "$W/$run.stop" &
      rpid=$!
    fi
    sleep 2
    sbpid=""
    if [ "$profile" = sysbench ]; then
      "${SB[@]}" --time="$DURATION" --rate="$SB_RATE" --threads="$SB_THREADS" --report-interval=0 run >"$W/$run.sb.log" 2>&1 &
      sbpid=$!
    fi
    echo "== $sink, $profile"
    python3 tests/bench/latency.py load "$P" "$rate" "$DURATION" "$W/$run.stamps" "$rows"
    if [ -n "$sbpid" ]; then
      wait "$sbpid" || { echo "sysbench failed:"; tail -20 "$W/$run.sb.log"; exit 1; }
      echo "sysbench: $(grep -E 'transactions:' "$W/$run.sb.log" | xargs)"
    fi
    unset POLL_CLICKHOUSE
    sleep 3
    if [ -n "$rpid" ]; then touch "$W/$run.stop"; wait "$rpid" || true; fi
    kill -TERM $pid; wait $pid || true
    echo "commits: $(grep -c '"committed"\|committed rows' "$W/$run.log" || true) logged; $(grep -o 'commits=[0-9]*' "$W/$run.log" | tail -1)"
    case $sink in
      delta) python3 tests/bench/latency.py delta "$W/$run/bench/lat" "$W/$run.stamps" || fail=1 ;;
      clickhouse) python3 tests/bench/latency.py clickhouse "$W/$run.polls" "$W/$run.stamps" || fail=1 ;;
      *) python3 tests/bench/latency.py parquet "$W/$run" "$W/$run.stamps" || fail=1 ;;
    esac
  done
done
exit $fail

#!/usr/bin/env bash
# The binlake demo: installs what is missing, starts a throwaway MariaDB with sample data, replicates
# it into ./lake while live changes happen, and ends with a query of the replica next to the source.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bash tests/scripts/install-deps.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/binlake/target}
echo "== building binlake (release)"
cargo build --release --quiet
BINLAKE="$CARGO_TARGET_DIR/release/binlake"
work="$root/.binlake-demo"
lake="$root/lake"
bash tests/scripts/mariadb.sh stop "$work/db" 2>/dev/null || true
rm -rf "$work" "$lake"
mkdir -p "$work"
echo "== starting a throwaway MariaDB in $work/db"
port=$(bash tests/scripts/mariadb.sh start "$work/db" 1)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true; bash tests/scripts/mariadb.sh stop "$work/db"; }
trap cleanup EXIT
sql() { mariadb --no-defaults --default-character-set=utf8mb4 -h127.0.0.1 -P"$port" -uroot "$@"; }
echo "== sample data: shop.customers (1,000 rows), shop.orders (20,000 rows)"
sql <"$root/examples/demo.sql"
echo "== binlake check"
"$BINLAKE" check --source "mysql://binlake:binlake@127.0.0.1:$port"
echo "== binlake replicate into $lake (in the background)"
"$BINLAKE" replicate --source "mysql://binlake:binlake@127.0.0.1:$port" --tables 'shop.*' --target "$lake" \
  --start-at earliest --max-latency 500ms >"$work/binlake.log" 2>&1 &
pid=$!
echo "== live changes while it runs"
for i in 1 2 3 4 5; do
  sql -e "UPDATE shop.orders SET status = 'shipped' WHERE status = 'paid' AND id % 50 = $i;
          DELETE FROM shop.orders WHERE status = 'cancelled' AND id % 100 = $i;
          INSERT INTO shop.orders (customer_id, amount, status) VALUES ($i, 99.99, 'new'), ($i + 1, 12.50, 'paid');
          UPDATE shop.customers SET email = NULL WHERE id = $i;"
  echo "   change batch $i applied at the source"
  sleep 1
done
sleep 2
echo "== stopping binlake (SIGTERM: it commits what is complete, then exits)"
kill -TERM "$pid"; wait "$pid" || true; pid=
tail -n 3 "$work/binlake.log" | sed 's/^/   /'
echo "== the replica's current state, read with DuckDB (highest version per key, tombstones dropped)"
python3 - "$lake" "$port" <<'PY'
import sys, duckdb, pymysql
lake, port = sys.argv[1], int(sys.argv[2])
q = f"""
SELECT status, count(*) AS orders, sum(amount) AS revenue
FROM (SELECT * FROM read_parquet('{lake}/shop/orders/*.parquet')
      QUALIFY row_number() OVER (PARTITION BY id ORDER BY _binlake_version DESC) = 1)
WHERE NOT _binlake_deleted GROUP BY status ORDER BY status"""
replica = duckdb.sql(q).fetchall()
src = pymysql.connect(host="127.0.0.1", port=port, user="root")
with src.cursor() as c:
    c.execute("SELECT CAST(status AS CHAR) s, count(*), sum(amount) FROM shop.orders GROUP BY s ORDER BY s")
    source = [tuple(r) for r in c.fetchall()]
print(f"   {'status':<10} {'replica orders':>14} {'replica revenue':>16}   {'source orders':>13} {'source revenue':>15}")
for (s, n, r), (s2, n2, r2) in zip(replica, source):
    print(f"   {s:<10} {n:>14} {r:>16}   {n2:>13} {r2:>15}")
print("   replica equals source" if [(a, b, float(c)) for a, b, c in replica] == [(a, b, float(c)) for a, b, c in source] else "   MISMATCH")
PY
echo "== done. The lake is in $lake; query it with DuckDB:"
echo "   SELECT * FROM read_parquet('lake/shop/orders/*.parquet') QUALIFY row_number() OVER (PARTITION BY id ORDER BY _binlake_version DESC) = 1"

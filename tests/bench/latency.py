"""Steady-state latency for the benchmark scripts: a paced workload, then commit-to-visible.

  latency.py load  PORT RATE SECONDS OUT [ROWS_PER_TXN]   writes RATE row changes/s for SECONDS
                                                         into bench.lat (default 100 rows/txn)
  latency.py delta TABLE_DIR LOAD_FILE      p50/p99/max from the Delta log of the replica
  latency.py parquet TARGET LOAD_FILE       p50/p99/max from binlake's commit log of a Parquet lake
  latency.py clickhouse POLLS LOAD_FILE     p50/p99/max from the polls the load made (POLL_CLICKHOUSE)

Every transaction stamps its rows with `ts_us`, the client's clock just before COMMIT (one
increasing value per transaction). Visible time: the moment the log entry that makes the rows
visible was written (the file's modification time: a Delta log version, or binlake's commit log
entry whose files hold the rows in a Parquet lake); for ClickHouse, which keeps no commit time,
the load polls `max(ts_us)` of the `_current` view every 20 ms (POLL_CLICKHOUSE=URL and
POLL_DB=database), so its figures carry up to 20 ms of polling error. Same machine, same clock.
"""
import glob
import json
import os
import random
import sys
import time

TXN_ROWS = 100  # half new keys, half updates of existing keys


def load(port, rate, seconds, txn_rows=TXN_ROWS):
    import pymysql

    con = pymysql.connect(host="127.0.0.1", port=int(port), user="root", autocommit=False)
    cur = con.cursor()
    cur.execute("CREATE DATABASE IF NOT EXISTS bench")
    cur.execute(
        "CREATE TABLE IF NOT EXISTS bench.lat (id INT PRIMARY KEY, k INT NOT NULL, "
        "c CHAR(60) NOT NULL, ts_us BIGINT NOT NULL)"
    )
    con.commit()
    polls = []
    poll_stop = False
    if os.environ.get("POLL_CLICKHOUSE"):
        import threading
        import urllib.parse
        import urllib.request

        def poll():
            url = os.environ["POLL_CLICKHOUSE"].rstrip("/") + "/?" + urllib.parse.urlencode(
                {"query": f"SELECT max(ts_us) FROM `{os.environ['POLL_DB']}`.lat_current"})
            while not poll_stop:
                try:
                    v = urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=10).read().strip()
                    polls.append((time.time_ns() // 1000, int(v or 0)))
                except Exception:
                    pass
                time.sleep(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
    per_s = rate / txn_rows  # transactions per second
    fresh = max(1, txn_rows // 2)  # new keys per transaction, the rest updates
    n_txn = int(per_s * seconds)
    next_id = 1
    start = time.monotonic()
    stamps = []
    late = 0
    for i in range(n_txn):
        due = start + i / per_s
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.5:
            late += 1
        rows = []
        if txn_rows == 1 and i % 2 == 1:
            rows.append(random.randrange(1, next_id))  # single-row: insert, update, insert...
        else:
            for _ in range(fresh):
                rows.append(next_id)
                next_id += 1
            older = next_id - fresh - 1
            if txn_rows > fresh and older > 0:
                rows += random.sample(range(1, older + 1), min(txn_rows - fresh, older))
        ts = time.time_ns() // 1000
        values = ",".join(f"({r},{random.randrange(1 << 20)},'{random.randrange(1 << 60):060d}',{ts})" for r in rows)
        cur.execute(
            f"INSERT INTO bench.lat (id, k, c, ts_us) VALUES {values} "
            "ON DUPLICATE KEY UPDATE k = VALUES(k), c = VALUES(c), ts_us = VALUES(ts_us)"
        )
        con.commit()
        stamps.append(ts)
    took = time.monotonic() - start
    if polls is not None and os.environ.get("POLL_CLICKHOUSE"):
        time.sleep(5)
        poll_stop = True
        json.dump(polls, open(os.environ["POLL_OUT"], "w"))
    changes = n_txn * txn_rows
    print(f"load: {changes} row changes in {n_txn} transactions over {took:.1f} s = {changes / took:.0f} changes/s (target {rate}); {late} transactions started > 0.5 s late", flush=True)
    return stamps


def percentiles(lat_ms):
    lat_ms.sort()
    pick = lambda q: lat_ms[min(len(lat_ms) - 1, int(q * len(lat_ms)))]
    return pick(0.50), pick(0.99), lat_ms[-1]


def report(name, stamps, versions):
    """versions: [(visible_us, [parquet files added])] in commit order. binlake commits a prefix
    of the source's transactions, so transaction `ts` is visible from the first version whose
    files hold a stamp >= ts (its own rows may have been superseded by a later transaction of the
    same batch)."""
    import pyarrow.parquet as pq

    seen, high = [], -1
    for vis, files in versions:
        for f in files:
            col = pq.read_table(f, columns=["ts_us"]).column("ts_us")
            if len(col):
                high = max(high, max(col.to_pylist()))
        seen.append((vis, high))
    return from_frontier(name, stamps, seen)


def from_frontier(name, stamps, seen, note=""):
    """seen: [(time_us, highest stamp visible then)] in time order -> p50/p99 printed."""
    import bisect

    frontier = []
    for t, high in seen:
        if not frontier or high > frontier[-1][0]:
            frontier.append((high, t))
    highs = [h for h, _ in frontier]
    lat, missing = [], 0
    for s in stamps:
        i = bisect.bisect_left(highs, s)
        if i == len(highs):
            missing += 1
        else:
            lat.append((frontier[i][1] - s) / 1000.0)
    p50, p99, mx = percentiles(lat)
    print(f"{name}: {len(lat)} transactions, commit-to-visible p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {mx:.0f} ms{note}; {missing} never visible", flush=True)
    return 0 if not missing else 1


def clickhouse_polls(polls_file, stamps):
    """polls: [(time_us, max stamp visible)] taken every 20 ms during the load."""
    return from_frontier("clickhouse", stamps, [tuple(p) for p in json.load(open(polls_file))], " (polled every 20 ms)")


def delta(table_dir, stamps):
    versions = []
    for path in sorted(glob.glob(os.path.join(table_dir, "_delta_log", "*.json"))):
        vis, adds = os.stat(path).st_mtime_ns // 1000, []
        for line in open(path):
            a = json.loads(line)
            if "add" in a:
                adds.append(os.path.join(table_dir, a["add"]["path"]))
        versions.append((vis, adds))
    return report("delta", stamps, versions)


def parquet(target, stamps):
    commits = []
    for path in glob.glob(os.path.join(target, "_binlake", "default", "log", "*.json")):
        entry = json.load(open(path))
        files = [os.path.join(target, f["path"]) for f in entry.get("files", []) if f["table"] == "bench.lat"]
        commits.append((os.stat(path).st_mtime_ns // 1000, files))
    commits.sort()
    return report("parquet", stamps, commits)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "load":
        rows = int(sys.argv[6]) if len(sys.argv) > 6 else TXN_ROWS
        stamps = load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), rows)
        json.dump(stamps, open(sys.argv[5], "w"))
        code = 0
    else:
        stamps = json.load(open(sys.argv[3]))
        if mode == "delta":
            code = delta(sys.argv[2], stamps)
        elif mode == "clickhouse":
            code = clickhouse_polls(sys.argv[2], stamps)
        else:
            code = parquet(sys.argv[2], stamps)
    sys.stdout.flush()
    os._exit(code)

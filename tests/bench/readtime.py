"""Read time of a replica's current state, sampled while binlake writes it (tests/bench/latency.sh
with READS=1): every INTERVAL seconds until STOP_FILE exists, prints the number of data files
and how long the documented current-state read of bench.lat takes (DuckDB's query for a Parquet
lake, the deltalake reader for Delta).

  readtime.py parquet|delta TARGET INTERVAL STOP_FILE
"""
import glob
import os
import sys
import time


def parquet_read(target):
    import duckdb
    path = os.path.join(target, "bench", "lat", "*.parquet")
    files = len(glob.glob(path))
    if not files:
        return 0, 0.0, 0
    t0 = time.perf_counter()
    n = duckdb.connect().execute(
        f"SELECT count(*) FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _binlake_version DESC) AS rn "
        f"FROM read_parquet('{path}', union_by_name = true)) WHERE rn = 1 AND NOT _binlake_deleted").fetchone()[0]
    return files, (time.perf_counter() - t0) * 1000, n


def delta_read(target):
    from deltalake import DeltaTable
    uri = os.path.join(target, "bench", "lat")
    if not os.path.exists(os.path.join(uri, "_delta_log")):
        return 0, 0.0, 0
    t0 = time.perf_counter()
    dt = DeltaTable(uri)
    t = dt.to_pyarrow_table(filters=[("_binlake_deleted", "=", False)])
    ms = (time.perf_counter() - t0) * 1000
    return len(dt.file_uris()), ms, t.num_rows


if __name__ == "__main__":
    kind, target, interval, stop = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    read = parquet_read if kind == "parquet" else delta_read
    start = time.time()
    while not os.path.exists(stop):
        time.sleep(interval)
        try:
            files, ms, rows = read(target)
            print(f"reads: t={time.time() - start:5.0f}s files={files} rows={rows} current-state read {ms:.0f} ms", flush=True)
        except Exception as e:  # a file replaced between listing and reading: a reader's transient error
            print(f"reads: t={time.time() - start:5.0f}s read failed: {type(e).__name__}: {e}", flush=True)

#!/usr/bin/env python3
"""Random writes to a table with an integer primary key `id` and columns k INT, c VARCHAR, for
tests that need a source changing under binlake: inserts above and inside the existing key range,
updates, deletes, primary-key changes, and multi-statement transactions.

usage: workload.py --port P --table db.t --seconds S [--seed N] [--max-id N] [--stop-file F]
Stops after S seconds, or as soon as F exists.
Prints the number of transactions it committed.
"""
import argparse, os, random, time

import pymysql

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--table", required=True)
ap.add_argument("--seconds", type=float, required=True)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--max-id", type=int, default=1_000_000)
ap.add_argument("--stop-file")
a = ap.parse_args()
rng = random.Random(a.seed)
db, t = a.table.split(".")
q = f"`{db}`.`{t}`"
conn = pymysql.connect(host="127.0.0.1", port=a.port, user="root", autocommit=False)
cur = conn.cursor()
fresh = a.max_id * 2  # keys above the snapshot's range
end = time.time() + a.seconds
txns = 0
while time.time() < end and not (a.stop_file and os.path.exists(a.stop_file)):
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        key = rng.randint(1, a.max_id)
        if op < 0.3:
            fresh += 1
            cur.execute(f"INSERT INTO {q} (id, k, c) VALUES (%s, %s, %s)", (fresh, rng.randint(0, 999), f"new-{fresh}"))
        elif op < 0.65:
            cur.execute(f"UPDATE {q} SET k = k + 1, c = CONCAT('u', %s) WHERE id BETWEEN %s AND %s", (txns, key, key + rng.randint(0, 20)))
        elif op < 0.85:
            cur.execute(f"DELETE FROM {q} WHERE id BETWEEN %s AND %s", (key, key + rng.randint(0, 5)))
        elif op < 0.95:
            # a key change: the row moves to a key the snapshot may or may not have read yet
            fresh += 1
            new = fresh if rng.random() < 0.5 else -key
            cur.execute(f"UPDATE IGNORE {q} SET id = %s WHERE id = %s", (new, key))
        else:
            # a deleted key comes back
            cur.execute(f"INSERT IGNORE INTO {q} (id, k, c) VALUES (%s, 1, 'back')", (key,))
    conn.commit()
    txns += 1
conn.close()
print(txns)

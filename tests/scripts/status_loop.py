#!/usr/bin/env python3
"""Runs SHOW GLOBAL STATUS in a loop, as a monitoring agent does, until a stop file exists or the
time is up. MariaDB answers SHOW STATUS through shared variables that every session's SHOW
STATUS rewrites: binlake's snapshot handoff must not depend on them.

usage: status_loop.py --port P --seconds S --stop-file F        prints the number of queries
"""
import argparse, os, time

import pymysql

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--seconds", type=float, required=True)
ap.add_argument("--stop-file", required=True)
a = ap.parse_args()
conn = pymysql.connect(host="127.0.0.1", port=a.port, user="root", autocommit=True)
cur = conn.cursor()
end = time.time() + a.seconds
n = 0
while time.time() < end and not os.path.exists(a.stop_file):
    cur.execute("SHOW GLOBAL STATUS")
    cur.fetchall()
    n += 1
print(n)

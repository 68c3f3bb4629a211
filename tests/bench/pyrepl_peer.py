#!/usr/bin/env python3
"""Catch-up reader for the binlake benchmark, built on python-mysql-replication.

Reads the binlog of a MariaDB server from the start of its first file to the current end
(non-blocking dump: the server sends EOF after the last event), decodes every
WriteRowsEvent of the given table and prints the number of rows as the only line on stdout.

    pyrepl_peer.py --port PORT [--host H] [--user U] [--password P] [--server-id N]
                   [--log-file binlog.000001] [--schema bench] [--table sbtest1]

Why not is_mariadb=True: in python-mysql-replication 1.0.x (checked with 1.0.17) the
COM_BINLOG_DUMP packet built for MariaDB declares a 14-byte payload but sends 15 bytes
(cmd, pos, flags, server id and a 4-byte empty file name).  MariaDB aborts the dump
connection a few hundred KiB in ("Got an error reading communication packets"), the
library silently reconnects and restarts from position 4, forever.  The MySQL-style
dump from an explicit file and position 4 works against MariaDB and decodes the same
events (MariaDB GTID/annotate events are recognised by event type either way).
As a safety net the reader fails if the stream ever goes backwards (a silent restart).
"""
import argparse
import sys

import pymysql

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import WriteRowsEvent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="binlake")
    ap.add_argument("--password", default="binlake")
    ap.add_argument("--server-id", type=int, default=4_171_717)
    ap.add_argument("--log-file", help="first binlog file (default: first of SHOW BINARY LOGS)")
    ap.add_argument("--is-mariadb", action="store_true",
                    help="use the library's MariaDB dump (is_mariadb=True); loops on 1.0.17, see above")
    ap.add_argument("--schema", default="bench")
    ap.add_argument("--table", default="sbtest1")
    args = ap.parse_args()

    conn = {"host": args.host, "port": args.port, "user": args.user, "password": args.password}
    log_file = args.log_file
    if not log_file:
        with pymysql.connect(**conn) as c, c.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            log_file = cur.fetchone()[0]

    kwargs = dict(
        connection_settings=conn,
        server_id=args.server_id,
        blocking=False,  # BINLOG_DUMP_NON_BLOCK: EOF at the end of the last log
        resume_stream=False,  # with log_file given this dumps from log_file:4
        log_file=log_file,
        log_pos=4,
        only_events=[WriteRowsEvent],
    )
    if args.is_mariadb:
        # COM_BINLOG_DUMP with an empty file name at position 4: the server starts at its first log.
        kwargs.update(is_mariadb=True, log_file=None, log_pos=None)
        log_file = ""
    stream = BinLogStreamReader(**kwargs)
    rows = 0
    events = 0
    other_tables = 0
    checked = False
    try:
        last = (log_file, 0)
        for event in stream:
            here = (stream.log_file, stream.log_pos)
            if here <= last:
                print(f"pyrepl_peer: stream went back from {last} to {here}: the library reconnected and "
                      "restarted, the count would be wrong", file=sys.stderr)
                return 1
            last = here
            if event.schema != args.schema or event.table != args.table:
                other_tables += len(event.rows)
                continue
            batch = event.rows  # decodes every row of the event
            events += 1
            rows += len(batch)
            if not checked and batch:
                values = batch[0]["values"]
                missing = {"id", "k", "c", "pad"} - set(values)
                if missing:
                    print(f"pyrepl_peer: decoded row lacks columns {sorted(missing)}: {values!r}", file=sys.stderr)
                    return 1
                if not isinstance(values["id"], int) or not isinstance(values["c"], str):
                    print(f"pyrepl_peer: unexpected decoded types: {values!r}", file=sys.stderr)
                    return 1
                checked = True
    finally:
        stream.close()
    print(f"pyrepl_peer: {events} WriteRowsEvents, {rows} rows of {args.schema}.{args.table}"
          f" ({other_tables} rows of other tables)", file=sys.stderr)
    print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Catch-up reader for the binlake benchmark, built on python-mysql-replication.

Reads the whole binlog of a MariaDB server from the start to its current end
(non-blocking dump), decodes every WriteRowsEvent for the given table and prints
the number of rows decoded as the only line on stdout.

    pyrepl_peer.py --port PORT [--host H] [--user U] [--password P]
                   [--server-id N] [--schema bench] [--table sbtest1]
"""
import argparse
import inspect
import sys

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import WriteRowsEvent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="binlake")
    ap.add_argument("--password", default="binlake")
    ap.add_argument("--server-id", type=int, default=4_171_717)
    ap.add_argument("--schema", default="bench")
    ap.add_argument("--table", default="sbtest1")
    args = ap.parse_args()

    kwargs = dict(
        connection_settings={
            "host": args.host,
            "port": args.port,
            "user": args.user,
            "passwd": args.password,
        },
        server_id=args.server_id,
        blocking=False,  # BINLOG_DUMP_NON_BLOCK: the server sends EOF at the end of the last log
        resume_stream=False,
        only_events=[WriteRowsEvent],
    )
    params = inspect.signature(BinLogStreamReader.__init__).parameters
    if "is_mariadb" in params:
        # With is_mariadb and no auto_position the reader sends COM_BINLOG_DUMP with an
        # empty file name at position 4: the server streams from its first binlog.
        kwargs["is_mariadb"] = True
    else:
        print("pyrepl_peer: this python-mysql-replication has no is_mariadb flag", file=sys.stderr)
        return 2

    stream = BinLogStreamReader(**kwargs)
    rows = 0
    events = 0
    other_tables = 0
    checked = False
    try:
        for event in stream:
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

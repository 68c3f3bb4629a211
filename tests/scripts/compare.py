#!/usr/bin/env python3
"""Compare a source table with its binlake replica, value by value, with readers independent of
binlake: PyMySQL for the source, pyarrow (or DuckDB running the README's current-state query) for
the Parquet lake.

usage: compare.py --port P --target DIR|URL --table db.t [--target-table db.t] [--origin NAME] [--with-origin] [--reader pyarrow|duckdb|delta|clickhouse]
                  [--database-prefix P] [--invalid-as-null]
Exit 0 when equal; 1 with the first differences printed otherwise.
"""
import argparse, datetime as dt, decimal, glob, math, os, sys

import pymysql
from pymysql.constants import FIELD_TYPE as FT

META = ("_binlake_version", "_binlake_deleted", "_binlake_op", "_binlake_commit_ts", "_binlake_synced_at", "_binlake_source")


def source_rows(port, db, table):
    sock = os.environ.get("BINLAKE_TEST_SOURCE_SOCKET")  # a source that refuses plain TCP
    if sock:
        conn = pymysql.connect(unix_socket=sock, user="root", charset="utf8mb4")
    else:
        conn = pymysql.connect(host="127.0.0.1", port=port, user="root", charset="utf8mb4")
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute("SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s "
                    "AND CONSTRAINT_NAME='PRIMARY' ORDER BY ORDINAL_POSITION", (db, table))
        pk = [r[0] for r in cur.fetchall()]
        cur.execute(f"SELECT * FROM `{db}`.`{table}`")
        cols = [(d[0], d[1]) for d in cur.description]
        rows = [dict(zip([c for c, _ in cols], r)) for r in cur.fetchall()]
    conn.close()
    return pk, dict(cols), rows


def replica_rows_pyarrow(target, db, table, pk):
    import pyarrow.parquet as pq
    files = sorted(glob.glob(os.path.join(target, db, table, "**", "*.parquet"), recursive=True))
    best = {}
    for f in files:
        for r in pq.read_table(f).to_pylist():
            key = tuple(r[k] for k in pk) if pk else id(r)
            if key not in best or r["_binlake_version"] > best[key]["_binlake_version"]:
                best[key] = r
    return [r for r in best.values() if not r["_binlake_deleted"]], len(files)


def replica_rows_duckdb(target, db, table, pk):
    """The current-state query the README documents."""
    import duckdb
    path = os.path.join(target, db, table, "**", "*.parquet")
    keys = ", ".join(f'"{k}"' for k in pk)
    q = (f"SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY _binlake_version DESC) AS rn "
         f"FROM read_parquet('{path}', union_by_name = true)) WHERE rn = 1 AND NOT _binlake_deleted")
    con = duckdb.connect()
    cur = con.execute(q)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()], len(glob.glob(path, recursive=True))


def replica_rows_delta(target, db, table, pk):
    """The Delta table holds the current state: one row per key, tombstones flagged."""
    from deltalake import DeltaTable
    opts = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    if opts.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        opts["AWS_ALLOW_HTTP"] = "true"
    if "AWS_CA_BUNDLE" in opts:  # an endpoint with a private CA
        opts["certificate_path"] = opts.pop("AWS_CA_BUNDLE")
    uri = target.rstrip("/") + f"/{db}/{table}"
    dt = DeltaTable(uri, storage_options=opts or None)
    rows = dt.to_pyarrow_table().to_pylist()
    keys = [tuple(r[k] for k in pk) for r in rows]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"{db}.{table}: a key appears twice in the Delta table")
    return [r for r in rows if not r["_binlake_deleted"]], len(dt.file_uris())


def replica_rows_clickhouse(target, db, table, pk, prefix="", ca_file=None):
    """The `<table>_current` view (FINAL, no tombstones) over ClickHouse's HTTP interface."""
    import base64, urllib.parse, urllib.request
    import pyarrow.ipc as ipc
    u = urllib.parse.urlsplit(target)
    base = f"{u.scheme}://{u.hostname}:{u.port or 8123}/"
    q = f"SELECT * FROM `{prefix}{db}`.`{table}_current` FORMAT ArrowStream"
    # Strings as bytes: ClickHouse's String holds any bytes (BLOBs too); text is decoded when compared
    params = {"query": q, "output_format_arrow_string_as_string": "0"}
    req = urllib.request.Request(base + "?" + urllib.parse.urlencode(params), method="POST", data=b"")
    if u.username:
        cred = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
        req.add_header("Authorization", "Basic " + base64.b64encode(cred.encode()).decode())
    import ssl
    ctx = ssl.create_default_context(cafile=ca_file) if u.scheme == "https" else None
    with urllib.request.urlopen(req, timeout=60, context=ctx) as r:
        data = r.read()
    rows = ipc.open_stream(data).read_all().to_pylist() if data else []
    keys = [tuple(r[k] for k in pk) for r in rows]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"{db}.{table}: a key appears twice in the _current view")
    return rows, 1


def norm_source(v, ftype, invalid_as_null):
    if v is None:
        return None
    if ftype == FT.BIT:
        return int.from_bytes(v, "big")
    if ftype == FT.GEOMETRY:
        return bytes(v[4:])
    if ftype in (FT.DATE, FT.NEWDATE, FT.DATETIME, FT.TIMESTAMP) and isinstance(v, str):
        # zero / impossible dates: PyMySQL hands back the text
        return None if invalid_as_null else ("INVALID", v)
    if ftype == FT.TIME and isinstance(v, dt.timedelta):
        return v // dt.timedelta(microseconds=1)
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    return v


def norm_replica(v):
    if isinstance(v, dt.datetime) and v.tzinfo is not None:
        return v.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    return v


def equal(a, b, ftype):
    if a is None or b is None:
        return a is None and b is None
    # the source prints FLOAT with 6 significant digits: half a unit of the 6th digit is 5e-6
    if ftype == FT.FLOAT:
        return math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-30)
    if ftype == FT.DOUBLE:
        return math.isclose(float(a), float(b), rel_tol=1e-13)
    if isinstance(a, str) and isinstance(b, bytes):
        # ClickHouse's String is bytes; text columns hold UTF-8
        b = b.decode("utf-8", "replace")
    if isinstance(a, decimal.Decimal) or isinstance(b, decimal.Decimal):
        # Delta holds DECIMAL wider than 38 digits as its exact text, UNSIGNED BIGINT as DECIMAL(20,0)
        return decimal.Decimal(str(a)) == decimal.Decimal(str(b))
    return a == b


def split_table(text):
    """`db.table` as binlake writes a table: a part holding a dot or a backtick is backtick-quoted,
    with backticks doubled (`d.x`.`t.y`)."""
    parts, i = [], 0
    while len(parts) < 2:
        if text.startswith("`", i):
            j, name = i + 1, ""
            while True:
                k = text.index("`", j)
                name += text[j:k]
                if text.startswith("`", k + 1):
                    name += "`"
                    j = k + 2
                    continue
                i = k + 1
                break
        else:
            k = text.find(".", i) if not parts else len(text)
            k = len(text) if k < 0 else k
            name, i = text[i:k], k
        parts.append(name)
        if not parts[1:] and text.startswith(".", i):
            i += 1
    return parts[0], parts[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--reader", default="pyarrow", choices=["pyarrow", "duckdb", "delta", "clickhouse"])
    ap.add_argument("--database-prefix", default="")
    ap.add_argument("--ca-file", help="CA bundle for an https ClickHouse")
    ap.add_argument("--invalid-as-null", action="store_true")
    ap.add_argument("--target-table", help="the replica's db.table when `map` renames it (default: --table)")
    ap.add_argument("--origin", help="origin_in_key: compare only the replica's rows of this _binlake_origin")
    ap.add_argument("--with-origin", action="store_true", help="conflict: the replica's rows carry _binlake_origin (not in the key)")
    a = ap.parse_args()
    db, table = split_table(a.table)
    pk, types, src = source_rows(a.port, db, table)
    if a.target_table:
        db, table = split_table(a.target_table)
    if not pk:
        print(f"{a.table}: no primary key; compare.py compares keyed tables", file=sys.stderr)
        return 2
    # with origin_in_key the replica's key is the source's plus _binlake_origin
    rpk = pk + ["_binlake_origin"] if a.origin else pk
    if a.reader == "clickhouse":
        rep, nfiles = replica_rows_clickhouse(a.target, db, table, rpk, a.database_prefix, a.ca_file)
    else:
        read = {"pyarrow": replica_rows_pyarrow, "duckdb": replica_rows_duckdb, "delta": replica_rows_delta}[a.reader]
        rep, nfiles = read(a.target, db, table, rpk)
    if a.origin:
        def origin(r):
            o = r.get("_binlake_origin")
            return o.decode() if isinstance(o, bytes) else o  # ClickHouse: String as bytes
        rep = [r for r in rep if origin(r) == a.origin]
    src_by = {tuple(r[k] for k in pk): r for r in src}
    # ClickHouse returns String keys as bytes: text keys are compared as text
    text_key = [any(isinstance(r[k], str) for r in src[:1]) for k in pk]
    def rep_key(r):
        return tuple(r[k].decode("utf-8", "replace") if t and isinstance(r[k], bytes) else r[k]
                     for k, t in zip(pk, text_key))
    rep_by = {rep_key(r): r for r in rep}
    diffs = []
    for k in sorted(set(src_by) - set(rep_by), key=repr)[:10]:
        diffs.append(f"key {k}: in the source, missing from the replica")
    for k in sorted(set(rep_by) - set(src_by), key=repr)[:10]:
        diffs.append(f"key {k}: in the replica, not in the source")
    ncmp = 0
    for k in sorted(set(src_by) & set(rep_by), key=repr):
        s, r = src_by[k], rep_by[k]
        for col, ftype in types.items():
            if col not in r:
                diffs.append(f"key {k}: column {col} missing from the replica")
                continue
            sv = norm_source(s[col], ftype, a.invalid_as_null)
            if a.reader == "clickhouse" and isinstance(sv, (dt.date, dt.datetime)) and not (1900 <= sv.year <= 2299):
                # outside ClickHouse's Date32/DateTime64 range: an invalid value, NULL by default policy
                sv = None
            rv = norm_replica(r[col])
            ncmp += 1
            if not equal(sv, rv, ftype):
                diffs.append(f"key {k} column {col}: source {sv!r} != replica {rv!r}")
        extra = set(r) - set(types) - set(META) - {"rn"} - ({"_binlake_origin"} if a.origin or a.with_origin else set())
        if extra:
            diffs.append(f"key {k}: replica has extra columns {sorted(extra)}")
    if diffs:
        print(f"{a.table}: {len(diffs)} difference(s) ({len(src)} source rows, {len(rep)} replica rows, {nfiles} files, reader {a.reader}):")
        for d in diffs[:30]:
            print("  " + d)
        return 1
    print(f"{a.table}: equal: {len(src)} rows, {ncmp} values compared ({nfiles} files, reader {a.reader})")
    return 0


if __name__ == "__main__":
    code = main()
    # Exit without interpreter teardown: the Python Delta/Arrow libraries can abort in their
    # native destructors at shutdown ("terminate called without an active exception"), which
    # would turn a finished comparison into a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

#!/usr/bin/env python3
"""A small ClickHouse HTTP interface over chdb (the ClickHouse engine as a Python library), for
binlake's tests where no ClickHouse server can be installed.

    python3 chdb_server.py --port PORT --path DATADIR [--user U --password P] [--insert-mode stream|infile]

One persistent chdb session on DATADIR (the data survives a restart on the same DATADIR); requests
are served by threads but run one at a time. What it follows of the real interface
(https://clickhouse.com/docs/interfaces/http), as far as the Rust `clickhouse` crate uses it:
  * GET/POST `/` (and `/ping`, or `/` with no query: "Ok.\\n"). The SQL is the `query` URL parameter,
    the body, or both (`query` + "\\n" + body). `query` = `INSERT ... FORMAT F` with a body: the body is
    the data (any input format chdb knows: ArrowStream, Parquet, RowBinary[WithNamesAndTypes],
    JSONEachRow, TabSeparated, Native, ...).
  * `database`, `default_format` (TabSeparated if absent), `decompress=1` (ClickHouse's compressed block
    framing, LZ4 or none; ZSTD if the `zstandard` module is present), `param_NAME` (URL or
    multipart/form-data fields, as the crate's `.param()` sends them), chunked request bodies. Every
    other URL parameter not in IGNORED is a setting, applied with SET for this statement and reset
    with SET name = DEFAULT after it (an unknown one fails like on a server: Code 115).
  * Auth from X-ClickHouse-User/X-ClickHouse-Key, Basic auth or user/password URL parameters; checked
    only if --user was given (then a mismatch is 403, Code 516).
  * Responses are never compressed (no Content-Encoding, whatever Accept-Encoding/compress say).
    Success: 200 with X-ClickHouse-Format, X-ClickHouse-Summary, X-ClickHouse-Query-Id. Error: the
    status ClickHouse gives the code (400/403/404/500...), X-ClickHouse-Exception-Code and the
    exception text as body.
Not followed: HTTP sessions (session_id is ignored; a SET or USE sent as a statement stays in the one
chdb session for later requests), external tables, readonly GET, progress headers, streaming results
(a result is built whole in memory before it is sent).
"""
import argparse
import base64
import gzip
import json
import os
import re
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb  # noqa: F401  (fails early and clearly if chdb is missing)
from chdb import session as chdb_session

try:
    import lz4.block as lz4_block
except ImportError:  # only needed for decompress=1 with LZ4 blocks
    lz4_block = None
try:
    import zstandard
except ImportError:
    zstandard = None

# URL parameters that are part of the HTTP interface, not settings (or that we deliberately drop).
IGNORED = {
    "query", "database", "default_format", "user", "password", "quota_key", "role",
    "query_id", "session_id", "session_timeout", "session_check", "compress", "decompress",
    "buffer_size", "wait_end_of_query", "http_wait_end_of_query", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "enable_http_compression", "http_zlib_compression_level",
    "http_native_compression_disable_checksumming_on_decompress", "client_protocol_version",
    "stacktrace", "add_http_cors_header", "http_response_buffer_size",
}

# src/Server/HTTP/exceptionCodeToHTTPStatus.cpp, with the codes as this engine numbers them.
HTTP_STATUS = {194: 401}
HTTP_STATUS.update({c: 403 for c in (192, 193, 516, 512, 497)})
HTTP_STATUS.update({c: 400 for c in (36, 427, 6, 25, 26, 38, 41, 72, 441, 675, 676, 27, 376, 15, 44,
                                     37, 123, 8, 167, 168, 223, 62, 117, 53, 321)})
HTTP_STATUS.update({c: 404 for c in (60, 46, 47, 50, 56, 81, 115, 152, 63, 73, 336, 78, 511)})
HTTP_STATUS.update({229: 413, 48: 501, 209: 503, 76: 503, 381: 411, 159: 408, 439: 503, 779: 415})
ERROR_NAMES = {516: "AUTHENTICATION_FAILED", 73: "UNKNOWN_FORMAT", 1001: "STD_EXCEPTION",
               432: "UNKNOWN_CODEC", 271: "CANNOT_DECOMPRESS", 62: "SYNTAX_ERROR"}

CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8", "tsv": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8", "csvwithnames": "text/csv; charset=UTF-8",
    "json": "application/json; charset=UTF-8", "jsoncompact": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
    "jsoncompacteachrow": "application/x-ndjson; charset=UTF-8",
    "pretty": "text/plain; charset=UTF-8", "values": "text/plain; charset=UTF-8",
}
TEXT_PREFIXES = ("tabseparated", "tsv", "csv", "json", "pretty", "values", "markdown", "vertical", "xml")

INSERT_FORMAT_RE = re.compile(r"^\s*(INSERT\s+INTO\s+.*?)\s+FORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.S | re.I)
FORMAT_CLAUSE_RE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.I)
CODE_RE = re.compile(r"Code: (\d+)\.")


class CHError(Exception):
    def __init__(self, code, text):
        super().__init__(text)
        self.code = code
        self.text = text


def ch_error(code, message):
    return CHError(code, f"Code: {code}. DB::Exception: {message}. ({ERROR_NAMES.get(code, 'UNKNOWN')})")


def from_chdb_error(exc):
    """chdb raises its engine's exception text ("Code: 60. DB::Exception: ... (UNKNOWN_TABLE)"),
    sometimes behind a Python-side prefix; keep the ClickHouse part."""
    text = str(exc).strip()
    m = CODE_RE.search(text)
    if not m:
        return ch_error(1001, text.replace("\n", " "))
    return CHError(int(m.group(1)), text[m.start():])


def sql_string(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_ident(name):
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def decompress_blocks(data):
    """ClickHouse's native compression framing: per block a 16-byte CityHash128 of the rest (not
    checked here), method byte, u32 LE size of header+data (header = 9 bytes), u32 LE raw size."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 25:
            raise ch_error(271, f"Truncated compressed block header at offset {pos}")
        method = data[pos + 16]
        csize, usize = struct.unpack_from("<II", data, pos + 17)
        start, end = pos + 25, pos + 16 + csize
        if csize < 9 or end > len(data):
            raise ch_error(271, f"Bad compressed block size {csize} at offset {pos}")
        payload = data[start:end]
        if method == 0x82:
            if lz4_block is None:
                raise ch_error(432, "LZ4 block received but the Python module lz4 is not installed")
            out.append(lz4_block.decompress(payload, uncompressed_size=usize))
        elif method == 0x02:
            out.append(payload)
        elif method == 0x90:
            if zstandard is None:
                raise ch_error(432, "ZSTD block received but the Python module zstandard is not installed")
            out.append(zstandard.ZstdDecompressor().decompress(payload, max_output_size=usize))
        else:
            raise ch_error(432, f"Unknown compression method 0x{method:02x}")
        pos = end
    return b"".join(out)


def parse_multipart(body, content_type):
    """multipart/form-data fields as (name, value) pairs (what the crate sends for `.param()`)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise ch_error(62, "multipart/form-data without boundary")
    delim = b"--" + m.group(1).encode()
    fields = []
    for part in body.split(delim)[1:]:
        if part.startswith(b"--"):
            break
        part = part[2:] if part.startswith(b"\r\n") else part
        head, _, value = part.partition(b"\r\n\r\n")
        if value.endswith(b"\r\n"):
            value = value[:-2]
        nm = re.search(rb'name="([^"]*)"', head)
        if nm:
            fields.append((nm.group(1).decode(), value.decode("utf-8")))
    return fields


class Engine:
    def __init__(self, path, insert_mode):
        self.path = path
        self.insert_mode = insert_mode
        self.lock = threading.Lock()
        self.session = chdb_session.Session(path)
        self.tmpdir = os.path.abspath(path).rstrip("/") + ".insert-tmp"  # for --insert-mode infile

    def close(self):
        with self.lock:
            if self.session is not None:
                self.session.close()
                self.session = None

    def _q(self, sql, fmt="TabSeparated", params=None):
        try:
            return self.session.query(sql, fmt, params=params or None)
        except Exception as e:  # noqa: BLE001 - chdb raises ChdbError/RuntimeError
            raise from_chdb_error(e) from None

    def run(self, sql, fmt, database, settings, params, insert=None):
        """Returns (result bytes, summary dict). insert = (statement without FORMAT, format, data)."""
        with self.lock:
            if self.session is None:
                raise ch_error(1001, "server is shutting down")
            self._q(f"USE {sql_ident(database or 'default')}")
            if settings:
                self._q("SET " + ", ".join(f"{sql_ident(k)} = {sql_string(v)}" for k, v in settings.items()))
            try:
                if insert is not None:
                    return self._insert(*insert)
                r = self._q(sql, fmt, params)
                body = r.bytes()
                return body, {
                    "read_rows": r.rows_read(), "read_bytes": r.bytes_read(),
                    "written_rows": r.rows_written(), "written_bytes": r.bytes_written(),
                    "total_rows_to_read": 0, "result_rows": 0, "result_bytes": len(body),
                    "elapsed_ns": int(r.elapsed() * 1e9),
                }
            finally:
                if settings:
                    try:
                        self._q("SET " + ", ".join(f"{sql_ident(k)} = DEFAULT" for k in settings))
                    except CHError as e:
                        print(f"chdb_server: resetting settings failed: {e.text}", file=sys.stderr, flush=True)

    def _insert(self, stmt, fmt, data):
        if self.insert_mode == "infile":
            os.makedirs(self.tmpdir, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.tmpdir, suffix=".data")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                r = self._q(f"{stmt} FROM INFILE {sql_string(tmp)} FORMAT {fmt}")
                rows, nbytes, elapsed = r.rows_written(), r.bytes_written(), r.elapsed()
            finally:
                os.unlink(tmp)
        else:
            try:
                ins = self.session.send_insert(stmt, fmt)
            except Exception as e:  # noqa: BLE001
                raise from_chdb_error(e) from None
            try:
                if data:
                    ins.append(data)
                res = ins.finish()
            except Exception as e:  # noqa: BLE001
                try:
                    ins.cancel()
                except Exception:  # noqa: BLE001
                    pass
                raise from_chdb_error(e) from None
            rows, nbytes, elapsed = res.rows_written, res.bytes_written, res.elapsed
        return b"", {
            "read_rows": 0, "read_bytes": 0, "written_rows": rows, "written_bytes": nbytes,
            "total_rows_to_read": 0, "result_rows": rows, "result_bytes": nbytes,
            "elapsed_ns": int(elapsed * 1e9),
        }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the crate's pooled hyper client expects
    server_version = "chdb_server"
    engine = None
    auth = None  # (user, password) or None

    def log_message(self, fmt, *args):  # quiet; errors are logged in handle_query
        pass

    def do_GET(self):
        self.handle_query()

    def do_POST(self):
        self.handle_query()

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)  # CRLF after each chunk
            body = b"".join(parts)
        else:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
        enc = self.headers.get("Content-Encoding", "").strip().lower()
        if enc == "gzip":
            body = gzip.decompress(body)
        elif enc == "deflate":
            body = zlib.decompress(body)
        elif enc and enc != "identity":
            raise ch_error(432, f"Unsupported request Content-Encoding {enc}")
        return body

    def send(self, status, body, headers):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def check_auth(self, params):
        user = self.headers.get("X-ClickHouse-User")
        password = self.headers.get("X-ClickHouse-Key")
        basic = self.headers.get("Authorization", "")
        if user is None and basic.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(basic[6:].strip()).decode().partition(":")
            except Exception:  # noqa: BLE001
                user, password = "", None
        if user is None:
            user = params.get("user")
        if password is None:
            password = params.get("password")
        user = user or "default"
        password = password or ""
        if self.auth is not None and (user, password) != self.auth:
            raise ch_error(516, f"{user}: Authentication failed: password is incorrect, or there is no user with such name")

    def handle_query(self):
        query_id = str(uuid.uuid4())
        sql = ""
        try:
            url = urlsplit(self.path)
            pairs = parse_qsl(url.query, keep_blank_values=True)
            try:
                body = self.read_body()
            except CHError:
                raise
            except Exception as e:  # noqa: BLE001
                raise ch_error(271, f"Cannot read request body: {e}") from None
            if url.path.rstrip("/") == "/ping" or (url.path == "/" and self.command == "GET" and not pairs):
                self.send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
                return
            if url.path not in ("/", ""):
                self.send(404, b"There is no handle " + url.path.encode() + b"\n", {"Content-Type": "text/plain"})
                return
            ctype = self.headers.get("Content-Type", "")
            if ctype.lower().startswith("multipart/form-data"):
                pairs = pairs + parse_multipart(body, ctype)
                body = b""
            params = dict(pairs)
            self.check_auth(params)
            query_id = params.get("query_id") or query_id
            if params.get("decompress") == "1" and body:
                body = decompress_blocks(body)
            qparam = params.get("query", "")
            qparams = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
            settings = {k: v for k, v in params.items() if k not in IGNORED and not k.startswith("param_")}
            database = params.get("database") or None
            fmt = params.get("default_format") or "TabSeparated"
            if fmt.lower() in ("dataframe", "arrowtable", "datastore", "debug"):
                raise ch_error(73, f"Unknown format {fmt}")
            insert = None
            m = INSERT_FORMAT_RE.match(qparam) if qparam else None
            if m and body:
                sql = qparam
                insert = (m.group(1), m.group(2), body)
            elif qparam:
                sql = qparam + ("\n" + body.decode("utf-8") if body else "")
                m = INSERT_FORMAT_RE.match(sql)
                if m:  # INSERT ... FORMAT F with no data: zero rows, like a server
                    insert = (m.group(1), m.group(2), b"")
            else:
                sql = body.decode("utf-8")
            if not sql.strip():
                raise ch_error(62, "Empty query")
            out_fmt = fmt
            if insert is None:
                fm = FORMAT_CLAUSE_RE.search(sql)
                if fm:
                    out_fmt = fm.group(1)
            result, summary = self.engine.run(sql, fmt, database, settings, qparams, insert)
            lf = out_fmt.lower()
            content_type = CONTENT_TYPES.get(lf) or (
                "text/plain; charset=UTF-8" if lf.startswith(TEXT_PREFIXES) else "application/octet-stream")
            self.send(200, result, {
                "Content-Type": content_type,
                "X-ClickHouse-Format": out_fmt,
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Timezone": "UTC",
                "X-ClickHouse-Summary": json.dumps({k: str(v) for k, v in summary.items()}),
            })
        except CHError as e:
            status = HTTP_STATUS.get(e.code, 500)
            print(f"chdb_server: {status} {e.text} [query: {sql[:300]!r}]", file=sys.stderr, flush=True)
            self.send(status, (e.text.rstrip("\n") + "\n").encode(), {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(e.code),
                "X-ClickHouse-Query-Id": query_id,
            })
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            text = f"Code: 1001. DB::Exception: {type(e).__name__}: {e}. (STD_EXCEPTION)\n"
            try:
                self.send(500, text.encode(), {"Content-Type": "text/plain; charset=UTF-8",
                                               "X-ClickHouse-Exception-Code": "1001"})
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--path", required=True, help="chdb data directory (kept across restarts)")
    ap.add_argument("--user")
    ap.add_argument("--password", default="")
    ap.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    ap.add_argument("--tls-key", help="the certificate's key (PEM)")
    ap.add_argument("--insert-mode", choices=["stream", "infile"], default="stream",
                    help="stream: chdb's send_insert (default); infile: temp file + INSERT ... FROM INFILE")
    args = ap.parse_args()

    t0 = time.monotonic()
    engine = Engine(args.path, args.insert_mode)
    engine.session.query("SELECT 1", "TabSeparated")  # finish loading before saying we are ready
    Handler.engine = engine
    Handler.auth = (args.user, args.password) if args.user is not None else None
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    if args.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)

    def stop(_signum, _frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on {args.port}", flush=True)
    print(f"chdb_server: engine ready in {time.monotonic() - t0:.2f}s, data in {args.path}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        engine.close()


if __name__ == "__main__":
    main()

//! A small client-protocol connection for snapshot chunk reads: the hot loop of a snapshot.
//!
//! mysql_async turns every row into a `Row` of owned cells (one allocation per string cell,
//! pooled packet buffers, a task hop per packet), which was about half of binlake's CPU time in
//! the 5,000,000-row snapshot benchmark. This connection reads the same binary-protocol result
//! rows (`COM_STMT_EXECUTE`, the same prepared statement text and parameters as the generic
//! path) into one reusable buffer and hands each row to the caller as borrowed cells, so a
//! string cell goes from the socket buffer straight into its Arrow builder.
//!
//! Invariants:
//! - Same bytes, same meaning: the session is set up with the same statements as
//!   [`super::session`] (time zone, result and client character sets, isolation), cells are the
//!   server's binary-protocol values, and every non-string cell is decoded by mysql_common's own
//!   binary-value decoder (the one mysql_async uses), so a chunk read here equals a chunk read
//!   through mysql_async value by value (the snapshot zoo test reads every type both ways).
//! - Never a guess: a server or setup this client does not handle (TLS, compression, a Unix
//!   socket URL, an authentication plugin other than `mysql_native_password` or the
//!   `caching_sha2_password` fast path, a column type it does not know) is
//!   [`WireError::Unsupported`], and the caller reads through mysql_async instead. An
//!   unexpected packet is [`WireError::Protocol`]: the caller drops this connection, falls back
//!   for good, and reads the chunk again (nothing of a failed chunk was sent on).
//! - Server errors and broken connections are classified like mysql_async's
//!   ([`SourceError::Server`], [`SourceError::Connect`]), so the snapshot's retry rules apply.

use std::collections::HashMap;
use std::time::Duration;

use mysql_async::{Opts, Value as My};
use mysql_common::constants::{CapabilityFlags, ColumnFlags, ColumnType};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{
    AuthPlugin, AuthSwitchRequest, ComStmtExecuteRequestBuilder, HandshakePacket, HandshakeResponse,
};
use mysql_common::proto::MySerialize;
use mysql_common::value::{BinValue, ValueDeserializer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::source::SourceError;

/// Why a read through this connection did not happen.
#[derive(Debug)]
pub enum WireError {
    /// This client does not handle the server's setup: read through mysql_async.
    Unsupported(String),
    /// The server sent something this client did not expect: read through mysql_async.
    Protocol(String),
    /// A server error or a broken connection, as mysql_async would report it.
    Source(SourceError),
}

impl From<SourceError> for WireError {
    fn from(e: SourceError) -> Self {
        WireError::Source(e)
    }
}

const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// Bytes asked of the socket per read.
const READ: usize = 256 * 1024;
/// Prepared statements kept per connection (a key range uses two or three shapes).
const STMT_CACHE: usize = 32;

/// A result column: what the binary row format needs to find the next cell.
#[derive(Debug, Clone, Copy)]
pub struct ColDef {
    pub ty: ColumnType,
    pub flags: ColumnFlags,
    /// A length-encoded string in binary rows (strings, decimals, bits, JSON, geometry).
    lenenc: bool,
}

/// One cell of a binary-protocol row.
pub enum Cell<'a> {
    Null,
    /// A string-like cell, borrowed from the read buffer.
    Bytes(&'a [u8]),
    /// Any other cell, decoded by mysql_common (no allocation).
    Value(My),
}

impl Cell<'_> {
    /// The cell as mysql_async would have returned it.
    pub fn to_my(&self) -> My {
        match self {
            Cell::Null => My::NULL,
            Cell::Bytes(b) => My::Bytes(b.to_vec()),
            Cell::Value(v) => v.clone(),
        }
    }

    /// [`Cell::to_my`] into `slot`, reusing its buffer for bytes (no allocation per row).
    pub fn store(&self, slot: &mut My) {
        match (self, &mut *slot) {
            (Cell::Bytes(b), My::Bytes(v)) => {
                v.clear();
                v.extend_from_slice(b);
            }
            _ => *slot = self.to_my(),
        }
    }

    /// [`Cell::to_my`], moving a decoded value.
    pub fn into_my(self) -> My {
        match self {
            Cell::Value(v) => v,
            other => other.to_my(),
        }
    }
}

/// The cells of one binary row, in column order.
pub struct Cells<'a> {
    cols: &'a [ColDef],
    bitmap: &'a [u8],
    rest: &'a [u8],
    i: usize,
}

impl<'a> Cells<'a> {
    fn new(cols: &'a [ColDef], payload: &'a [u8]) -> Result<Self, WireError> {
        let n = (cols.len() + 7 + 2) / 8;
        if payload.len() < 1 + n {
            return Err(WireError::Protocol("short binary row".into()));
        }
        Ok(Cells {
            cols,
            bitmap: &payload[1..1 + n],
            rest: &payload[1 + n..],
            i: 0,
        })
    }

    /// Columns in the row.
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// The next cell (call once per column).
    pub fn next_cell(&mut self) -> Result<Cell<'a>, WireError> {
        let i = self.i;
        let col = *self
            .cols
            .get(i)
            .ok_or_else(|| WireError::Protocol("more cells asked than the row has".into()))?;
        self.i += 1;
        let bit = i + 2;
        if self.bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
            return Ok(Cell::Null);
        }
        let bad = || WireError::Protocol(format!("binary row cut short at column {i}"));
        if col.lenenc {
            let (len, head) = lenenc(self.rest).ok_or_else(bad)?;
            let end = head.checked_add(len as usize).ok_or_else(bad)?;
            let b = self.rest.get(head..end).ok_or_else(bad)?;
            self.rest = &self.rest[end..];
            return Ok(Cell::Bytes(b));
        }
        let mut pb = ParseBuf(self.rest);
        let v: ValueDeserializer<BinValue> = pb.parse((col.ty, col.flags)).map_err(|_| bad())?;
        self.rest = pb.0;
        Ok(Cell::Value(v.0))
    }
}

/// A length-encoded integer: (value, bytes it took).
fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> {
        let s = b.get(1..1 + n)?;
        Some(s.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
    };
    match *b.first()? {
        x @ 0..=0xfa => Some((x as u64, 1)),
        0xfc => Some((le(2)?, 3)),
        0xfd => Some((le(3)?, 4)),
        0xfe => Some((le(8)?, 9)),
        _ => None,
    }
}

/// Column types whose binary cells this client can delimit.
fn known(ty: ColumnType) -> Option<bool> {
    use ColumnType::*;
    Some(match ty {
        MYSQL_TYPE_STRING
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_SET
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_DECIMAL
        | MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_BIT
        | MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_GEOMETRY
        | MYSQL_TYPE_VECTOR
        | MYSQL_TYPE_JSON => true,
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR | MYSQL_TYPE_LONG
        | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONGLONG | MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE
        | MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_TIME | MYSQL_TYPE_NULL => false,
        _ => return None,
    })
}

struct Stmt {
    id: u32,
}

/// One snapshot connection (see the module doc).
pub struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A payload split over several packets, joined.
    joined: Vec<u8>,
    seq: u8,
    caps: CapabilityFlags,
    stmts: HashMap<String, Stmt>,
    context: String,
}

impl Wire {
    /// Connects and logs in as `opts` says, then sets the snapshot session up.
    pub async fn connect(opts: &Opts, setup: &[&str]) -> Result<Wire, WireError> {
        if opts.ssl_opts().is_some() {
            return Err(WireError::Unsupported("TLS".into()));
        }
        if opts.compression().is_some() {
            return Err(WireError::Unsupported("compression".into()));
        }
        if opts.socket().is_some() {
            return Err(WireError::Unsupported("a Unix socket".into()));
        }
        let context = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        let io = |e: std::io::Error| SourceError::Connect {
            context: context.clone(),
            message: e.to_string(),
        };
        let addr = (opts.ip_or_hostname(), opts.tcp_port());
        let stream =
            match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
                Ok(s) => s.map_err(io)?,
                Err(_) => {
                    return Err(SourceError::Connect {
                        context,
                        message: "timed out after 10 s".into(),
                    }
                    .into())
                }
            };
        stream.set_nodelay(true).map_err(io)?;
        let mut w = Wire {
            stream,
            buf: vec![0; 2 * READ],
            start: 0,
            end: 0,
            joined: Vec::new(),
            seq: 0,
            caps: CapabilityFlags::empty(),
            stmts: HashMap::new(),
            context,
        };
        match tokio::time::timeout(Duration::from_secs(10), w.login(opts)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(SourceError::Connect {
                    context: w.context.clone(),
                    message: "login timed out after 10 s".into(),
                }
                .into())
            }
        }
        for sql in opts
            .init()
            .iter()
            .map(|s| s.as_str())
            .chain(setup.iter().copied())
        {
            w.query_drop(sql).await?;
        }
        Ok(w)
    }

    async fn login(&mut self, opts: &Opts) -> Result<(), WireError> {
        let hs = self.packet().await?.to_vec();
        if hs.first() == Some(&0xff) {
            return Err(self.server_error(&hs, "connecting").into());
        }
        let hs = ParseBuf(&hs)
            .parse::<HandshakePacket>(())
            .map_err(|e| WireError::Protocol(format!("handshake: {e}")))?;
        let mut nonce = hs.scramble_1_ref().to_vec();
        nonce.extend_from_slice(hs.scramble_2_ref().unwrap_or(&[]));
        nonce.resize(20, 0);
        let want = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_TRANSACTIONS
            | CapabilityFlags::CLIENT_DEPRECATE_EOF
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | if opts.db_name().is_some() {
                CapabilityFlags::CLIENT_CONNECT_WITH_DB
            } else {
                CapabilityFlags::empty()
            };
        self.caps = hs.capabilities() & want;
        if !self.caps.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
            return Err(WireError::Unsupported("a pre-4.1 protocol server".into()));
        }
        let version = hs
            .maria_db_server_version_parsed()
            .or_else(|| hs.server_version_parsed())
            .unwrap_or((0, 0, 0));
        let mut plugin = match hs.auth_plugin() {
            Some(AuthPlugin::CachingSha2Password) => AuthPlugin::CachingSha2Password,
            _ => AuthPlugin::MysqlNativePassword,
        };
        let data = plugin.gen_data(opts.pass(), &nonce);
        let resp = HandshakeResponse::new(
            data.as_deref(),
            version,
            opts.user().map(|u| u.as_bytes()),
            opts.db_name().map(|d| d.as_bytes()),
            Some(plugin.clone()),
            self.caps,
            None,
            16 * 1024 * 1024,
        );
        let mut out = Vec::new();
        resp.serialize(&mut out);
        let seq = self.seq;
        self.send(&out, seq).await?;
        let mut switched = false;
        loop {
            let p = self.packet().await?.to_vec();
            match p.first() {
                Some(0x00) => return Ok(()),
                Some(0xff) => return Err(self.server_error(&p, "logging in").into()),
                Some(0xfe) if !switched && p.len() > 1 => {
                    switched = true;
                    let req = ParseBuf(&p)
                        .parse::<AuthSwitchRequest>(())
                        .map_err(|e| WireError::Protocol(format!("auth switch: {e}")))?;
                    plugin = match req.auth_plugin() {
                        AuthPlugin::MysqlNativePassword => AuthPlugin::MysqlNativePassword,
                        AuthPlugin::CachingSha2Password => AuthPlugin::CachingSha2Password,
                        other => {
                            return Err(WireError::Unsupported(format!(
                                "the {} authentication plugin",
                                String::from_utf8_lossy(other.as_bytes())
                            )))
                        }
                    };
                    let mut out = Vec::new();
                    if let Some(d) = plugin.gen_data(opts.pass(), req.plugin_data()) {
                        d.serialize(&mut out);
                    }
                    let seq = self.seq;
                    self.send(&out, seq).await?;
                }
                // caching_sha2_password: 0x01 0x03 is "fast auth done, OK follows"
                Some(0x01)
                    if matches!(plugin, AuthPlugin::CachingSha2Password)
                        && p.get(1) == Some(&0x03) => {}
                _ => {
                    return Err(WireError::Unsupported(
                        "this login exchange (e.g. caching_sha2_password full authentication)"
                            .into(),
                    ))
                }
            }
        }
    }

    fn server_error(&self, p: &[u8], what: &str) -> SourceError {
        let code = p
            .get(1..3)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .unwrap_or(0);
        let msg = match p.get(3) {
            Some(b'#') => p.get(9..).unwrap_or(&[]),
            _ => p.get(3..).unwrap_or(&[]),
        };
        let message = String::from_utf8_lossy(msg).into_owned();
        if code == 1045 || code == 1698 {
            return SourceError::Auth(message);
        }
        SourceError::Server {
            code,
            message,
            context: format!("{} ({})", what, self.context),
        }
    }

    fn broken(&self, e: std::io::Error) -> SourceError {
        SourceError::Connect {
            context: self.context.clone(),
            message: e.to_string(),
        }
    }

    /// Makes at least `n` unread bytes available in `buf`.
    async fn fill(&mut self, n: usize) -> Result<(), WireError> {
        if self.end - self.start >= n {
            return Ok(());
        }
        if self.start > 0
            && (self.start + n > self.buf.len() || self.buf.len() - self.end < READ / 4)
        {
            // only the unread tail (part of one packet) moves
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.start + n {
            self.buf.resize(self.start + n + READ, 0);
        }
        while self.end - self.start < n {
            let end = self.end;
            let got = match self.stream.read(&mut self.buf[end..]).await {
                Ok(0) => return Err(self.broken(std::io::ErrorKind::UnexpectedEof.into()).into()),
                Ok(g) => g,
                Err(e) => return Err(self.broken(e).into()),
            };
            self.end += got;
        }
        Ok(())
    }

    /// The next packet's payload (joined when it spans several packets).
    async fn packet(&mut self) -> Result<&[u8], WireError> {
        self.fill(4).await?;
        let h = &self.buf[self.start..self.start + 4];
        let len = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
        self.seq = h[3].wrapping_add(1);
        if len < MAX_PAYLOAD {
            self.fill(4 + len).await?;
            let s = self.start + 4;
            self.start = s + len;
            return Ok(&self.buf[s..s + len]);
        }
        self.joined.clear();
        let mut len = len;
        loop {
            self.fill(4 + len).await?;
            let s = self.start + 4;
            self.joined.extend_from_slice(&self.buf[s..s + len]);
            self.start = s + len;
            if len < MAX_PAYLOAD {
                return Ok(&self.joined);
            }
            self.fill(4).await?;
            let h = &self.buf[self.start..self.start + 4];
            len = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
            self.seq = h[3].wrapping_add(1);
        }
    }

    async fn send(&mut self, payload: &[u8], mut seq: u8) -> Result<(), WireError> {
        let mut out = Vec::with_capacity(payload.len() + 8);
        let mut rest = payload;
        loop {
            let n = rest.len().min(MAX_PAYLOAD);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
            out.push(seq);
            out.extend_from_slice(&rest[..n]);
            seq = seq.wrapping_add(1);
            rest = &rest[n..];
            if n < MAX_PAYLOAD {
                break;
            }
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(())
    }

    async fn command(&mut self, cmd: u8, body: &[u8]) -> Result<(), WireError> {
        let mut p = Vec::with_capacity(body.len() + 1);
        p.push(cmd);
        p.extend_from_slice(body);
        self.send(&p, 0).await
    }

    fn deprecate_eof(&self) -> bool {
        self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF)
    }

    /// Reads `n` column definitions (and the EOF after them without DEPRECATE_EOF).
    async fn columns(&mut self, n: usize) -> Result<Vec<ColDef>, WireError> {
        let mut cols = Vec::with_capacity(n);
        for _ in 0..n {
            let p = self.packet().await?;
            cols.push(column_def(p)?);
        }
        if n > 0 && !self.deprecate_eof() {
            self.packet().await?;
        }
        Ok(cols)
    }

    /// Runs a statement that returns no rows (a result set, if any, is read and dropped).
    pub async fn query_drop(&mut self, sql: &str) -> Result<(), WireError> {
        self.query_text(sql).await.map(|_| ())
    }

    /// Runs a text query and returns its rows (cells as text, `None` for NULL).
    pub async fn query_text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WireError> {
        self.command(0x03, sql.as_bytes()).await?;
        let p = self.packet().await?;
        match p.first() {
            Some(0x00) => return Ok(vec![]),
            Some(0xff) => {
                let p = p.to_vec();
                return Err(self.server_error(&p, sql).into());
            }
            _ => {}
        }
        let (n, _) = lenenc(p).ok_or_else(|| WireError::Protocol("column count".into()))?;
        self.columns(n as usize).await?;
        let dep = self.deprecate_eof();
        let mut rows = Vec::new();
        loop {
            let p = self.packet().await?;
            if p.first() == Some(&0xff) {
                let p = p.to_vec();
                return Err(self.server_error(&p, sql).into());
            }
            if is_end(p, dep) {
                return Ok(rows);
            }
            let mut rest = p;
            let mut row = Vec::with_capacity(n as usize);
            for _ in 0..n {
                if rest.first() == Some(&0xfb) {
                    row.push(None);
                    rest = &rest[1..];
                    continue;
                }
                let (len, head) =
                    lenenc(rest).ok_or_else(|| WireError::Protocol("text row".into()))?;
                let s = rest
                    .get(head..head + len as usize)
                    .ok_or_else(|| WireError::Protocol("text row cut short".into()))?;
                row.push(Some(String::from_utf8_lossy(s).into_owned()));
                rest = &rest[head + len as usize..];
            }
            rows.push(row);
        }
    }

    async fn prepare(&mut self, sql: &str) -> Result<u32, WireError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.id);
        }
        if self.stmts.len() >= STMT_CACHE {
            let ids: Vec<u32> = self.stmts.drain().map(|(_, s)| s.id).collect();
            for id in ids {
                // COM_STMT_CLOSE has no response
                self.command(0x19, &id.to_le_bytes()).await?;
            }
        }
        self.command(0x16, sql.as_bytes()).await?;
        let p = self.packet().await?;
        match p.first() {
            Some(0x00) if p.len() >= 9 => {}
            Some(0xff) => {
                let p = p.to_vec();
                return Err(self.server_error(&p, sql).into());
            }
            _ => return Err(WireError::Protocol("unexpected prepare response".into())),
        }
        let id = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
        let ncols = u16::from_le_bytes([p[5], p[6]]) as usize;
        let nparams = u16::from_le_bytes([p[7], p[8]]) as usize;
        self.columns(nparams).await?;
        self.columns(ncols).await?;
        self.stmts.insert(sql.to_string(), Stmt { id });
        Ok(id)
    }

    /// Executes `sql` as a prepared statement with `params` and hands each row's cells to
    /// `row`; when `row` returns false the remaining rows are read and dropped.
    pub async fn exec<F>(&mut self, sql: &str, params: &[My], mut row: F) -> Result<(), WireError>
    where
        F: FnMut(Cells<'_>) -> Result<bool, WireError>,
    {
        let id = self.prepare(sql).await?;
        let (req, long) = ComStmtExecuteRequestBuilder::new(id).build(params);
        if long {
            return Err(WireError::Unsupported(
                "parameters too long for one packet".into(),
            ));
        }
        let mut out = Vec::new();
        req.serialize(&mut out);
        self.send(&out, 0).await?;
        let p = self.packet().await?;
        match p.first() {
            Some(0x00) => return Ok(()),
            Some(0xff) => {
                let p = p.to_vec();
                return Err(self.server_error(&p, "reading a snapshot chunk").into());
            }
            _ => {}
        }
        let (n, _) = lenenc(p).ok_or_else(|| WireError::Protocol("column count".into()))?;
        let cols = self.columns(n as usize).await?;
        let dep = self.deprecate_eof();
        let mut want = true;
        loop {
            let p = self.packet().await?;
            match p.first() {
                Some(0x00) => {
                    if want {
                        want = row(Cells::new(&cols, p)?)?;
                    }
                }
                Some(0xff) => {
                    let p = p.to_vec();
                    return Err(self.server_error(&p, "reading a snapshot chunk").into());
                }
                _ if is_end(p, dep) => return Ok(()),
                _ => return Err(WireError::Protocol("unexpected packet in a result".into())),
            }
        }
    }
}

/// An EOF packet (or, with DEPRECATE_EOF, an OK packet with the EOF header) ends a result's rows.
fn is_end(p: &[u8], deprecate_eof: bool) -> bool {
    p.first() == Some(&0xfe) && (p.len() < 9 || (deprecate_eof && p.len() < MAX_PAYLOAD))
}

/// The type and flags of a column definition packet (its names are skipped).
fn column_def(p: &[u8]) -> Result<ColDef, WireError> {
    let bad = || WireError::Protocol("column definition".into());
    let mut rest = p;
    for _ in 0..6 {
        let (len, head) = lenenc(rest).ok_or_else(bad)?;
        rest = rest.get(head + len as usize..).ok_or_else(bad)?;
    }
    // fixed-length fields: 0x0c, charset u16, length u32, type u8, flags u16, decimals u8
    let (_, head) = lenenc(rest).ok_or_else(bad)?;
    let f = rest.get(head..head + 10).ok_or_else(bad)?;
    let ty = ColumnType::try_from(f[6])
        .map_err(|_| WireError::Unsupported(format!("column type {}", f[6])))?;
    let flags = ColumnFlags::from_bits_truncate(u16::from_le_bytes([f[7], f[8]]));
    let lenenc = known(ty).ok_or_else(|| WireError::Unsupported(format!("column type {ty:?}")))?;
    Ok(ColDef { ty, flags, lenenc })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_ints() {
        assert_eq!(lenenc(&[0x05]), Some((5, 1)));
        assert_eq!(lenenc(&[0xfc, 0x34, 0x12]), Some((0x1234, 3)));
        assert_eq!(lenenc(&[0xfd, 1, 2, 3]), Some((0x030201, 4)));
        assert_eq!(lenenc(&[0xfe, 1, 0, 0, 0, 0, 0, 0, 0]), Some((1, 9)));
        assert_eq!(lenenc(&[0xfc, 0x34]), None);
        assert_eq!(lenenc(&[0xfb]), None);
    }

    #[test]
    fn binary_row_cells() {
        let cols = [
            ColDef {
                ty: ColumnType::MYSQL_TYPE_LONG,
                flags: ColumnFlags::empty(),
                lenenc: false,
            },
            ColDef {
                ty: ColumnType::MYSQL_TYPE_VAR_STRING,
                flags: ColumnFlags::empty(),
                lenenc: true,
            },
            ColDef {
                ty: ColumnType::MYSQL_TYPE_VAR_STRING,
                flags: ColumnFlags::empty(),
                lenenc: true,
            },
        ];
        // header, bitmap (column 2 NULL: bit 4), -2 as LONG, "héllo"
        let mut p = vec![0x00, 0b0001_0000];
        p.extend_from_slice(&(-2i32).to_le_bytes());
        p.push(6);
        p.extend_from_slice("héllo".as_bytes());
        let mut c = Cells::new(&cols, &p).unwrap();
        assert!(matches!(c.next_cell().unwrap(), Cell::Value(My::Int(-2))));
        assert!(matches!(c.next_cell().unwrap(), Cell::Bytes(b) if b == "héllo".as_bytes()));
        assert!(matches!(c.next_cell().unwrap(), Cell::Null));
        // a key cell kept across rows: bytes reuse the slot, other cells replace it
        let mut slot = My::Int(1);
        Cell::Bytes(b"ab").store(&mut slot);
        Cell::Bytes(b"xyz").store(&mut slot);
        assert_eq!(slot, My::Bytes(b"xyz".to_vec()));
        Cell::Null.store(&mut slot);
        assert_eq!(slot, My::NULL);
        // a cell longer than the packet is an error, not a panic
        let mut q = vec![0x00, 0];
        q.extend_from_slice(&7i32.to_le_bytes());
        q.push(50);
        let mut c = Cells::new(&cols, &q).unwrap();
        c.next_cell().unwrap();
        assert!(matches!(c.next_cell(), Err(WireError::Protocol(_))));
    }
}

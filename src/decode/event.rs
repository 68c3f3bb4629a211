//! Binlog events from raw bytes: the 19-byte common header and the bodies binlake acts on.
//!
//! Invariants:
//! - Input is the event body *without* the common header and *without* the checksum (the file reader
//!   and the live stream both strip it after verifying it).
//! - Every event type we do not act on decodes to [`EventBody::Other`]; unknown types are not errors,
//!   so a newer server's new events never stop replication by themselves.
//! - MariaDB's own events (160-164) are parsed here from raw bytes; MySQL's client libraries only
//!   speak MySQL's dialect.

use super::reader::{Reader, Short};
use super::table_map::TableMap;
use crate::position::{MariaGtid, MysqlGtid, MysqlGtidSet, Uuid};

pub mod types {
    pub const QUERY: u8 = 2;
    pub const STOP: u8 = 3;
    pub const ROTATE: u8 = 4;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const XID: u8 = 16;
    pub const TABLE_MAP: u8 = 19;
    pub const WRITE_ROWS_V0: u8 = 20;
    pub const UPDATE_ROWS_V0: u8 = 21;
    pub const DELETE_ROWS_V0: u8 = 22;
    pub const WRITE_ROWS_V1: u8 = 23;
    pub const UPDATE_ROWS_V1: u8 = 24;
    pub const DELETE_ROWS_V1: u8 = 25;
    pub const INCIDENT: u8 = 26;
    pub const HEARTBEAT: u8 = 27;
    pub const WRITE_ROWS_V2: u8 = 30;
    pub const UPDATE_ROWS_V2: u8 = 31;
    pub const DELETE_ROWS_V2: u8 = 32;
    pub const GTID: u8 = 33;
    pub const ANONYMOUS_GTID: u8 = 34;
    pub const PREVIOUS_GTIDS: u8 = 35;
    pub const PARTIAL_UPDATE_ROWS: u8 = 39;
    pub const TRANSACTION_PAYLOAD: u8 = 40;
    pub const HEARTBEAT_V2: u8 = 41;
    pub const GTID_TAGGED: u8 = 42;
    pub const MARIA_ANNOTATE_ROWS: u8 = 160;
    pub const MARIA_BINLOG_CHECKPOINT: u8 = 161;
    pub const MARIA_GTID: u8 = 162;
    pub const MARIA_GTID_LIST: u8 = 163;
    pub const MARIA_START_ENCRYPTION: u8 = 164;
    pub const MARIA_QUERY_COMPRESSED: u8 = 165;
    pub const MARIA_WRITE_ROWS_COMPRESSED_V1: u8 = 166;
    pub const MARIA_DELETE_ROWS_COMPRESSED_V2: u8 = 171;
}

pub const HEADER_LEN: usize = 19;

/// The common header of every v4 event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHeader {
    pub timestamp: u32,
    pub type_code: u8,
    pub server_id: u32,
    pub event_size: u32,
    /// End position of this event in its binlog file (0 for artificial events).
    pub log_pos: u32,
    pub flags: u16,
}

impl EventHeader {
    pub fn parse(b: &[u8]) -> Result<Self, Short> {
        let mut r = Reader::new(b);
        Ok(EventHeader {
            timestamp: r.u32()?,
            type_code: r.u8()?,
            server_id: r.u32()?,
            event_size: r.u32()?,
            log_pos: r.u32()?,
            flags: r.u16()?,
        })
    }
    /// LOG_EVENT_ARTIFICIAL_F: made up by the server for the dump (fake rotate, etc.).
    pub fn is_artificial(&self) -> bool {
        self.flags & 0x20 != 0
    }
}

/// What the format description event tells about the rest of the file.
#[derive(Debug, Clone)]
pub struct FormatDescription {
    pub binlog_version: u16,
    pub server_version: String,
    pub post_header_lens: Vec<u8>,
    /// Whether events after this one carry a CRC32 trailer.
    pub checksum: bool,
}

impl FormatDescription {
    pub fn is_mariadb(&self) -> bool {
        self.server_version.contains("MariaDB")
    }
    pub fn post_header_len(&self, type_code: u8) -> Option<u8> {
        self.post_header_lens
            .get((type_code as usize).checked_sub(1)?)
            .copied()
    }
    /// Width of the table id in table-map and rows events (6, or 4 for very old servers).
    pub fn table_id_len(&self, type_code: u8) -> usize {
        match self.post_header_len(type_code) {
            Some(6) => 4,
            _ => 6,
        }
    }
    /// A v4 default used before the first format description arrives.
    pub fn default_v4() -> Self {
        FormatDescription {
            binlog_version: 4,
            server_version: String::new(),
            post_header_lens: Vec::new(),
            checksum: false,
        }
    }

    /// Parses a format description body. `full_body` must include the checksum algorithm byte and
    /// CRC when the server wrote them (true for files; the live stream strips them, which
    /// `has_trailer = false` says).
    pub fn parse(body: &[u8], has_trailer: bool) -> Result<Self, Short> {
        let mut r = Reader::new(body);
        let binlog_version = r.u16()?;
        let sv = r.take(50)?;
        let server_version =
            String::from_utf8_lossy(sv.split(|&c| c == 0).next().unwrap_or(&[])).into_owned();
        r.skip(4)?; // create timestamp
        let _header_len = r.u8()?;
        let rest = r.rest();
        let aware = checksum_aware(&server_version);
        let (lens, checksum) = if has_trailer && aware && rest.len() >= 5 {
            let alg = rest[rest.len() - 5];
            (&rest[..rest.len() - 5], alg == 1)
        } else {
            (rest, false)
        };
        Ok(FormatDescription {
            binlog_version,
            server_version,
            post_header_lens: lens.to_vec(),
            checksum,
        })
    }
}

/// Servers from MySQL 5.6.1 and MariaDB 5.3 write the checksum algorithm into the FDE.
fn checksum_aware(version: &str) -> bool {
    let nums: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect();
    let v = (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
        nums.get(2).copied().unwrap_or(0),
    );
    if version.contains("MariaDB") {
        v >= (5, 3, 0)
    } else {
        v >= (5, 6, 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsKind {
    Write,
    Update,
    Delete,
}

/// A rows event, not yet decoded: decoding needs the table map.
#[derive(Debug, Clone)]
pub struct RowsEvent<'a> {
    pub kind: RowsKind,
    pub table_id: u64,
    pub flags: u16,
    pub ncols: usize,
    pub present: &'a [u8],
    pub present_after: Option<&'a [u8]>,
    /// JSON partial-update events carry an extra "value options" field per after image.
    pub partial_json: bool,
    pub rows: &'a [u8],
}

impl RowsEvent<'_> {
    /// STMT_END_F: the last rows event of a statement.
    pub fn is_stmt_end(&self) -> bool {
        self.flags & 1 != 0
    }
}

#[derive(Debug, Clone)]
pub enum EventBody<'a> {
    FormatDescription(FormatDescription),
    Rotate {
        pos: u64,
        file: String,
    },
    Query {
        db: String,
        sql: String,
        error_code: u16,
    },
    Xid(u64),
    /// MySQL GTID event; `gtid` is None for an anonymous GTID.
    MysqlGtid {
        gtid: Option<MysqlGtid>,
        immediate_commit_us: Option<u64>,
    },
    PreviousGtids(MysqlGtidSet),
    MariaGtid {
        gtid: MariaGtid,
        standalone: bool,
    },
    MariaGtidList(Vec<MariaGtid>),
    MariaBinlogCheckpoint(String),
    MariaAnnotate(String),
    TableMap(TableMap),
    Rows(RowsEvent<'a>),
    /// A MySQL 8 compressed transaction: the decompressed inner events (header + body, no checksum).
    TransactionPayload(Vec<u8>),
    Heartbeat {
        file: String,
    },
    Stop,
    Incident {
        code: u16,
        message: String,
    },
    /// A MariaDB event compressed with `log_bin_compress`.
    MariaCompressed(u8),
    Other(u8),
}

/// Decodes one event body. `fde` must be the format description in force.
pub fn decode_body<'a>(
    header: &EventHeader,
    body: &'a [u8],
    fde: &FormatDescription,
) -> Result<EventBody<'a>, Short> {
    use types::*;
    let mut r = Reader::new(body);
    Ok(match header.type_code {
        FORMAT_DESCRIPTION => EventBody::FormatDescription(FormatDescription::parse(body, true)?),
        ROTATE => {
            let pos = if fde.binlog_version >= 2 { r.u64()? } else { 4 };
            EventBody::Rotate {
                pos,
                file: String::from_utf8_lossy(r.rest()).into_owned(),
            }
        }
        QUERY => {
            r.skip(8)?; // thread id, exec time
            let db_len = r.u8()? as usize;
            let error_code = r.u16()?;
            let status_len = if fde.binlog_version >= 4 {
                r.u16()? as usize
            } else {
                0
            };
            r.skip(status_len)?;
            let db = String::from_utf8_lossy(r.take(db_len)?).into_owned();
            r.skip(1)?;
            EventBody::Query {
                db,
                sql: String::from_utf8_lossy(r.rest()).into_owned(),
                error_code,
            }
        }
        XID => EventBody::Xid(r.u64()?),
        GTID | ANONYMOUS_GTID => {
            let _flags = r.u8()?;
            let mut sid = [0u8; 16];
            sid.copy_from_slice(r.take(16)?);
            let gno = r.u64()?;
            let mut immediate = None;
            // logical timestamps (type 2 + two i64), then the 7-byte immediate commit timestamp.
            if r.remaining() >= 17 && r.clone().u8()? == 2 {
                r.skip(17)?;
                if r.remaining() >= 7 {
                    let ts = r.uint_le(7)?;
                    immediate = Some(ts & !(1u64 << 55));
                }
            }
            let gtid = (header.type_code == GTID).then(|| MysqlGtid {
                sid: Uuid(sid),
                tag: String::new(),
                gno,
            });
            EventBody::MysqlGtid {
                gtid,
                immediate_commit_us: immediate,
            }
        }
        GTID_TAGGED => {
            let (gtid, immediate_commit_us) = decode_tagged_gtid(body)?;
            EventBody::MysqlGtid {
                gtid: Some(gtid),
                immediate_commit_us,
            }
        }
        PREVIOUS_GTIDS => {
            // 8 bytes: the sid count, or (MySQL 8.3+ tagged format) format byte, 6-byte count, format byte.
            let head = r.take(8)?;
            let tagged = head[7] == 1 && head[0] == 1;
            let n = if tagged {
                head[1..7]
                    .iter()
                    .rev()
                    .fold(0u64, |a, &b| (a << 8) | b as u64)
            } else {
                u64::from_le_bytes(head.try_into().unwrap_or([0; 8]))
            };
            let mut set = MysqlGtidSet::default();
            for _ in 0..n.min(1 << 20) {
                let mut sid = [0u8; 16];
                sid.copy_from_slice(r.take(16)?);
                let tag = if tagged {
                    let len = varint(&mut r)? as usize;
                    String::from_utf8_lossy(r.take(len)?).into_owned()
                } else {
                    String::new()
                };
                let nivals = r.u64()?;
                for _ in 0..nivals.min(1 << 20) {
                    let (s, e) = (r.u64()?, r.u64()?);
                    if e > s {
                        set.add_interval(Uuid(sid), &tag, s, e);
                    }
                }
            }
            EventBody::PreviousGtids(set)
        }
        MARIA_GTID => {
            let seq = r.u64()?;
            let domain = r.u32()?;
            let flags = r.u8()?;
            EventBody::MariaGtid {
                gtid: MariaGtid {
                    domain,
                    server: header.server_id,
                    seq,
                },
                standalone: flags & 1 != 0,
            }
        }
        MARIA_GTID_LIST => {
            let n = r.u32()? & 0x0FFF_FFFF;
            let mut v = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                let domain = r.u32()?;
                let server = r.u32()?;
                let seq = r.u64()?;
                v.push(MariaGtid {
                    domain,
                    server,
                    seq,
                });
            }
            EventBody::MariaGtidList(v)
        }
        MARIA_BINLOG_CHECKPOINT => {
            let n = r.u32()? as usize;
            EventBody::MariaBinlogCheckpoint(String::from_utf8_lossy(r.take(n)?).into_owned())
        }
        MARIA_ANNOTATE_ROWS => EventBody::MariaAnnotate(String::from_utf8_lossy(body).into_owned()),
        TABLE_MAP => EventBody::TableMap(TableMap::parse(body, fde.table_id_len(TABLE_MAP))?),
        WRITE_ROWS_V0..=DELETE_ROWS_V1 | WRITE_ROWS_V2..=DELETE_ROWS_V2 | PARTIAL_UPDATE_ROWS => {
            let t = header.type_code;
            let kind = match t {
                WRITE_ROWS_V0 | WRITE_ROWS_V1 | WRITE_ROWS_V2 => RowsKind::Write,
                UPDATE_ROWS_V0 | UPDATE_ROWS_V1 | UPDATE_ROWS_V2 | PARTIAL_UPDATE_ROWS => {
                    RowsKind::Update
                }
                _ => RowsKind::Delete,
            };
            let v2 = matches!(t, WRITE_ROWS_V2..=DELETE_ROWS_V2 | PARTIAL_UPDATE_ROWS);
            let table_id = r.uint_le(fde.table_id_len(t))?;
            let flags = r.u16()?;
            if v2 {
                let extra = r.u16()? as usize;
                r.skip(extra.saturating_sub(2))?;
            }
            let ncols = r.lenenc()? as usize;
            let bm = ncols.div_ceil(8);
            let present = r.take(bm)?;
            let present_after = if kind == RowsKind::Update {
                Some(r.take(bm)?)
            } else {
                None
            };
            EventBody::Rows(RowsEvent {
                kind,
                table_id,
                flags,
                ncols,
                present,
                present_after,
                partial_json: t == PARTIAL_UPDATE_ROWS,
                rows: r.rest(),
            })
        }
        TRANSACTION_PAYLOAD => EventBody::TransactionPayload(decode_payload(body)?),
        HEARTBEAT | HEARTBEAT_V2 => EventBody::Heartbeat {
            file: String::from_utf8_lossy(body).into_owned(),
        },
        STOP => EventBody::Stop,
        INCIDENT => {
            let code = r.u16()?;
            let n = r.u8().unwrap_or(0) as usize;
            let msg = r.take(n).unwrap_or(&[]);
            EventBody::Incident {
                code,
                message: String::from_utf8_lossy(msg).into_owned(),
            }
        }
        t @ (MARIA_QUERY_COMPRESSED..=MARIA_DELETE_ROWS_COMPRESSED_V2) => {
            EventBody::MariaCompressed(t)
        }
        t => EventBody::Other(t),
    })
}

/// MySQL 8.0.20+ Transaction_payload_event: a TLV header, then the (zstd) compressed events.
fn decode_payload(body: &[u8]) -> Result<Vec<u8>, Short> {
    let mut r = Reader::new(body);
    let mut size = None;
    let mut compression = 0u64;
    loop {
        let t = r.lenenc()?;
        if t == 0 {
            break;
        }
        let len = r.lenenc()? as usize;
        let mut v = Reader::new(r.take(len)?);
        match t {
            1 => size = Some(v.lenenc()? as usize),
            2 => compression = v.lenenc()?,
            _ => {}
        }
    }
    let data = match size {
        Some(n) => r.take(n)?,
        None => r.rest(),
    };
    match compression {
        255 => Ok(data.to_vec()),
        _ => zstd::stream::decode_all(data).map_err(|_| Short {
            wanted: 0,
            at: r.pos(),
        }),
    }
}

/// MySQL 8.4+/9.x Gtid_tagged_log_event, written with MySQL's serialization framework: a format
/// version, the message size and the last non-ignorable field id (varints), then (field id, value)
/// pairs. Fields: 0 flags, 1 uuid (16 varints), 2 gno (zigzag), 3 tag (length + bytes),
/// 4 last_committed, 5 sequence_number, 6 immediate commit timestamp (µs), then more we skip.
fn decode_tagged_gtid(body: &[u8]) -> Result<(MysqlGtid, Option<u64>), Short> {
    let mut r = Reader::new(body);
    let _version = varint(&mut r)?;
    let _size = varint(&mut r)?;
    let _last_non_ignorable = varint(&mut r)?;
    let mut sid = [0u8; 16];
    let mut gno = 0u64;
    let mut tag = String::new();
    let mut immediate = None;
    while !r.is_empty() {
        match varint(&mut r)? {
            0 | 4 | 5 => {
                varint(&mut r)?;
            }
            1 => {
                for b in sid.iter_mut() {
                    *b = varint(&mut r)? as u8;
                }
            }
            2 => gno = zigzag(varint(&mut r)?) as u64,
            3 => {
                let n = varint(&mut r)? as usize;
                tag = String::from_utf8_lossy(r.take(n)?).into_owned();
            }
            6 => immediate = Some(varint(&mut r)?),
            _ => break,
        }
    }
    Ok((
        MysqlGtid {
            sid: Uuid(sid),
            tag,
            gno,
        },
        immediate,
    ))
}

/// MySQL serialization-framework varint: the count of trailing one bits in the first byte says how
/// many more bytes follow; the value is little-endian after those marker bits.
fn varint(r: &mut Reader<'_>) -> Result<u64, Short> {
    let first = r.u8()?;
    let extra = first.trailing_ones() as usize;
    if extra == 0 {
        return Ok((first >> 1) as u64);
    }
    let rest = r.uint_le(extra.min(8))?;
    if extra >= 8 {
        return Ok(rest);
    }
    let head = (first as u64) >> (extra + 1);
    Ok(head | (rest << (7 - extra)))
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

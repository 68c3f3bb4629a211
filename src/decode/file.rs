//! Reading binlog files from disk (the fixture tests, and `binlake decode` for debugging).
//!
//! Invariants: each event's CRC32 is verified when the format description says the file has
//! checksums; a truncated or corrupt event is an error naming the file and the event's offset, and
//! reading stops there (nothing after a corrupt event is trusted).

use super::event::{self, EventHeader, HEADER_LEN};
use super::{DecodeError, EventLocation};

pub const MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];

/// One event as stored: its offset, header and body (checksum removed).
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub offset: u64,
    pub header: EventHeader,
    pub body: Vec<u8>,
}

pub struct BinlogFile {
    name: String,
    data: Vec<u8>,
    pos: usize,
    checksum: bool,
    pending: std::collections::VecDeque<RawEvent>,
    failed: bool,
}

impl BinlogFile {
    pub fn open(path: &std::path::Path) -> Result<Self, DecodeError> {
        let data = std::fs::read(path).map_err(|e| DecodeError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::from_bytes(path.display().to_string(), data)
    }

    pub fn from_bytes(name: String, data: Vec<u8>) -> Result<Self, DecodeError> {
        if data.get(..4) != Some(&MAGIC[..]) {
            return Err(DecodeError::BadMagic {
                at: EventLocation {
                    source: name,
                    offset: 0,
                },
            });
        }
        Ok(BinlogFile {
            name,
            data,
            pos: 4,
            checksum: false,
            pending: Default::default(),
            failed: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn loc(&self, offset: u64) -> EventLocation {
        EventLocation {
            source: self.name.clone(),
            offset,
        }
    }

    fn read_one(&mut self) -> Option<Result<RawEvent, DecodeError>> {
        if self.pos >= self.data.len() {
            return None;
        }
        let offset = self.pos as u64;
        let malformed = |s: &Self, detail: String| DecodeError::Malformed {
            at: s.loc(offset),
            type_code: 0,
            detail,
        };
        let rest = &self.data[self.pos..];
        let Ok(header) = EventHeader::parse(rest) else {
            return Some(Err(malformed(
                self,
                format!("truncated event header ({} bytes left)", rest.len()),
            )));
        };
        let size = header.event_size as usize;
        if size < HEADER_LEN || size > rest.len() {
            return Some(Err(DecodeError::Malformed {
                at: self.loc(offset),
                type_code: header.type_code,
                detail: format!(
                    "event claims {} bytes, {} remain in the file",
                    size,
                    rest.len()
                ),
            }));
        }
        let full = &rest[..size];
        let is_fde = header.type_code == event::types::FORMAT_DESCRIPTION;
        let mut body = &full[HEADER_LEN..];
        let has_crc = if is_fde {
            match event::FormatDescription::parse(body, true) {
                Ok(f) => {
                    self.checksum = f.checksum;
                    f.checksum
                }
                Err(_) => false,
            }
        } else {
            self.checksum
        };
        if has_crc {
            if body.len() < 4 {
                return Some(Err(malformed(
                    self,
                    "event too short for its checksum".into(),
                )));
            }
            let (payload, crc) = full.split_at(size - 4);
            let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
            // The server sets LOG_EVENT_BINLOG_IN_USE_F in the FDE after computing its checksum.
            let got = if is_fde && header.flags & 1 != 0 {
                let mut p = payload.to_vec();
                p[17] &= !1;
                crc32fast::hash(&p)
            } else {
                crc32fast::hash(payload)
            };
            if got != want {
                return Some(Err(DecodeError::Checksum {
                    at: self.loc(offset),
                }));
            }
            if !is_fde {
                body = &body[..body.len() - 4];
            }
        }
        let ev = RawEvent {
            offset,
            header,
            body: body.to_vec(),
        };
        self.pos += size;
        Some(Ok(ev))
    }
}

impl Iterator for BinlogFile {
    type Item = Result<RawEvent, DecodeError>;

    /// Events in file order; a compressed transaction payload is followed by its inner events.
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending.pop_front() {
            return Some(Ok(e));
        }
        if self.failed {
            return None;
        }
        let r = self.read_one();
        if let Some(Ok(ev)) = &r {
            if ev.header.type_code == event::types::TRANSACTION_PAYLOAD {
                match expand_payload(ev, &self.name) {
                    Ok(inner) => self.pending.extend(inner),
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
        }
        if matches!(r, Some(Err(_))) {
            self.failed = true;
        }
        r
    }
}

/// The events inside a Transaction_payload_event (full headers, no checksums).
fn expand_payload(ev: &RawEvent, name: &str) -> Result<Vec<RawEvent>, DecodeError> {
    let fde = event::FormatDescription::default_v4();
    let at = || EventLocation {
        source: name.to_string(),
        offset: ev.offset,
    };
    let body = match event::decode_body(&ev.header, &ev.body, &fde) {
        Ok(event::EventBody::TransactionPayload(b)) => b,
        _ => {
            return Err(DecodeError::Malformed {
                at: at(),
                type_code: ev.header.type_code,
                detail: "bad transaction payload".into(),
            })
        }
    };
    let mut out = Vec::new();
    let mut p = 0usize;
    while p < body.len() {
        let h = EventHeader::parse(&body[p..]).map_err(|_| DecodeError::Malformed {
            at: at(),
            type_code: 40,
            detail: "truncated inner event".into(),
        })?;
        let size = h.event_size as usize;
        if size < HEADER_LEN || p + size > body.len() {
            return Err(DecodeError::Malformed {
                at: at(),
                type_code: 40,
                detail: format!("inner event at payload offset {p} overruns the payload"),
            });
        }
        out.push(RawEvent {
            offset: ev.offset,
            header: h,
            body: body[p + HEADER_LEN..p + size].to_vec(),
        });
        p += size;
    }
    Ok(out)
}

/// Everything decoded from one file, for `binlake decode` and the fixture tests.
#[derive(Debug, Default)]
pub struct FileDump {
    pub server_version: String,
    pub events: usize,
    pub event_types: std::collections::BTreeMap<u8, usize>,
    pub gtids: Vec<String>,
    /// (db.table, change) in file order.
    pub rows: Vec<(String, super::RowChange)>,
    pub tables: Vec<std::sync::Arc<super::TableMap>>,
    pub queries: Vec<String>,
}

/// Decodes a whole file. Stops at the first error, returning what was decoded before it.
pub fn dump_file(path: &std::path::Path) -> (FileDump, Option<DecodeError>) {
    let mut dump = FileDump::default();
    let mut file = match BinlogFile::open(path) {
        Ok(f) => f,
        Err(e) => return (dump, Some(e)),
    };
    let mut dec = super::Decoder::new();
    let name = file.name().to_string();
    for ev in file.by_ref() {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return (dump, Some(e)),
        };
        dump.events += 1;
        *dump.event_types.entry(ev.header.type_code).or_default() += 1;
        let off = ev.offset;
        let at = || EventLocation {
            source: name.clone(),
            offset: off,
        };
        match dec.decode(&ev.header, &ev.body, &at) {
            Ok(super::Decoded::Rows { table, changes, .. }) => {
                for c in changes {
                    dump.rows.push((format!("{}.{}", table.db, table.table), c));
                }
            }
            Ok(super::Decoded::TableMap(t)) => {
                if !dump.tables.iter().any(|x| std::sync::Arc::ptr_eq(x, &t)) {
                    dump.tables.push(t);
                }
            }
            Ok(super::Decoded::Event(e)) => match e {
                event::EventBody::FormatDescription(f) => dump.server_version = f.server_version,
                event::EventBody::MariaGtid { gtid, .. } => dump.gtids.push(gtid.to_string()),
                event::EventBody::MysqlGtid { gtid: Some(g), .. } => dump.gtids.push(g.to_string()),
                event::EventBody::Query { sql, .. } => dump.queries.push(sql),
                _ => {}
            },
            Err(e) => return (dump, Some(e)),
        }
    }
    (dump, None)
}

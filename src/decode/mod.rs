//! Binlog decoding: raw events to typed events, row images to [`Value`]s.
//!
//! This module is pure (no I/O but reading a file in [`file`]) and shared by the live stream and by
//! the binlog-file reader, so the fixture tests exercise the same code that replicates.
//!
//! Invariants:
//! - Never panics on malformed input: every read is bounds-checked ([`reader`]) and every failure is
//!   a [`DecodeError`] naming the file (or stream) and the byte offset of the event.
//! - Row values are exact: see [`rows`] for the temporal and invalid-value rules, [`decimal`] for
//!   DECIMAL, [`json`] for MySQL binary JSON, [`charset`] for text.

pub mod charset;
pub mod ddl;
pub mod decimal;
pub mod event;
pub mod file;
pub mod json;
pub mod reader;
pub mod rows;
pub mod table_map;

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

pub use event::{EventBody, EventHeader, FormatDescription, RowsEvent, RowsKind};
pub use rows::{RowChange, Value};
pub use table_map::{ColType, ColumnMeta, TableMap};

/// Where an event came from, for error messages: a file name or a server, and a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLocation {
    pub source: String,
    pub offset: u64,
}

impl std::fmt::Display for EventLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at offset {}", self.source, self.offset)
    }
}

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("malformed event (type {type_code}) in {at}: {detail}")]
    Malformed {
        at: EventLocation,
        type_code: u8,
        detail: String,
    },
    #[error("checksum mismatch in {at}: the event is corrupt")]
    Checksum { at: EventLocation },
    #[error("{at}: not a binlog file (bad magic number)")]
    BadMagic { at: EventLocation },
    #[error("{at}: rows event for table id {table_id} without a preceding table map")]
    NoTableMap { at: EventLocation, table_id: u64 },
    #[error("{at}: column `{column}` of {table} has type code {type_code}, which cannot appear in row images")]
    UnsupportedColumn {
        at: EventLocation,
        table: String,
        column: String,
        type_code: u8,
    },
    #[error("{at}: event type {type_code} is compressed with MariaDB's log_bin_compress, which binlake does not decode; set log_bin_compress=OFF on the source")]
    MariaCompressed { at: EventLocation, type_code: u8 },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Stateful decoder: the format description and table maps in force.
#[derive(Debug, Default)]
pub struct Decoder {
    pub fde: Option<FormatDescription>,
    tables: HashMap<u64, Arc<TableMap>>,
    /// The raw body each table map was parsed from: servers repeat an identical table map before
    /// every rows event, and an unchanged one is reused instead of parsed again (same `Arc`).
    raw_maps: HashMap<u64, Vec<u8>>,
}

/// One decoded event, rows decoded with their table map.
#[derive(Debug, Clone)]
pub enum Decoded {
    Event(EventBody<'static>),
    /// A table map, shared (`Arc`) with the rows events that follow it.
    TableMap(Arc<TableMap>),
    Rows {
        table: Arc<TableMap>,
        changes: Vec<RowChange>,
        stmt_end: bool,
    },
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn table(&self, id: u64) -> Option<&Arc<TableMap>> {
        self.tables.get(&id)
    }

    /// Decodes one event. `body` excludes the common header and the checksum.
    pub fn decode(
        &mut self,
        header: &EventHeader,
        body: &[u8],
        at: &dyn Fn() -> EventLocation,
    ) -> Result<Decoded, DecodeError> {
        if header.type_code == event::types::TABLE_MAP {
            let id_len = self
                .fde
                .as_ref()
                .map_or(6, |f| f.table_id_len(event::types::TABLE_MAP));
            if let Some(id) = body
                .get(..id_len)
                .map(|b| b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
            {
                if self
                    .raw_maps
                    .get(&id)
                    .is_some_and(|raw| raw.as_slice() == body)
                {
                    if let Some(tm) = self.tables.get(&id) {
                        return Ok(Decoded::TableMap(tm.clone()));
                    }
                }
            }
        }
        let ev = {
            let default;
            let fde = match &self.fde {
                Some(f) => f,
                None => {
                    default = FormatDescription::default_v4();
                    &default
                }
            };
            event::decode_body(header, body, fde).map_err(|s| DecodeError::Malformed {
                at: at(),
                type_code: header.type_code,
                detail: format!("needed {} more bytes at body offset {}", s.wanted, s.at),
            })?
        };
        Ok(match ev {
            EventBody::FormatDescription(f) => {
                self.fde = Some(f.clone());
                self.tables.clear();
                self.raw_maps.clear();
                Decoded::Event(EventBody::FormatDescription(f))
            }
            EventBody::TableMap(tm) => {
                if let Some(c) = tm
                    .columns
                    .iter()
                    .find(|c| matches!(c.ty, ColType::Unsupported { .. }))
                {
                    return Err(DecodeError::UnsupportedColumn {
                        at: at(),
                        table: format!("{}.{}", tm.db, tm.table),
                        column: c.name.clone(),
                        type_code: c.type_code,
                    });
                }
                let tm = Arc::new(tm);
                self.raw_maps.insert(tm.table_id, body.to_vec());
                self.tables.insert(tm.table_id, tm.clone());
                Decoded::TableMap(tm)
            }
            EventBody::Rows(re) => {
                let table = self.tables.get(&re.table_id).cloned().ok_or_else(|| {
                    DecodeError::NoTableMap {
                        at: at(),
                        table_id: re.table_id,
                    }
                })?;
                let changes =
                    rows::decode_rows(&re, &table).map_err(|s| DecodeError::Malformed {
                        at: at(),
                        type_code: header.type_code,
                        detail: format!(
                            "row image of {}.{} ends early (needed {} bytes at {})",
                            table.db, table.table, s.wanted, s.at
                        ),
                    })?;
                Decoded::Rows {
                    table,
                    changes,
                    stmt_end: re.is_stmt_end(),
                }
            }
            EventBody::MariaCompressed(t) => {
                return Err(DecodeError::MariaCompressed {
                    at: at(),
                    type_code: t,
                })
            }
            other => Decoded::Event(into_static(other)),
        })
    }
}

fn into_static(ev: EventBody<'_>) -> EventBody<'static> {
    match ev {
        EventBody::FormatDescription(f) => EventBody::FormatDescription(f),
        EventBody::Rotate { pos, file } => EventBody::Rotate { pos, file },
        EventBody::Query {
            db,
            sql,
            error_code,
        } => EventBody::Query {
            db,
            sql,
            error_code,
        },
        EventBody::Xid(x) => EventBody::Xid(x),
        EventBody::MysqlGtid {
            gtid,
            immediate_commit_us,
        } => EventBody::MysqlGtid {
            gtid,
            immediate_commit_us,
        },
        EventBody::PreviousGtids(s) => EventBody::PreviousGtids(s),
        EventBody::MariaGtid { gtid, standalone } => EventBody::MariaGtid { gtid, standalone },
        EventBody::MariaGtidList(v) => EventBody::MariaGtidList(v),
        EventBody::MariaBinlogCheckpoint(s) => EventBody::MariaBinlogCheckpoint(s),
        EventBody::MariaAnnotate(s) => EventBody::MariaAnnotate(s),
        EventBody::TableMap(t) => EventBody::TableMap(t),
        EventBody::TransactionPayload(p) => EventBody::TransactionPayload(p),
        EventBody::Heartbeat { file } => EventBody::Heartbeat { file },
        EventBody::Stop => EventBody::Stop,
        EventBody::Incident { code, message } => EventBody::Incident { code, message },
        EventBody::MariaCompressed(t) => EventBody::MariaCompressed(t),
        EventBody::Rows(_) => EventBody::Other(0),
        EventBody::Other(t) => EventBody::Other(t),
    }
}

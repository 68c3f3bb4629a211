//! TABLE_MAP events: the column types, their binlog metadata, and the optional metadata that
//! `binlog_row_metadata=FULL` adds (names, signedness, charsets, ENUM/SET labels, primary key).
//!
//! Invariant: a [`TableMap`] alone is enough to decode its rows: [`ColType`] is resolved here once
//! per table map, not per row. Without FULL metadata, integers are taken as signed and strings as
//! bytes (the live source refuses to run without FULL metadata; only old binlog files hit this).

use std::sync::Arc;

use super::charset::{charset_for_collation, Charset};
use super::reader::{bit, bit_msb, Reader, Short};

pub mod mysql_type {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const VECTOR: u8 = 242;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}
use mysql_type as t;

/// How one column's values are laid out in a row image, and what they mean.
#[derive(Debug, Clone, PartialEq)]
pub enum ColType {
    /// TINYINT..BIGINT: `bytes` is 1, 2, 3 (MEDIUMINT), 4 or 8.
    Int {
        bytes: u8,
        unsigned: bool,
    },
    Float,
    Double,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Year,
    Date,
    /// Old (pre-5.6) TIME: packed HHMMSS integer.
    TimeV1,
    Time {
        fsp: u8,
    },
    DateTimeV1,
    DateTime {
        fsp: u8,
    },
    TimestampV1,
    Timestamp {
        fsp: u8,
    },
    Bit {
        bits: u16,
    },
    /// CHAR/VARCHAR/TEXT with a text charset. `len_bytes` is the length prefix width.
    Text {
        len_bytes: u8,
        charset: Charset,
    },
    /// BINARY/VARBINARY/BLOB (or text in a charset we cannot decode). `pad_to` is BINARY(n)'s n:
    /// the binlog strips BINARY's trailing zero bytes and we put them back.
    Binary {
        len_bytes: u8,
        pad_to: Option<u32>,
    },
    /// MySQL binary JSON.
    Json {
        len_bytes: u8,
    },
    Enum {
        pack: u8,
        labels: Arc<[String]>,
    },
    Set {
        pack: u8,
        labels: Arc<[String]>,
    },
    /// GEOMETRY: SRID + WKB in the binlog; WKB in the replica.
    Geometry {
        len_bytes: u8,
    },
    /// MySQL 9 VECTOR: raw little-endian float32 bytes.
    Vector {
        len_bytes: u8,
    },
    /// A type that cannot appear in a row image (NULL type, pre-5.0 DECIMAL): the rows fail to decode.
    Unsupported {
        type_code: u8,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMeta {
    /// The column's name (FULL metadata), else `@<index>` (1-based, as mysqlbinlog prints).
    pub name: String,
    pub type_code: u8,
    /// The real type: STRING columns may really be ENUM or SET.
    pub real_type: u8,
    pub meta: u16,
    pub nullable: bool,
    pub ty: ColType,
    /// The collation id, when known (character and ENUM/SET columns).
    pub collation: Option<u32>,
    pub charset_name: Option<String>,
    pub visible: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableMap {
    pub table_id: u64,
    pub db: String,
    pub table: String,
    pub columns: Vec<ColumnMeta>,
    /// Indexes of the primary-key columns, in key order (empty: no key, or no FULL metadata).
    pub primary_key: Vec<usize>,
    /// Whether the event carried column names (binlog_row_metadata=FULL).
    pub full_metadata: bool,
}

/// Reads one column's binlog metadata; returns the 16-bit metadata value.
fn read_meta(r: &mut Reader<'_>, ty: u8) -> Result<u16, Short> {
    Ok(match ty {
        t::FLOAT
        | t::DOUBLE
        | t::BLOB
        | t::TINY_BLOB
        | t::MEDIUM_BLOB
        | t::LONG_BLOB
        | t::GEOMETRY
        | t::JSON
        | t::VECTOR => r.u8()? as u16,
        t::TIMESTAMP2 | t::DATETIME2 | t::TIME2 => r.u8()? as u16,
        t::VARCHAR | t::VAR_STRING => r.u16()?,
        // low byte = bits % 8, high byte = bytes
        t::BIT => r.u16()?,
        // big-endian pairs: (precision, scale) and (real type, length)
        t::NEWDECIMAL | t::STRING | t::ENUM | t::SET => {
            let hi = r.u8()? as u16;
            (hi << 8) | r.u8()? as u16
        }
        _ => 0,
    })
}

/// STRING metadata: (real type, max byte length).
fn string_real_type(meta: u16) -> (u8, u32) {
    let b0 = (meta >> 8) as u8;
    let b1 = (meta & 0xff) as u32;
    if b0 != 0 && (b0 & 0x30) != 0x30 {
        (b0 | 0x30, b1 | ((((b0 & 0x30) ^ 0x30) as u32) << 4))
    } else if b0 == 0 {
        (t::STRING, b1)
    } else {
        (b0, b1)
    }
}

fn is_numeric(real: u8) -> bool {
    matches!(
        real,
        t::TINY
            | t::SHORT
            | t::INT24
            | t::LONG
            | t::LONGLONG
            | t::DECIMAL
            | t::NEWDECIMAL
            | t::FLOAT
            | t::DOUBLE
            | t::YEAR
    )
}
fn is_character(real: u8) -> bool {
    matches!(
        real,
        t::STRING
            | t::VAR_STRING
            | t::VARCHAR
            | t::BLOB
            | t::TINY_BLOB
            | t::MEDIUM_BLOB
            | t::LONG_BLOB
    )
}
fn is_enum_or_set(real: u8) -> bool {
    matches!(real, t::ENUM | t::SET)
}

impl TableMap {
    pub fn parse(body: &[u8], table_id_len: usize) -> Result<TableMap, Short> {
        let mut r = Reader::new(body);
        let table_id = r.uint_le(table_id_len)?;
        r.skip(2)?; // flags
        let n = r.u8()? as usize;
        let db = String::from_utf8_lossy(r.take(n)?).into_owned();
        r.skip(1)?;
        let n = r.u8()? as usize;
        let table = String::from_utf8_lossy(r.take(n)?).into_owned();
        r.skip(1)?;
        let ncols = r.lenenc()? as usize;
        let types = r.take(ncols)?;
        let meta_block = r.lenenc_bytes()?;
        let mut mr = Reader::new(meta_block);
        let mut metas = Vec::with_capacity(ncols);
        for &ty in types {
            metas.push(read_meta(&mut mr, ty)?);
        }
        let nulls = r.take(ncols.div_ceil(8))?;

        let real_types: Vec<u8> = types
            .iter()
            .zip(&metas)
            .map(|(&ty, &m)| match ty {
                t::STRING => string_real_type(m).0,
                t::DATE => t::NEWDATE,
                _ => ty,
            })
            .collect();

        // Optional metadata (binlog_row_metadata=FULL / MINIMAL).
        let mut names: Vec<String> = Vec::new();
        let mut signed_bits: Option<&[u8]> = None;
        let mut col_charsets: Vec<Option<u32>> = vec![None; ncols];
        let mut enum_labels: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut set_labels: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut pk: Vec<usize> = Vec::new();
        let mut visibility: Option<&[u8]> = None;
        let char_cols: Vec<usize> = (0..ncols)
            .filter(|&i| is_character(real_types[i]))
            .collect();
        let es_cols: Vec<usize> = (0..ncols)
            .filter(|&i| is_enum_or_set(real_types[i]))
            .collect();
        while !r.is_empty() {
            let kind = r.u8()?;
            let val = r.lenenc_bytes()?;
            let mut v = Reader::new(val);
            match kind {
                1 => signed_bits = Some(val),
                2 | 10 => {
                    let cols = if kind == 2 { &char_cols } else { &es_cols };
                    let default = v.lenenc()? as u32;
                    for &c in cols {
                        col_charsets[c] = Some(default);
                    }
                    while !v.is_empty() {
                        let idx = v.lenenc()? as usize;
                        let coll = v.lenenc()? as u32;
                        if let Some(&c) = cols.get(idx) {
                            col_charsets[c] = Some(coll);
                        }
                    }
                }
                3 | 11 => {
                    let cols = if kind == 3 { &char_cols } else { &es_cols };
                    for &c in cols {
                        if v.is_empty() {
                            break;
                        }
                        col_charsets[c] = Some(v.lenenc()? as u32);
                    }
                }
                4 => {
                    while !v.is_empty() {
                        names.push(String::from_utf8_lossy(v.lenenc_bytes()?).into_owned());
                    }
                }
                5 | 6 => {
                    let dst = if kind == 5 {
                        &mut set_labels
                    } else {
                        &mut enum_labels
                    };
                    while !v.is_empty() {
                        let cnt = v.lenenc()? as usize;
                        let mut labels = Vec::with_capacity(cnt.min(4096));
                        for _ in 0..cnt {
                            labels.push(v.lenenc_bytes()?.to_vec());
                        }
                        dst.push(labels);
                    }
                }
                8 => {
                    while !v.is_empty() {
                        pk.push(v.lenenc()? as usize);
                    }
                }
                9 => {
                    while !v.is_empty() {
                        pk.push(v.lenenc()? as usize);
                        v.lenenc()?; // prefix length
                    }
                }
                12 => visibility = Some(val),
                _ => {}
            }
        }

        let full_metadata = names.len() == ncols;
        let mut numeric_i = 0usize;
        let mut enum_i = 0usize;
        let mut set_i = 0usize;
        let mut columns = Vec::with_capacity(ncols);
        for i in 0..ncols {
            let (ty, meta, real) = (types[i], metas[i], real_types[i]);
            let unsigned = if is_numeric(real) {
                let u = signed_bits.is_some_and(|b| bit_msb(b, numeric_i));
                numeric_i += 1;
                u
            } else {
                false
            };
            let collation = col_charsets[i];
            let cs = collation.and_then(charset_for_collation);
            let (charset, charset_name) = match cs {
                Some((c, n)) => (Some(c), Some(n)),
                None => (None, None),
            };
            let labels_of = |v: &Vec<Vec<u8>>| -> Arc<[String]> {
                v.iter()
                    .map(|l| match charset {
                        Some(c @ (Charset::Utf8 | Charset::Legacy(_) | Charset::Utf32)) => {
                            super::charset::decode_text(c, l)
                                .unwrap_or_else(|_| String::from_utf8_lossy(l).into_owned())
                        }
                        _ => String::from_utf8_lossy(l).into_owned(),
                    })
                    .collect()
            };
            let col_ty = match real {
                t::TINY => ColType::Int { bytes: 1, unsigned },
                t::SHORT => ColType::Int { bytes: 2, unsigned },
                t::INT24 => ColType::Int { bytes: 3, unsigned },
                t::LONG => ColType::Int { bytes: 4, unsigned },
                t::LONGLONG => ColType::Int { bytes: 8, unsigned },
                t::FLOAT => ColType::Float,
                t::DOUBLE => ColType::Double,
                t::NEWDECIMAL => ColType::Decimal {
                    precision: (meta >> 8) as u8,
                    scale: (meta & 0xff) as u8,
                },
                t::YEAR => ColType::Year,
                t::NEWDATE => ColType::Date,
                t::TIME => ColType::TimeV1,
                t::TIME2 => ColType::Time { fsp: meta as u8 },
                t::DATETIME => ColType::DateTimeV1,
                t::DATETIME2 => ColType::DateTime { fsp: meta as u8 },
                t::TIMESTAMP => ColType::TimestampV1,
                t::TIMESTAMP2 => ColType::Timestamp { fsp: meta as u8 },
                t::BIT => ColType::Bit {
                    bits: (meta >> 8) * 8 + (meta & 0xff),
                },
                t::JSON => ColType::Json {
                    len_bytes: meta as u8,
                },
                t::GEOMETRY => ColType::Geometry {
                    len_bytes: meta as u8,
                },
                t::VECTOR => ColType::Vector {
                    len_bytes: meta as u8,
                },
                t::ENUM => {
                    let labels = enum_labels
                        .get(enum_i)
                        .map(labels_of)
                        .unwrap_or_else(|| Arc::from(Vec::new()));
                    enum_i += 1;
                    ColType::Enum {
                        pack: (meta & 0xff) as u8,
                        labels,
                    }
                }
                t::SET => {
                    let labels = set_labels
                        .get(set_i)
                        .map(labels_of)
                        .unwrap_or_else(|| Arc::from(Vec::new()));
                    set_i += 1;
                    ColType::Set {
                        pack: (meta & 0xff) as u8,
                        labels,
                    }
                }
                t::VARCHAR
                | t::VAR_STRING
                | t::STRING
                | t::BLOB
                | t::TINY_BLOB
                | t::MEDIUM_BLOB
                | t::LONG_BLOB => {
                    let (len_bytes, max_len) = match ty {
                        t::STRING => {
                            let (_, l) = string_real_type(meta);
                            (if l > 255 { 2 } else { 1 }, Some(l))
                        }
                        t::VARCHAR | t::VAR_STRING => (if meta > 255 { 2 } else { 1 }, None),
                        _ => (meta as u8, None),
                    };
                    match charset {
                        Some(c @ (Charset::Utf8 | Charset::Legacy(_) | Charset::Utf32)) => {
                            ColType::Text {
                                len_bytes,
                                charset: c,
                            }
                        }
                        Some(Charset::Binary) => ColType::Binary {
                            len_bytes,
                            pad_to: if ty == t::STRING { max_len } else { None },
                        },
                        _ => ColType::Binary {
                            len_bytes,
                            pad_to: None,
                        },
                    }
                }
                other => ColType::Unsupported { type_code: other },
            };
            columns.push(ColumnMeta {
                name: names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("@{}", i + 1)),
                type_code: ty,
                real_type: real,
                meta,
                nullable: bit(nulls, i),
                ty: col_ty,
                collation,
                charset_name,
                visible: visibility.is_none_or(|b| bit_msb(b, i)),
            });
        }
        pk.retain(|&i| i < ncols);
        Ok(TableMap {
            table_id,
            db,
            table,
            columns,
            primary_key: pk,
            full_metadata,
        })
    }
}

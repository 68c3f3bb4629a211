//! What a snapshot reads, in the binlog decoder's terms: a [`TableMap`] built from
//! `information_schema`, and the values of `SELECT` rows (binary protocol, results in each
//! column's own charset, time zone UTC) turned into the same [`Value`]s the decoder produces for
//! the same cell in a row image.
//!
//! Invariants:
//! - For every type, `cell(select) == decode_value(row image)` for the same stored value: the
//!   same variant (signed `Int` vs `UInt`), the same invalid-value rules (zero dates), the same
//!   text decoding (the raw bytes go through the decoder's charset code). Snapshot and stream rows
//!   of one key therefore have the same key bytes, and dedup and the sinks compare them exactly.
//! - The schema is the one [`crate::schema::table_schema`] derives for the stream's table map:
//!   only the facts it uses (names, [`ColType`], primary key) are taken from the catalogue.
//! - Keys stored in the checkpoint (to resume after a chunk) round-trip exactly: typed JSON.

use std::sync::Arc;

use arrow_buffer::i256;
use mysql_async::prelude::Queryable;
use mysql_async::Value as My;

use crate::decode::charset::{charset_by_name, Charset};
use crate::decode::rows::{date_value, datetime_value, days_from_civil, text_or_invalid};
use crate::decode::{ColType, ColumnMeta, TableMap, Value};
use crate::source::SourceError;
use binlake_sink::TableId;

/// A column as the snapshot reads it: how to select it, and (for key columns) how to compare a
/// bound key value with it in the column's collation.
#[derive(Debug, Clone)]
pub struct SnapColumn {
    pub name: String,
    /// `CONVERT(CAST(? AS BINARY) USING cs) COLLATE coll` for text: a key value read back as
    /// raw bytes compares in the column's own collation, so keyset paging follows the index.
    pub param_sql: String,
}

/// A table's shape for a snapshot.
#[derive(Debug, Clone)]
pub struct SnapTable {
    pub map: Arc<TableMap>,
    pub columns: Vec<SnapColumn>,
    /// Estimated rows (`information_schema.TABLES.TABLE_ROWS`).
    pub estimate: u64,
}

impl SnapTable {
    pub fn key_columns(&self) -> impl Iterator<Item = &SnapColumn> {
        self.map.primary_key.iter().map(|&i| &self.columns[i])
    }
    pub fn keyless(&self) -> bool {
        self.map.primary_key.is_empty()
    }
}

impl SnapTable {
    /// `SELECT <every column> FROM db.t [WHERE <bounds> AND (<filter>)] [ORDER BY <key> LIMIT n]`
    /// and its parameters. A bound is an operator (`>`, `>=`, `<`, `<=`) and a key (JSON cells,
    /// as the checkpoint holds it); `None` when a key cannot be read back.
    pub fn chunk_query(
        &self,
        id: &TableId,
        bounds: &[(&str, &serde_json::Value)],
        filter: Option<&str>,
        limit: Option<usize>,
    ) -> Option<(String, Vec<My>)> {
        let keys: Vec<&SnapColumn> = self.key_columns().collect();
        let list = |cols: &mut dyn Iterator<Item = &SnapColumn>| {
            cols.map(|c| ident(&c.name)).collect::<Vec<_>>().join(", ")
        };
        let mut conds = Vec::new();
        let mut params = Vec::new();
        for (op, key) in bounds {
            let (sql, p) = key_compare(&keys, op, &key_cells(key)?);
            conds.push(sql);
            params.extend(p);
        }
        if let Some(f) = filter {
            conds.push(format!("({f})"));
        }
        let mut sql = format!(
            "SELECT {} FROM {}.{}",
            list(&mut self.columns.iter()),
            ident(&id.db),
            ident(&id.table)
        );
        if !conds.is_empty() {
            sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
        }
        if let Some(n) = limit {
            sql.push_str(&format!(
                " ORDER BY {} LIMIT {n}",
                list(&mut keys.iter().copied())
            ));
        }
        Some((sql, params))
    }
}

/// `` `name` `` with backticks doubled.
pub fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// Reads a table's columns, key and size from `information_schema`. `None`: no such table.
pub async fn describe(
    conn: &mut mysql_async::Conn,
    db: &str,
    table: &str,
) -> Result<Option<SnapTable>, SourceError> {
    let q = |e| SourceError::from_mysql(e, "reading information_schema for a snapshot");
    type Row = (
        String,
        String,
        String,
        String,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<String>,
        Option<String>,
        Option<u64>,
    );
    let rows: Vec<Row> = conn
        .exec(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_TYPE, IS_NULLABLE, NUMERIC_PRECISION, \
             NUMERIC_SCALE, DATETIME_PRECISION, CHARACTER_SET_NAME, COLLATION_NAME, \
             CHARACTER_OCTET_LENGTH FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (db, table),
        )
        .await
        .map_err(q)?;
    if rows.is_empty() {
        // information_schema also hides a table binlake's user has no privilege on: only
        // "no such table" from the table itself means it is gone (anything else, 1142 "SELECT
        // command denied" above all, is an error to report, not a table to forget)
        let probe = format!("SELECT 1 FROM {}.{} LIMIT 0", ident(db), ident(table));
        return match conn.query_drop(probe).await {
            Err(mysql_async::Error::Server(s)) if s.code == 1146 => Ok(None),
            Err(e) => Err(SourceError::from_mysql(
                e,
                &format!("reading {db}.{table} for a snapshot (binlake's user needs SELECT on it: GRANT SELECT ON {db}.{table} TO <user>)"),
            )),
            Ok(()) => Ok(None),
        };
    }
    let pk_names: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? \
             AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
            (db, table),
        )
        .await
        .map_err(q)?;
    let estimate: Option<Option<u64>> = conn
        .exec_first(
            "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (db, table),
        )
        .await
        .map_err(q)?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut snap_cols = Vec::with_capacity(rows.len());
    for (name, data_type, column_type, nullable, prec, scale, dt_prec, cs, coll, octets) in rows {
        let ty = col_type(
            &data_type,
            &column_type,
            prec,
            scale,
            dt_prec,
            cs.as_deref(),
            octets,
        );
        let param_sql = match (&ty, &cs, &coll) {
            (ColType::Text { .. }, Some(cs), Some(coll)) => {
                format!("CONVERT(CAST(? AS BINARY) USING {cs}) COLLATE {coll}")
            }
            _ => "?".to_string(),
        };
        snap_cols.push(SnapColumn {
            name: name.clone(),
            param_sql,
        });
        columns.push(ColumnMeta {
            name,
            type_code: 0,
            real_type: 0,
            meta: 0,
            nullable: nullable == "YES",
            ty,
            collation: None,
            charset_name: cs,
            visible: true,
        });
    }
    let primary_key = pk_names
        .iter()
        .filter_map(|k| columns.iter().position(|c| &c.name == k))
        .collect();
    Ok(Some(SnapTable {
        map: Arc::new(TableMap {
            table_id: 0,
            db: db.to_string(),
            table: table.to_string(),
            columns,
            primary_key,
            full_metadata: true,
        }),
        columns: snap_cols,
        estimate: estimate.flatten().unwrap_or(0),
    }))
}

/// The decoder's [`ColType`] for a catalogue type (`DATA_TYPE`, `COLUMN_TYPE`, ...).
pub fn col_type(
    data_type: &str,
    column_type: &str,
    prec: Option<u64>,
    scale: Option<u64>,
    dt_prec: Option<u64>,
    charset: Option<&str>,
    octets: Option<u64>,
) -> ColType {
    let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
    let int = |bytes| ColType::Int { bytes, unsigned };
    let fsp = dt_prec.unwrap_or(0).min(6) as u8;
    let text = |len_bytes| match charset.map(charset_by_name) {
        Some(c @ (Charset::Utf8 | Charset::Legacy(_) | Charset::Utf32)) => ColType::Text {
            len_bytes,
            charset: c,
        },
        _ => ColType::Binary {
            len_bytes,
            pad_to: None,
        },
    };
    match data_type {
        "tinyint" | "bool" | "boolean" => int(1),
        "smallint" => int(2),
        "mediumint" => int(3),
        "int" | "integer" => int(4),
        "bigint" => int(8),
        "float" => ColType::Float,
        "double" | "real" | "double precision" => ColType::Double,
        "decimal" | "numeric" => ColType::Decimal {
            precision: prec.unwrap_or(10) as u8,
            scale: scale.unwrap_or(0) as u8,
        },
        "year" => ColType::Year,
        "date" => ColType::Date,
        "time" => ColType::Time { fsp },
        "datetime" => ColType::DateTime { fsp },
        "timestamp" => ColType::Timestamp { fsp },
        "bit" => ColType::Bit {
            bits: prec.unwrap_or(1) as u16,
        },
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => text(2),
        "binary" => ColType::Binary {
            len_bytes: 1,
            pad_to: octets.map(|n| n as u32),
        },
        "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => ColType::Binary {
            len_bytes: 2,
            pad_to: None,
        },
        "json" => ColType::Json { len_bytes: 4 },
        "enum" => ColType::Enum {
            pack: 2,
            labels: labels(column_type).into(),
        },
        "set" => ColType::Set {
            pack: 8,
            labels: labels(column_type).into(),
        },
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => {
            ColType::Geometry { len_bytes: 4 }
        }
        "vector" => ColType::Vector { len_bytes: 4 },
        // MariaDB's INET4/INET6/UUID are fixed binary in the row image
        "inet4" | "inet6" | "uuid" => ColType::Binary {
            len_bytes: 1,
            pad_to: None,
        },
        _ => ColType::Unsupported { type_code: 0 },
    }
}

/// `enum('a','b''c')` -> `["a", "b'c"]`.
fn labels(column_type: &str) -> Vec<String> {
    let Some(open) = column_type.find('(') else {
        return vec![];
    };
    let body = &column_type[open + 1..column_type.rfind(')').unwrap_or(column_type.len())];
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut inside = false;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match (inside, c) {
            (false, '\'') => inside = true,
            (true, '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
                cur.push('\'');
            }
            (true, '\'') => {
                inside = false;
                out.push(std::mem::take(&mut cur));
            }
            (true, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (true, c) => cur.push(c),
            _ => {}
        }
    }
    out
}

/// One `SELECT` cell as the decoder would have produced it from a row image.
pub fn cell(v: My, ty: &ColType) -> Value {
    match (v, ty) {
        (My::NULL, _) => Value::Null,
        (My::Int(i), ColType::Int { unsigned: true, .. }) => Value::UInt(i as u64),
        (My::Int(i), ColType::Int { .. }) => Value::Int(i),
        (
            My::UInt(u),
            ColType::Int {
                unsigned: false, ..
            },
        ) => Value::Int(u as i64),
        (My::UInt(u), ColType::Int { .. }) => Value::UInt(u),
        (My::Int(i), ColType::Year) => Value::UInt(i.max(0) as u64),
        (My::UInt(u), ColType::Year) => Value::UInt(u),
        (My::Float(f), ColType::Float) => Value::F32(f),
        (My::Double(f), ColType::Float) => Value::F32(f as f32),
        (My::Double(f), ColType::Double) => Value::F64(f),
        (My::Float(f), ColType::Double) => Value::F64(f as f64),
        (My::Bytes(b), ColType::Decimal { precision, scale }) => decimal(&b, *precision, *scale),
        (My::Date(y, m, d, ..), ColType::Date) => date_value(y as i32, m as u32, d as u32),
        (My::Date(y, mo, d, h, mi, s, us), ColType::DateTime { .. } | ColType::DateTimeV1) => {
            datetime_value(
                y as i32, mo as u32, d as u32, h as u32, mi as u32, s as u32, us as i64,
            )
        }
        (My::Date(y, mo, d, h, mi, s, us), ColType::Timestamp { .. } | ColType::TimestampV1) => {
            if y == 0 && mo == 0 && d == 0 {
                Value::Invalid {
                    reason: "zero timestamp",
                    text: "0000-00-00 00:00:00".into(),
                }
            } else {
                let days = days_from_civil(y as i32, mo as u32, d as u32) as i64;
                Value::Timestamp(
                    (days * 86_400 + h as i64 * 3600 + mi as i64 * 60 + s as i64) * 1_000_000
                        + us as i64,
                )
            }
        }
        (My::Time(neg, days, h, m, s, us), ColType::Time { .. } | ColType::TimeV1) => {
            let t = ((days as i64 * 24 + h as i64) * 3600 + m as i64 * 60 + s as i64) * 1_000_000
                + us as i64;
            Value::Time(if neg { -t } else { t })
        }
        (My::Bytes(b), ColType::Bit { .. }) => Value::UInt(
            b.iter()
                .rev()
                .take(8)
                .rev()
                .fold(0u64, |a, &x| (a << 8) | x as u64),
        ),
        (My::Int(i), ColType::Bit { .. }) => Value::UInt(i as u64),
        (My::UInt(u), ColType::Bit { .. }) => Value::UInt(u),
        // UTF-8 text: the result's own buffer becomes the string (no copy)
        (
            My::Bytes(b),
            ColType::Text {
                charset: Charset::Utf8,
                ..
            },
        ) => match String::from_utf8(b) {
            Ok(s) => Value::Str(s),
            Err(e) => text_or_invalid(Charset::Utf8, e.as_bytes()),
        },
        (My::Bytes(b), ColType::Text { charset, .. }) => text_or_invalid(*charset, &b),
        (My::Bytes(mut b), ColType::Binary { pad_to, .. }) => {
            if let Some(p) = pad_to {
                if b.len() < *p as usize {
                    b.resize(*p as usize, 0);
                }
            }
            Value::Bin(b)
        }
        (My::Bytes(b), ColType::Json { .. }) => match String::from_utf8(b) {
            Ok(s) => Value::Str(s),
            Err(e) => Value::Invalid {
                reason: "JSON text is not UTF-8",
                text: format!("0x{}", crate::decode::rows::hex(e.as_bytes())),
            },
        },
        (My::Bytes(b), ColType::Enum { .. } | ColType::Set { .. }) => {
            Value::Str(String::from_utf8_lossy(&b).into_owned())
        }
        (My::Bytes(b), ColType::Geometry { .. }) => Value::Bin(b.get(4..).unwrap_or(&[]).to_vec()),
        (My::Bytes(b), ColType::Vector { .. }) => Value::Bin(b),
        (other, ty) => Value::Invalid {
            reason: "unexpected value type in a snapshot read",
            text: format!("{other:?} for {ty:?}"),
        },
    }
}

/// `-12.340` with scale 3 -> unscaled -12340, as the decoder's DECIMAL.
fn decimal(text: &[u8], precision: u8, scale: u8) -> Value {
    let s = String::from_utf8_lossy(text);
    let invalid = || Value::Invalid {
        reason: "malformed decimal",
        text: s.to_string(),
    };
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.as_ref()),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if !int.bytes().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return invalid();
    }
    let mut digits = String::with_capacity(int.len() + scale as usize + 1);
    if neg {
        digits.push('-');
    }
    digits.push_str(int);
    let f: String = frac
        .chars()
        .chain(std::iter::repeat('0'))
        .take(scale as usize)
        .collect();
    digits.push_str(&f);
    if precision <= 38 {
        match digits.parse::<i128>() {
            Ok(v) => Value::Dec128(v),
            Err(_) => invalid(),
        }
    } else {
        match i256::from_string(&digits) {
            Some(v) => Value::Dec256(v),
            None => invalid(),
        }
    }
}

/// A key cell in the checkpoint: typed JSON that converts back to the same bound parameter.
pub fn key_to_json(v: &My) -> serde_json::Value {
    use serde_json::json;
    match v {
        My::NULL => serde_json::Value::Null,
        My::Int(i) => json!({ "i": i }),
        My::UInt(u) => json!({ "u": u }),
        My::Float(f) => json!({ "f": f }),
        My::Double(f) => json!({ "d": f }),
        My::Bytes(b) => json!({ "x": crate::decode::rows::hex(b) }),
        My::Date(y, m, d, h, mi, s, us) => json!({ "dt": [y, m, d, h, mi, s, us] }),
        My::Time(n, d, h, m, s, us) => json!({ "t": [*n as u32, d, h, m, s, us] }),
    }
}

pub fn key_from_json(j: &serde_json::Value) -> Option<My> {
    let o = match j {
        serde_json::Value::Null => return Some(My::NULL),
        serde_json::Value::Object(o) => o,
        _ => return None,
    };
    let (k, v) = o.iter().next()?;
    let arr = |n: usize| -> Option<Vec<u64>> {
        let a = v.as_array()?;
        (a.len() == n)
            .then(|| a.iter().map(|x| x.as_u64()).collect::<Option<Vec<_>>>())
            .flatten()
    };
    Some(match k.as_str() {
        "i" => My::Int(v.as_i64()?),
        "u" => My::UInt(v.as_u64()?),
        "f" => My::Float(v.as_f64()? as f32),
        "d" => My::Double(v.as_f64()?),
        "x" => {
            let s = v.as_str()?;
            if s.len() % 2 != 0 {
                return None;
            }
            let b = (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            My::Bytes(b)
        }
        "dt" => {
            let a = arr(7)?;
            My::Date(
                a[0] as u16,
                a[1] as u8,
                a[2] as u8,
                a[3] as u8,
                a[4] as u8,
                a[5] as u8,
                a[6] as u32,
            )
        }
        "t" => {
            let a = arr(6)?;
            My::Time(
                a[0] != 0,
                a[1] as u32,
                a[2] as u8,
                a[3] as u8,
                a[4] as u8,
                a[5] as u32,
            )
        }
        _ => return None,
    })
}

/// A whole key as JSON (an array of cells).
pub fn key_json(cells: &[My]) -> serde_json::Value {
    serde_json::Value::Array(cells.iter().map(key_to_json).collect())
}

pub fn key_cells(j: &serde_json::Value) -> Option<Vec<My>> {
    j.as_array()?.iter().map(key_from_json).collect()
}

/// `(k1, k2) op (?, ?)` expanded so that the range optimizer sees a range on the index:
/// `k1 >= ? AND (k1 > ? OR (k1 = ? AND k2 > ?))` for `>`. `op` is `>`, `>=` or `<`.
/// Returns the SQL and the parameters in order.
pub fn key_compare(cols: &[&SnapColumn], op: &str, key: &[My]) -> (String, Vec<My>) {
    let n = cols.len().min(key.len());
    let strict = match op {
        ">=" => ">",
        "<=" => "<",
        o => o,
    };
    let mut params = Vec::new();
    // OR over i of (k_0 = v_0 AND ... AND k_{i-1} = v_{i-1} AND k_i strict v_i), the last one
    // with `op` itself (inclusive or not)
    let mut ors = Vec::new();
    for i in 0..n {
        let mut ands = Vec::new();
        for j in 0..i {
            ands.push(format!("{} = {}", ident(&cols[j].name), cols[j].param_sql));
            params.push(key[j].clone());
        }
        let o = if i + 1 == n { op } else { strict };
        ands.push(format!(
            "{} {o} {}",
            ident(&cols[i].name),
            cols[i].param_sql
        ));
        params.push(key[i].clone());
        ors.push(format!("({})", ands.join(" AND ")));
    }
    let lead = if strict == ">" { ">=" } else { "<=" };
    let mut sql = format!("{} {lead} {}", ident(&cols[0].name), cols[0].param_sql);
    let mut all = vec![key[0].clone()];
    sql.push_str(&format!(" AND ({})", ors.join(" OR ")));
    all.extend(params);
    (sql, all)
}

/// A key cell of the target, read back as Arrow in the source's types (see
/// `crate::validate`), as the snapshot reader would have read it from the source: the inverse
/// of [`cell`] for the types a primary key can have. `None` for a type it does not cover (the
/// key is then reported, not repaired).
pub fn key_cell_from_arrow(a: &dyn arrow_array::Array, row: usize, ty: &ColType) -> Option<My> {
    use crate::decode::rows::civil_from_days;
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::{DataType, TimeUnit};
    if a.is_null(row) {
        return Some(My::NULL);
    }
    let date = |days: i32| civil_from_days(days);
    Some(match (a.data_type(), ty) {
        (DataType::Int8, _) => My::Int(a.as_primitive::<Int8Type>().value(row) as i64),
        (DataType::Int16, _) => My::Int(a.as_primitive::<Int16Type>().value(row) as i64),
        (DataType::Int32, _) => My::Int(a.as_primitive::<Int32Type>().value(row) as i64),
        (DataType::Int64, ColType::Int { .. }) => My::Int(a.as_primitive::<Int64Type>().value(row)),
        (DataType::UInt8, _) => My::UInt(a.as_primitive::<UInt8Type>().value(row) as u64),
        (DataType::UInt16, _) => My::UInt(a.as_primitive::<UInt16Type>().value(row) as u64),
        (DataType::UInt32, _) => My::UInt(a.as_primitive::<UInt32Type>().value(row) as u64),
        (DataType::UInt64, ColType::Int { .. }) => {
            My::UInt(a.as_primitive::<UInt64Type>().value(row))
        }
        (DataType::Decimal128(_, s), ColType::Decimal { .. }) => My::Bytes(
            Decimal128Type::format_decimal(a.as_primitive::<Decimal128Type>().value(row), 38, *s)
                .into_bytes(),
        ),
        (DataType::Decimal256(_, s), ColType::Decimal { .. }) => My::Bytes(
            Decimal256Type::format_decimal(a.as_primitive::<Decimal256Type>().value(row), 76, *s)
                .into_bytes(),
        ),
        (DataType::Date32, ColType::Date) => {
            let (y, m, d) = date(a.as_primitive::<Date32Type>().value(row));
            My::Date(y as u16, m as u8, d as u8, 0, 0, 0, 0)
        }
        (DataType::Timestamp(TimeUnit::Microsecond, _), _) => {
            let us = a.as_primitive::<TimestampMicrosecondType>().value(row);
            let secs = us.div_euclid(1_000_000);
            let (y, m, d) = date(secs.div_euclid(86_400) as i32);
            let s = secs.rem_euclid(86_400);
            My::Date(
                y as u16,
                m as u8,
                d as u8,
                (s / 3600) as u8,
                (s / 60 % 60) as u8,
                (s % 60) as u8,
                us.rem_euclid(1_000_000) as u32,
            )
        }
        (DataType::Utf8, ColType::Text { charset, .. }) => {
            let s = a.as_string::<i32>().value(row);
            match charset {
                Charset::Utf8 => My::Bytes(s.as_bytes().to_vec()),
                Charset::Legacy(enc) => {
                    let (bytes, _, unmappable) = enc.encode(s);
                    if unmappable {
                        return None;
                    }
                    My::Bytes(bytes.into_owned())
                }
                _ => return None,
            }
        }
        (DataType::Utf8, ColType::Enum { .. }) => {
            My::Bytes(a.as_string::<i32>().value(row).as_bytes().to_vec())
        }
        (DataType::Binary, ColType::Binary { .. }) => {
            My::Bytes(a.as_binary::<i32>().value(row).to_vec())
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_labels_parse_quotes() {
        assert_eq!(labels("enum('a','b''c','d,e')"), vec!["a", "b'c", "d,e"]);
        assert_eq!(labels("set('x')"), vec!["x"]);
    }

    #[test]
    fn decimals_match_the_decoder() {
        assert_eq!(decimal(b"-12.340", 10, 3), Value::Dec128(-12340));
        assert_eq!(decimal(b"5", 10, 2), Value::Dec128(500));
        assert_eq!(decimal(b"0.01", 4, 2), Value::Dec128(1));
        assert!(matches!(decimal(b"1e5", 10, 0), Value::Invalid { .. }));
    }

    #[test]
    fn keys_round_trip_through_json() {
        let k = vec![
            My::Int(-5),
            My::UInt(u64::MAX),
            My::Bytes(b"a\xffz".to_vec()),
            My::Date(2024, 2, 29, 1, 2, 3, 456),
            My::Time(true, 1, 2, 3, 4, 5),
        ];
        let j = key_json(&k);
        let text = j.to_string();
        let back = key_cells(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, k);
    }

    #[test]
    fn composite_key_predicate() {
        let c = |n: &str| SnapColumn {
            name: n.into(),
            param_sql: "?".into(),
        };
        let (a, b) = (c("a"), c("b"));
        let (sql, params) = key_compare(&[&a, &b], ">", &[My::Int(1), My::Int(2)]);
        assert_eq!(sql, "`a` >= ? AND ((`a` > ?) OR (`a` = ? AND `b` > ?))");
        assert_eq!(params.len(), 4);
    }
}

//! Decoded values into Arrow: the typed column builders, the byte form of primary keys, and
//! the target's date range check. Used by the pipeline's buffers, the snapshot readers (which
//! build Arrow columns in their own tasks) and `validate`.
//!
//! Invariants:
//! - A column's builder is chosen from [`table_schema`], so rows pushed value by value and
//!   chunks built by a reader have the same Arrow types for the same table map.
//! - [`key_bytes`] and [`key_bytes_at`] give the same bytes for the same key, whether it is read
//!   from decoded values or from Arrow columns: rows and columnar chunks deduplicate against each
//!   other. Values are typed, so no two different keys share bytes.
//! - A value that does not fit its column is an error ([`BuildError::Mismatch`]), never a
//!   silent conversion: it means the decoder and the schema disagree.

use std::sync::Arc;

use arrow_array::builder::*;
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef};
use arrow_buffer::i256;
use arrow_schema::{ArrowError, DataType, TimeUnit};
use thiserror::Error;

use crate::decode::{TableMap, Value};
use crate::schema::table_schema;

/// Why a batch or chunk could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error("no builder for Arrow type {0}")]
    NoBuilder(DataType),
    #[error("value {0} does not fit the column's Arrow type (decoder/schema mismatch)")]
    Mismatch(String),
    #[error("column `{column}`: {source}")]
    Column {
        column: String,
        source: Box<BuildError>,
    },
    #[error("snapshot columns do not match the table's Arrow types")]
    ChunkShape,
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// One builder per data column of `table` (no metadata columns).
pub(crate) fn builders(table: &TableMap) -> Result<Vec<Col>, BuildError> {
    let schema = table_schema(table);
    schema
        .fields()
        .iter()
        .take(table.columns.len())
        .map(|f| {
            Col::new(f.data_type()).map_err(|e| BuildError::Column {
                column: f.name().clone(),
                source: Box::new(e),
            })
        })
        .collect()
}

/// Bytes that identify a row's primary key (values are typed, so no two keys collide).
pub fn key_bytes(values: &[Value], pk: &[usize], out: &mut Vec<u8>) {
    out.clear();
    for &i in pk {
        match values.get(i) {
            Some(Value::Int(v)) => out.extend_from_slice(&v.to_le_bytes()),
            Some(Value::UInt(v)) => out.extend_from_slice(&v.to_le_bytes()),
            Some(Value::Str(s)) => {
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Some(Value::Bin(b)) => {
                out.extend_from_slice(&(b.len() as u64).to_le_bytes());
                out.extend_from_slice(b);
            }
            Some(other) => out.extend_from_slice(format!("{other:?}").as_bytes()),
            None => out.push(0),
        }
        out.push(0xff);
    }
}

/// True when [`key_bytes_at`] can read this key from Arrow columns: integer, text and binary
/// key columns (the others are keyed by their `Value`'s debug text, which only rows have).
pub fn columnar_key(tm: &TableMap) -> bool {
    use crate::decode::ColType;
    tm.primary_key.iter().all(|&i| {
        matches!(
            tm.columns.get(i).map(|c| &c.ty),
            Some(ColType::Int { .. } | ColType::Text { .. } | ColType::Binary { .. })
        )
    })
}

/// An integer key cell as the signed or unsigned 64-bit value the decoder gives it.
pub(crate) enum IntCell {
    I(i64),
    U(u64),
}

pub(crate) fn int_at(a: &dyn Array, row: usize) -> Option<IntCell> {
    use arrow_schema::DataType as D;
    Some(match a.data_type() {
        D::Int8 => IntCell::I(a.as_primitive::<Int8Type>().value(row) as i64),
        D::Int16 => IntCell::I(a.as_primitive::<Int16Type>().value(row) as i64),
        D::Int32 => IntCell::I(a.as_primitive::<Int32Type>().value(row) as i64),
        D::Int64 => IntCell::I(a.as_primitive::<Int64Type>().value(row)),
        D::UInt8 => IntCell::U(a.as_primitive::<UInt8Type>().value(row) as u64),
        D::UInt16 => IntCell::U(a.as_primitive::<UInt16Type>().value(row) as u64),
        D::UInt32 => IntCell::U(a.as_primitive::<UInt32Type>().value(row) as u64),
        D::UInt64 => IntCell::U(a.as_primitive::<UInt64Type>().value(row)),
        _ => return None,
    })
}

/// [`key_bytes`] of row `row` of Arrow columns (the same bytes for the same key, so rows and
/// columns dedup against each other). Only for keys [`columnar_key`] accepts.
pub fn key_bytes_at(cols: &[ArrayRef], pk: &[usize], row: usize, out: &mut Vec<u8>) {
    out.clear();
    for &i in pk {
        let a = cols[i].as_ref();
        if a.is_null(row) {
            out.extend_from_slice(b"Null");
        } else if let Some(v) = int_at(a, row) {
            match v {
                IntCell::I(v) => out.extend_from_slice(&v.to_le_bytes()),
                IntCell::U(v) => out.extend_from_slice(&v.to_le_bytes()),
            }
        } else if let Some(s) = a.as_string_opt::<i32>() {
            let s = s.value(row).as_bytes();
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s);
        } else if let Some(b) = a.as_binary_opt::<i32>() {
            let b = b.value(row);
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        }
        out.push(0xff);
    }
}

/// A typed column builder fed with decoded values.
pub(crate) enum Col {
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder, Option<Arc<str>>),
    D128(Decimal128Builder, u8, i8),
    D256(Decimal256Builder, u8, i8),
    Utf8(StringBuilder),
    Bin(BinaryBuilder),
}

impl Col {
    pub(crate) fn new(dt: &DataType) -> Result<Col, BuildError> {
        Ok(match dt {
            DataType::Int8 => Col::I8(Int8Builder::new()),
            DataType::Int16 => Col::I16(Int16Builder::new()),
            DataType::Int32 => Col::I32(Int32Builder::new()),
            DataType::Int64 => Col::I64(Int64Builder::new()),
            DataType::UInt8 => Col::U8(UInt8Builder::new()),
            DataType::UInt16 => Col::U16(UInt16Builder::new()),
            DataType::UInt32 => Col::U32(UInt32Builder::new()),
            DataType::UInt64 => Col::U64(UInt64Builder::new()),
            DataType::Float32 => Col::F32(Float32Builder::new()),
            DataType::Float64 => Col::F64(Float64Builder::new()),
            DataType::Date32 => Col::Date(Date32Builder::new()),
            DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                Col::Ts(TimestampMicrosecondBuilder::new(), tz.clone())
            }
            DataType::Decimal128(p, s) => Col::D128(Decimal128Builder::new(), *p, *s),
            DataType::Decimal256(p, s) => Col::D256(Decimal256Builder::new(), *p, *s),
            DataType::Utf8 => Col::Utf8(StringBuilder::new()),
            DataType::Binary => Col::Bin(BinaryBuilder::new()),
            other => return Err(BuildError::NoBuilder(other.clone())),
        })
    }

    /// Appends one value; returns its approximate size in bytes.
    pub(crate) fn append(&mut self, v: &Value) -> Result<usize, BuildError> {
        macro_rules! put {
            ($b:expr, $($pat:pat => $val:expr),+) => {
                match v {
                    Value::Null => { $b.append_null(); Ok(1) }
                    $($pat => { $b.append_value($val); Ok(8) })+
                    other => Err(BuildError::Mismatch(format!("{other:?}"))),
                }
            };
        }
        match self {
            Col::I8(b) => put!(b, Value::Int(x) => *x as i8),
            Col::I16(b) => put!(b, Value::Int(x) => *x as i16),
            Col::I32(b) => put!(b, Value::Int(x) => *x as i32),
            Col::I64(b) => put!(b, Value::Int(x) => *x, Value::Time(x) => *x),
            Col::U8(b) => put!(b, Value::UInt(x) => *x as u8),
            Col::U16(b) => put!(b, Value::UInt(x) => *x as u16),
            Col::U32(b) => put!(b, Value::UInt(x) => *x as u32),
            Col::U64(b) => put!(b, Value::UInt(x) => *x),
            Col::F32(b) => put!(b, Value::F32(x) => *x),
            Col::F64(b) => put!(b, Value::F64(x) => *x),
            Col::Date(b) => put!(b, Value::Date(x) => *x),
            Col::Ts(b, _) => put!(b, Value::DateTime(x) => *x, Value::Timestamp(x) => *x),
            Col::D128(b, _, _) => put!(b, Value::Dec128(x) => *x),
            Col::D256(b, _, _) => {
                put!(b, Value::Dec256(x) => *x, Value::Dec128(x) => i256::from_i128(*x))
            }
            Col::Utf8(b) => match v {
                Value::Null => {
                    b.append_null();
                    Ok(1)
                }
                Value::Str(s) => {
                    b.append_value(s);
                    Ok(s.len() + 4)
                }
                // ENUM/SET without labels (no FULL metadata): the index / bits as text
                Value::UInt(x) => {
                    b.append_value(x.to_string());
                    Ok(8)
                }
                other => Err(BuildError::Mismatch(format!("{other:?}"))),
            },
            Col::Bin(b) => match v {
                Value::Null => {
                    b.append_null();
                    Ok(1)
                }
                Value::Bin(x) => {
                    b.append_value(x);
                    Ok(x.len() + 4)
                }
                Value::Str(s) => {
                    b.append_value(s.as_bytes());
                    Ok(s.len() + 4)
                }
                other => Err(BuildError::Mismatch(format!("{other:?}"))),
            },
        }
    }

    pub(crate) fn finish(&mut self) -> Result<ArrayRef, BuildError> {
        Ok(match self {
            Col::I8(b) => Arc::new(b.finish()),
            Col::I16(b) => Arc::new(b.finish()),
            Col::I32(b) => Arc::new(b.finish()),
            Col::I64(b) => Arc::new(b.finish()),
            Col::U8(b) => Arc::new(b.finish()),
            Col::U16(b) => Arc::new(b.finish()),
            Col::U32(b) => Arc::new(b.finish()),
            Col::U64(b) => Arc::new(b.finish()),
            Col::F32(b) => Arc::new(b.finish()),
            Col::F64(b) => Arc::new(b.finish()),
            Col::Date(b) => Arc::new(b.finish()),
            Col::Ts(b, tz) => {
                let a = b.finish();
                match tz {
                    Some(z) => Arc::new(a.with_timezone(z.clone())),
                    None => Arc::new(a),
                }
            }
            Col::D128(b, p, s) => Arc::new(b.finish().with_precision_and_scale(*p, *s)?),
            Col::D256(b, p, s) => Arc::new(b.finish().with_precision_and_scale(*p, *s)?),
            Col::Utf8(b) => Arc::new(b.finish()),
            Col::Bin(b) => Arc::new(b.finish()),
        })
    }
}

/// Snapshot rows already in columns: the table's data columns in their Arrow types (no
/// metadata columns), as `TableBuffer::push` would have built them from the same values.
#[derive(Debug)]
pub struct ColumnChunk {
    pub columns: Vec<ArrayRef>,
    pub rows: usize,
    /// Approximate size, counted as `push` counts it.
    pub bytes: usize,
}

/// Builds a [`ColumnChunk`] value by value (a snapshot reader's side of the buffer).
pub struct ChunkBuilder {
    cols: Vec<Col>,
    rows: usize,
    bytes: usize,
}

impl ChunkBuilder {
    pub fn new(table: &TableMap) -> Result<Self, BuildError> {
        let cols = builders(table)?;
        Ok(ChunkBuilder {
            cols,
            rows: 0,
            bytes: 0,
        })
    }

    /// Appends the value of column `i` of the current row.
    pub fn append(&mut self, i: usize, v: &Value) -> Result<(), BuildError> {
        self.bytes += self.cols[i].append(v)?;
        Ok(())
    }

    /// Appends text to column `i` when it is a Utf8 column (false otherwise: nothing appended).
    pub fn append_str(&mut self, i: usize, s: &str) -> bool {
        match &mut self.cols[i] {
            Col::Utf8(b) => {
                b.append_value(s);
                self.bytes += s.len() + 4;
                true
            }
            _ => false,
        }
    }

    /// Appends bytes to column `i` when it is a Binary column (false otherwise: nothing appended).
    pub fn append_bytes(&mut self, i: usize, s: &[u8]) -> bool {
        match &mut self.cols[i] {
            Col::Bin(b) => {
                b.append_value(s);
                self.bytes += s.len() + 4;
                true
            }
            _ => false,
        }
    }

    /// Ends the current row.
    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    pub fn finish(mut self) -> Result<ColumnChunk, BuildError> {
        Ok(ColumnChunk {
            columns: self
                .cols
                .iter_mut()
                .map(|c| c.finish())
                .collect::<Result<_, _>>()?,
            rows: self.rows,
            bytes: self.bytes,
        })
    }
}

/// A date or time outside the target's range becomes an invalid value (the policy decides).
pub fn out_of_target_range(v: &mut Value, lo: i32, hi: i32) {
    const US_PER_DAY: i64 = 86_400_000_000;
    let day = match v {
        Value::Date(d) => *d as i64,
        Value::DateTime(us) | Value::Timestamp(us) => us.div_euclid(US_PER_DAY),
        _ => return,
    };
    if day < lo as i64 || day > hi as i64 {
        let (y, m, d) = crate::decode::rows::civil_from_days(
            day.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        );
        let text = format!("{y:04}-{m:02}-{d:02}");
        *v = Value::Invalid {
            reason: "outside the dates the target can hold",
            text,
        };
    }
}

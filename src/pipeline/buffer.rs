//! Per-table buffers of whole transactions, deduplicated per key and turned into Arrow batches.
//!
//! Invariants:
//! - A buffer holds whole transactions only (the pipeline adds a transaction's rows for a table in
//!   one call), so a batch never splits a source transaction.
//! - All rows of a buffer share one table schema; a schema change flushes first.
//! - Dedup keeps, per primary key, the last change in commit order, which is also the highest
//!   `_binlake_version` (rows are appended in commit order). Keyless tables keep every row.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::*;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::i256;
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use binlake_sink::{TableBatch, TableId};

use crate::decode::{TableMap, Value};
use crate::schema::table_schema;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Snapshot,
}

impl Op {
    pub fn as_str(&self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Snapshot => "snapshot",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BufRow {
    pub values: Vec<Value>,
    pub version: u64,
    pub op: Op,
    pub deleted: bool,
    pub commit_us: i64,
    pub source: Arc<str>,
}

pub struct TableBuffer {
    pub id: TableId,
    pub table: Arc<TableMap>,
    pub schema: SchemaRef,
    pub rows: Vec<BufRow>,
    pub bytes: usize,
    pub oldest: Option<Instant>,
}

pub fn value_size(v: &Value) -> usize {
    16 + match v {
        Value::Str(s) => s.len(),
        Value::Bin(b) => b.len(),
        Value::Invalid { text, .. } => text.len(),
        _ => 0,
    }
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

impl TableBuffer {
    pub fn new(id: TableId, table: Arc<TableMap>) -> Self {
        let schema = table_schema(&table);
        TableBuffer {
            id,
            table,
            schema,
            rows: Vec::new(),
            bytes: 0,
            oldest: None,
        }
    }

    /// True when `tm` has the same columns as the buffered rows.
    pub fn same_shape(&self, tm: &TableMap) -> bool {
        self.table.columns == tm.columns && self.table.primary_key == tm.primary_key
    }

    pub fn push(&mut self, row: BufRow) {
        self.bytes += row.values.iter().map(value_size).sum::<usize>() + 64;
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Dedups and builds the batch; leaves the buffer empty.
    pub fn take_batch(&mut self, synced_at_us: i64) -> Result<Option<TableBatch>, String> {
        let rows = std::mem::take(&mut self.rows);
        self.bytes = 0;
        self.oldest = None;
        if rows.is_empty() {
            return Ok(None);
        }
        let pk = &self.table.primary_key;
        let keep: Vec<usize> = if pk.is_empty() {
            (0..rows.len()).collect()
        } else {
            let mut last: HashMap<Vec<u8>, usize> = HashMap::with_capacity(rows.len());
            let mut buf = Vec::new();
            for (i, r) in rows.iter().enumerate() {
                key_bytes(&r.values, pk, &mut buf);
                match last.get_mut(buf.as_slice()) {
                    Some(slot) => *slot = i,
                    None => {
                        last.insert(buf.clone(), i);
                    }
                }
            }
            let mut k: Vec<usize> = last.into_values().collect();
            k.sort_unstable();
            k
        };
        let kept: Vec<&BufRow> = keep.iter().map(|&i| &rows[i]).collect();
        let ncols = self.table.columns.len();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for (c, field) in self.schema.fields().iter().take(ncols).enumerate() {
            arrays.push(
                build_column(field.data_type(), &kept, c)
                    .map_err(|e| format!("column `{}`: {e}", field.name()))?,
            );
        }
        let n = kept.len();
        let mut ver = UInt64Builder::with_capacity(n);
        let mut del = BooleanBuilder::with_capacity(n);
        let mut op = StringBuilder::with_capacity(n, n * 6);
        let mut cts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut sts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut src = StringBuilder::with_capacity(n, n * 48);
        for r in &kept {
            ver.append_value(r.version);
            del.append_value(r.deleted);
            op.append_value(r.op.as_str());
            cts.append_value(r.commit_us);
            sts.append_value(synced_at_us);
            src.append_value(&r.source);
        }
        arrays.push(Arc::new(ver.finish()));
        arrays.push(Arc::new(del.finish()));
        arrays.push(Arc::new(op.finish()));
        arrays.push(Arc::new(cts.finish()));
        arrays.push(Arc::new(sts.finish()));
        arrays.push(Arc::new(src.finish()));
        let batch = RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| e.to_string())?;
        let min_version = kept.iter().map(|r| r.version).min().unwrap_or(0);
        let max_version = kept.iter().map(|r| r.version).max().unwrap_or(0);
        let primary_key = pk
            .iter()
            .filter_map(|&i| self.table.columns.get(i).map(|c| c.name.clone()))
            .collect();
        Ok(Some(TableBatch {
            table: self.id.clone(),
            batch,
            primary_key,
            min_version,
            max_version,
        }))
    }
}

fn mismatch(v: &Value, dt: &DataType) -> String {
    format!("value {v:?} does not fit Arrow type {dt} (decoder/schema mismatch)")
}

macro_rules! prim {
    ($builder:ty, $rows:expr, $c:expr, $dt:expr, $($pat:pat => $val:expr),+) => {{
        let mut b = <$builder>::with_capacity($rows.len());
        for r in $rows {
            match &r.values[$c] {
                Value::Null => b.append_null(),
                $($pat => b.append_value($val),)+
                other => return Err(mismatch(other, $dt)),
            }
        }
        Arc::new(b.finish()) as ArrayRef
    }};
}

fn build_column(dt: &DataType, rows: &[&BufRow], c: usize) -> Result<ArrayRef, String> {
    Ok(match dt {
        DataType::Int8 => prim!(Int8Builder, rows, c, dt, Value::Int(v) => *v as i8),
        DataType::Int16 => prim!(Int16Builder, rows, c, dt, Value::Int(v) => *v as i16),
        DataType::Int32 => prim!(Int32Builder, rows, c, dt, Value::Int(v) => *v as i32),
        DataType::Int64 => {
            prim!(Int64Builder, rows, c, dt, Value::Int(v) => *v, Value::Time(v) => *v)
        }
        DataType::UInt8 => prim!(UInt8Builder, rows, c, dt, Value::UInt(v) => *v as u8),
        DataType::UInt16 => prim!(UInt16Builder, rows, c, dt, Value::UInt(v) => *v as u16),
        DataType::UInt32 => prim!(UInt32Builder, rows, c, dt, Value::UInt(v) => *v as u32),
        DataType::UInt64 => prim!(UInt64Builder, rows, c, dt, Value::UInt(v) => *v),
        DataType::Float32 => prim!(Float32Builder, rows, c, dt, Value::F32(v) => *v),
        DataType::Float64 => prim!(Float64Builder, rows, c, dt, Value::F64(v) => *v),
        DataType::Date32 => prim!(Date32Builder, rows, c, dt, Value::Date(v) => *v),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len());
            for r in rows {
                match &r.values[c] {
                    Value::Null => b.append_null(),
                    Value::DateTime(v) | Value::Timestamp(v) => b.append_value(*v),
                    other => return Err(mismatch(other, dt)),
                }
            }
            let a = b.finish();
            match tz {
                Some(z) => Arc::new(a.with_timezone(z.clone())),
                None => Arc::new(a),
            }
        }
        DataType::Decimal128(p, s) => {
            let mut b = Decimal128Builder::with_capacity(rows.len());
            for r in rows {
                match &r.values[c] {
                    Value::Null => b.append_null(),
                    Value::Dec128(v) => b.append_value(*v),
                    other => return Err(mismatch(other, dt)),
                }
            }
            Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            )
        }
        DataType::Decimal256(p, s) => {
            let mut b = Decimal256Builder::with_capacity(rows.len());
            for r in rows {
                match &r.values[c] {
                    Value::Null => b.append_null(),
                    Value::Dec256(v) => b.append_value(*v),
                    Value::Dec128(v) => b.append_value(i256::from_i128(*v)),
                    other => return Err(mismatch(other, dt)),
                }
            }
            Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            )
        }
        DataType::Utf8 => {
            let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 16);
            for r in rows {
                match &r.values[c] {
                    Value::Null => b.append_null(),
                    Value::Str(s) => b.append_value(s),
                    // ENUM/SET without labels (no FULL metadata): the index / bits as text
                    Value::UInt(v) => b.append_value(v.to_string()),
                    other => return Err(mismatch(other, dt)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Binary => {
            let mut b = BinaryBuilder::with_capacity(rows.len(), rows.len() * 16);
            for r in rows {
                match &r.values[c] {
                    Value::Null => b.append_null(),
                    Value::Bin(v) => b.append_value(v),
                    Value::Str(s) => b.append_value(s.as_bytes()),
                    other => return Err(mismatch(other, dt)),
                }
            }
            Arc::new(b.finish())
        }
        other => return Err(format!("no builder for Arrow type {other}")),
    })
}

//! Per-table buffers of whole transactions, kept as Arrow builders (columnar from the start),
//! deduplicated per key when they become a batch.
//!
//! Invariants:
//! - A buffer holds whole transactions only (the pipeline adds a transaction's rows for a table in
//!   one call), so a batch never splits a source transaction.
//! - All rows of a buffer share one table shape; a shape change sets the buffer aside first.
//! - Dedup keeps, per primary key, the change with the highest `_binlake_version`; among changes
//!   of one version (one transaction) the last. Stream rows arrive in commit order, so that is
//!   the last change; a row arriving after a newer change of its key (a snapshot row read after
//!   the stream applied one) never replaces it. Keyless tables keep every row.
//! - Values go straight into the column builders: one copy of each string, no per-cell heap
//!   object, so memory is about the size of the Arrow batch it becomes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::*;
use arrow_array::{ArrayRef, RecordBatch, UInt32Array};
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

/// One change on its way into a buffer.
#[derive(Debug, Clone)]
pub struct BufRow {
    pub values: Vec<Value>,
    pub version: u64,
    pub op: Op,
    pub deleted: bool,
    pub commit_us: i64,
    pub source: Arc<str>,
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

/// Row index of the last change per primary key. A single integer key column (the common case)
/// is hashed as the integer; other keys as their [`key_bytes`].
enum LastByKey {
    None,
    Int(HashMap<i128, u32, foldhash::fast::RandomState>),
    Bytes(HashMap<Vec<u8>, u32, foldhash::fast::RandomState>, Vec<u8>),
}

impl LastByKey {
    fn for_table(tm: &TableMap) -> LastByKey {
        match tm.primary_key.as_slice() {
            [] => LastByKey::None,
            [k] if matches!(
                tm.columns.get(*k).map(|c| &c.ty),
                Some(crate::decode::ColType::Int { .. })
            ) =>
            {
                LastByKey::Int(HashMap::default())
            }
            _ => LastByKey::Bytes(HashMap::default(), Vec::new()),
        }
    }

    /// Records row `idx`; returns true when the key is new to the buffer. The row replaces the
    /// key's earlier one unless that one has a higher version (`versions[i]` is row i's): changes
    /// of one transaction share a version and the later one wins; a row that arrives after a
    /// newer change of its key (a snapshot row after the stream's) does not.
    fn record(&mut self, values: &[Value], pk: &[usize], idx: u32, versions: &[u64]) -> bool {
        let newer = |old: u32| versions[idx as usize] >= versions[old as usize];
        match self {
            LastByKey::None => true,
            LastByKey::Int(m) => {
                let k = match values.get(pk[0]) {
                    Some(Value::Int(v)) => *v as i128,
                    Some(Value::UInt(v)) => *v as i128,
                    _ => i128::MIN,
                };
                match m.get_mut(&k) {
                    Some(slot) => {
                        if newer(*slot) {
                            *slot = idx;
                        }
                        false
                    }
                    None => {
                        m.insert(k, idx);
                        true
                    }
                }
            }
            LastByKey::Bytes(m, buf) => {
                key_bytes(values, pk, buf);
                match m.get_mut(buf.as_slice()) {
                    Some(slot) => {
                        if newer(*slot) {
                            *slot = idx;
                        }
                        false
                    }
                    None => {
                        m.insert(buf.clone(), idx);
                        true
                    }
                }
            }
        }
    }

    fn len(&self) -> Option<usize> {
        match self {
            LastByKey::None => None,
            LastByKey::Int(m) => Some(m.len()),
            LastByKey::Bytes(m, _) => Some(m.len()),
        }
    }

    fn survivors(self) -> Vec<u32> {
        let mut keep: Vec<u32> = match self {
            LastByKey::None => Vec::new(),
            LastByKey::Int(m) => m.into_values().collect(),
            LastByKey::Bytes(m, _) => m.into_values().collect(),
        };
        keep.sort_unstable();
        keep
    }
}

/// A typed column builder fed with decoded values.
enum Col {
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
    fn new(dt: &DataType) -> Result<Col, String> {
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
            other => return Err(format!("no builder for Arrow type {other}")),
        })
    }

    /// Appends one value; returns its approximate size in bytes.
    fn append(&mut self, v: &Value) -> Result<usize, String> {
        macro_rules! put {
            ($b:expr, $($pat:pat => $val:expr),+) => {
                match v {
                    Value::Null => { $b.append_null(); Ok(1) }
                    $($pat => { $b.append_value($val); Ok(8) })+
                    other => Err(format!("value {other:?} does not fit the column's Arrow type (decoder/schema mismatch)")),
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
                other => Err(format!("value {other:?} does not fit a Utf8 column")),
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
                other => Err(format!("value {other:?} does not fit a Binary column")),
            },
        }
    }

    fn finish(&mut self) -> Result<ArrayRef, String> {
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
            Col::D128(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            ),
            Col::D256(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            ),
            Col::Utf8(b) => Arc::new(b.finish()),
            Col::Bin(b) => Arc::new(b.finish()),
        })
    }
}

pub struct TableBuffer {
    pub id: TableId,
    pub table: Arc<TableMap>,
    pub schema: SchemaRef,
    cols: Vec<Col>,
    version: UInt64Builder,
    deleted: BooleanBuilder,
    op: StringBuilder,
    commit_ts: TimestampMicrosecondBuilder,
    source: StringBuilder,
    last_by_key: LastByKey,
    rows: usize,
    min_version: u64,
    max_version: u64,
    /// Highest version of a binlog change (snapshot rows excluded): what the checkpoint's
    /// per-table version may advance to (a snapshot row's version says nothing about which
    /// binlog changes of other keys are applied).
    pub stream_max_version: u64,
    /// Only rows whose keys are new to the target (see `TableBatch::insert_only`).
    pub insert_only: bool,
    pub bytes: usize,
    pub oldest: Option<Instant>,
    /// The newest binlog change buffered: (version, source commit µs, provenance), for the
    /// watermarks.
    pub last_change: Option<(u64, i64, Arc<str>)>,
    /// Source transactions with binlog changes in the buffer (for metrics).
    pub txns: u64,
}

impl TableBuffer {
    pub fn new(id: TableId, table: Arc<TableMap>) -> Result<Self, String> {
        let schema = table_schema(&table);
        let last_by_key = LastByKey::for_table(&table);
        let ncols = table.columns.len();
        let cols = schema
            .fields()
            .iter()
            .take(ncols)
            .map(|f| Col::new(f.data_type()).map_err(|e| format!("column `{}`: {e}", f.name())))
            .collect::<Result<_, _>>()?;
        Ok(TableBuffer {
            id,
            table,
            schema,
            cols,
            version: UInt64Builder::new(),
            deleted: BooleanBuilder::new(),
            op: StringBuilder::new(),
            commit_ts: TimestampMicrosecondBuilder::new(),
            source: StringBuilder::new(),
            last_by_key,
            rows: 0,
            min_version: u64::MAX,
            max_version: 0,
            stream_max_version: 0,
            insert_only: true,
            bytes: 0,
            oldest: None,
            last_change: None,
            txns: 0,
        })
    }

    /// True when `tm` has the same columns as the buffered rows.
    pub fn same_shape(&self, tm: &Arc<TableMap>) -> bool {
        Arc::ptr_eq(&self.table, tm)
            || (self.table.columns == tm.columns && self.table.primary_key == tm.primary_key)
            // a snapshot's table map (from the catalogue) vs the binlog's: same Arrow shape
            || table_schema(tm) == self.schema
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn push(&mut self, row: &BufRow) -> Result<(), String> {
        let mut bytes = 48 + row.source.len();
        for (c, v) in self.cols.iter_mut().zip(&row.values) {
            bytes += c.append(v)?;
        }
        self.version.append_value(row.version);
        self.deleted.append_value(row.deleted);
        self.op.append_value(row.op.as_str());
        self.commit_ts.append_value(row.commit_us);
        self.source.append_value(&row.source);
        if self.last_by_key.record(
            &row.values,
            &self.table.primary_key,
            self.rows as u32,
            self.version.values_slice(),
        ) {
            bytes += 32;
        }
        self.rows += 1;
        self.min_version = self.min_version.min(row.version);
        self.max_version = self.max_version.max(row.version);
        if row.op != Op::Snapshot {
            self.stream_max_version = self.stream_max_version.max(row.version);
            // rows of one transaction share a version: this updates once per transaction
            match &self.last_change {
                Some((v, _, _)) if *v == row.version => {}
                Some((v, _, _)) if *v > row.version => self.txns += 1,
                _ => {
                    self.txns += 1;
                    self.last_change = Some((row.version, row.commit_us, row.source.clone()));
                }
            }
        }
        self.bytes += bytes;
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        Ok(())
    }

    /// Builds the batch (dedup applied); consumes the buffer.
    pub fn into_batch(mut self, synced_at_us: i64) -> Result<Option<TableBatch>, String> {
        if self.rows == 0 {
            return Ok(None);
        }
        let n = self.rows;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for c in self.cols.iter_mut() {
            arrays.push(c.finish()?);
        }
        arrays.push(Arc::new(self.version.finish()));
        arrays.push(Arc::new(self.deleted.finish()));
        arrays.push(Arc::new(self.op.finish()));
        arrays.push(Arc::new(self.commit_ts.finish().with_timezone("UTC")));
        let mut synced = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        synced.append_value_n(synced_at_us, n);
        arrays.push(Arc::new(synced.finish()));
        arrays.push(Arc::new(self.source.finish()));
        let mut batch =
            RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| e.to_string())?;
        // Dedup: keep the last change per key, in commit order.
        if self.last_by_key.len().is_some_and(|k| k < n) {
            let idx = UInt32Array::from(self.last_by_key.survivors());
            let cols = batch
                .columns()
                .iter()
                .map(|c| arrow_select::take::take(c.as_ref(), &idx, None))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            batch = RecordBatch::try_new(self.schema.clone(), cols).map_err(|e| e.to_string())?;
        }
        let primary_key = self
            .table
            .primary_key
            .iter()
            .filter_map(|&i| self.table.columns.get(i).map(|c| c.name.clone()))
            .collect();
        Ok(Some(TableBatch {
            table: self.id,
            batch,
            primary_key,
            min_version: self.min_version,
            max_version: self.max_version,
            stream_max_version: self.stream_max_version,
            insert_only: self.insert_only,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{ColType, ColumnMeta};
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int32Type;

    fn table() -> Arc<TableMap> {
        let col = |name: &str, ty: ColType| ColumnMeta {
            name: name.into(),
            type_code: 3,
            real_type: 3,
            meta: 0,
            nullable: true,
            ty,
            collation: None,
            charset_name: None,
            visible: true,
        };
        Arc::new(TableMap {
            table_id: 1,
            db: "d".into(),
            table: "t".into(),
            columns: vec![
                col(
                    "id",
                    ColType::Int {
                        bytes: 4,
                        unsigned: false,
                    },
                ),
                col(
                    "v",
                    ColType::Text {
                        len_bytes: 1,
                        charset: crate::decode::charset::Charset::Utf8,
                    },
                ),
            ],
            primary_key: vec![0],
            full_metadata: true,
        })
    }

    #[test]
    fn keeps_the_last_change_per_key_in_commit_order() {
        let mut b = TableBuffer::new(TableId::new("d", "t"), table()).unwrap();
        let src: Arc<str> = Arc::from("s");
        let row = |id: i64, v: &str, version: u64, deleted: bool| BufRow {
            values: vec![Value::Int(id), Value::Str(v.into())],
            version,
            op: if deleted { Op::Delete } else { Op::Insert },
            deleted,
            commit_us: 0,
            source: src.clone(),
        };
        for r in [
            row(1, "a", 10, false),
            row(2, "b", 10, false),
            row(1, "a2", 20, false),
            row(3, "c", 20, false),
            row(2, "b", 30, true),
            // an older version arriving late (a snapshot row after the stream's change) loses
            row(3, "stale", 15, false),
            // the same transaction changing a key twice: the later change wins
            row(1, "a3", 20, false),
        ] {
            b.push(&r).unwrap();
        }
        let tb = b.into_batch(0).unwrap().unwrap();
        let ids: Vec<i32> = tb
            .batch
            .column(0)
            .as_primitive::<Int32Type>()
            .values()
            .to_vec();
        let vals: Vec<&str> = tb
            .batch
            .column(1)
            .as_string::<i32>()
            .iter()
            .map(|s| s.unwrap())
            .collect();
        assert_eq!(ids, vec![3, 2, 1]);
        assert_eq!(vals, vec!["c", "b", "a3"]);
        assert_eq!((tb.min_version, tb.max_version), (10, 30));
        assert!(tb.batch.column(3).as_boolean().value(1));
    }
}

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
//! - Snapshot chunks may arrive already columnar ([`ColumnChunk`], built by a reader task):
//!   the buffer then holds a list of segments in arrival order (rows pushed one by one are
//!   finished into a segment before a chunk is added), and row indexes for dedup count across
//!   segments, so the dedup rule above is the same for both kinds of input.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{
    BooleanBuilder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use arrow_schema::SchemaRef;
use binlake_sink::{TableBatch, TableId};

use crate::columnar::{
    builders, int_at, key_bytes, key_bytes_at, BuildError, Col, ColumnChunk, IntCell,
};
use crate::decode::{TableMap, Value};
use crate::position::BinlogPos;
use crate::schema::table_schema;

/// What a row's `_binlake_source` text counts for in the size bounds (about its length).
const SOURCE_BYTES: usize = 64;

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

/// Where a row came from: typed while it is buffered, rendered into `_binlake_source` only when
/// its batch is built (and read typed for the watermarks' GTID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// A binlog transaction: the server that wrote it (`server_id`), its GTID, and where it was
    /// read: server `via`'s binlog file and the end of the transaction there.
    Binlog {
        server_id: u32,
        gtid: Option<String>,
        via: u32,
        at: BinlogPos,
    },
    /// A snapshot read: rows as of the binlog point `high` (a key-range read's window starts at
    /// `low`; a keyless table's whole read has none).
    Snapshot {
        high: BinlogPos,
        low: Option<BinlogPos>,
    },
}

impl Provenance {
    pub fn gtid(&self) -> Option<&str> {
        match self {
            Provenance::Binlog { gtid, .. } => gtid.as_deref(),
            Provenance::Snapshot { .. } => None,
        }
    }
}

/// The `_binlake_source` text: `server_id=1 gtid=0-1-42 via=1 file=binlog.000001 pos=1234`,
/// or `snapshot file=binlog.000001 pos=1234 low=binlog.000001:1000`.
impl std::fmt::Display for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provenance::Binlog {
                server_id,
                gtid,
                via,
                at,
            } => write!(
                f,
                "server_id={server_id} gtid={} via={via} file={} pos={}",
                gtid.as_deref().unwrap_or("-"),
                at.file,
                at.pos
            ),
            Provenance::Snapshot { high, low } => {
                write!(f, "snapshot file={} pos={}", high.file, high.pos)?;
                match low {
                    Some(l) => write!(f, " low={l}"),
                    None => Ok(()),
                }
            }
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
    pub source: Arc<Provenance>,
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

    /// [`Self::record`] for row `row` of Arrow columns (global index `idx`).
    fn record_at(
        &mut self,
        cols: &[ArrayRef],
        pk: &[usize],
        row: usize,
        idx: u32,
        versions: &[u64],
    ) {
        let newer = |old: u32| versions[idx as usize] >= versions[old as usize];
        let slot = match self {
            LastByKey::None => return,
            LastByKey::Int(m) => {
                let k = match int_at(cols[pk[0]].as_ref(), row) {
                    _ if cols[pk[0]].is_null(row) => i128::MIN,
                    Some(IntCell::I(v)) => v as i128,
                    Some(IntCell::U(v)) => v as i128,
                    None => i128::MIN,
                };
                m.entry(k).or_insert(idx)
            }
            LastByKey::Bytes(m, buf) => {
                key_bytes_at(cols, pk, row, buf);
                match m.get_mut(buf.as_slice()) {
                    Some(slot) => slot,
                    None => {
                        m.insert(buf.clone(), idx);
                        return;
                    }
                }
            }
        };
        if *slot != idx && newer(*slot) {
            *slot = idx;
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

pub struct TableBuffer {
    pub id: TableId,
    pub table: Arc<TableMap>,
    pub schema: SchemaRef,
    cols: Vec<Col>,
    version: UInt64Builder,
    deleted: BooleanBuilder,
    op: StringBuilder,
    commit_ts: TimestampMicrosecondBuilder,
    /// Provenance of the rows in the builders, as runs: (first row, provenance). Rendered once
    /// per run when the rows become a segment.
    sources: Vec<(usize, Arc<Provenance>)>,
    /// Rows in the builders (after the last segment).
    building: usize,
    last_by_key: LastByKey,
    /// Finished parts in arrival order (all columns but `_binlake_synced_at`); the builders
    /// hold the rows after the last segment.
    segments: Vec<Vec<ArrayRef>>,
    /// Every row's version, across segments (dedup compares them).
    versions: Vec<u64>,
    rows: usize,
    min_version: u64,
    max_version: u64,
    /// Highest version of a binlog change (snapshot rows excluded): what the checkpoint's
    /// per-table version may advance to (a snapshot row's version says nothing about which
    /// binlog changes of other keys are applied).
    pub stream_max_version: u64,
    /// Only rows whose keys are new to the target (see `TableBatch::insert_only`).
    pub insert_only: bool,
    /// The rows are the table's whole content (see `TableBatch::replace`).
    pub replace: bool,
    /// Rows of the table below this version go after this batch (see
    /// `TableBatch::purge_below`): set when a re-snapshot finishes.
    pub purge_below: Option<u64>,
    /// The target must hold the table even if no row is buffered (a snapshot of an empty
    /// table finished): an empty batch goes out.
    pub ensure: bool,
    /// The re-snapshot these rows belong to, once it has finished (see
    /// `TableBatch::generation`; while it runs, the commit takes it from the progress).
    pub generation: Option<i64>,
    /// Some rows are snapshot rows (see `TableBatch::snapshot_rows`).
    snapshot_rows: bool,
    /// Segments (index, first row) of insert-only snapshot chunks whose keys are not in
    /// `last_by_key` yet: while the buffer holds only such rows their keys are distinct (chunks
    /// cover disjoint key ranges), so there is nothing to deduplicate and no index to keep. The
    /// first row pushed any other way indexes them first.
    unindexed: Vec<(usize, usize)>,
    pub bytes: usize,
    pub oldest: Option<Instant>,
    /// The newest binlog change buffered: (version, source commit µs, provenance), for the
    /// watermarks.
    pub last_change: Option<(u64, i64, Arc<Provenance>)>,
    /// Source transactions with binlog changes in the buffer (for metrics).
    pub txns: u64,
    /// Commit time (µs clock, see `Transaction::clock_us`) of the oldest binlog change
    /// buffered, 0 for none: the freshness histogram measures from it.
    pub first_clock_us: i64,
}

impl TableBuffer {
    pub fn new(id: TableId, table: Arc<TableMap>) -> Result<Self, BuildError> {
        let schema = table_schema(&table);
        let last_by_key = LastByKey::for_table(&table);
        let cols = builders(&table)?;
        Ok(TableBuffer {
            id,
            table,
            schema,
            cols,
            version: UInt64Builder::new(),
            deleted: BooleanBuilder::new(),
            op: StringBuilder::new(),
            commit_ts: TimestampMicrosecondBuilder::new(),
            sources: Vec::new(),
            building: 0,
            last_by_key,
            segments: Vec::new(),
            versions: Vec::new(),
            rows: 0,
            min_version: u64::MAX,
            max_version: 0,
            stream_max_version: 0,
            insert_only: true,
            replace: false,
            purge_below: None,
            ensure: false,
            generation: None,
            snapshot_rows: false,
            unindexed: Vec::new(),
            bytes: 0,
            oldest: None,
            last_change: None,
            txns: 0,
            first_clock_us: 0,
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

    /// Puts the keys of the unindexed segments in the index (before any row that may share a
    /// key with them).
    fn index_pending(&mut self) {
        let pk = &self.table.primary_key;
        for (seg, first) in std::mem::take(&mut self.unindexed) {
            let cols = &self.segments[seg];
            let n = cols.first().map_or(0, |c| c.len());
            for r in 0..n {
                self.last_by_key
                    .record_at(cols, pk, r, (first + r) as u32, &self.versions);
            }
        }
    }

    pub fn push(&mut self, row: &BufRow) -> Result<(), BuildError> {
        self.index_pending();
        let mut bytes = 48 + SOURCE_BYTES;
        for (c, v) in self.cols.iter_mut().zip(&row.values) {
            bytes += c.append(v)?;
        }
        self.version.append_value(row.version);
        self.versions.push(row.version);
        self.deleted.append_value(row.deleted);
        self.op.append_value(row.op.as_str());
        self.commit_ts.append_value(row.commit_us);
        if !self
            .sources
            .last()
            .is_some_and(|(_, p)| Arc::ptr_eq(p, &row.source))
        {
            self.sources.push((self.building, row.source.clone()));
        }
        self.building += 1;
        if self.last_by_key.record(
            &row.values,
            &self.table.primary_key,
            self.rows as u32,
            &self.versions,
        ) {
            bytes += 32;
        }
        self.rows += 1;
        self.min_version = self.min_version.min(row.version);
        self.max_version = self.max_version.max(row.version);
        if row.op == Op::Snapshot {
            self.snapshot_rows = true;
        } else {
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

    /// Adds snapshot rows that a reader already put in columns, all with `version`, read at
    /// `commit_us` (µs), with provenance `source`. Same effect as pushing them one by one.
    pub fn push_columns(
        &mut self,
        chunk: ColumnChunk,
        version: u64,
        commit_us: i64,
        source: &Provenance,
    ) -> Result<(), BuildError> {
        let n = chunk.rows;
        if n == 0 {
            return Ok(());
        }
        if chunk.columns.len() != self.cols.len()
            || chunk
                .columns
                .iter()
                .zip(self.schema.fields().iter())
                .any(|(c, f)| c.data_type() != f.data_type())
        {
            return Err(BuildError::ChunkShape);
        }
        self.finish_segment()?;
        let first = self.rows;
        self.versions.resize(first + n, version);
        let mut new_keys = 0;
        // keys of an insert-only buffer are distinct: indexed only if another row comes
        let lazy = self.insert_only
            && (self.rows == 0 || !self.unindexed.is_empty())
            && self.last_by_key.len().is_some();
        if lazy {
            self.unindexed.push((self.segments.len(), first));
        } else {
            self.index_pending();
            let pk = self.table.primary_key.clone();
            for r in 0..n {
                let before = self.last_by_key.len();
                self.last_by_key.record_at(
                    &chunk.columns,
                    &pk,
                    r,
                    (first + r) as u32,
                    &self.versions,
                );
                if self.last_by_key.len() != before {
                    new_keys += 1;
                }
            }
        }
        let mut seg = chunk.columns;
        seg.push(Arc::new(UInt64Array::from_value(version, n)));
        seg.push(Arc::new(BooleanArray::from(vec![false; n])));
        seg.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(Op::Snapshot.as_str(), n),
        )));
        seg.push(Arc::new(
            TimestampMicrosecondArray::from_value(commit_us, n).with_timezone("UTC"),
        ));
        let source = source.to_string();
        seg.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(source.as_str(), n),
        )));
        self.segments.push(seg);
        self.snapshot_rows = true;
        self.rows += n;
        self.min_version = self.min_version.min(version);
        self.max_version = self.max_version.max(version);
        self.bytes += chunk.bytes + n * (48 + SOURCE_BYTES) + new_keys * 32;
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        Ok(())
    }

    /// Drops the rows below `version` from a keyless table's buffer: a whole read of the table
    /// versioned at `version` holds their transactions (see `handoff`). Keyless buffers have
    /// no key index to keep in step.
    pub fn drop_below(&mut self, version: u64) -> Result<(), BuildError> {
        debug_assert!(matches!(self.last_by_key, LastByKey::None));
        if self.rows == 0 || self.min_version >= version {
            return Ok(());
        }
        self.finish_segment()?;
        let at = self.cols.len(); // the version column of a segment
        let before = self.rows;
        let mut versions = Vec::with_capacity(before);
        for seg in &mut self.segments {
            let v = seg[at]
                .as_any()
                .downcast_ref::<UInt64Array>()
                .expect("version column");
            let mask = BooleanArray::from_iter(v.iter().map(|x| Some(x.unwrap_or(0) >= version)));
            versions.extend(v.iter().flatten().filter(|&x| x >= version));
            *seg = seg
                .iter()
                .map(|c| arrow_select::filter::filter(c.as_ref(), &mask))
                .collect::<Result<_, _>>()?;
        }
        self.segments
            .retain(|s| s.first().is_some_and(|c| !c.is_empty()));
        self.rows = versions.len();
        self.min_version = versions.iter().copied().min().unwrap_or(u64::MAX);
        self.max_version = versions.iter().copied().max().unwrap_or(0);
        self.versions = versions;
        self.bytes = self.bytes * self.rows / before.max(1);
        Ok(())
    }

    /// Moves the rows in the builders into a segment.
    fn finish_segment(&mut self) -> Result<(), BuildError> {
        if self.building == 0 {
            return Ok(());
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for c in self.cols.iter_mut() {
            arrays.push(c.finish()?);
        }
        arrays.push(Arc::new(self.version.finish()));
        arrays.push(Arc::new(self.deleted.finish()));
        arrays.push(Arc::new(self.op.finish()));
        arrays.push(Arc::new(self.commit_ts.finish().with_timezone("UTC")));
        let mut source = StringBuilder::new();
        let runs = std::mem::take(&mut self.sources);
        for (i, (first, p)) in runs.iter().enumerate() {
            let end = runs.get(i + 1).map_or(self.building, |(next, _)| *next);
            let text = p.to_string();
            for _ in *first..end {
                source.append_value(&text);
            }
        }
        arrays.push(Arc::new(source.finish()));
        self.building = 0;
        self.segments.push(arrays);
        Ok(())
    }

    /// Builds the batch (dedup applied); consumes the buffer.
    pub fn into_batch(mut self, synced_at_us: i64) -> Result<Option<TableBatch>, BuildError> {
        if self.rows == 0 && !self.replace && self.purge_below.is_none() && !self.ensure {
            return Ok(None);
        }
        let primary_key: Vec<String> = self
            .table
            .primary_key
            .iter()
            .filter_map(|&i| self.table.columns.get(i).map(|c| c.name.clone()))
            .collect();
        let n = self.rows;
        if n == 0 {
            // an empty table's snapshot still replaces what the target holds of it (keyless)
            // or makes it exist, and a finished re-snapshot with no rows left to write still
            // removes the older ones
            return Ok(Some(TableBatch {
                table: self.id,
                batch: RecordBatch::new_empty(self.schema.clone()),
                primary_key: if self.replace { vec![] } else { primary_key },
                min_version: 0,
                max_version: 0,
                stream_max_version: 0,
                insert_only: false,
                replace: self.replace,
                snapshot_rows: self.replace,
                purge_below: self.purge_below,
                reshape: false,
                generation: self.generation,
            }));
        }
        self.finish_segment()?;
        let mut arrays: Vec<ArrayRef> = if self.segments.len() == 1 {
            self.segments.pop().expect("one segment")
        } else {
            (0..self.segments[0].len())
                .map(|i| {
                    let parts: Vec<&dyn Array> =
                        self.segments.iter().map(|s| s[i].as_ref()).collect();
                    arrow_select::concat::concat(&parts)
                })
                .collect::<Result<_, _>>()?
        };
        let source = arrays.pop().expect("source column");
        let mut synced = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        synced.append_value_n(synced_at_us, n);
        arrays.push(Arc::new(synced.finish()));
        arrays.push(source);
        let mut batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        // Dedup: keep the last change per key, in commit order. (Unindexed segments left means
        // every row is an insert-only chunk row: distinct keys, nothing to drop.)
        if self.unindexed.is_empty() && self.last_by_key.len().is_some_and(|k| k < n) {
            let idx = UInt32Array::from(self.last_by_key.survivors());
            let cols = batch
                .columns()
                .iter()
                .map(|c| arrow_select::take::take(c.as_ref(), &idx, None))
                .collect::<Result<Vec<_>, _>>()?;
            batch = RecordBatch::try_new(self.schema.clone(), cols)?;
        }
        Ok(Some(TableBatch {
            table: self.id,
            batch,
            primary_key,
            min_version: self.min_version,
            max_version: self.max_version,
            stream_max_version: self.stream_max_version,
            insert_only: self.insert_only,
            replace: self.replace,
            snapshot_rows: self.snapshot_rows,
            purge_below: self.purge_below,
            reshape: false,
            generation: self.generation,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columnar::{columnar_key, key_bytes, key_bytes_at, ChunkBuilder};
    use crate::decode::{ColType, ColumnMeta};
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int32Type;

    fn prov() -> Arc<Provenance> {
        Arc::new(Provenance::Snapshot {
            high: BinlogPos::default(),
            low: None,
        })
    }

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
    fn columns_key_like_rows_and_dedup_against_them() {
        use crate::decode::charset::Charset;
        // the same key bytes from values and from the columns built from them
        let tm = |ty: ColType| {
            let mut t = (*table()).clone();
            t.columns[0].ty = ty;
            t.primary_key = vec![0, 1];
            Arc::new(t)
        };
        for (ty, v) in [
            (
                ColType::Int {
                    bytes: 2,
                    unsigned: false,
                },
                Value::Int(-7),
            ),
            (
                ColType::Int {
                    bytes: 8,
                    unsigned: true,
                },
                Value::UInt(u64::MAX),
            ),
            (
                ColType::Text {
                    len_bytes: 1,
                    charset: Charset::Utf8,
                },
                Value::Str("ké".into()),
            ),
            (
                ColType::Binary {
                    len_bytes: 1,
                    pad_to: None,
                },
                Value::Bin(vec![0, 255]),
            ),
        ] {
            let t = tm(ty);
            assert!(columnar_key(&t));
            let row = vec![v, Value::Str("x".into())];
            let mut b = ChunkBuilder::new(&t).unwrap();
            for (i, v) in row.iter().enumerate() {
                b.append(i, v).unwrap();
            }
            b.end_row();
            let c = b.finish().unwrap();
            let (mut a, mut k) = (Vec::new(), Vec::new());
            key_bytes(&row, &t.primary_key, &mut a);
            key_bytes_at(&c.columns, &t.primary_key, 0, &mut k);
            assert_eq!(a, k, "{:?}", t.columns[0].ty);
        }
        // rows, then a chunk, then rows: one row per key, the highest version (last on a tie)
        let mut b = TableBuffer::new(TableId::new("d", "t"), table()).unwrap();
        let src = prov();
        let row = |id: i64, v: &str, version: u64| BufRow {
            values: vec![Value::Int(id), Value::Str(v.into())],
            version,
            op: Op::Update,
            deleted: false,
            commit_us: 0,
            source: src.clone(),
        };
        b.push(&row(1, "stream-new", 1 << 20)).unwrap();
        b.push(&row(2, "stream-old", 1)).unwrap();
        let mut cb = ChunkBuilder::new(&table()).unwrap();
        for (id, v) in [(1, "snap"), (2, "snap"), (3, "snap")] {
            cb.append(0, &Value::Int(id)).unwrap();
            cb.append(1, &Value::Str(v.into())).unwrap();
            cb.end_row();
        }
        b.push_columns(cb.finish().unwrap(), 1 << 16, 0, &prov())
            .unwrap();
        b.push(&row(3, "stream-after", 1 << 16)).unwrap();
        let tb = b.into_batch(0).unwrap().unwrap();
        let mut got: Vec<(i32, String, String)> = (0..tb.batch.num_rows())
            .map(|i| {
                (
                    tb.batch.column(0).as_primitive::<Int32Type>().value(i),
                    tb.batch.column(1).as_string::<i32>().value(i).to_string(),
                    tb.batch.column(4).as_string::<i32>().value(i).to_string(),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (1, "stream-new".into(), "update".into()),
                (2, "snap".into(), "snapshot".into()),
                (3, "stream-after".into(), "update".into()),
            ]
        );
        assert_eq!(tb.batch.num_columns(), tb.batch.schema().fields().len());
    }

    #[test]
    fn insert_only_chunks_are_indexed_only_when_another_row_comes() {
        let chunk = |ids: &[i64]| {
            let mut cb = ChunkBuilder::new(&table()).unwrap();
            for &id in ids {
                cb.append(0, &Value::Int(id)).unwrap();
                cb.append(1, &Value::Str("snap".into())).unwrap();
                cb.end_row();
            }
            cb.finish().unwrap()
        };
        let ids_of = |tb: &TableBatch| -> Vec<(i32, String)> {
            let mut v: Vec<(i32, String)> = (0..tb.batch.num_rows())
                .map(|i| {
                    (
                        tb.batch.column(0).as_primitive::<Int32Type>().value(i),
                        tb.batch.column(1).as_string::<i32>().value(i).to_string(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        // only insert-only chunks (distinct keys): every row goes out, nothing indexed
        let mut b = TableBuffer::new(TableId::new("d", "t"), table()).unwrap();
        b.push_columns(chunk(&[1, 2]), 1 << 16, 0, &prov()).unwrap();
        b.push_columns(chunk(&[3]), 2 << 16, 0, &prov()).unwrap();
        assert_eq!(b.unindexed.len(), 2);
        let tb = b.into_batch(0).unwrap().unwrap();
        assert_eq!(tb.batch.num_rows(), 3);
        // a stream change of a chunk's key after the chunks: the chunks are indexed first, so
        // the newer change replaces the chunk row
        let mut b = TableBuffer::new(TableId::new("d", "t"), table()).unwrap();
        b.push_columns(chunk(&[1, 2]), 1 << 16, 0, &prov()).unwrap();
        b.insert_only = false;
        b.push(&BufRow {
            values: vec![Value::Int(2), Value::Str("stream".into())],
            version: 3 << 16,
            op: Op::Update,
            deleted: false,
            commit_us: 0,
            source: prov(),
        })
        .unwrap();
        assert!(b.unindexed.is_empty());
        // and a later non-fresh chunk is deduplicated against everything before it
        b.push_columns(chunk(&[1]), 4 << 16, 0, &prov()).unwrap();
        let tb = b.into_batch(0).unwrap().unwrap();
        assert_eq!(
            ids_of(&tb),
            vec![(1, "snap".into()), (2, "stream".into())],
            "one row per key"
        );
        assert_eq!(tb.batch.num_rows(), 2);
    }

    #[test]
    fn keeps_the_last_change_per_key_in_commit_order() {
        let mut b = TableBuffer::new(TableId::new("d", "t"), table()).unwrap();
        let src = prov();
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

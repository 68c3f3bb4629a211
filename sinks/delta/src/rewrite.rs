//! Upserts without a query engine: the MERGE binlake needs (one row per key in the batch, the
//! higher `_binlake_version` wins), done directly on the files that can hold a batch key.
//!
//! Why not DataFusion's MERGE for every batch: planning and running it cost 50-180 ms per table
//! and commit on two cores even for a handful of rows, and its join held about 1 GiB during
//! catch-up (issues 19 and 22). Here a batch costs what it touches: the files whose statistics
//! say they may hold one of its keys are read, those that hold a row the batch replaces are
//! rewritten, and keys new to the table are added. A batch of keys above every stored one (an
//! auto-increment insert) reads nothing.
//!
//! Invariants:
//! - Same result as the MERGE in `sink.rs`: a batch row replaces the stored row of its key only
//!   when its `_binlake_version` is higher; a tombstone replaces like a row, or with
//!   `deletes = "hard"` removes the stored row and is never inserted; a key the table does not
//!   hold is inserted.
//! - One Delta commit per batch: the Remove of every rewritten file, the Add of its replacement
//!   and of the new keys' file, and the batch's `txn` actions. Readers see the batch whole or not
//!   at all; a replay is skipped by the `txn` version as before.
//! - A file is skipped only when its statistics prove it holds none of the batch's keys (the
//!   first key column's min/max, integer keys); without statistics it is read.
//! - What a commit writes (the rewritten files' rows and the new keys) is sorted by key and cut
//!   into files of about `delta.targetFileSize`, each a narrow key range, so later batches keep
//!   skipping files; a small file (under 2 MiB) that a batch reads is rewritten with it, so
//!   frequent commits do not pile up small files.
//! - Used only where that is exact: no partition columns, column mapping, change data feed,
//!   row tracking, constraints or append-only; no deletion vector on a file it reads; the
//!   batch's columns exactly the table's (in any order). Otherwise the caller runs the MERGE.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{DataType, SchemaRef};
use binlake_sink::{SinkError, COL_DELETED, COL_VERSION};
use deltalake::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use deltalake::arrow::row::{RowConverter, Rows, SortField};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::Action;
use deltalake::protocol::DeltaOperation;
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use tracing::debug;

use crate::sink::{as_table_rows, delta_err, encode_files};

/// What an upsert did, for the log.
#[derive(Debug, Default)]
pub(crate) struct Upserted {
    pub read: usize,
    pub rewritten: usize,
    pub inserted: usize,
    pub replaced: usize,
    /// Bytes of the files rewritten (replaced, kept until vacuum).
    pub replaced_bytes: u64,
}

/// Applies `batch` (one row per key, the table's exact columns) to `table` in one commit.
/// `Ok(None)`: the table or batch is of a kind this path does not handle (see the module doc);
/// nothing was written.
pub(crate) async fn upsert(
    table: &DeltaTable,
    name: &str,
    batch: &RecordBatch,
    pk: &[String],
    hard: bool,
    props: CommitProperties,
) -> Result<Option<Upserted>, SinkError> {
    let Some(batch) = as_table_rows(table, name, batch)? else {
        return Ok(None);
    };
    let schema = batch.schema();
    let snapshot = table
        .snapshot()
        .map_err(|e| delta_err(name, "snapshot", e))?;
    if let Some(why) = unsupported(snapshot) {
        debug!(table = %name, why, "upsert by MERGE");
        return Ok(None);
    }
    let keys = Keys::new(&batch, pk).map_err(|e| SinkError::Definite(format!("{name}: {e}")))?;
    // candidate files: those whose first-key range may hold a batch key
    let sorted = sorted_first_key(&batch, &pk[0]);
    let mut candidates = Vec::new();
    for f in snapshot.log_data().iter() {
        let range = first_key_range(f.stats().as_deref(), &pk[0]);
        let hit = match (&sorted, range) {
            (Some(keys), Some((lo, hi))) => {
                let i = keys.partition_point(|k| *k < lo);
                i < keys.len() && keys[i] <= hi
            }
            _ => true,
        };
        if hit {
            if f.deletion_vector_descriptor().is_some() {
                debug!(table = %name, "upsert by MERGE: a file has a deletion vector");
                return Ok(None);
            }
            candidates.push((
                range.map(|r| r.0),
                f.object_store_path(),
                f.remove_action(true),
            ));
        }
    }
    // in key order (files without statistics first): output files cut from consecutive
    // rewritten files hold narrow key ranges
    candidates.sort_by_key(|c| c.0);
    let store = table.object_store();
    let keys = Arc::new(keys);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut done = Upserted {
        read: candidates.len(),
        ..Default::default()
    };
    let named = |e: SinkError| match e {
        SinkError::Definite(m) => SinkError::Definite(format!("{name}: {m}")),
        e => e,
    };
    let mut files = futures::stream::iter(candidates)
        .map(|(_, path, remove)| {
            let (store, keys, schema) = (store.clone(), keys.clone(), schema.clone());
            // a small file read anyway is rewritten into the output: frequent commits then
            // do not pile up small files (each read by every later batch of its key range)
            let absorb = remove.size.is_some_and(|s| s < SMALL_FILE);
            async move {
                let bytes = fetch(&store, &path).await?;
                let outcome = tokio::task::spawn_blocking(move || {
                    apply_to_file(bytes, &schema, &keys, hard, absorb)
                })
                .await
                .map_err(|e| SinkError::Definite(format!("{path}: decoding task failed: {e}")))?
                .map_err(|e| SinkError::Definite(format!("{path}: {e}")))?;
                Ok::<_, SinkError>(outcome.map(|o| (remove, o)))
            }
        })
        .buffered(cores);
    let mut matched = vec![false; batch.num_rows()];
    let mut removes = Vec::new();
    let mut adds = Vec::new();
    let mut out = Output::new(schema.clone(), pk);
    let mut changed = false;
    while let Some(r) = files.try_next().await.map_err(named)? {
        let Some((remove, o)) = r else {
            debug!(table = %name, "upsert by MERGE: a file's columns differ from the table's");
            return Ok(None);
        };
        out.read(remove.size.unwrap_or(0), o.stored_rows);
        for &j in &o.matched {
            matched[j as usize] = true;
        }
        changed |= o.replaced > 0;
        done.replaced += o.replaced;
        if let Some(rows) = o.rows {
            done.rewritten += 1;
            done.replaced_bytes += remove.size.unwrap_or(0).max(0) as u64;
            removes.push(Action::Remove(remove));
            out.push(rows);
        }
        // memory stays at about a file per core plus one output file, whatever the batch
        // touches (files are written only once the commit is sure to change something)
        if changed {
            adds.extend(out.flush(table, name, false).await?);
        }
    }
    // keys the table does not hold (tombstones of them too, unless deletes are hard)
    let deleted = batch.column_by_name(COL_DELETED).map(|c| c.as_boolean());
    let new: Vec<u32> = (0..batch.num_rows())
        .filter(|&j| {
            let dropped = hard && deleted.is_some_and(|d| d.value(j));
            !matched[j] && !dropped
        })
        .map(|j| j as u32)
        .collect();
    done.inserted = new.len();
    let actions = if changed || !new.is_empty() {
        if new.len() == batch.num_rows() {
            // every row new (the usual insert batch): no copy
            out.push(batch.clone());
        } else {
            let idx = arrow_array::UInt32Array::from(new);
            out.push(
                take_record_batch(&batch, &idx)
                    .map_err(|e| SinkError::Definite(format!("{name}: {e}")))?,
            );
        }
        adds.extend(out.flush(table, name, true).await?);
        removes
            .into_iter()
            .chain(adds.into_iter().map(Action::Add))
            .collect()
    } else {
        // nothing replaced, nothing new (every row older than the stored one): the files stay
        done.rewritten = 0;
        done.replaced_bytes = 0;
        Vec::new()
    };
    // (no actions: every row older than the stored one; the txn still records the batch)
    CommitBuilder::from(props)
        .with_actions(actions)
        .build(
            Some(snapshot),
            table.log_store(),
            DeltaOperation::Merge {
                predicate: None,
                merge_predicate: Some(format!("primary key ({})", pk.join(", "))),
                matched_predicates: vec![],
                not_matched_predicates: vec![],
                not_matched_by_source_predicates: vec![],
            },
        )
        .await
        .map_err(|e| delta_err(name, "commit", e))?;
    Ok(Some(done))
}

/// The rows a commit writes, cut into files of about the target size in key order.
struct Output<'a> {
    schema: SchemaRef,
    pk: &'a [String],
    pending: Vec<RecordBatch>,
    rows: usize,
    bytes_read: i64,
    rows_read: usize,
}

impl<'a> Output<'a> {
    fn new(schema: SchemaRef, pk: &'a [String]) -> Self {
        Self {
            schema,
            pk,
            pending: Vec::new(),
            rows: 0,
            bytes_read: 0,
            rows_read: 0,
        }
    }

    fn read(&mut self, bytes: i64, rows: usize) {
        self.bytes_read += bytes;
        self.rows_read += rows;
    }

    fn push(&mut self, rows: RecordBatch) {
        if rows.num_rows() > 0 {
            self.rows += rows.num_rows();
            self.pending.push(rows);
        }
    }

    /// Rows per file for `delta.targetFileSize`, from the stored files' bytes per row.
    fn rows_per_file(&self) -> usize {
        let per_row = if self.rows_read > 0 {
            (self.bytes_read.max(1) as usize).div_ceil(self.rows_read)
        } else {
            100
        };
        (crate::sink::MERGE_FILE_SIZE as usize / per_row).max(1024)
    }

    /// Writes the pending rows, sorted by key, as files of `rows_per_file` rows; unless `all`,
    /// a last partial file's rows stay pending.
    async fn flush(
        &mut self,
        table: &DeltaTable,
        name: &str,
        all: bool,
    ) -> Result<Vec<deltalake::kernel::Add>, SinkError> {
        let per = self.rows_per_file();
        if self.rows == 0 || (!all && self.rows < per) {
            return Ok(Vec::new());
        }
        let sorted = concat_batches(&self.schema, &self.pending)
            .and_then(|b| sort_by_key(&b, self.pk))
            .map_err(|e| SinkError::Definite(format!("{name}: {e}")))?;
        self.pending.clear();
        let unique = (self.pk.len() == 1).then_some(self.pk[0].as_str());
        let mut adds = Vec::new();
        let mut start = 0;
        while start < sorted.num_rows() {
            let n = per.min(sorted.num_rows() - start);
            if !all && n < per {
                break;
            }
            adds.extend(encode_files(table, name, sorted.slice(start, n), unique).await?);
            start += n;
        }
        self.rows = sorted.num_rows() - start;
        if self.rows > 0 {
            self.pending.push(sorted.slice(start, self.rows));
        }
        Ok(adds)
    }
}

/// Why the table is not one this path handles, if it is not.
fn unsupported(snapshot: &deltalake::table::state::DeltaTableState) -> Option<&'static str> {
    if !snapshot.metadata().partition_columns().is_empty() {
        return Some("partitioned");
    }
    let p = snapshot.table_config();
    // (the mode's type is not re-exported by deltalake; its Debug name is the variant's)
    if p.column_mapping_mode
        .is_some_and(|m| format!("{m:?}") != "None")
    {
        return Some("column mapping");
    }
    if p.enable_change_data_feed == Some(true) {
        return Some("change data feed");
    }
    if p.enable_row_tracking == Some(true) {
        return Some("row tracking");
    }
    if p.append_only == Some(true) {
        return Some("append-only");
    }
    if p.unknown_properties
        .keys()
        .any(|k| k.starts_with("delta.constraints."))
    {
        return Some("constraints");
    }
    let protocol = snapshot.protocol();
    // writer features this path honours (it writes plain files with statistics)
    const PLAIN: &[&str] = &[
        "timestampNtz",
        "timestampWithoutTimezone",
        "deletionVectors",
        "v2Checkpoint",
        "vacuumProtocolCheck",
        "domainMetadata",
    ];
    let features_ok = match protocol.writer_features() {
        Some(fs) => fs.iter().all(|f| PLAIN.contains(&f.as_ref())),
        None => protocol.min_writer_version() <= 2,
    };
    (!features_ok).then_some("writer features")
}

async fn fetch(
    store: &Arc<dyn deltalake::ObjectStore>,
    path: &Path,
) -> Result<bytes::Bytes, SinkError> {
    let got = store
        .get(path)
        .await
        .map_err(binlake_sink::store::classify)?;
    got.bytes().await.map_err(binlake_sink::store::classify)
}

/// The batch's keys, encoded for lookup, with its versions and tombstone flags.
struct Keys {
    converter: RowConverter,
    pk: Vec<String>,
    index: HashMap<Box<[u8]>, u32>,
    batch: RecordBatch,
}

impl Keys {
    fn new(batch: &RecordBatch, pk: &[String]) -> Result<Self, arrow_schema::ArrowError> {
        let cols = key_columns(batch, pk)?;
        let converter = RowConverter::new(
            cols.iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )?;
        let rows = converter.convert_columns(&cols)?;
        let index = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (Box::from(r.as_ref()), i as u32))
            .collect();
        Ok(Self {
            converter,
            pk: pk.to_vec(),
            index,
            batch: batch.clone(),
        })
    }

    fn rows(&self, b: &RecordBatch) -> Result<Rows, arrow_schema::ArrowError> {
        self.converter.convert_columns(&key_columns(b, &self.pk)?)
    }
}

fn key_columns(b: &RecordBatch, pk: &[String]) -> Result<Vec<ArrayRef>, arrow_schema::ArrowError> {
    pk.iter()
        .map(|k| {
            b.column_by_name(k)
                .cloned()
                .ok_or_else(|| arrow_schema::ArrowError::SchemaError(format!("no key column {k}")))
        })
        .collect()
}

/// What applying the batch to one stored file gives.
struct FileOutcome {
    /// Batch rows whose key the file holds (replaced or not).
    matched: Vec<u32>,
    /// Rows of the file the batch replaced or removed.
    replaced: usize,
    stored_rows: usize,
    /// The file's rows after the batch (kept rows and the batch rows that replaced some) when
    /// it is to be rewritten: it changed, or it is small and absorbed; `None`: it stays.
    rows: Option<RecordBatch>,
}

/// Reads one stored file as the table's columns and applies the batch to it. `None`: the file's
/// columns cannot be read as the table's.
fn apply_to_file(
    bytes: bytes::Bytes,
    schema: &SchemaRef,
    keys: &Keys,
    hard: bool,
    absorb: bool,
) -> Result<Option<FileOutcome>, arrow_schema::ArrowError> {
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| arrow_schema::ArrowError::ExternalError(Box::new(e)))?
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| arrow_schema::ArrowError::ExternalError(Box::new(e)))?;
    let mut stored = Vec::new();
    for b in reader {
        match conform(b?, schema) {
            Some(b) => stored.push(b),
            None => return Ok(None),
        }
    }
    let stored = concat_batches(schema, &stored)?;
    let sv = version_of(&stored)?;
    let bv = version_of(&keys.batch)?;
    let deleted = keys
        .batch
        .column_by_name(COL_DELETED)
        .map(|c| c.as_boolean());
    let rows = keys.rows(&stored)?;
    let mut keep = Vec::with_capacity(stored.num_rows());
    let mut matched = Vec::new();
    let mut replacing = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let Some(&j) = keys.index.get(r.as_ref()) else {
            keep.push(true);
            continue;
        };
        matched.push(j);
        if bv.value(j as usize) > sv.value(i) {
            keep.push(false);
            if !(hard && deleted.is_some_and(|d| d.value(j as usize))) {
                replacing.push(j);
            }
        } else {
            keep.push(true);
        }
    }
    let replaced = keep.iter().filter(|k| !**k).count();
    let rows = if replaced > 0 {
        let kept = filter_record_batch(&stored, &arrow_array::BooleanArray::from(keep))?;
        let new = take_record_batch(&keys.batch, &arrow_array::UInt32Array::from(replacing))?;
        Some(concat_batches(schema, &[kept, new])?)
    } else {
        absorb.then(|| stored.clone())
    };
    Ok(Some(FileOutcome {
        matched,
        replaced,
        stored_rows: stored.num_rows(),
        rows,
    }))
}

/// The rows sorted by the primary key (as they are, without a copy, when they already are: rows
/// inserted in auto-increment order).
fn sort_by_key(b: &RecordBatch, pk: &[String]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    use deltalake::arrow::compute::{lexsort_to_indices, SortColumn};
    if let [key] = pk {
        let c = b
            .column_by_name(key)
            .ok_or_else(|| arrow_schema::ArrowError::SchemaError(format!("no key column {key}")))?;
        let sorted = c.null_count() == 0
            && match c.data_type() {
                DataType::Int64 => ascending(c.as_primitive::<Int64Type>().values()),
                DataType::Int32 => {
                    ascending(c.as_primitive::<arrow_array::types::Int32Type>().values())
                }
                _ => false,
            };
        if sorted {
            return Ok(b.clone());
        }
    }
    let cols = key_columns(b, pk)?
        .into_iter()
        .map(|values| SortColumn {
            values,
            options: None,
        })
        .collect::<Vec<_>>();
    let idx = lexsort_to_indices(&cols, None)?;
    take_record_batch(b, &idx)
}

fn ascending<T: PartialOrd>(v: &[T]) -> bool {
    v.windows(2).all(|w| w[0] <= w[1])
}

/// Files below this size are rewritten whenever a batch reads them (see [`upsert`]).
const SMALL_FILE: i64 = 2 << 20;

fn version_of(b: &RecordBatch) -> Result<&arrow_array::Int64Array, arrow_schema::ArrowError> {
    b.column_by_name(COL_VERSION)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| arrow_schema::ArrowError::SchemaError(format!("no {COL_VERSION} (long)")))
}

/// A stored batch as the table's columns: a column added since the file was written is null, a
/// widened one is cast. `None`: it cannot be (a missing non-null column, a failed cast).
fn conform(b: RecordBatch, schema: &SchemaRef) -> Option<RecordBatch> {
    let n = b.num_rows();
    let mut cols = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let c = match b.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => c.clone(),
            Some(c) => arrow_cast::cast(c, f.data_type()).ok()?,
            None if f.is_nullable() => arrow_array::new_null_array(f.data_type(), n),
            None => return None,
        };
        if !f.is_nullable() && c.null_count() > 0 {
            return None;
        }
        cols.push(c);
    }
    RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )
    .ok()
}

/// The batch's first key column as sorted integers, when it is an integer column without nulls.
fn sorted_first_key(batch: &RecordBatch, key: &str) -> Option<Vec<i64>> {
    let c = batch.column_by_name(key)?;
    if c.null_count() > 0 {
        return None;
    }
    match c.data_type() {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {}
        _ => return None,
    }
    let c = arrow_cast::cast(c, &DataType::Int64).ok()?;
    let mut v = c.as_primitive::<Int64Type>().values().to_vec();
    v.sort_unstable();
    Some(v)
}

/// The first key column's (min, max) in a file's statistics, when both are integers.
fn first_key_range(stats: Option<&str>, key: &str) -> Option<(i64, i64)> {
    let v: serde_json::Value = serde_json::from_str(stats?).ok()?;
    Some((
        v.get("minValues")?.get(key)?.as_i64()?,
        v.get("maxValues")?.get(key)?.as_i64()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_skipped_only_by_integer_statistics_of_the_first_key() {
        let s = r#"{"numRecords":3,"minValues":{"id":10,"s":"a"},"maxValues":{"id":20,"s":"z"}}"#;
        assert_eq!(first_key_range(Some(s), "id"), Some((10, 20)));
        assert_eq!(first_key_range(Some(s), "s"), None);
        assert_eq!(first_key_range(Some(s), "other"), None);
        assert_eq!(first_key_range(None, "id"), None);
        assert_eq!(first_key_range(Some("{"), "id"), None);
    }

    use arrow_array::{BooleanArray, Int64Array, StringArray};
    use arrow_schema::{Field, Schema};

    fn table_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
            Field::new("added", DataType::Utf8, true),
            Field::new(COL_VERSION, DataType::Int64, false),
            Field::new(COL_DELETED, DataType::Boolean, false),
        ]))
    }

    /// A stored file written before `added` existed: ids 1..=5 at version 10.
    fn stored_file() -> bytes::Bytes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
            Field::new(COL_VERSION, DataType::Int64, false),
            Field::new(COL_DELETED, DataType::Boolean, false),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
                Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"])),
                Arc::new(Int64Array::from(vec![10; 5])),
                Arc::new(BooleanArray::from(vec![false; 5])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut w =
            deltalake::parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
        bytes::Bytes::from(out)
    }

    /// Batch: 2 updated (newer), 3 older than stored (kept), 4 deleted (newer tombstone), 9 new.
    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            table_schema(),
            vec![
                Arc::new(Int64Array::from(vec![9, 4, 3, 2])),
                Arc::new(StringArray::from(vec![
                    Some("new"),
                    None,
                    Some("old"),
                    Some("b2"),
                ])),
                Arc::new(StringArray::from(vec![None, None, None, Some("x")])),
                Arc::new(Int64Array::from(vec![40, 30, 5, 20])),
                Arc::new(BooleanArray::from(vec![false, true, false, false])),
            ],
        )
        .unwrap()
    }

    fn rows(b: &RecordBatch) -> Vec<String> {
        let b = sort_by_key(b, &["id".to_string()]).unwrap();
        let id = b.column(0).as_primitive::<Int64Type>();
        let v = b.column(1).as_string::<i32>();
        let added = b.column(2).as_string::<i32>();
        let ver = b.column(3).as_primitive::<Int64Type>();
        let del = b.column(4).as_boolean();
        (0..b.num_rows())
            .map(|i| {
                format!(
                    "{} {} {} {} {}",
                    id.value(i),
                    if v.is_null(i) { "-" } else { v.value(i) },
                    if added.is_null(i) {
                        "-"
                    } else {
                        added.value(i)
                    },
                    ver.value(i),
                    del.value(i)
                )
            })
            .collect()
    }

    #[test]
    fn a_stored_file_gets_the_newer_rows_only() {
        let pk = ["id".to_string()];
        let keys = Keys::new(&batch(), &pk).unwrap();
        for hard in [false, true] {
            let o = apply_to_file(stored_file(), &table_schema(), &keys, hard, false)
                .unwrap()
                .expect("columns conform");
            let mut matched = o.matched.clone();
            matched.sort();
            assert_eq!(
                matched,
                vec![1, 2, 3],
                "4, 3 and 2 are in the file; 9 is not"
            );
            assert_eq!(
                o.replaced, 2,
                "2 (newer) and 4 (newer tombstone); 3 is older"
            );
            assert_eq!(o.stored_rows, 5);
            let mut want = vec!["1 a - 10 false", "2 b2 x 20 false", "3 c - 10 false"];
            if !hard {
                want.push("4 - - 30 true");
            }
            want.push("5 e - 10 false");
            assert_eq!(rows(o.rows.as_ref().unwrap()), want, "hard = {hard}");
        }
    }

    #[test]
    fn an_unchanged_file_stays_unless_small() {
        let pk = ["id".to_string()];
        // every batch row older than the stored one
        let older = RecordBatch::try_new(
            table_schema(),
            vec![
                Arc::new(Int64Array::from(vec![2, 3])),
                Arc::new(StringArray::from(vec!["x", "y"])),
                Arc::new(StringArray::from(vec![None::<&str>, None])),
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(BooleanArray::from(vec![false, false])),
            ],
        )
        .unwrap();
        let keys = Keys::new(&older, &pk).unwrap();
        let o = apply_to_file(stored_file(), &table_schema(), &keys, false, false)
            .unwrap()
            .unwrap();
        assert_eq!((o.replaced, o.rows.is_none()), (0, true));
        let o = apply_to_file(stored_file(), &table_schema(), &keys, false, true)
            .unwrap()
            .unwrap();
        assert_eq!(o.rows.unwrap().num_rows(), 5, "absorbed whole, unchanged");
    }

    #[test]
    fn a_file_missing_a_non_null_column_is_left_to_the_merge() {
        let strict = Arc::new(Schema::new(
            table_schema()
                .fields()
                .iter()
                .map(|f| {
                    let nullable = f.name() != "added" && f.is_nullable();
                    Field::new(f.name(), f.data_type().clone(), nullable)
                })
                .collect::<Vec<_>>(),
        ));
        let keys = Keys::new(&batch(), &["id".to_string()]).unwrap();
        assert!(apply_to_file(stored_file(), &strict, &keys, false, false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn sorted_rows_are_not_copied() {
        let b = batch();
        let pk = ["id".to_string()];
        let sorted = sort_by_key(&b, &pk).unwrap();
        let ids = sorted
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(ids, vec![2, 3, 4, 9]);
        let again = sort_by_key(&sorted, &pk).unwrap();
        assert!(Arc::ptr_eq(again.column(0), sorted.column(0)));
    }
}

//! Source DDL in a Parquet target. The files follow each table map's shape, and readers union
//! the shapes by column name, so a dropped or renamed column needs nothing rewritten: older files
//! keep their columns, newer ones have the new shape.
//!
//! TRUNCATE and DROP TABLE of a keyed table, and the end of a re-snapshot
//! ([`binlake_sink::TableBatch::purge_below`]), write **tombstones**: one file holding, for every
//! key whose current row is below the statement's version, its key columns and a deleted row at
//! that version. The log is append-only, so nothing committed is rewritten or hidden; the
//! documented one-query current state (highest version per key, tombstones dropped) shows the
//! table empty (or holding only what came after) as soon as that one file's log entry exists, and
//! never half of it.
//!
//! Invariants: the tombstones are computed from committed files only, at a version no row of
//! the table has (a DDL transaction holds no rows), so each (key, version) still appears once;
//! applying a statement again (a replay) finds no live key below the version and writes nothing.
//! A keyless table's changelog has no key for tombstones: TRUNCATE, DROP TABLE and a whole read
//! of it (which replaces its rows below the read's version) write a **reset** instead: a delete
//! row for each row the changelog still counts (inserts minus deletes of the same row), so a
//! reader that counts the changelog finds the table empty (or holding the read) from that one
//! commit on.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use binlake_sink::{
    metadata_fields, rename_table_unsupported, DdlKind, SinkError, TableId, COL_DELETED,
    COL_VERSION,
};
use tracing::info;

use crate::manifest::data_file_name;
use crate::sink::{FileJob, ParquetSink};

impl ParquetSink {
    /// What the Parquet sink does for a DDL statement at `version` (idempotent).
    pub(crate) async fn apply_ddl(
        &mut self,
        table: &TableId,
        kind: DdlKind,
        version: u64,
    ) -> Result<(), SinkError> {
        match kind {
            DdlKind::DropColumn(_) | DdlKind::RenameColumn { .. } => Ok(()),
            DdlKind::RenameTable { to } => Err(rename_table_unsupported("parquet", table, &to)),
            DdlKind::Truncate | DdlKind::DropTable => self.empty_table(table, &kind, version).await,
        }
    }

    /// TRUNCATE or DROP TABLE: a commit of its own (everything before the statement is
    /// committed, so the log's last checkpoint is the position before it) holding the
    /// tombstones of every live row.
    async fn empty_table(
        &mut self,
        table: &TableId,
        kind: &DdlKind,
        version: u64,
    ) -> Result<(), SinkError> {
        let name = table.to_string();
        // a re-snapshot's shadow files too (see `crate::swap`)
        let files = self.table_files(&name, true).await?;
        if files.is_empty() {
            return Ok(()); // nothing replicated yet
        }
        // a keyless changelog: its rows are cancelled by delete rows (see `reset_job`)
        let key = files
            .iter()
            .rev()
            .find(|f| !f.key.is_empty())
            .map(|f| f.key.clone());
        let Some(mut checkpoint) = binlake_sink::Sink::read_checkpoint(self).await? else {
            return Ok(());
        };
        let seq = binlake_sink::Sink::begin_commit(self).await?;
        if matches!(kind, DdlKind::DropTable) && files.iter().any(|f| f.generation.is_some()) {
            // the rows of a re-snapshot in progress are all below the statement: its shadow
            // files end here (later ones, of a re-snapshot after a CREATE, are listed later)
            self.swapped.push(name.clone());
        }
        let job = match &key {
            Some(key) => self.purge_job(table, key, version, seq, 0).await?,
            None => {
                self.reset_job(table, Some(version), version, seq, 0)
                    .await?
            }
        };
        let Some(job) = job else {
            info!(table = %name, ?kind, "already empty in the Parquet lake (replay)");
            return Ok(());
        };
        let rows = job.batch.num_rows();
        self.write_files(vec![job]).await?;
        checkpoint.seq = seq;
        binlake_sink::Sink::write_checkpoint(self, seq, &checkpoint).await?;
        info!(table = %name, ?kind, version, tombstones = rows, "table emptied in the Parquet lake");
        Ok(())
    }

    /// The file of tombstones for every key of `table` whose current row (in committed files)
    /// is live and below `below`; None when there is none.
    pub(crate) async fn purge_job(
        &mut self,
        table: &TableId,
        key: &[String],
        below: u64,
        seq: u64,
        n: usize,
    ) -> Result<Option<FileJob>, SinkError> {
        if key.is_empty() {
            return Ok(None);
        }
        // the rows of a re-snapshot in progress too: its swap must not bring one back
        let files = self.table_files(&table.to_string(), true).await?;
        let batches = self.read_files(&files).await?;
        let Some(batch) = tombstones(table, &batches, key, below)? else {
            return Ok(None);
        };
        info!(table = %table, below, rows = batch.num_rows(), "tombstones for rows the source no longer holds");
        Ok(Some(self.rows_job(table, batch, below, key, seq, n)))
    }

    /// The file job of rows written at `version` into `table`'s folder.
    fn rows_job(
        &self,
        table: &TableId,
        batch: RecordBatch,
        version: u64,
        key: &[String],
        seq: u64,
        n: usize,
    ) -> FileJob {
        FileJob {
            rel: format!(
                "{}/{}/{}",
                table.db,
                table.table,
                data_file_name(seq, n, &self.config.pipeline)
            ),
            table: table.to_string(),
            batch,
            min_version: version,
            max_version: version,
            unique: None,
            generation: None,
            key: key.to_vec(),
        }
    }
}

impl ParquetSink {
    /// The file that resets a keyless table's changelog: a delete row at version `at` for each
    /// row still counted among the committed rows below `below` (all of them with None), so that
    /// inserts minus deletes is nothing below it; None when nothing is counted.
    pub(crate) async fn reset_job(
        &mut self,
        table: &TableId,
        below: Option<u64>,
        at: u64,
        seq: u64,
        n: usize,
    ) -> Result<Option<FileJob>, SinkError> {
        let batches = binlake_sink::Sink::read_table(self, table).await?;
        let Some(batch) = reset_rows(table, &batches, below.unwrap_or(u64::MAX), at)? else {
            return Ok(None);
        };
        info!(table = %table, ?below, rows = batch.num_rows(), "keyless changelog reset: delete rows for what it counted");
        Ok(Some(self.rows_job(table, batch, at, &[], seq, n)))
    }
}

/// `extra`'s rows followed by `batch`'s, in `batch`'s schema (cast by column name); None when
/// `extra` has a column `batch` lacks or a value that does not cast.
pub(crate) fn append_rows(extra: &RecordBatch, batch: &RecordBatch) -> Option<RecordBatch> {
    let schema = batch.schema();
    let extra_schema = extra.schema();
    if extra_schema
        .fields()
        .iter()
        .any(|f| schema.index_of(f.name()).is_err())
    {
        return None;
    }
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            let e = match extra_schema.index_of(f.name()) {
                Ok(i) => arrow_cast::cast(extra.column(i), f.data_type()).ok()?,
                Err(_) => arrow_array::new_null_array(f.data_type(), extra.num_rows()),
            };
            arrow_select::concat::concat(&[e.as_ref(), c.as_ref()]).ok()
        })
        .collect::<Option<Vec<_>>>()?;
    RecordBatch::try_new(schema, columns).ok()
}

/// Delete rows at version `at` for the rows a keyless changelog (`batches`, its files) still
/// counts below version `below`: each distinct row (all its data columns, by name) counted as
/// often as it was inserted (or read) minus deleted (and insert rows for a count below zero). Their columns are the union of the files'
/// (the newest type of each).
fn reset_rows(
    table: &TableId,
    batches: &[RecordBatch],
    below: u64,
    at: u64,
) -> Result<Option<RecordBatch>, SinkError> {
    let err = |m: String| SinkError::Definite(format!("{table}: keyless reset: {m}"));
    let opts = arrow_cast::display::FormatOptions::default().with_null("\u{0}NULL");
    // the data columns of every shape, by name (the newest type wins)
    let mut fields: Vec<Field> = Vec::new();
    for b in batches {
        for f in b.schema().fields() {
            if f.name().starts_with("_binlake_") {
                continue;
            }
            match fields.iter_mut().find(|x| x.name() == f.name()) {
                Some(x) => *x = f.as_ref().clone(),
                None => fields.push(f.as_ref().clone()),
            }
        }
    }
    // row text -> (count, a row holding it)
    let mut counts: HashMap<String, (i64, usize, usize)> = HashMap::new();
    for (bi, b) in batches.iter().enumerate() {
        let schema = b.schema();
        let Some((version, deleted)) = version_and_deleted(b, &err)? else {
            continue;
        };
        let fmts = fields
            .iter()
            .map(|f| {
                schema
                    .index_of(f.name())
                    .ok()
                    .map(|i| {
                        arrow_cast::display::ArrayFormatter::try_new(b.column(i).as_ref(), &opts)
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        for r in 0..b.num_rows() {
            if version.value(r) >= below {
                continue;
            }
            let mut k = String::new();
            for f in &fmts {
                let v = f
                    .as_ref()
                    .map_or_else(|| "\u{0}NULL".to_string(), |f| f.value(r).to_string());
                k.push_str(&format!("{}:{v}", v.len()));
            }
            let e = counts.entry(k).or_insert((0, bi, r));
            e.0 += if deleted.value(r) { -1 } else { 1 };
        }
    }
    // (batch, row, cancelled by a delete row): a row counted n times gets n delete rows; one
    // counted below zero (a DELETE committed before the read of a row the changelog never had:
    // a table renamed into the filter) gets insert rows, so the count below `below` is zero
    let mut rows: Vec<(usize, usize, bool)> = counts
        .into_values()
        .flat_map(|(c, b, r)| std::iter::repeat_n((b, r, c > 0), c.unsigned_abs() as usize))
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    rows.sort_unstable();
    let picked: Vec<(usize, usize)> = rows.iter().map(|&(b, r, _)| (b, r)).collect();
    let columns = take_rows(batches, &fields, &picked, &err)?;
    let deleted: Vec<bool> = rows.iter().map(|&(_, _, d)| d).collect();
    with_metadata(
        fields,
        columns,
        at,
        &deleted,
        format!("reset below_version={below}"),
        &err,
    )
    .map(Some)
}

/// Tombstones at version `below` for the keys whose highest-version row in `batches` (the
/// table's files, oldest first) is live and below it: the key columns, cast to their newest
/// type, and the metadata columns.
pub(crate) fn tombstones(
    table: &TableId,
    batches: &[RecordBatch],
    key: &[String],
    below: u64,
) -> Result<Option<RecordBatch>, SinkError> {
    let err = |m: String| SinkError::Definite(format!("{table}: tombstones: {m}"));
    let opts = arrow_cast::display::FormatOptions::default();
    // key text -> (version, deleted, batch, row)
    let mut current: HashMap<String, (u64, bool, usize, usize)> = HashMap::new();
    let mut newest: Option<Vec<Field>> = None;
    for (bi, b) in batches.iter().enumerate() {
        let schema = b.schema();
        let Some(cols) = key
            .iter()
            .map(|k| schema.index_of(k).ok())
            .collect::<Option<Vec<usize>>>()
        else {
            continue; // written before the key had this shape
        };
        let Some((version, deleted)) = version_and_deleted(b, &err)? else {
            continue;
        };
        newest = Some(cols.iter().map(|&i| schema.field(i).clone()).collect());
        let fmts = cols
            .iter()
            .map(|&i| arrow_cast::display::ArrayFormatter::try_new(b.column(i).as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        for r in 0..b.num_rows() {
            let mut k = String::new();
            for f in &fmts {
                let v = f.value(r).to_string();
                k.push_str(&format!("{}:{v}", v.len()));
            }
            let v = version.value(r);
            let e = current.entry(k).or_insert((0, true, bi, r));
            if v >= e.0 {
                *e = (v, deleted.value(r), bi, r);
            }
        }
    }
    let Some(fields) = newest else {
        return Ok(None);
    };
    let mut stale: Vec<(usize, usize)> = current
        .into_values()
        .filter(|&(v, deleted, _, _)| !deleted && v < below)
        .map(|(_, _, b, r)| (b, r))
        .collect();
    if stale.is_empty() {
        return Ok(None);
    }
    stale.sort_unstable();
    let columns = take_rows(batches, &fields, &stale, &err)?;
    let deleted = vec![true; stale.len()];
    with_metadata(
        fields,
        columns,
        below,
        &deleted,
        format!("purge below_version={below}"),
        &err,
    )
    .map(Some)
}

/// A file's version and deleted columns (None: it has none, not a data file of binlake's).
fn version_and_deleted(
    b: &RecordBatch,
    err: &dyn Fn(String) -> SinkError,
) -> Result<Option<(UInt64Array, BooleanArray)>, SinkError> {
    let schema = b.schema();
    let (Ok(vi), Ok(di)) = (schema.index_of(COL_VERSION), schema.index_of(COL_DELETED)) else {
        return Ok(None);
    };
    let version =
        arrow_cast::cast(b.column(vi), &DataType::UInt64).map_err(|e| err(e.to_string()))?;
    let version = version
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| err("version column".into()))?
        .clone();
    let deleted = b
        .column(di)
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| err("deleted column".into()))?
        .clone();
    Ok(Some((version, deleted)))
}

/// The values of `fields` at `rows` ((batch, row), sorted by batch), cast to the fields' types
/// (NULL where a batch lacks the column).
fn take_rows(
    batches: &[RecordBatch],
    fields: &[Field],
    rows: &[(usize, usize)],
    err: &dyn Fn(String) -> SinkError,
) -> Result<Vec<ArrayRef>, SinkError> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len() + 6);
    for f in fields {
        let mut parts: Vec<ArrayRef> = Vec::new();
        for group in rows.chunk_by(|a, b| a.0 == b.0) {
            let b = &batches[group[0].0];
            match b.schema().index_of(f.name()) {
                Ok(i) => {
                    let idx = arrow_array::UInt32Array::from_iter_values(
                        group.iter().map(|&(_, r)| r as u32),
                    );
                    let taken = arrow_select::take::take(b.column(i).as_ref(), &idx, None)
                        .map_err(|e| err(e.to_string()))?;
                    parts.push(
                        arrow_cast::cast(&taken, f.data_type()).map_err(|e| err(e.to_string()))?,
                    );
                }
                Err(_) => parts.push(arrow_array::new_null_array(f.data_type(), group.len())),
            }
        }
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        columns.push(arrow_select::concat::concat(&refs).map_err(|e| err(e.to_string()))?);
    }
    Ok(columns)
}

/// `columns` (of the data `fields`) and the metadata columns of rows written now at `version`:
/// deleted (op `delete`) or not (op `insert`) per `deleted`, with provenance `source`.
fn with_metadata(
    fields: Vec<Field>,
    mut columns: Vec<ArrayRef>,
    version: u64,
    deleted: &[bool],
    source: String,
    err: &dyn Fn(String) -> SinkError,
) -> Result<RecordBatch, SinkError> {
    let n = deleted.len();
    let now = binlake_sink::store::now_us();
    columns.push(Arc::new(UInt64Array::from(vec![version; n])));
    columns.push(Arc::new(BooleanArray::from(deleted.to_vec())));
    columns.push(Arc::new(StringArray::from_iter_values(
        deleted.iter().map(|&d| if d { "delete" } else { "insert" }),
    )));
    for _ in 0..2 {
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC"),
        ));
    }
    columns.push(Arc::new(StringArray::from(vec![source; n])));
    let schema: Vec<Field> = fields
        .into_iter()
        .map(|f| f.with_nullable(true))
        .chain(metadata_fields())
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(schema)), columns).map_err(|e| err(e.to_string()))
}

//! Re-snapshots swapped in whole in a Parquet lake.
//!
//! A keyed table's re-snapshot (after RENAME TABLE into its name, an online schema change's
//! cut-over, ADD COLUMN with a default...) carries a generation on every batch from its start to
//! its last (`binlake_sink::TableBatch::generation`). Readers of a lake list the table's folder
//! (the documented current-state query is a glob), so many new files cannot be shown to them at
//! once; one file can. So:
//! - Until the last batch, the generation's batches (chunks read again and the stream's changes
//!   to the table) go to **shadow files** under `_binlake/<pipeline>/shadow/`, outside every
//!   table folder, listed in the commit log with their generation. Readers see the table as it
//!   was before the statement.
//! - The last batch (the one with `purge_below`) writes **one file** into the table's folder: the
//!   shadow rows, the batch's rows, and tombstones for the keys whose current row is below the
//!   re-snapshot's start and that it did not read again (the source no longer has them), all in
//!   the batch's shape. Its log entry names the table in `swapped`, which ends the shadow files
//!   (of every generation of the table: an abandoned one's too). One file, put atomically, in
//!   the same log entry as the checkpoint: a reader sees the old table or the new one.
//!
//! Invariants: every row of the swap file has a version at or above the re-snapshot's start, and
//! every row the table's folder held before is below it (the stream's changes since went to the
//! shadow), so the current-state query over old and new files answers the new table. A kill -9
//! before the swap's log entry leaves shadow files the log lists (the re-snapshot continues from
//! the checkpoint) and maybe unlisted ones and a swap file newer than the log (both deleted at the
//! next open); after it, shadow files nothing lists (deleted at the next open). TRUNCATE and DROP
//! TABLE during a re-snapshot write their tombstones for the shadow's keys too (in the table's
//! folder, at the statement's version), so the swap cannot bring back a row they removed.
//! Shadow files of older shapes (DDL during the re-snapshot, which the pipeline follows with
//! another re-snapshot) are cast to the last batch's shape by column name (NULL where a column
//! is new, or a value does not cast) until that next re-snapshot reads them again.
//! Cost: the swap reads the table's files and the shadow into memory and writes them as one
//! file, like the tombstones of a re-snapshot's end always did.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use binlake_sink::{SinkError, TableBatch};
use object_store::ObjectStoreExt;
use tracing::{info, warn};

use crate::manifest::{data_file_name, data_file_seq, live_files, shadow_dir, FileEntry};
use crate::sink::{FileJob, ParquetSink};

impl ParquetSink {
    /// The job of a generation's batch before its last: a shadow file.
    pub(crate) fn shadow_job(
        &self,
        tb: &TableBatch,
        generation: i64,
        seq: u64,
        n: usize,
    ) -> FileJob {
        FileJob {
            rel: format!(
                "{}/{}/{}/{}",
                shadow_dir(&self.config.pipeline),
                tb.table.db,
                tb.table.table,
                data_file_name(seq, n, &self.config.pipeline)
            ),
            table: tb.table.to_string(),
            batch: tb.batch.clone(),
            min_version: tb.min_version,
            max_version: tb.max_version,
            unique: (tb.primary_key.len() == 1).then(|| tb.primary_key[0].clone()),
            key: tb.primary_key.clone(),
            generation: Some(generation),
        }
    }

    /// The job of a generation's last batch: one file in the table's folder with the shadow's
    /// rows, the batch's, and the tombstones of the keys not read again (see the module doc).
    pub(crate) async fn swap_job(
        &mut self,
        tb: &TableBatch,
        generation: i64,
        below: u64,
        seq: u64,
        n: usize,
    ) -> Result<FileJob, SinkError> {
        let name = tb.table.to_string();
        let live = live_files(&self.log).await?.files;
        let of_table = |g: Option<i64>| -> Vec<FileEntry> {
            live.iter()
                .filter(|f| f.table == name && f.generation == g)
                .cloned()
                .collect()
        };
        let shadow = of_table(Some(generation));
        let abandoned = live
            .iter()
            .filter(|f| f.table == name && f.generation.is_some_and(|g| g != generation))
            .count();
        if abandoned > 0 {
            warn!(table = %name, files = abandoned, "shadow files of an earlier re-snapshot of the table are dropped");
        }
        let mut new = self.read_files(&shadow).await?;
        new.push(tb.batch.clone());
        let old = self.read_files(&of_table(None)).await?;
        let all: Vec<RecordBatch> = old.iter().chain(new.iter()).cloned().collect();
        let stale = crate::ddl::tombstones(&tb.table, &all, &tb.primary_key, below)?;
        let shape = tb.batch.schema();
        let schema: SchemaRef = Arc::new(Schema::new_with_metadata(
            shape
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
            shape.metadata().clone(),
        ));
        let parts = new
            .iter()
            .chain(stale.iter())
            .map(|b| conform(b, &schema))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SinkError::Definite(format!("{name}: swapping a re-snapshot in: {e}")))?;
        let batch = arrow_select::concat::concat_batches(&schema, &parts)
            .map_err(|e| SinkError::Definite(format!("{name}: swapping a re-snapshot in: {e}")))?;
        let min_version = shadow
            .iter()
            .map(|f| f.min_version)
            .chain((tb.batch.num_rows() > 0).then_some(tb.min_version))
            .chain(stale.as_ref().map(|_| below))
            .min()
            .unwrap_or(below);
        let max_version = shadow
            .iter()
            .map(|f| f.max_version)
            .chain([tb.max_version, below])
            .max()
            .unwrap_or(below);
        info!(table = %name, generation, shadow_files = shadow.len(), rows = batch.num_rows(),
            tombstones = stale.as_ref().map_or(0, |s| s.num_rows()), "re-snapshot swapped in (one file)");
        self.swapped.push(name.clone());
        Ok(FileJob {
            rel: format!(
                "{}/{}/{}",
                tb.table.db,
                tb.table.table,
                data_file_name(seq, n, &self.config.pipeline)
            ),
            table: name,
            batch,
            min_version,
            max_version,
            // several versions of a key: not distinct
            unique: None,
            key: tb.primary_key.clone(),
            generation: None,
        })
    }

    /// `table`'s files in commit order, with the shadow files of its re-snapshot in progress
    /// when `shadow`.
    pub(crate) async fn table_files(
        &self,
        table: &str,
        shadow: bool,
    ) -> Result<Vec<FileEntry>, SinkError> {
        let mut files = live_files(&self.log).await?.files;
        files.retain(|f| f.table == table && (shadow || f.generation.is_none()));
        Ok(files)
    }

    /// The rows of `files`, in order.
    pub(crate) async fn read_files(
        &self,
        files: &[FileEntry],
    ) -> Result<Vec<RecordBatch>, SinkError> {
        let mut out = Vec::new();
        for f in files {
            let bytes = self
                .log
                .store()
                .get(&self.log.path(&f.path))
                .await
                .map_err(binlake_sink::store::classify)?
                .bytes()
                .await
                .map_err(binlake_sink::store::classify)?;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .and_then(|b| b.build())
                    .map_err(|e| SinkError::Definite(format!("reading {}: {e}", f.path)))?;
            for b in reader {
                out.push(b.map_err(|e| SinkError::Definite(format!("reading {}: {e}", f.path)))?);
            }
        }
        Ok(out)
    }

    /// At open: deletes the shadow files the log does not list (an interrupted commit's, or a
    /// swapped-in re-snapshot's that were not deleted yet).
    pub(crate) async fn remove_stray_shadow_files(&self) -> Result<(), SinkError> {
        let dir = self.log.path(&shadow_dir(&self.config.pipeline));
        let present = self.log.list(&dir).await?;
        if present.is_empty() {
            return Ok(());
        }
        let listed: std::collections::HashSet<String> = live_files(&self.log)
            .await?
            .files
            .into_iter()
            .filter(|f| f.generation.is_some())
            .map(|f| self.log.path(&f.path).to_string())
            .collect();
        let removed = self
            .delete_if(present, |p| {
                p.filename()
                    .is_some_and(|n| data_file_seq(n, &self.config.pipeline).is_some())
                    && !listed.contains(p.as_ref())
            })
            .await?;
        if removed > 0 {
            info!(
                removed,
                "deleted shadow files no re-snapshot in progress uses"
            );
        }
        Ok(())
    }

    /// After a swap's log entry: its shadow files are no longer listed (best effort; the next
    /// open deletes what is left).
    pub(crate) async fn delete_swapped_shadow_files(&self) {
        if let Err(e) = self.remove_stray_shadow_files().await {
            warn!(error = %e, "shadow files of a swapped-in re-snapshot could not be deleted; the next start tries again");
        }
    }
}

/// `batch`'s columns in `schema`'s order, by name: a column it lacks is NULL, one `schema` lacks
/// is left out, another type is cast (NULL where a value does not cast; see the module doc).
fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let have = batch.schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match have.index_of(f.name()) {
                Ok(i) if have.field(i).data_type() == f.data_type() => batch.column(i).clone(),
                Ok(i) => arrow_cast::cast(batch.column(i), f.data_type()).unwrap_or_else(|_| {
                    arrow_array::new_null_array(f.data_type(), batch.num_rows())
                }),
                Err(_) => arrow_array::new_null_array(f.data_type(), batch.num_rows()),
            }
        })
        .collect();
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

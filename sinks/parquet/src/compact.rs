//! Compaction of a Parquet lake: the small files of a table (frequent commits write one per
//! table and commit) merged into files of a target size, and `_binlake_watermarks` trimmed.
//!
//! Invariants (why readers and kill -9 never see a wrong table):
//! - One writer: compaction runs with the pipeline's owner lease, between two commits (inside
//!   `replicate`, in the commit task) or from `binlake maintain` (which takes the lease, so it
//!   refuses while a `replicate` of the pipeline runs).
//! - A compaction is a commit-log entry like any commit: its merged files carry its `seq` (so the
//!   files of an interrupted compaction are removed at the next open, like an interrupted
//!   commit's), and its checkpoint is the last one unchanged (the stream position does not
//!   move). It is a base: its `files` list every live file of the pipeline and its `removed` the
//!   replaced files not deleted yet, so the log is read from the newest base on, and the entries
//!   before it are deleted once it is written (the log stays as long as the commits since the
//!   last compaction).
//! - Every row version of a merged file is also in the files it replaces, until those are
//!   deleted: the documented current-state query (highest `_binlake_version` per key) gives the
//!   same answer over the old files, the new ones, or both. The replaced files are deleted only
//!   once the compaction is `grace` old (by that pass or a later one), so a query that listed them
//!   does not find them gone. A kill -9 anywhere leaves either the old files, or both.
//! - Only keyed tables and the watermarks are compacted: a keyless table's rows, and the rejects,
//!   are all read as they are (old and new files both present would show them twice).
//! - Versions: every row version is kept, unless `version_retention` is set: then a row whose key
//!   has a newer version in the same merge and that was written longer ago than that is dropped
//!   (the newest version of each key, a tombstone included, always stays). Watermarks keep the
//!   newest row per (pipeline, table) and the rows younger than the retention (default 7 days).
//! - Files of different shapes (a schema change) are never merged together.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, BooleanArray, RecordBatch, TimestampMicrosecondArray, UInt64Array};
use binlake_sink::store::{classify, now_us};
use binlake_sink::{failpoint, SinkError, WATERMARKS_TABLE};
use object_store::ObjectStoreExt;
use tracing::{info, warn};

use crate::manifest::{data_file_name, live_files, FileEntry, LogEntry, RemovedFile};
use crate::sink::ParquetSink;

/// What a compaction does.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Merged files hold about this many bytes; files under a quarter of it are small.
    pub target_file_size: u64,
    /// Drop row versions superseded in the same merge and older than this (None: keep all).
    pub version_retention: Option<Duration>,
    /// Replaced files are deleted once their compaction is this old.
    pub grace: Duration,
}

/// What a compaction did to one table.
#[derive(Debug, Clone, Default)]
pub struct CompactReport {
    pub table: String,
    pub files_in: usize,
    pub files_out: usize,
    pub rows_in: usize,
    pub rows_out: usize,
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct CompactSummary {
    pub tables: Vec<CompactReport>,
    /// Replaced files deleted (of this pass or earlier ones).
    pub deleted: usize,
    /// The log entry written (None: nothing to merge).
    pub seq: Option<u64>,
}

/// Watermark history kept when no `version_retention` is set.
const WATERMARK_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl ParquetSink {
    /// One compaction pass over the tables `select` accepts (by their `db.table` name).
    pub async fn compact(
        &mut self,
        opts: &CompactOptions,
        select: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<CompactSummary, SinkError> {
        let state = live_files(&self.log).await?;
        let Some(last) = state.last else {
            return Ok(CompactSummary::default());
        };
        let checkpoint = last.checkpoint;
        let now = now_us();
        let live = state.files;
        let pending = state.removed;
        let small = opts.target_file_size / 4;
        // per table, runs of consecutive small files up to the target size (with their bytes)
        let mut groups: BTreeMap<String, Vec<(u64, Vec<FileEntry>)>> = BTreeMap::new();
        for f in &live {
            let keyed = !f.key.is_empty() || f.table == WATERMARKS_TABLE;
            // a re-snapshot's shadow files wait for its swap (`crate::swap`), as they are
            if !keyed || f.generation.is_some() || !select(&f.table) || f.bytes as u64 >= small {
                continue;
            }
            let runs = groups.entry(f.table.clone()).or_default();
            match runs.last_mut() {
                Some((bytes, g)) if *bytes + f.bytes as u64 <= opts.target_file_size => {
                    *bytes += f.bytes as u64;
                    g.push(f.clone());
                }
                _ => runs.push((f.bytes as u64, vec![f.clone()])),
            }
        }
        let seq = self.log.last_seq + 1;
        let mut summary = CompactSummary::default();
        let mut outputs = Vec::new();
        let mut removed = Vec::new();
        let mut n = 0usize;
        for (table, runs) in groups {
            let mut report = CompactReport {
                table: table.clone(),
                ..Default::default()
            };
            for (_, group) in runs.into_iter().filter(|(_, g)| g.len() > 1) {
                for run in self.read_runs(group).await? {
                    if run.len() < 2 {
                        continue; // a shape of its own: nothing to merge it with
                    }
                    let files: Vec<&FileEntry> = run.iter().map(|(f, _)| f).collect();
                    let batches: Vec<RecordBatch> =
                        run.iter().flat_map(|(_, b)| b.iter().cloned()).collect();
                    let merged = merge(&table, &files, &batches, opts, now)?;
                    report.files_in += files.len();
                    report.rows_in += files.iter().map(|f| f.rows).sum::<usize>();
                    report.rows_out += merged.num_rows();
                    report.files_out += 1;
                    let dir = files[0]
                        .path
                        .rsplit_once('/')
                        .map(|(d, _)| d.to_string())
                        .unwrap_or_default();
                    outputs.push(crate::sink::FileJob {
                        rel: format!("{dir}/{}", data_file_name(seq, n, &self.config.pipeline)),
                        table: table.clone(),
                        min_version: files.iter().map(|f| f.min_version).min().unwrap_or(0),
                        max_version: files.iter().map(|f| f.max_version).max().unwrap_or(0),
                        batch: merged,
                        unique: None,
                        key: files[0].key.clone(),
                        generation: None,
                    });
                    n += 1;
                    removed.extend(files.iter().map(|f| f.path.clone()));
                }
            }
            if report.files_in > 0 {
                summary.tables.push(report);
            }
        }
        // Replaced files that still exist (one listing, only when there are any to look for).
        let mut pending = pending;
        if !pending.is_empty() {
            let present: HashSet<String> = self
                .log
                .list(self.log.root())
                .await?
                .into_iter()
                .map(|p| p.to_string())
                .collect();
            pending.retain(|r| present.contains(self.log.path(&r.path).as_ref()));
        }
        if !outputs.is_empty() {
            self.staged.clear();
            self.write_files(outputs).await?;
            failpoint("compact-after-files");
            let gone: HashSet<&str> = removed.iter().map(String::as_str).collect();
            let mut files: Vec<FileEntry> = live
                .into_iter()
                .filter(|f| !gone.contains(f.path.as_str()))
                .collect();
            files.append(&mut self.staged);
            pending.extend(removed.iter().map(|p| RemovedFile {
                path: p.clone(),
                at_us: now,
            }));
            let entry = LogEntry {
                checkpoint: binlake_sink::Checkpoint { seq, ..checkpoint },
                files,
                base: true,
                removed: pending.clone(),
                swapped: Vec::new(),
            };
            self.log.append(seq, &entry).await?;
            failpoint("compact-after-log");
            summary.seq = Some(seq);
            for r in &summary.tables {
                info!(table = %r.table, files_in = r.files_in, files_out = r.files_out, rows_in = r.rows_in, rows_out = r.rows_out, seq, "parquet files compacted");
            }
            // the entries before this base are no longer needed
            for old in self.log.seqs().await?.into_iter().filter(|&s| s < seq) {
                self.log.remove_entry(old).await?;
            }
        }
        summary.deleted = self.delete_replaced(&pending, now, opts.grace).await;
        Ok(summary)
    }

    /// Reads the files of `group` and splits them into runs of one shape, in order.
    async fn read_runs(
        &self,
        group: Vec<FileEntry>,
    ) -> Result<Vec<Vec<(FileEntry, Vec<RecordBatch>)>>, SinkError> {
        let mut runs: Vec<Vec<(FileEntry, Vec<RecordBatch>)>> = Vec::new();
        let mut shape = None;
        for f in group {
            let bytes = self
                .log
                .store()
                .get(&self.log.path(&f.path))
                .await
                .map_err(classify)?
                .bytes()
                .await
                .map_err(classify)?;
            let read = |e: parquet::errors::ParquetError| {
                SinkError::Definite(format!("compaction: reading {}: {e}", f.path))
            };
            let builder =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .map_err(read)?;
            let schema = builder.schema().clone();
            let batches = builder
                .build()
                .map_err(read)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SinkError::Definite(format!("compaction: {}: {e}", f.path)))?;
            if shape.as_ref() != Some(&schema) {
                runs.push(Vec::new());
                shape = Some(schema);
            }
            runs.last_mut().expect("a run").push((f, batches));
        }
        Ok(runs)
    }

    /// Deletes the replaced files (that existed at the listing) whose grace has passed. A
    /// failure is logged; the next pass tries again (the newest base still lists them).
    async fn delete_replaced(&self, pending: &[RemovedFile], now: i64, grace: Duration) -> usize {
        let mut deleted = 0;
        for r in pending
            .iter()
            .filter(|r| r.at_us <= now - grace.as_micros() as i64)
        {
            match self.log.store().delete(&self.log.path(&r.path)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => {
                    warn!(path = %r.path, error = %e, "a replaced file could not be deleted; the next pass tries again");
                }
            }
        }
        deleted
    }
}

/// The rows of `batches` (one shape, log order) as one batch, superseded versions dropped as
/// the options say.
fn merge(
    table: &str,
    files: &[&FileEntry],
    batches: &[RecordBatch],
    opts: &CompactOptions,
    now: i64,
) -> Result<RecordBatch, SinkError> {
    let err = |m: String| SinkError::Definite(format!("compaction of {table}: {m}"));
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| err("no rows".into()))?;
    let all =
        arrow_select::concat::concat_batches(&schema, batches).map_err(|e| err(e.to_string()))?;
    let watermarks = table == WATERMARKS_TABLE;
    let (key, order, age_col, retention): (Vec<String>, &str, &str, Option<Duration>) =
        if watermarks {
            (
                vec!["pipeline".into(), "table".into()],
                "applied_at",
                "applied_at",
                Some(opts.version_retention.unwrap_or(WATERMARK_RETENTION)),
            )
        } else {
            (
                files[0].key.clone(),
                "_binlake_version",
                "_binlake_synced_at",
                opts.version_retention,
            )
        };
    let Some(retention) = retention else {
        return Ok(all);
    };
    let cutoff = now - retention.as_micros() as i64;
    let col = |name: &str| {
        all.column_by_name(name)
            .cloned()
            .ok_or_else(|| err(format!("no column `{name}`")))
    };
    let rank: Vec<i64> = {
        let c = col(order)?;
        if let Some(v) = c.as_any().downcast_ref::<UInt64Array>() {
            v.iter().map(|x| x.unwrap_or(0) as i64).collect()
        } else if let Some(t) = c.as_any().downcast_ref::<TimestampMicrosecondArray>() {
            t.iter().map(|x| x.unwrap_or(0)).collect()
        } else {
            return Err(err(format!("`{order}` has an unexpected type")));
        }
    };
    let age: Vec<i64> = {
        let c = col(age_col)?;
        let t = c
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| err(format!("`{age_col}` is not a timestamp")))?;
        t.iter().map(|x| x.unwrap_or(i64::MAX)).collect()
    };
    let fmt = arrow_cast::display::FormatOptions::default();
    let key_cols: Vec<Arc<dyn Array>> = key.iter().map(|k| col(k)).collect::<Result<_, _>>()?;
    let formatters = key_cols
        .iter()
        .map(|c| arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &fmt))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    let key_of = |r: usize| {
        let mut s = String::new();
        for f in &formatters {
            s.push_str(&f.value(r).to_string());
            s.push('\u{1f}');
        }
        s
    };
    let mut newest: HashMap<String, i64> = HashMap::new();
    let keys: Vec<String> = (0..all.num_rows()).map(key_of).collect();
    for (r, k) in keys.iter().enumerate() {
        let e = newest.entry(k.clone()).or_insert(i64::MIN);
        *e = (*e).max(rank[r]);
    }
    let keep: BooleanArray = (0..all.num_rows())
        .map(|r| Some(rank[r] >= newest[&keys[r]] || age[r] >= cutoff))
        .collect();
    arrow_select::filter::filter_record_batch(&all, &keep).map_err(|e| err(e.to_string()))
}

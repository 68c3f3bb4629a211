//! `binlake maintain` for Delta targets: compaction of small files, Delta log checkpoints, purge of
//! tombstones older than a retention, and vacuum of files no version needs any more.
//!
//! Safe beside a running `replicate`: every step is an ordinary Delta commit, and Delta's
//! optimistic concurrency makes a maintenance commit and a MERGE that touch the same files retry
//! or fail cleanly instead of corrupting the table. Tombstones are purged only when older than
//! `tombstone_retention`, so a backfill still in flight can see them (see the README).

use std::num::NonZeroU64;

use binlake_sink::store::classify;
use binlake_sink::{SinkError, COL_COMMIT_TS, COL_DELETED};
use deltalake::DeltaTable;
use futures::TryStreamExt;
use tracing::info;

use crate::config::DeltaConfig;
pub use crate::config::MaintainOptions;
use crate::sink::DeltaSink;

#[derive(Debug, Clone, Default)]
pub struct MaintainReport {
    pub table: String,
    pub files_compacted: u64,
    pub files_written: u64,
    pub tombstones_purged: usize,
    pub files_vacuumed: usize,
    pub version: i64,
}

fn err(table: &str, what: &str, e: deltalake::DeltaTableError) -> SinkError {
    SinkError::Definite(format!("{table}: {what}: {e}"))
}

/// The Delta tables under the target: `<db>/<table>` folders with a `_delta_log`.
pub async fn tables(config: &DeltaConfig) -> Result<Vec<String>, SinkError> {
    let base = config.base_url()?;
    let (store, root) = object_store::parse_url_opts(
        &base,
        config
            .storage_options()
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
    )
    .map_err(|e| SinkError::Definite(format!("target `{}`: {e}", config.target)))?;
    let paths: Vec<object_store::path::Path> = store
        .list(Some(&root))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(classify)?;
    let prefix = root.as_ref().trim_end_matches('/').to_string();
    let mut out: Vec<String> = paths
        .iter()
        .filter_map(|p| {
            let rel = p
                .as_ref()
                .strip_prefix(&prefix)
                .unwrap_or(p.as_ref())
                .trim_start_matches('/');
            let (table, _) = rel.split_once("/_delta_log/")?;
            let mut parts = table.split('/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(db), Some(t), None) if !db.starts_with('_') => {
                    Some(binlake_sink::TableId::new(db, t).to_string())
                }
                _ => None,
            }
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Maintains one table `db.table`.
pub async fn maintain_table(
    config: &DeltaConfig,
    name: &str,
    opts: &MaintainOptions,
) -> Result<MaintainReport, SinkError> {
    let id: binlake_sink::TableId = name
        .parse()
        .map_err(|e| SinkError::Definite(format!("{e}")))?;
    let url = config.table_url(&id.db, &id.table)?;
    let table = DeltaTable::try_from_url_with_storage_options(url, config.storage_options())
        .await
        .map_err(|e| err(name, "open", e))?;
    let mut report = MaintainReport {
        table: name.to_string(),
        ..Default::default()
    };

    // 1. Purge tombstones older than the retention.
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(opts.tombstone_retention).unwrap_or(chrono::Duration::days(7));
    use deltalake::datafusion::logical_expr::{col, lit};
    use deltalake::datafusion::scalar::ScalarValue;
    let cutoff_lit = lit(ScalarValue::TimestampMicrosecond(
        Some(cutoff.timestamp_micros()),
        Some("UTC".into()),
    ));
    let predicate = col(COL_DELETED).and(col(COL_COMMIT_TS).lt(cutoff_lit));
    let (table, m) = table
        .delete()
        .with_predicate(predicate)
        .await
        .map_err(|e| err(name, "purge tombstones", e))?;
    report.tombstones_purged = m.num_deleted_rows.unwrap_or(0);

    compact_and_vacuum(table, name, opts, report).await
}

/// Compacts small files, writes a log checkpoint and vacuums (maintenance steps 2-4).
async fn compact_and_vacuum(
    table: DeltaTable,
    name: &str,
    opts: &MaintainOptions,
    mut report: MaintainReport,
) -> Result<MaintainReport, SinkError> {
    // 2. Compact small files.
    let size = NonZeroU64::new(opts.target_file_size.max(1 << 20)).expect("non-zero");
    let (table, m) = table
        .optimize()
        .with_target_size(size)
        .await
        .map_err(|e| err(name, "optimize", e))?;
    report.files_compacted = m.num_files_removed;
    report.files_written = m.num_files_added;

    // 3. A log checkpoint, so readers and writers replay less of the log.
    deltalake::checkpoints::create_checkpoint(&table, None)
        .await
        .map_err(|e| err(name, "checkpoint", e))?;

    // 4. Vacuum files no version within the retention needs.
    let retention =
        chrono::Duration::from_std(opts.vacuum_retention).unwrap_or(chrono::Duration::days(7));
    let (table, m) = table
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .await
        .map_err(|e| err(name, "vacuum", e))?;
    report.files_vacuumed = m.files_deleted.len();
    // 5. Files of swapped-in re-snapshots that delta-rs's vacuum leaves alone.
    report.files_vacuumed += clean_shadows(&table, name, opts.vacuum_retention).await?;
    report.version = table.version().map_or(-1, |v| v as i64);
    info!(table = %name, compacted = report.files_compacted, written = report.files_written, tombstones = report.tombstones_purged, vacuumed = report.files_vacuumed, version = report.version, "maintained");
    Ok(report)
}

/// Deletes the files under the table's re-snapshot directories (`_binlake_g<id>/`, see
/// `ddl.rs`; delta-rs's vacuum skips `_` directories) that the table no longer references and
/// that are older than `retention`. A directory that still has its own `_delta_log` is a shadow
/// being filled (the swap deletes that log): left alone.
async fn clean_shadows(
    table: &DeltaTable,
    name: &str,
    retention: std::time::Duration,
) -> Result<usize, SinkError> {
    use object_store::ObjectStoreExt;
    let store = table.log_store().object_store(None);
    let dirs = store.list_with_delimiter(None).await.map_err(classify)?;
    let shadows: Vec<_> = dirs
        .common_prefixes
        .into_iter()
        .filter(|p| p.as_ref().starts_with(crate::ddl::SHADOW_PREFIX))
        .collect();
    if shadows.is_empty() {
        return Ok(0);
    }
    let snapshot = table.snapshot().map_err(|e| err(name, "snapshot", e))?;
    let live: std::collections::HashSet<String> = snapshot
        .log_data()
        .iter()
        .map(|f| f.object_store_path().to_string())
        .collect();
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7));
    let mut deleted = 0;
    for dir in shadows {
        let files: Vec<object_store::ObjectMeta> = store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(classify)?;
        if files
            .iter()
            .any(|f| f.location.as_ref().contains("/_delta_log/"))
        {
            continue; // a shadow being filled
        }
        for f in files {
            if !live.contains(f.location.as_ref()) && f.last_modified < cutoff {
                store.delete(&f.location).await.map_err(classify)?;
                deleted += 1;
            }
        }
    }
    if deleted > 0 {
        info!(table = %name, deleted, "files of swapped-in re-snapshots the table no longer uses deleted");
    }
    Ok(deleted)
}

/// Maintains `_binlake_watermarks` (a row per table and commit, append-only): per (pipeline,
/// table), the rows older than both `watermark_retention` and that pair's newest row are
/// deleted, so each keeps its newest row and the recent history; then it is compacted,
/// checkpointed and vacuumed like a data table. A pipeline appending meanwhile only adds files
/// the DELETE did not read. None: the target has no watermarks table yet.
pub async fn maintain_watermarks(
    config: &DeltaConfig,
    opts: &MaintainOptions,
) -> Result<Option<MaintainReport>, SinkError> {
    use deltalake::datafusion::logical_expr::{col, lit};
    use deltalake::datafusion::scalar::ScalarValue;
    let name = binlake_sink::WATERMARKS_TABLE;
    let url = config
        .base_url()?
        .join(&format!("{name}/"))
        .map_err(|e| SinkError::Definite(e.to_string()))?;
    let table =
        match DeltaTable::try_from_url_with_storage_options(url, config.storage_options()).await {
            Ok(t) => t,
            Err(deltalake::DeltaTableError::NotATable(_)) => return Ok(None),
            Err(e) => return Err(err(name, "open", e)),
        };
    let df_err = |e: deltalake::datafusion::error::DataFusionError| {
        SinkError::Definite(format!("{name}: {e}"))
    };
    let ctx = deltalake::delta_datafusion::create_session().into_inner();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| err(name, "read", e))?;
    let provider = table.table_provider().await.map_err(df_err)?;
    let newest = ctx
        .read_table(provider)
        .and_then(|df| {
            df.aggregate(
                vec![col("pipeline"), col("table")],
                vec![
                    deltalake::datafusion::functions_aggregate::expr_fn::max(col("applied_at"))
                        .alias("newest"),
                ],
            )
        })
        .map_err(df_err)?
        .collect()
        .await
        .map_err(df_err)?;
    let cutoff = binlake_sink::store::now_us() - opts.watermark_retention.as_micros() as i64;
    let ts = |us: i64| {
        lit(ScalarValue::TimestampMicrosecond(
            Some(us),
            Some("UTC".into()),
        ))
    };
    let mut doomed: Option<deltalake::datafusion::logical_expr::Expr> = None;
    for b in &newest {
        let text = |i: usize| {
            arrow_cast::cast(b.column(i), &arrow_schema::DataType::Utf8)
                .map_err(|e| SinkError::Definite(format!("{name}: {e}")))
        };
        let (p, t) = (text(0)?, text(1)?);
        let (p, t) = (
            p.as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .expect("utf8"),
            t.as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .expect("utf8"),
        );
        let n = b
            .column(2)
            .as_any()
            .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
            .ok_or_else(|| SinkError::Definite(format!("{name}: applied_at is not a timestamp")))?;
        for r in 0..b.num_rows() {
            let below = cutoff.min(n.value(r));
            let e = col("pipeline")
                .eq(lit(p.value(r)))
                .and(col("table").eq(lit(t.value(r))))
                .and(col("applied_at").lt(ts(below)));
            doomed = Some(match doomed {
                None => e,
                Some(d) => d.or(e),
            });
        }
    }
    let mut report = MaintainReport {
        table: name.to_string(),
        ..Default::default()
    };
    let table = match doomed {
        Some(predicate) => {
            let (table, m) = table
                .delete()
                .with_predicate(predicate)
                .await
                .map_err(|e| err(name, "trim", e))?;
            report.tombstones_purged = m.num_deleted_rows.unwrap_or(0);
            table
        }
        None => table,
    };
    compact_and_vacuum(table, name, opts, report)
        .await
        .map(Some)
}

/// Maintenance scheduled by a replicating sink.
impl DeltaSink {
    /// Starts a maintenance pass in the background when one is due and none is running. It runs
    /// beside the commits, never inside one: it takes each table's lock only while it maintains
    /// that table, so a commit waits at most for one table's maintenance, and a failure is
    /// logged and retried at the next pass, never fatal to replication.
    pub(crate) fn schedule_maintenance(&mut self, ours: Vec<String>) {
        let Some((every, opts)) = self.config.maintenance.clone() else {
            return;
        };
        if self.maintenance.as_ref().is_some_and(|h| !h.is_finished())
            || self.last_maintenance.elapsed() < every
        {
            return;
        }
        self.last_maintenance = std::time::Instant::now();
        let config = self.config.clone();
        let locks = self.locks.clone();
        self.maintenance = Some(tokio::spawn(async move {
            // The tables of this pipeline that exist in the target (another pipeline sharing the
            // target maintains its own).
            let tables = match crate::maintain::tables(&config).await {
                Ok(t) => t
                    .into_iter()
                    .filter(|t| ours.contains(t))
                    .collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!(error = %e, "scheduled maintenance: cannot list tables; will retry at the next pass");
                    return;
                }
            };
            let started = std::time::Instant::now();
            for t in &tables {
                let lock = locks.get(t);
                let _held = lock.lock().await;
                if let Err(e) = crate::maintain::maintain_table(&config, t, &opts).await {
                    tracing::warn!(table = %t, error = %e, "scheduled maintenance failed; will retry at the next pass");
                }
            }
            if let Err(e) = crate::maintain::maintain_watermarks(&config, &opts).await {
                tracing::warn!(error = %e, "scheduled maintenance of the watermarks failed; will retry at the next pass");
            }
            info!(
                tables = tables.len(),
                seconds = started.elapsed().as_secs_f64(),
                "scheduled maintenance done"
            );
        }));
    }
}

impl Drop for DeltaSink {
    fn drop(&mut self) {
        // Maintenance is only ever an ordinary Delta commit; stopping it midway loses nothing.
        if let Some(h) = self.maintenance.take() {
            h.abort();
        }
    }
}

//! Applying batches to Delta tables (see the crate doc for the invariants).

use std::collections::HashMap;
use std::ops::Not;
use std::sync::Arc;

use arrow_array::RecordBatch;
use binlake_sink::store::{classify, TargetLog};
use binlake_sink::{
    Checkpoint, Commit, Sink, SinkError, TableBatch, COL_DELETED, COL_VERSION, REJECTS_TABLE,
};
use deltalake::datafusion::common::Column;
use deltalake::datafusion::logical_expr::{col, Expr};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Transaction;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use object_store::path::Path;
use tracing::{debug, info};
use url::Url;

use crate::config::{Deletes, DeltaConfig};
use crate::types::to_delta;

pub struct DeltaSink {
    config: DeltaConfig,
    log: TargetLog,
    base: Url,
    options: HashMap<String, String>,
    /// One lock per table: a MERGE and a maintenance step of the same table never overlap, so
    /// neither has to be retried for a conflict with the other.
    locks: TableLocks,
    /// The scheduled maintenance task, when one is running, and when the last one started.
    maintenance: Option<tokio::task::JoinHandle<()>>,
    last_maintenance: std::time::Instant,
}

#[derive(Clone, Default)]
struct TableLocks(Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl TableLocks {
    fn get(&self, table: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(table.to_string()).or_default().clone()
    }
}

fn delta_err(table: &str, what: &str, e: DeltaTableError) -> SinkError {
    use DeltaTableError as E;
    match e {
        E::ObjectStore { source } => match classify(source) {
            SinkError::Transient(m) => SinkError::Transient(format!("{table}: {what}: {m}")),
            other => other,
        },
        E::Transaction { source } => SinkError::Transient(format!(
            "{table}: {what}: commit conflict, will retry: {source}"
        )),
        E::VersionAlreadyExists(v) => SinkError::Transient(format!(
            "{table}: {what}: version {v} was committed concurrently, will retry"
        )),
        E::Io { source } => SinkError::Transient(format!("{table}: {what}: {source}")),
        other => SinkError::Table {
            table: binlake_sink::TableId::new(
                table.split('.').next().unwrap_or(""),
                table.split('.').nth(1).unwrap_or(""),
            ),
            message: format!("{what}: {other}"),
        },
    }
}

impl DeltaSink {
    pub fn new(config: DeltaConfig) -> Result<Self, SinkError> {
        let base = config.base_url()?;
        let options = config.storage_options();
        // binlake's own records (commit log, lease) live beside the tables, on the same store.
        let (store, root) = object_store::parse_url_opts(
            &base,
            options
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
        )
        .map_err(|e| SinkError::Definite(format!("target `{}`: {e}", config.target)))?;
        let root = Path::from(root.as_ref().trim_end_matches('/'));
        let log = TargetLog::new(Arc::from(store), root, &config.pipeline, &config.target);
        Ok(DeltaSink {
            config,
            log,
            base,
            options,
            locks: TableLocks::default(),
            maintenance: None,
            last_maintenance: std::time::Instant::now(),
        })
    }

    fn app_id(&self, table: &str) -> String {
        format!("binlake:{}:{table}", self.config.pipeline)
    }

    async fn open_table(&self, url: Url, name: &str) -> Result<DeltaTable, SinkError> {
        if url.scheme() == "file" {
            // deltalake opens a missing local directory as an error, not as "no table yet"
            if let Ok(p) = url.to_file_path() {
                std::fs::create_dir_all(&p).map_err(|e| {
                    SinkError::Definite(format!("{name}: cannot create {}: {e}", p.display()))
                })?;
            }
        }
        // No log yet: a table to create. Loading it would only log a kernel error.
        let rel = url
            .path()
            .strip_prefix(self.base.path())
            .unwrap_or("")
            .trim_matches('/');
        let log_prefix = self.log.path(&format!("{rel}/_delta_log"));
        let has_log = !self.log.list(&log_prefix).await?.is_empty();
        if !has_log {
            return deltalake::DeltaTableBuilder::from_url(url)
                .and_then(|b| b.with_storage_options(self.options.clone()).build())
                .map_err(|e| delta_err(name, "open", e));
        }
        DeltaTable::try_from_url_with_storage_options(url, self.options.clone())
            .await
            .map_err(|e| delta_err(name, "open", e))
    }

    async fn load(&self, db: &str, table: &str) -> Result<DeltaTable, SinkError> {
        let url = self
            .base
            .join(&format!("{db}/{table}/"))
            .map_err(|e| SinkError::Definite(e.to_string()))?;
        self.open_table(url, &format!("{db}.{table}")).await
    }

    /// The highest version of `app_id` the table has applied.
    async fn applied(
        table: &DeltaTable,
        app_id: &str,
        name: &str,
    ) -> Result<Option<i64>, SinkError> {
        if table.version().is_none() {
            return Ok(None);
        }
        let snap = table
            .snapshot()
            .map_err(|e| delta_err(name, "snapshot", e))?;
        snap.transaction_version(&*table.log_store(), app_id)
            .await
            .map_err(|e| delta_err(name, "txn version", e))
    }

    async fn apply(&self, tb: &TableBatch) -> Result<(), SinkError> {
        let name = tb.table.to_string();
        let lock = self.locks.get(&name);
        let _held = lock.lock().await;
        let app_id = self.app_id(&name);
        let table = self.load(&tb.table.db, &tb.table.table).await?;
        let version = tb.max_version as i64;
        if Self::applied(&table, &app_id, &name)
            .await?
            .is_some_and(|v| v >= version)
        {
            debug!(table = %name, version, "batch already in the table (replay); skipped");
            return Ok(());
        }
        let batch = to_delta(&tb.batch).map_err(|e| SinkError::Table {
            table: tb.table.clone(),
            message: format!("converting to Delta types: {e}"),
        })?;
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&app_id, version));
        let keyless = tb.primary_key.is_empty();
        if table.version().is_none() || keyless {
            // A new table (its first batch is already one row per key), or an append-only one.
            let rows = if self.config.deletes == Deletes::Hard && !keyless {
                without_tombstones(&batch)?
            } else {
                batch
            };
            table
                .write(vec![rows])
                .with_save_mode(SaveMode::Append)
                .with_schema_mode(SchemaMode::Merge)
                .with_commit_properties(props)
                .await
                .map_err(|e| delta_err(&name, "write", e))?;
            return Ok(());
        }
        let existing = table
            .snapshot()
            .map_err(|e| delta_err(&name, "snapshot", e))?
            .snapshot()
            .arrow_schema();
        check_evolution(tb, &existing, &batch.schema())?;
        let ctx = SessionContext::new();
        let source = ctx
            .read_batch(batch.clone())
            .map_err(|e| SinkError::Definite(format!("{name}: {e}")))?;
        let s = |c: &str| Expr::Column(Column::new(Some("source"), c));
        let t = |c: &str| Expr::Column(Column::new(Some("target"), c));
        let on = tb
            .primary_key
            .iter()
            .map(|k| t(k).eq(s(k)))
            .reduce(|a, b| a.and(b))
            .expect("keyed table");
        // The batch's key range on the target side lets the MERGE skip target files by their
        // min/max statistics instead of reading the whole table. Target rows outside the range
        // match no source row either way, so the result is the same.
        let on = match key_range(&batch, &tb.primary_key) {
            Some((lo, hi)) => on.and(t(&tb.primary_key[0]).between(lo, hi)),
            None => on,
        };
        let newer = s(COL_VERSION).gt(t(COL_VERSION));
        let cols: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut merge = table
            .merge(source, on)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_merge_schema(true)
            .with_commit_properties(props);
        let hard = self.config.deletes == Deletes::Hard;
        if hard {
            let gone = newer.clone().and(s(COL_DELETED));
            merge = merge
                .when_matched_delete(|d| d.predicate(gone))
                .map_err(|e| delta_err(&name, "merge", e))?;
        }
        let update_when = if hard {
            newer.and(col(Column::new(Some("source"), COL_DELETED)).not())
        } else {
            newer
        };
        let cols_u = cols.clone();
        merge = merge
            .when_matched_update(move |mut u| {
                u = u.predicate(update_when);
                for c in &cols_u {
                    u = u.update(Column::new_unqualified(c), s(c));
                }
                u
            })
            .map_err(|e| delta_err(&name, "merge", e))?;
        merge = merge
            .when_not_matched_insert(move |mut i| {
                if hard {
                    i = i.predicate(s(COL_DELETED).not());
                }
                for c in &cols {
                    i = i.set(Column::new_unqualified(c), s(c));
                }
                i
            })
            .map_err(|e| delta_err(&name, "merge", e))?;
        let (_, metrics) = merge.await.map_err(|e| delta_err(&name, "merge", e))?;
        debug!(table = %name, inserted = metrics.num_target_rows_inserted, updated = metrics.num_target_rows_updated, deleted = metrics.num_target_rows_deleted, "merged");
        Ok(())
    }

    async fn append_rejects(&self, rejects: &RecordBatch, seq: u64) -> Result<(), SinkError> {
        let app_id = self.app_id(REJECTS_TABLE);
        let url = self
            .base
            .join(&format!("{REJECTS_TABLE}/"))
            .map_err(|e| SinkError::Definite(e.to_string()))?;
        let table = self.open_table(url, REJECTS_TABLE).await?;
        if Self::applied(&table, &app_id, REJECTS_TABLE)
            .await?
            .is_some_and(|v| v >= seq as i64)
        {
            return Ok(());
        }
        let batch =
            to_delta(rejects).map_err(|e| SinkError::Definite(format!("{REJECTS_TABLE}: {e}")))?;
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&app_id, seq as i64));
        table
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .with_commit_properties(props)
            .await
            .map_err(|e| delta_err(REJECTS_TABLE, "write", e))?;
        Ok(())
    }
}

impl DeltaSink {
    /// Starts a maintenance pass in the background when one is due and none is running. It runs
    /// beside the commits, never inside one: it takes each table's lock only while it maintains
    /// that table, so a commit waits at most for one table's maintenance, and a failure is
    /// logged and retried at the next pass, never fatal to replication.
    fn schedule_maintenance(&mut self, ours: Vec<String>) {
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

/// (min, max) of a single integer primary key in the batch, as literals.
fn key_range(batch: &RecordBatch, pk: &[String]) -> Option<(Expr, Expr)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int16Type, Int32Type, Int64Type, Int8Type};
    use deltalake::datafusion::logical_expr::lit;
    let [key] = pk else { return None };
    let c = batch.column_by_name(key)?;
    if c.null_count() > 0 || c.is_empty() {
        return None;
    }
    macro_rules! range {
        ($t:ty) => {{
            let v = c.as_primitive::<$t>().values();
            Some((lit(*v.iter().min()?), lit(*v.iter().max()?)))
        }};
    }
    match c.data_type() {
        arrow_schema::DataType::Int8 => range!(Int8Type),
        arrow_schema::DataType::Int16 => range!(Int16Type),
        arrow_schema::DataType::Int32 => range!(Int32Type),
        arrow_schema::DataType::Int64 => range!(Int64Type),
        _ => None,
    }
}

/// Same kind of Arrow type as far as Delta is concerned (readers may hand strings back as views).
fn same_kind(a: &arrow_schema::DataType, b: &arrow_schema::DataType) -> bool {
    use arrow_schema::DataType as D;
    let norm = |t: &D| match t {
        D::Utf8 | D::LargeUtf8 | D::Utf8View => D::Utf8,
        D::Binary | D::LargeBinary | D::BinaryView => D::Binary,
        D::Timestamp(u, Some(_)) => D::Timestamp(*u, Some("UTC".into())),
        other => other.clone(),
    };
    norm(a) == norm(b)
}

/// Only additive schema changes are applied to an existing Delta table (MERGE adds the new
/// columns). A column that stopped arriving (DROP or RENAME COLUMN) or changed type (MODIFY)
/// stops this table with an error saying so, rather than leaving stale or misplaced values.
fn check_evolution(
    tb: &TableBatch,
    existing: &arrow_schema::Schema,
    incoming: &arrow_schema::Schema,
) -> Result<(), SinkError> {
    let stop = |message: String| {
        Err(SinkError::Table {
            table: tb.table.clone(),
            message,
        })
    };
    let gone: Vec<&str> = existing
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| !n.starts_with("_binlake_") && incoming.field_with_name(n).is_err())
        .collect();
    if !gone.is_empty() {
        return stop(format!(
            "column(s) {gone:?} no longer arrive from the source (DROP COLUMN or RENAME COLUMN, now {:?}); the Delta sink does not rewrite tables for that yet. The table is stopped; the others go on. To resume it, rebuild the Delta table (delete it and replicate it again from a snapshot) ",
            incoming.fields().iter().map(|f| f.name().as_str()).filter(|n| !n.starts_with("_binlake_")).collect::<Vec<_>>()
        ));
    }
    for f in incoming.fields() {
        if let Ok(old) = existing.field_with_name(f.name()) {
            if !same_kind(old.data_type(), f.data_type()) {
                return stop(format!(
                    "column `{}` changed type from {} to {} (MODIFY COLUMN); the Delta sink does not rewrite tables for that yet. The table is stopped; the others go on. To resume it, rebuild the Delta table",
                    f.name(),
                    old.data_type(),
                    f.data_type()
                ));
            }
        }
    }
    Ok(())
}

fn without_tombstones(batch: &RecordBatch) -> Result<RecordBatch, SinkError> {
    let idx = batch
        .schema()
        .index_of(COL_DELETED)
        .map_err(|e| SinkError::Definite(e.to_string()))?;
    let deleted = arrow_array::cast::AsArray::as_boolean(batch.column(idx));
    let keep = arrow_select_not(deleted);
    deltalake::arrow::compute::filter_record_batch(batch, &keep)
        .map_err(|e| SinkError::Definite(e.to_string()))
}

fn arrow_select_not(b: &arrow_array::BooleanArray) -> arrow_array::BooleanArray {
    b.iter().map(|v| Some(!v.unwrap_or(false))).collect()
}

#[async_trait::async_trait]
impl Sink for DeltaSink {
    fn kind(&self) -> &'static str {
        "delta"
    }

    fn prefers_large_commits(&self) -> bool {
        true
    }

    /// Every row older than `version` becomes a tombstone (or, with hard deletes, is removed).
    /// Idempotent: a replay finds those rows already at `version`.
    async fn apply_table_ddl(
        &mut self,
        table: &binlake_sink::TableId,
        kind: binlake_sink::DdlKind,
        version: u64,
    ) -> Result<(), SinkError> {
        use deltalake::datafusion::logical_expr::lit;
        use deltalake::datafusion::scalar::ScalarValue;
        let name = table.to_string();
        let lock = self.locks.get(&name);
        let _held = lock.lock().await;
        let t = self.load(&table.db, &table.table).await?;
        if t.version().is_none() {
            return Ok(()); // nothing replicated yet
        }
        let older = col(Column::new_unqualified(COL_VERSION)).lt(lit(version as i64));
        if self.config.deletes == Deletes::Hard {
            t.delete()
                .with_predicate(older)
                .await
                .map_err(|e| delta_err(&name, "truncate", e))?;
        } else {
            let now = binlake_sink::store::now_us();
            t.update()
                .with_predicate(older.and(col(Column::new_unqualified(COL_DELETED)).not()))
                .with_update(Column::new_unqualified(COL_DELETED), lit(true))
                .with_update(Column::new_unqualified(COL_VERSION), lit(version as i64))
                .with_update(Column::new_unqualified(binlake_sink::COL_OP), lit("delete"))
                .with_update(
                    Column::new_unqualified(binlake_sink::COL_SYNCED_AT),
                    lit(ScalarValue::TimestampMicrosecond(
                        Some(now),
                        Some("UTC".into()),
                    )),
                )
                .await
                .map_err(|e| delta_err(&name, "truncate", e))?;
        }
        info!(table = %name, ?kind, version, "table emptied in Delta");
        Ok(())
    }

    async fn open(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        self.log.claim().await?;
        let cp = self.log.latest::<Checkpoint>().await?;
        info!(target = %self.config.target, last_seq = self.log.last_seq, resume = ?cp.as_ref().map(|c| &c.position), "delta sink opened");
        Ok(cp)
    }

    async fn read_checkpoint(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        self.log.latest::<Checkpoint>().await
    }

    async fn keepalive(&mut self) -> Result<(), SinkError> {
        self.log.keepalive().await
    }

    async fn commit(&mut self, mut commit: Commit) -> Result<(), SinkError> {
        self.log.keepalive().await?;
        let seq = self.log.last_seq + 1;
        commit.checkpoint.seq = seq;
        // Tables are independent Delta tables: commit them concurrently. Batches of one table
        // (an older shape set aside by a schema change, then the new one) go in order.
        let mut per_table: Vec<Vec<&TableBatch>> = Vec::new();
        for tb in commit.batches.iter().filter(|b| b.batch.num_rows() > 0) {
            match per_table.iter_mut().find(|g| g[0].table == tb.table) {
                Some(g) => g.push(tb),
                None => per_table.push(vec![tb]),
            }
        }
        let this = &*self;
        futures::future::try_join_all(per_table.into_iter().map(|group| async move {
            for tb in group {
                this.apply(tb).await?;
            }
            Ok::<(), SinkError>(())
        }))
        .await?;
        if let Some(r) = commit.rejects.as_ref().filter(|r| r.num_rows() > 0) {
            self.append_rejects(r, seq).await?;
        }
        self.log.append(seq, &commit.checkpoint).await?;
        debug!(seq, tables = commit.batches.len(), "delta commit");
        let tables: Vec<String> = commit.checkpoint.tables.keys().cloned().collect();
        self.schedule_maintenance(tables);
        Ok(())
    }
}

//! Applying batches to Delta tables (see the crate doc for the invariants).

use std::collections::HashMap;
use std::ops::Not;
use std::sync::Arc;

use arrow_array::RecordBatch;
use binlake_sink::store::{classify, TargetLog};
use binlake_sink::{Checkpoint, MetaTable, Sink, SinkError, TableBatch, COL_DELETED, COL_VERSION};
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
use crate::ddl::same_kind;
use crate::types::to_delta;

pub struct DeltaSink {
    pub(crate) config: DeltaConfig,
    pub(crate) log: TargetLog,
    pub(crate) base: Url,
    pub(crate) options: HashMap<String, String>,
    /// One lock per table: a MERGE and a maintenance step of the same table never overlap, so
    /// neither has to be retried for a conflict with the other.
    pub(crate) locks: TableLocks,
    /// The scheduled maintenance task, when one is running, and when the last one started.
    pub(crate) maintenance: Option<tokio::task::JoinHandle<()>>,
    pub(crate) last_maintenance: std::time::Instant,
    /// Bytes of the files the commit in progress (or the last one) replaced by rewriting them.
    pub(crate) rewritten: std::sync::atomic::AtomicU64,
}

pub(crate) use crate::create::{description, KEYLESS};

#[derive(Clone, Default)]
pub(crate) struct TableLocks(Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl TableLocks {
    /// The locks of the tables under `base`, shared by every sink of this process that writes
    /// there: pipelines that share a table (`origin_in_key`) take turns instead of failing
    /// each other's commits.
    pub(crate) fn of(base: &Url) -> TableLocks {
        static ALL: std::sync::OnceLock<std::sync::Mutex<HashMap<String, TableLocks>>> =
            std::sync::OnceLock::new();
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.entry(base.to_string()).or_default().clone()
    }

    pub(crate) fn get(&self, table: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(table.to_string()).or_default().clone()
    }
}

/// The table as a DataFusion frame in deltalake's session (its planner runs deltalake's scan);
/// `what` names the read in errors of the session, `df_err` maps DataFusion's.
pub(crate) async fn frame(
    table: &DeltaTable,
    name: &str,
    what: &str,
    df_err: impl Fn(deltalake::datafusion::error::DataFusionError) -> SinkError,
) -> Result<deltalake::datafusion::dataframe::DataFrame, SinkError> {
    let ctx = deltalake::delta_datafusion::create_session().into_inner();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| delta_err(name, what, e))?;
    let provider = table.table_provider().await.map_err(&df_err)?;
    ctx.read_table(provider).map_err(df_err)
}

pub(crate) fn delta_err(table: &str, what: &str, e: DeltaTableError) -> SinkError {
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
        if let Some(dir) = config.local_dir() {
            std::fs::create_dir_all(dir).map_err(|e| {
                SinkError::Definite(format!(
                    "target `{}`: cannot create directory: {e}",
                    config.target
                ))
            })?;
        }
        let base = config.base_url()?;
        let options = config.storage_options();
        // binlake's own records (commit log, lease) live beside the tables, on the same store.
        let bad = |e: String| SinkError::Definite(format!("target `{}`: {e}", config.target));
        let ca = binlake_sink::store::ca_bundle_client_options().map_err(|e| bad(e.to_string()))?;
        let (store, root): (Box<dyn object_store::ObjectStore>, Path) = match ca {
            // an S3 endpoint with a private CA: the same options, and the bundle trusted
            Some(client) if base.scheme() == "s3" => {
                // client options first: they replace the whole set, AWS_ALLOW_HTTP included
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_client_options(client)
                    .with_url(base.as_str());
                for (k, v) in &options {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        b = b.with_config(key, v.clone());
                    }
                }
                let store = b.build().map_err(|e| bad(e.to_string()))?;
                (Box::new(store), Path::from(base.path().trim_matches('/')))
            }
            _ => object_store::parse_url_opts(
                &base,
                options
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
            )
            .map_err(|e| bad(e.to_string()))?,
        };
        let root = Path::from(root.as_ref().trim_end_matches('/'));
        let log = TargetLog::new(Arc::from(store), root, &config.pipeline, &config.target);
        let locks = TableLocks::of(&base);
        Ok(DeltaSink {
            config,
            log,
            base,
            options,
            locks,
            maintenance: None,
            last_maintenance: std::time::Instant::now(),
            rewritten: Default::default(),
        })
    }

    pub(crate) fn app_id(&self, table: &str) -> String {
        format!("binlake:{}:{table}", self.config.pipeline)
    }

    pub(crate) async fn open_table(&self, url: Url, name: &str) -> Result<DeltaTable, SinkError> {
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
        let has_log = self.log.any_under(&log_prefix).await?;
        if !has_log {
            return deltalake::DeltaTableBuilder::from_url(url)
                .and_then(|b| b.with_storage_options(self.options.clone()).build())
                .map_err(|e| delta_err(name, "open", e));
        }
        DeltaTable::try_from_url_with_storage_options(url, self.options.clone())
            .await
            .map_err(|e| delta_err(name, "open", e))
    }

    pub(crate) async fn load(&self, db: &str, table: &str) -> Result<DeltaTable, SinkError> {
        let url = self
            .base
            .join(&format!("{db}/{table}/"))
            .map_err(|e| SinkError::Definite(e.to_string()))?;
        self.open_table(url, &format!("{db}.{table}")).await
    }

    /// The highest version of `app_id` the table has applied.
    pub(crate) async fn applied(
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

    /// `token` identifies the batch within its commit (`seq * 1024 + n`): a retried commit's
    /// insert-only batch is recognised by it.
    pub(crate) async fn apply(&self, tb: &TableBatch, token: i64) -> Result<(), SinkError> {
        let name = tb.table.to_string();
        let lock = self.locks.get(&name);
        let _held = lock.lock().await;
        let app_id = self.app_id(&name);
        let table = self.load(&tb.table.db, &tb.table.table).await?;
        let applied = Self::applied(&table, &app_id, &name).await?;
        if tb.replace {
            return self.replace_content(tb, table, &app_id, applied).await;
        }
        // Snapshot rows carry the version of their read, which may sort below changes already
        // applied (of other keys): such a batch is never skipped by the txn version. The MERGE
        // keeps the newer row per key, so applying it again changes nothing.
        let snapshot_rows = tb.snapshot_rows;
        // Advanced by binlog changes only: a snapshot row's version says nothing about changes
        // of other keys that later commits still bring.
        let version = (tb.stream_max_version as i64).max(applied.unwrap_or(0));
        if !snapshot_rows && applied.is_some_and(|v| v >= tb.max_version as i64) {
            debug!(table = %name, version, "batch already in the table (replay); skipped");
            return Ok(());
        }
        // Rows whose keys the table has never held (an initial snapshot): appended, not merged.
        // A commit retried after a transient error must not append them twice: its token says.
        let append_id = format!("{app_id}-append");
        let insert_only = tb.insert_only && table.version().is_some();
        if insert_only
            && Self::applied(&table, &append_id, &name)
                .await?
                .is_some_and(|t| t >= token)
        {
            debug!(table = %name, token, "insert-only batch already in the table (retry); skipped");
            return Ok(());
        }
        let batch = to_delta(&tb.batch).map_err(|e| SinkError::Table {
            table: tb.table.clone(),
            message: format!("converting to Delta types: {e}"),
        })?;
        let mut props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&app_id, version));
        if insert_only {
            props = props.with_application_transaction(Transaction::new(&append_id, token));
        }
        let keyless = tb.primary_key.is_empty();
        if insert_only && !keyless {
            // Keys new to the table (an initial snapshot): the files are encoded in parallel and
            // added in one commit (a WRITE encodes one file at a time).
            let rows = if self.config.deletes == Deletes::Hard {
                without_tombstones(&batch)?
            } else {
                batch.clone()
            };
            let unique = (tb.primary_key.len() == 1).then_some(tb.primary_key[0].as_str());
            if let Some(done) = parallel_append(&table, &name, rows, props.clone(), unique).await? {
                debug!(table = %name, version = done, "appended (parallel encode)");
                return Ok(());
            }
        }
        if table.version().is_none() || keyless || insert_only {
            let parts = match table.version() {
                None => self.partitions_for(&tb.table, &batch.schema())?,
                Some(_) => Vec::new(),
            };
            return self
                .append(table, &name, batch, props, description(tb), keyless, parts)
                .await;
        }
        let (table, batch) = self.evolve_schema(tb, table, batch).await?;
        let hard = self.config.deletes == Deletes::Hard;
        let started = std::time::Instant::now();
        if let Some(done) =
            crate::rewrite::upsert(&table, &name, &batch, &tb.primary_key, hard, props.clone())
                .await?
        {
            self.rewritten
                .fetch_add(done.replaced_bytes, std::sync::atomic::Ordering::Relaxed);
            debug!(table = %name, rows = batch.num_rows(), files_read = done.read, files_rewritten = done.rewritten, bytes_rewritten = done.replaced_bytes, replaced = done.replaced, inserted = done.inserted, ms = started.elapsed().as_millis() as u64, "upserted");
            return Ok(());
        }
        self.merge(tb, &name, table, batch, props).await
    }

    /// MERGE on the primary key: a source row replaces the stored one only when its version is
    /// higher (tombstones too, or deletes with `deletes = "hard"`); new keys are inserted.
    async fn merge(
        &self,
        tb: &TableBatch,
        name: &str,
        table: DeltaTable,
        batch: RecordBatch,
        props: CommitProperties,
    ) -> Result<(), SinkError> {
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
                .map_err(|e| delta_err(name, "merge", e))?;
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
            .map_err(|e| delta_err(name, "merge", e))?;
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
            .map_err(|e| delta_err(name, "merge", e))?;
        let started = std::time::Instant::now();
        let (_, metrics) = merge.await.map_err(|e| delta_err(name, "merge", e))?;
        debug!(table = %name, rows = batch.num_rows(), inserted = metrics.num_target_rows_inserted, updated = metrics.num_target_rows_updated, deleted = metrics.num_target_rows_deleted, copied = metrics.num_target_rows_copied, files_added = metrics.num_target_files_added, files_removed = metrics.num_target_files_removed, scan_ms = metrics.scan_time_ms, rewrite_ms = metrics.rewrite_time_ms, ms = started.elapsed().as_millis() as u64, "merged");
        Ok(())
    }

    /// Appends `batch` to a new table (its first batch is already one row per key), a keyless
    /// one, or one whose keys are all new to it.
    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        table: DeltaTable,
        name: &str,
        batch: RecordBatch,
        props: CommitProperties,
        description: String,
        keyless: bool,
        partitions: Vec<String>,
    ) -> Result<(), SinkError> {
        let rows = if self.config.deletes == Deletes::Hard && !keyless {
            without_tombstones(&batch)?
        } else {
            batch
        };
        let mut write = table
            .write(vec![rows])
            .with_save_mode(SaveMode::Append)
            .with_schema_mode(SchemaMode::Merge)
            .with_commit_properties(props)
            .with_description(description);
        if !partitions.is_empty() {
            write = write.with_partition_columns(partitions);
        }
        if !keyless {
            // Files of a few MB, each holding a narrow key range (rows arrive mostly in key
            // order): a MERGE then rewrites only the files whose key range it touches, not
            // one ever-growing file. `binlake maintain` compacts later, when it is quiet.
            write = write
                .with_configuration([("delta.targetFileSize", Some(MERGE_FILE_SIZE.to_string()))]);
        }
        write.await.map_err(|e| delta_err(name, "write", e))?;
        Ok(())
    }

    /// Appends to one of binlake's own tables (`_binlake_rejects`, `_binlake_watermarks`) at
    /// `<target>/<name>`, once per commit `seq` (its `txn` version makes a replay a no-op).
    async fn append_meta(&self, name: &str, rows: &RecordBatch, seq: u64) -> Result<(), SinkError> {
        let app_id = self.app_id(name);
        let url = self
            .base
            .join(&format!("{name}/"))
            .map_err(|e| SinkError::Definite(e.to_string()))?;
        let table = self.open_table(url, name).await?;
        if Self::applied(&table, &app_id, name)
            .await?
            .is_some_and(|v| v >= seq as i64)
        {
            return Ok(());
        }
        let batch = to_delta(rows).map_err(|e| SinkError::Definite(format!("{name}: {e}")))?;
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&app_id, seq as i64));
        // an existing table: its files are added directly (no query plan for a few rows)
        if table.version().is_some()
            && parallel_append(&table, name, batch.clone(), props.clone(), None)
                .await?
                .is_some()
        {
            return Ok(());
        }
        table
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .with_commit_properties(props)
            .await
            .map_err(|e| delta_err(name, "write", e))?;
        Ok(())
    }
}

/// Tables of one commit written at once (each its own Delta commit).
const CONCURRENT_TABLES: usize = 8;

/// `delta.targetFileSize` of the tables binlake creates (MERGE splits its output at this size).
pub(crate) const MERGE_FILE_SIZE: u64 = 8 << 20;

/// The table a `db.table` name (a [`binlake_sink::TableId`]'s text) names.
pub(crate) fn table_id(name: &str) -> binlake_sink::TableId {
    name.parse()
        .unwrap_or_else(|_| binlake_sink::TableId::new("", name))
}

/// Every value of `from` has an exact representation in `to` (what a widening MODIFY COLUMN
/// does at the source).
pub(crate) fn widens(from: &arrow_schema::DataType, to: &arrow_schema::DataType) -> bool {
    use arrow_schema::DataType as D;
    let int_digits = |t: &D| match t {
        D::Int8 => Some(3),
        D::Int16 => Some(5),
        D::Int32 => Some(10),
        D::Int64 => Some(19),
        _ => None,
    };
    let int_rank = |t: &D| match t {
        D::Int8 => Some(1),
        D::Int16 => Some(2),
        D::Int32 => Some(3),
        D::Int64 => Some(4),
        _ => None,
    };
    match (from, to) {
        (a, b) if int_rank(a).is_some() && int_rank(b).is_some() => int_rank(a) < int_rank(b),
        (a, D::Decimal128(p, s)) if int_digits(a).is_some() => {
            (*p as i32 - *s as i32) >= int_digits(a).unwrap_or(99)
        }
        (D::Decimal128(p1, s1), D::Decimal128(p2, s2)) => {
            s2 >= s1 && (*p2 as i32 - *s2 as i32) >= (*p1 as i32 - *s1 as i32)
        }
        (D::Float32, D::Float64) => true,
        (D::Date32, D::Timestamp(_, None)) => true,
        _ => false,
    }
}

/// The batch with its columns cast up to the table's wider types, when some column is narrower
/// than the table's (`None` when none is).
pub(crate) fn narrower_than_table(
    batch: &RecordBatch,
    table: &arrow_schema::Schema,
) -> Option<Result<RecordBatch, arrow_schema::ArrowError>> {
    let schema = batch.schema();
    let mut changed = false;
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        match table.field_with_name(f.name()) {
            Ok(t)
                if !same_kind(f.data_type(), t.data_type())
                    && widens(f.data_type(), t.data_type()) =>
            {
                changed = true;
                match arrow_cast::cast(c, t.data_type()) {
                    Ok(c) => cols.push(c),
                    Err(e) => return Some(Err(e)),
                }
                // the table's field, source type metadata included: these rows are older
                fields.push(t.clone().with_nullable(f.is_nullable() || t.is_nullable()));
            }
            _ => {
                fields.push(f.as_ref().clone());
                cols.push(c.clone());
            }
        }
    }
    changed.then(|| RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), cols))
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

/// Rows per file below which a batch is not split for parallel encoding.
const PARALLEL_FILE_ROWS: usize = 32 * 1024;

/// `rows` as the table's Arrow schema when it has exactly the table's columns (names and types,
/// in any order: a column added with AFTER sits at the end of the Delta table) and the table is
/// not partitioned; `None` otherwise (a WRITE or MERGE with schema merging handles that).
pub(crate) fn as_table_rows(
    table: &DeltaTable,
    name: &str,
    rows: &RecordBatch,
) -> Result<Option<RecordBatch>, SinkError> {
    use deltalake::writer::RecordBatchWriter;
    let probe = RecordBatchWriter::for_table(table).map_err(|e| delta_err(name, "writer", e))?;
    let schema = probe.arrow_schema();
    let partitioned = !table
        .snapshot()
        .map_err(|e| delta_err(name, "snapshot", e))?
        .metadata()
        .partition_columns()
        .is_empty();
    if partitioned || schema.fields().len() != rows.num_columns() {
        return Ok(None);
    }
    let mut cols = Vec::with_capacity(rows.num_columns());
    for f in schema.fields() {
        match rows.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => cols.push(c.clone()),
            _ => return Ok(None),
        }
    }
    RecordBatch::try_new(schema, cols)
        .map(Some)
        .map_err(|e| SinkError::Definite(format!("{name}: {e}")))
}

/// Appends `rows` to an existing table as several files encoded at once (one per core, by
/// row range), committed together with `props`' transactions. `unique` names a column whose
/// values are distinct (a one-column key): it gets no dictionary. `None`: the rows' schema is
/// not exactly the table's (a WRITE with schema merging handles that).
async fn parallel_append(
    table: &DeltaTable,
    name: &str,
    rows: RecordBatch,
    props: CommitProperties,
    unique: Option<&str>,
) -> Result<Option<i64>, SinkError> {
    use deltalake::kernel::transaction::CommitBuilder;
    use deltalake::kernel::Action;
    use deltalake::protocol::DeltaOperation;
    let Some(rows) = as_table_rows(table, name, &rows)? else {
        return Ok(None);
    };
    let adds = encode_files(table, name, rows, unique).await?;
    let snapshot = table
        .snapshot()
        .map_err(|e| delta_err(name, "snapshot", e))?;
    let done = CommitBuilder::from(props)
        .with_actions(adds.into_iter().map(Action::Add).collect())
        .build(
            Some(snapshot),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .map_err(|e| delta_err(name, "commit", e))?;
    Ok(Some(done.version() as i64))
}

/// Encodes `rows` (the table's exact schema) as data files of `table`, several at once when
/// there are many rows (one per core, by row range), and returns their Add actions (not yet
/// committed). `unique` names a column of distinct values: it gets no dictionary.
pub(crate) async fn encode_files(
    table: &DeltaTable,
    name: &str,
    rows: RecordBatch,
    unique: Option<&str>,
) -> Result<Vec<deltalake::kernel::Add>, SinkError> {
    use deltalake::parquet::basic::Compression;
    use deltalake::parquet::file::properties::WriterProperties;
    use deltalake::parquet::schema::types::ColumnPath;
    use deltalake::writer::{DeltaWriter, RecordBatchWriter};
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parts = (rows.num_rows() / PARALLEL_FILE_ROWS).clamp(1, cores.min(8));
    let per = rows.num_rows().div_ceil(parts);
    let handle = tokio::runtime::Handle::current();
    let plain = binlake_sink::encoding::dictionary_not_worth_it(
        &rows,
        per,
        deltalake::parquet::file::properties::DEFAULT_DICTIONARY_PAGE_SIZE_LIMIT,
    );
    let mut tasks = Vec::with_capacity(parts);
    for i in 0..parts {
        let start = i * per;
        if start >= rows.num_rows() {
            break;
        }
        let part = rows.slice(start, per.min(rows.num_rows() - start));
        // deltalake's defaults (Snappy), and no dictionary for a column of distinct values (a
        // one-column key) or where a sample says it would not pay (binlake_sink::encoding)
        let mut wp = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("binlake {}", env!("CARGO_PKG_VERSION")));
        for c in unique.into_iter().chain(plain.iter().map(|c| c.as_str())) {
            wp = wp.set_column_dictionary_enabled(ColumnPath::from(c), false);
        }
        let mut writer = RecordBatchWriter::for_table(table)
            .map_err(|e| delta_err(name, "writer", e))?
            .with_writer_properties(wp.build());
        let handle = handle.clone();
        // encoding is CPU work: a blocking thread each, not the runtime's workers
        tasks.push(tokio::task::spawn_blocking(move || {
            handle.block_on(async move {
                writer.write(part).await?;
                writer.flush().await
            })
        }));
    }
    let mut adds = Vec::new();
    for t in tasks {
        let files = t
            .await
            .map_err(|e| SinkError::Definite(format!("{name}: encoding task failed: {e}")))?
            .map_err(|e| delta_err(name, "write", e))?;
        adds.extend(files);
    }
    Ok(adds)
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

    /// No longer: a batch's upsert (`rewrite.rs`) costs what it touches, not a fixed MERGE
    /// plan, so batches at the size bounds cost no more per row than batches four times larger,
    /// and holding four times the bounds while a commit runs cost most of the Delta sink's
    /// memory in catch-up.
    fn prefers_large_commits(&self) -> bool {
        false
    }

    /// Each commit is a log entry and, for updates, a MERGE that rewrites files.
    fn min_commit_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(200)
    }

    /// The files the last commit rewrote, over `rewrite_budget`: updates spread over a large
    /// table rewrite much of it per commit, and every replaced file stays until vacuum, so the
    /// spacing bounds the bytes rewritten (and kept) per second. Upserts by MERGE (see
    /// `rewrite.rs`) are not counted.
    fn commit_pause(&self) -> std::time::Duration {
        let bytes = self.rewritten.load(std::sync::atomic::Ordering::Relaxed);
        match self.config.rewrite_budget {
            Some(per_s) if per_s > 0 => {
                std::time::Duration::from_secs_f64(bytes as f64 / per_s as f64)
            }
            _ => std::time::Duration::ZERO,
        }
    }

    async fn apply_table_ddl(
        &mut self,
        table: &binlake_sink::TableId,
        kind: binlake_sink::DdlKind,
        version: u64,
    ) -> Result<(), SinkError> {
        self.apply_ddl(table, kind, version).await
    }

    async fn open(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        self.log.claim().await?;
        let cp = self.log.latest::<Checkpoint>().await?;
        info!(target = %self.config.target, last_seq = self.log.last_seq, resume = ?cp.as_ref().map(|c| &c.position), "delta sink opened");
        Ok(cp)
    }

    async fn read_table(
        &mut self,
        t: &binlake_sink::TableId,
    ) -> Result<Vec<RecordBatch>, SinkError> {
        let name = t.to_string();
        let table = self.load(&t.db, &t.table).await?;
        if table.version().is_none() {
            return Ok(vec![]);
        }
        let err = |e: deltalake::datafusion::error::DataFusionError| {
            SinkError::Definite(format!("reading {name}: {e}"))
        };
        frame(&table, &name, "read", err)
            .await?
            .collect()
            .await
            .map_err(err)
    }

    async fn read_checkpoint(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        self.log.latest::<Checkpoint>().await
    }

    async fn keepalive(&mut self) -> Result<(), SinkError> {
        self.log.keepalive().await
    }

    async fn begin_commit(&mut self) -> Result<u64, SinkError> {
        self.log.keepalive().await?;
        Ok(self.log.last_seq + 1)
    }

    async fn write_tables(&mut self, seq: u64, batches: &[TableBatch]) -> Result<(), SinkError> {
        self.rewritten = Default::default();
        // Tables are independent Delta tables: commit them concurrently. Batches of one table
        // (an older shape set aside by a schema change, then the new one) go in order.
        let mut per_table: Vec<Vec<&TableBatch>> = Vec::new();
        for tb in batches {
            match per_table.iter_mut().find(|g| g[0].table == tb.table) {
                Some(g) => g.push(tb),
                None => per_table.push(vec![tb]),
            }
        }
        let this = &*self;
        use futures::{StreamExt, TryStreamExt};
        // a few tables at a time: a commit of a thousand tables must not load a thousand
        // Delta logs and encoders at once
        let mut groups = Vec::with_capacity(per_table.len());
        for group in per_table {
            groups.push(Box::pin(async move {
                for (n, tb) in group.into_iter().enumerate() {
                    if let (Some(g), false) = (tb.generation, tb.primary_key.is_empty()) {
                        // a re-snapshot: into its shadow, swapped in by its last batch (ddl.rs)
                        this.write_generation(tb, g, seq as i64 * 1024 + n as i64)
                            .await?;
                        continue;
                    }
                    if tb.batch.num_rows() > 0 || tb.replace {
                        this.apply(tb, seq as i64 * 1024 + n as i64).await?;
                    } else {
                        this.ensure_exists(tb).await?;
                    }
                    // (a keyless replace already dropped the rows below it)
                    if let Some(below) = tb.purge_below.filter(|_| !tb.replace) {
                        this.purge(&tb.table, below).await?;
                    }
                }
                Ok::<(), SinkError>(())
            }));
        }
        futures::stream::iter(groups)
            .buffer_unordered(CONCURRENT_TABLES)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn write_meta(
        &mut self,
        seq: u64,
        table: MetaTable,
        rows: &RecordBatch,
    ) -> Result<(), SinkError> {
        self.append_meta(table.name(), rows, seq).await
    }

    async fn write_checkpoint(
        &mut self,
        seq: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), SinkError> {
        self.log.append(seq, checkpoint).await?;
        debug!(seq, tables = checkpoint.tables.len(), "delta commit");
        Ok(())
    }

    fn after_commit(&mut self, checkpoint: &Checkpoint) {
        let tables: Vec<String> = checkpoint.tables.keys().map(ToString::to_string).collect();
        self.schedule_maintenance(tables);
    }
}

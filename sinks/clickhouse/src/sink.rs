//! Writing batches to ClickHouse (see the crate doc for the invariants).

use std::collections::HashMap;

use arrow_array::RecordBatch;
use binlake_sink::{
    Checkpoint, DdlKind, MetaTable, Sink, SinkError, TableBatch, TableId, COL_DELETED, COL_VERSION,
    REJECTS_TABLE, WATERMARKS_TABLE,
};
use bytes::Bytes;
use clickhouse::Client;
use tracing::{debug, info};

use crate::config::{ClickHouseConfig, Compression};
use crate::layout::wanted_columns;
use crate::types::{column_type, to_insert, widens};

pub struct ClickHouseSink {
    pub(crate) config: ClickHouseConfig,
    pub(crate) client: Client,
    /// Columns (name, ClickHouse type) of the tables this process has seen, in order.
    pub(crate) tables: HashMap<String, Vec<(String, String)>>,
    /// The primary key each table was checked against this run (see `layout::check_existing`).
    pub(crate) keys: HashMap<String, Vec<String>>,
    /// Keyless tables: the highest `_binlake_version` they hold (read once per process).
    pub(crate) applied: HashMap<String, u64>,
    pub(crate) last_seq: u64,
    pub(crate) maintenance: Option<tokio::task::JoinHandle<()>>,
    pub(crate) last_maintenance: std::time::Instant,
    /// The watermarks table exists (created once per process).
    pub(crate) watermarks_ready: std::sync::atomic::AtomicBool,
}

/// `name` as a ClickHouse identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// `s` as a ClickHouse string literal.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The server's error code (`Code: 60. DB::Exception: ...`), if the text has one.
fn error_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Codes worth retrying: the server is busy, overloaded, or restarting.
const TRANSIENT_CODES: &[u32] = &[
    3, 159, 160, 164, 202, 203, 209, 210, 236, 241, 242, 252, 285, 319, 394, 425, 439, 999,
];
/// Codes no retry fixes: credentials and permissions.
const DEFINITE_CODES: &[u32] = &[192, 193, 194, 195, 497, 516];

/// Classifies an error; `table` scopes schema and data errors to that table (it stops alone).
pub(crate) fn classify(
    e: clickhouse::error::Error,
    what: &str,
    table: Option<&TableId>,
) -> SinkError {
    use clickhouse::error::Error as E;
    let text = e.to_string();
    if crate::tls::certificate_error(&e) {
        return SinkError::Definite(format!(
            "{what}: {text}: the ClickHouse server's certificate was not accepted. Give the CA bundle that signed it with `clickhouse_tls_ca` (--clickhouse-tls-ca), or connect with the host name the certificate has"
        ));
    }
    match &e {
        E::Network(_) | E::TimedOut => {
            return SinkError::Transient(format!(
                "{what}: {text} (will retry until the server is back)"
            ))
        }
        E::BadResponse(body) => match error_code(body) {
            Some(c) if TRANSIENT_CODES.contains(&c) => {
                return SinkError::Transient(format!("{what}: {text}"))
            }
            Some(c) if DEFINITE_CODES.contains(&c) => {
                return SinkError::Definite(format!("{what}: {text}"))
            }
            Some(_) => {}
            // no ClickHouse error in the body: a proxy's or server's 5xx page
            None => return SinkError::Transient(format!("{what}: {text}")),
        },
        _ => {}
    }
    match table {
        Some(t) => SinkError::Table {
            table: t.clone(),
            message: format!("{what}: {text}"),
        },
        None => SinkError::Definite(format!("{what}: {text}")),
    }
}

impl ClickHouseSink {
    pub fn new(config: ClickHouseConfig) -> Result<Self, SinkError> {
        let base = match &config.tls_ca {
            Some(ca) => crate::tls::client(ca)?,
            None => Client::default(),
        };
        let mut client = base
            .with_url(&config.url)
            .with_compression(match config.compression {
                Compression::Lz4 => clickhouse::Compression::Lz4,
                Compression::None => clickhouse::Compression::None,
            });
        if let Some(u) = &config.user {
            client = client.with_user(u);
        }
        if let Some(p) = &config.password {
            client = client.with_password(p);
        }
        Ok(ClickHouseSink {
            config,
            client,
            tables: HashMap::new(),
            keys: HashMap::new(),
            applied: HashMap::new(),
            last_seq: 0,
            maintenance: None,
            last_maintenance: std::time::Instant::now(),
            watermarks_ready: Default::default(),
        })
    }

    pub(crate) async fn exec(&self, sql: &str) -> Result<(), clickhouse::error::Error> {
        debug!(sql, "clickhouse");
        self.client.query_raw(sql).execute().await
    }

    pub(crate) async fn rows(
        &self,
        sql: &str,
    ) -> Result<Vec<serde_json::Value>, clickhouse::error::Error> {
        let bytes = self
            .client
            .query_raw(sql)
            .fetch_bytes("JSONEachRow")?
            .collect()
            .await?;
        Ok(bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect())
    }

    pub(crate) fn table_name(&self, t: &TableId) -> String {
        format!(
            "{}.{}",
            ident(&self.config.database(&t.db)),
            ident(&t.table)
        )
    }

    pub(crate) fn view_name(&self, t: &TableId) -> String {
        format!(
            "{}.{}",
            ident(&self.config.database(&t.db)),
            ident(&format!("{}_current", t.table))
        )
    }

    fn checkpoints(&self) -> String {
        format!("{}.checkpoints", ident(&self.config.meta_database()))
    }

    async fn ensure_meta(&self) -> Result<(), SinkError> {
        let db = ident(&self.config.meta_database());
        let what = "creating binlake's checkpoint table";
        self.exec(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
            .await
            .map_err(|e| classify(e, what, None))?;
        // One row per (pipeline, table), the newest commit winning; table '' holds the whole
        // checkpoint (position, quarantined tables) as JSON.
        self.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {} (pipeline String, `table` String, seq UInt64, version UInt64, checkpoint String, committed_at_us Int64) ENGINE = ReplacingMergeTree(seq) ORDER BY (pipeline, `table`)",
            self.checkpoints()
        ))
        .await
        .map_err(|e| classify(e, what, None))
    }

    /// The table's columns in the server, in order (empty: no such table).
    pub(crate) async fn server_columns(
        &self,
        t: &TableId,
    ) -> Result<Vec<(String, String)>, SinkError> {
        let rows = self
            .rows(&format!(
                "SELECT name, type FROM system.columns WHERE database = {} AND table = {} ORDER BY position",
                lit(&self.config.database(&t.db)),
                lit(&t.table)
            ))
            .await
            .map_err(|e| classify(e, "reading the table's columns", Some(t)))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.get("name")?.as_str()?.to_string(),
                    r.get("type")?.as_str()?.to_string(),
                ))
            })
            .collect())
    }

    pub(crate) async fn replace_view(&self, t: &TableId, keyed: bool) -> Result<(), SinkError> {
        if crate::ddl::shadow_generation(&t.table).is_some() {
            return Ok(()); // a re-snapshot's shadow: readers use the table's own view
        }
        let sql = if keyed {
            format!(
                "CREATE OR REPLACE VIEW {} AS SELECT * FROM {} FINAL WHERE {} = 0",
                self.view_name(t),
                self.table_name(t),
                ident(COL_DELETED)
            )
        } else {
            format!(
                "CREATE OR REPLACE VIEW {} AS SELECT * FROM {}",
                self.view_name(t),
                self.table_name(t)
            )
        };
        self.exec(&sql)
            .await
            .map_err(|e| classify(e, "creating the _current view", Some(t)))
    }

    /// Creates the table, or brings its columns to the batch's: columns added at the source are
    /// added, widened types are modified. Anything else stops the table.
    pub(crate) async fn ensure_table(&mut self, tb: &TableBatch) -> Result<(), SinkError> {
        let t = &tb.table;
        let name = t.to_string();
        let layout = self.layout_of(t);
        let stop = |message: String| SinkError::Table {
            table: t.clone(),
            message,
        };
        let (want, unfit) = wanted_columns(tb, &layout)?;
        // (a primary key that changed with the columns unchanged is checked below)
        if self.tables.get(&name) == Some(&want) && self.keys.get(&name) == Some(&tb.primary_key) {
            return Ok(());
        }
        let keyed = !tb.primary_key.is_empty();
        let have = self.server_columns(t).await?;
        if let Some(m) = unfit {
            // a mistake in the layout when the table is first created; a schema change later
            if have.is_empty() && !tb.reshape {
                return Err(stop(m));
            }
            tracing::warn!(table = %name, reason = %m, "a column type override no longer applies");
        }
        if have.is_empty() {
            self.exec(&format!(
                "CREATE DATABASE IF NOT EXISTS {}",
                ident(&self.config.database(&t.db))
            ))
            .await
            .map_err(|e| classify(e, "creating the database", Some(t)))?;
            let cols = want
                .iter()
                .map(|(n, ty)| format!("{} {ty}", ident(n)))
                .collect::<Vec<_>>()
                .join(", ");
            let names: Vec<String> = want.iter().map(|(n, _)| n.clone()).collect();
            let clauses = layout.clauses(&names, &tb.primary_key).map_err(stop)?;
            let engine = if keyed {
                format!(
                    "ReplacingMergeTree({}, {}){clauses}",
                    ident(COL_VERSION),
                    ident(COL_DELETED),
                )
            } else {
                format!("MergeTree{clauses}")
            };
            let comment = match crate::ddl::shadow_generation(&t.table) {
                Some(g) => format!(
                    " COMMENT {}",
                    lit(&format!("{}{g}", crate::ddl::GENERATION_COMMENT))
                ),
                None => String::new(),
            };
            self.exec(&format!(
                "CREATE TABLE IF NOT EXISTS {} ({cols}) ENGINE = {engine}{comment}",
                self.table_name(t)
            ))
            .await
            .map_err(|e| classify(e, "creating the table", Some(t)))?;
            info!(table = %name, keyed, "table created in ClickHouse");
            self.replace_view(t, keyed).await?;
            self.keys.insert(name.clone(), tb.primary_key.clone());
            self.tables.insert(name, want);
            return Ok(());
        }
        if self.keys.get(&name) != Some(&tb.primary_key) {
            // the first write of this run to a table that exists, or its key changed: can it
            // hold the replica?
            let names: Vec<String> = want.iter().map(|(n, _)| n.clone()).collect();
            if let Err(m) = self
                .check_existing_table(t, &names, &tb.primary_key)
                .await?
            {
                // binlake's engine, with keys that no longer fit (the source's key changed)
                if tb.reshape || self.holds_no_rows(t).await? {
                    info!(table = %name, reason = %m, "the table is created again with the new key");
                    return self.recreate(tb).await;
                }
                return Err(SinkError::Reread {
                    table: t.clone(),
                    message: m,
                });
            }
            self.keys.insert(name.clone(), tb.primary_key.clone());
        }
        let mut altered = false;
        let mut have = have;
        // columns that no longer arrive, not explained by a DDL statement binlake applied, and
        // columns whose new type is not a widening
        let gone: Vec<String> = have
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| !want.iter().any(|(w, _)| w == n))
            .collect();
        let retyped: Vec<String> = want
            .iter()
            .filter(|(n, ty)| {
                have.iter()
                    .any(|(h, old)| h == n && old != ty && !widens(ty, old) && !widens(old, ty))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if !gone.is_empty() || !retyped.is_empty() {
            // A table being read again (re-snapshot), or one that holds no rows (dropped and
            // created again at the source), takes the new shape as it is.
            // Otherwise the rows cannot say what became of the old values: the table is read
            // again in its new shape (the pipeline's re-snapshot), never stopped or guessed.
            if !tb.reshape && !self.holds_no_rows(t).await? {
                if !gone.is_empty() {
                    return Err(SinkError::Reread {
                        table: t.clone(),
                        message: format!("column(s) {gone:?} no longer arrive from the source, and no DROP or RENAME COLUMN statement in the binlog said what became of them"),
                    });
                }
                let n = &retyped[0];
                let old = have
                    .iter()
                    .find(|(h, _)| h == n)
                    .map(|(_, o)| o.as_str())
                    .unwrap_or("?");
                let ty = want
                    .iter()
                    .find(|(w, _)| w == n)
                    .map(|(_, t)| t.as_str())
                    .unwrap_or("?");
                return Err(SinkError::Reread {
                    table: t.clone(),
                    message: format!("column `{n}` changed type from {old} to {ty}, which is not a widening every stored value survives exactly"),
                });
            }
            for c in gone.iter().chain(&retyped) {
                let dropped = self
                    .exec(&format!(
                        "ALTER TABLE {} DROP COLUMN IF EXISTS {}",
                        self.table_name(t),
                        ident(c)
                    ))
                    .await;
                if let Err(e) = dropped {
                    // a key column (the table's ORDER BY): the table is created again in the
                    // new shape, and the re-read fills it
                    info!(table = %name, column = %c, error = %e, "column cannot be dropped; the table is created again in its new shape");
                    return self.recreate(tb).await;
                }
                info!(table = %name, column = %c, "column dropped: the table takes the source's new shape");
            }
            have = self.server_columns(t).await?;
            altered = true;
        }
        for (i, (n, ty)) in want.iter().enumerate() {
            match have.iter().find(|(h, _)| h == n) {
                None => {
                    let after = match i {
                        0 => "FIRST".to_string(),
                        _ => format!("AFTER {}", ident(&want[i - 1].0)),
                    };
                    self.exec(&format!(
                        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {ty} {after}",
                        self.table_name(t),
                        ident(n)
                    ))
                    .await
                    .map_err(|e| classify(e, "adding a column", Some(t)))?;
                    info!(table = %name, column = %n, r#type = %ty, "column added");
                    altered = true;
                }
                // A narrower type than the table's: rows from before a widening, replayed
                // after a crash. ClickHouse converts them exactly on insert.
                Some((_, old)) if old != ty && widens(ty, old) => {}
                Some((_, old)) if old != ty => {
                    if !widens(old, ty) {
                        return Err(SinkError::Table {
                            table: t.clone(),
                            message: format!("column `{n}` changed type from {old} to {ty} (MODIFY COLUMN), which is not a widening every stored value survives exactly. The table is stopped; the others go on. To resume it, convert the column by hand (ALTER TABLE ... MODIFY COLUMN) and restart, or rebuild the table"),
                        });
                    }
                    let widened = self
                        .exec(&format!(
                            "ALTER TABLE {} MODIFY COLUMN {} {ty}",
                            self.table_name(t),
                            ident(n)
                        ))
                        .await;
                    if let Err(e) = widened {
                        if !tb.primary_key.iter().any(|k| k == n) {
                            return Err(classify(e, "widening a column", Some(t)));
                        }
                        // ClickHouse cannot retype a key column in place: the table is made
                        // again in the new shape and filled by a re-read
                        if !tb.reshape && !self.holds_no_rows(t).await? {
                            return Err(SinkError::Reread {
                                table: t.clone(),
                                message: format!("key column `{n}` widened to {ty}, which ClickHouse cannot do in place ({e})"),
                            });
                        }
                        info!(table = %name, column = %n, "key column retyped: the table is created again in its new shape");
                        return self.recreate(tb).await;
                    }
                    info!(table = %name, column = %n, from = %old, to = %ty, "column widened");
                    altered = true;
                }
                Some(_) => {}
            }
        }
        // Also the first time this process writes the table: a kill between an ALTER and the
        // view's re-creation (a view freezes its columns) left the view stale.
        if altered || !self.tables.contains_key(&name) {
            self.replace_view(t, keyed).await?;
        }
        debug!(table = %name, columns = want.len(), "table ready");
        self.tables.insert(name, want);
        Ok(())
    }

    /// Drops the table and creates it in the batch's shape (a re-read, or an emptied table, whose
    /// new shape ClickHouse cannot reach by ALTER: a key column changed).
    async fn recreate(&mut self, tb: &TableBatch) -> Result<(), SinkError> {
        let t = &tb.table;
        if self.shared(t).await? {
            return Err(SinkError::Table {
                table: t.clone(),
                message: format!("the table would have to be created again in a new shape (its key changed at the source of pipeline `{}`), but it is shared by several pipelines (origin_in_key) and holds their rows too. This origin's table is stopped; make the same change on every source, then rebuild the table", self.config.pipeline),
            });
        }
        self.exec(&format!("DROP TABLE IF EXISTS {}", self.table_name(t)))
            .await
            .map_err(|e| classify(e, "re-creating the table", Some(t)))?;
        self.tables.remove(&t.to_string());
        self.keys.remove(&t.to_string());
        Box::pin(self.ensure_table(tb)).await
    }

    /// True when the table holds no rows at all (emptied by TRUNCATE or DROP TABLE).
    async fn holds_no_rows(&self, t: &TableId) -> Result<bool, SinkError> {
        let rows = self
            .rows(&format!("SELECT count() AS n FROM {}", self.table_name(t)))
            .await
            .map_err(|e| classify(e, "counting rows", Some(t)))?;
        Ok(rows
            .first()
            .and_then(|r| r.get("n"))
            .and_then(|n| n.as_u64().or_else(|| n.as_str()?.parse().ok()))
            == Some(0))
    }

    /// One INSERT per table and commit: ClickHouse makes an insert of up to
    /// `max_insert_block_size` rows atomic, and the setting is raised to the batch's size.
    pub(crate) async fn insert(
        &self,
        table: &TableId,
        full_name: &str,
        batch: &RecordBatch,
    ) -> Result<(), SinkError> {
        let batch = to_insert(batch).map_err(|m| SinkError::Table {
            table: table.clone(),
            message: format!("{m}. The table is stopped; the others go on"),
        })?;
        let mut buf = Vec::with_capacity(batch.get_array_memory_size() + 1024);
        {
            let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut buf, &batch.schema())
                .map_err(|e| SinkError::Definite(format!("{table}: Arrow IPC: {e}")))?;
            w.write(&batch)
                .and_then(|_| w.finish())
                .map_err(|e| SinkError::Definite(format!("{table}: Arrow IPC: {e}")))?;
        }
        let cols = batch
            .schema()
            .fields()
            .iter()
            .map(|f| ident(f.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = (batch.num_rows() + 1).max(1_048_576).to_string();
        let mut ins = self
            .client
            .insert_formatted_with(format!(
                "INSERT INTO {full_name} ({cols}) FORMAT ArrowStream"
            ))
            .with_setting("max_insert_block_size", rows.clone())
            .with_setting("min_insert_block_size_rows", rows)
            .with_setting("min_insert_block_size_bytes", "0");
        ins.send(Bytes::from(buf))
            .await
            .map_err(|e| classify(e, "insert", Some(table)))?;
        ins.end()
            .await
            .map_err(|e| classify(e, "insert", Some(table)))?;
        Ok(())
    }

    /// `binlake._binlake_watermarks`: a ReplacingMergeTree on (pipeline, table) keeping the
    /// latest `applied_at`, so `FINAL` (or argMax) gives the current watermark per table and a
    /// replayed insert changes nothing.
    async fn insert_watermarks(&self, rows: &RecordBatch) -> Result<(), SinkError> {
        let (t, name) = self.meta_table(WATERMARKS_TABLE);
        if !self
            .watermarks_ready
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.create_meta_table(
                &name,
                rows,
                "ReplacingMergeTree(applied_at) ORDER BY (pipeline, `table`)",
                "creating the watermarks table",
            )
            .await?;
            self.watermarks_ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.insert(&t, &name, rows).await
    }

    /// One of binlake's own tables in the meta database: its id and quoted name.
    fn meta_table(&self, table: &str) -> (TableId, String) {
        let db = self.config.meta_database();
        let name = format!("{}.{}", ident(&db), ident(table));
        (TableId::new(db, table), name)
    }

    /// `CREATE TABLE IF NOT EXISTS` with the columns of `rows` and the given engine clause.
    async fn create_meta_table(
        &self,
        name: &str,
        rows: &RecordBatch,
        engine: &str,
        what: &str,
    ) -> Result<(), SinkError> {
        let cols = rows
            .schema()
            .fields()
            .iter()
            .map(|f| column_type(f).map(|ty| format!("{} {ty}", ident(f.name()))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SinkError::Definite(e.to_string()))?
            .join(", ");
        self.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {name} ({cols}) ENGINE = {engine}"
        ))
        .await
        .map_err(|e| classify(e, what, None))
    }

    async fn insert_rejects(&self, rejects: &RecordBatch) -> Result<(), SinkError> {
        let (t, name) = self.meta_table(REJECTS_TABLE);
        self.create_meta_table(
            &name,
            rejects,
            "MergeTree ORDER BY tuple()",
            "creating the dead-letter table",
        )
        .await?;
        // A replay after a crash brings the same rejects again: keep only rows above the highest
        // version the dead-letter table holds for their source table (rejects of a transaction
        // are written whole, in one insert).
        use arrow_array::cast::AsArray;
        use arrow_array::types::UInt64Type;
        let tables = rejects.column(0).as_string::<i32>();
        let versions = rejects
            .column_by_name(COL_VERSION)
            .ok_or_else(|| SinkError::Definite("rejects without _binlake_version".into()))?
            .as_primitive::<UInt64Type>();
        let mut names: Vec<&str> = tables.iter().flatten().collect();
        names.sort_unstable();
        names.dedup();
        let list = names.iter().map(|n| lit(n)).collect::<Vec<_>>().join(", ");
        let rows = self
            .rows(&format!(
                "SELECT `table` AS t, max({}) AS v FROM {name} WHERE `table` IN ({list}) GROUP BY `table`",
                ident(COL_VERSION)
            ))
            .await
            .map_err(|e| classify(e, "reading the dead-letter table", None))?;
        let high: HashMap<String, u64> = rows
            .iter()
            .filter_map(|r| Some((r.get("t")?.as_str()?.to_string(), json_u64(r.get("v")?)?)))
            .collect();
        let keep: arrow_array::BooleanArray = (0..rejects.num_rows())
            .map(|i| Some(versions.value(i) > high.get(tables.value(i)).copied().unwrap_or(0)))
            .collect();
        let fresh = arrow_select::filter::filter_record_batch(rejects, &keep)
            .map_err(|e| SinkError::Definite(e.to_string()))?;
        if fresh.num_rows() == 0 {
            debug!("dead-letter rows already written (replay); skipped");
            return Ok(());
        }
        self.insert(&t, &name, &fresh).await
    }

    async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<(), SinkError> {
        let json = serde_json::to_string(cp).map_err(|e| SinkError::Definite(e.to_string()))?;
        let mut rows = vec![serde_json::json!({
            "pipeline": cp.pipeline, "table": "", "seq": cp.seq, "version": 0,
            "checkpoint": json, "committed_at_us": cp.committed_at_us,
        })];
        for (t, v) in &cp.tables {
            rows.push(serde_json::json!({
                "pipeline": cp.pipeline, "table": t, "seq": cp.seq, "version": v,
                "checkpoint": "", "committed_at_us": cp.committed_at_us,
            }));
        }
        let body: String = rows.iter().map(|r| format!("{r}\n")).collect();
        let mut ins = self.client.insert_formatted_with(format!(
            "INSERT INTO {} FORMAT JSONEachRow",
            self.checkpoints()
        ));
        let what = "writing the checkpoint";
        ins.send(Bytes::from(body))
            .await
            .map_err(|e| classify(e, what, None))?;
        ins.end().await.map_err(|e| classify(e, what, None))
    }
}

impl ClickHouseSink {
    /// The table is a ReplacingMergeTree (keyed), not a keyless changelog.
    pub(crate) async fn is_replacing(&self, t: &TableId) -> Result<bool, SinkError> {
        let rows = self
            .rows(&format!(
                "SELECT engine FROM system.tables WHERE database = {} AND name = {}",
                lit(&self.config.database(&t.db)),
                lit(&t.table)
            ))
            .await
            .map_err(|e| classify(e, "reading the table engine", Some(t)))?;
        Ok(rows
            .first()
            .and_then(|r| r.get("engine")?.as_str())
            .is_some_and(|e| e.contains("Replacing")))
    }

    /// The highest `_binlake_version` in a table (0 when empty).
    pub(crate) async fn max_version(&self, t: &TableId) -> Result<u64, SinkError> {
        let rows = self
            .rows(&format!(
                "SELECT max({}) AS v FROM {}",
                ident(COL_VERSION),
                self.table_name(t)
            ))
            .await
            .map_err(|e| classify(e, "reading the table's last version", Some(t)))?;
        Ok(rows
            .first()
            .and_then(|r| json_u64(r.get("v")?))
            .unwrap_or(0))
    }
}

/// A UInt64 from JSONEachRow (quoted by default, a number when the server is told not to).
pub(crate) fn json_u64(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// The rows of `batch` whose `_binlake_version` is above `high`.
fn newer_than(batch: &RecordBatch, high: u64) -> Result<RecordBatch, SinkError> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt64Type;
    let v = batch
        .column_by_name(COL_VERSION)
        .ok_or_else(|| SinkError::Definite("batch without _binlake_version".into()))?
        .as_primitive::<UInt64Type>();
    if v.values().iter().all(|x| *x > high) {
        return Ok(batch.clone());
    }
    let keep: arrow_array::BooleanArray = v.values().iter().map(|x| Some(*x > high)).collect();
    arrow_select::filter::filter_record_batch(batch, &keep)
        .map_err(|e| SinkError::Definite(e.to_string()))
}

#[async_trait::async_trait]
impl Sink for ClickHouseSink {
    fn kind(&self) -> &'static str {
        "clickhouse"
    }

    /// An INSERT is cheap; the server merges its parts in the background.
    fn min_commit_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(50)
    }

    fn date_range_days(&self) -> Option<(i32, i32)> {
        Some(crate::types::DATE_RANGE_DAYS)
    }

    async fn open(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        self.ensure_meta().await?;
        let cp = self.read_checkpoint().await?;
        self.last_seq = cp.as_ref().map_or(0, |c| c.seq);
        info!(target = %self.config.url, last_seq = self.last_seq, resume = ?cp.as_ref().map(|c| &c.position), "clickhouse sink opened");
        Ok(cp)
    }

    async fn read_table(&mut self, t: &TableId) -> Result<Vec<RecordBatch>, SinkError> {
        let sql = format!(
            "SELECT * FROM {} SETTINGS output_format_arrow_string_as_string = 1",
            self.table_name(t)
        );
        let bytes = match self.client.query_raw(&sql).fetch_bytes("ArrowStream") {
            Ok(mut cursor) => match cursor.collect().await {
                Ok(b) => b,
                // 60 unknown table, 81 unknown database: nothing replicated yet
                Err(clickhouse::error::Error::BadResponse(m))
                    if m.contains("UNKNOWN_TABLE") || m.contains("UNKNOWN_DATABASE") =>
                {
                    return Ok(vec![])
                }
                Err(e) => return Err(classify(e, "reading a table back", Some(t))),
            },
            Err(e) => return Err(classify(e, "reading a table back", Some(t))),
        };
        if bytes.is_empty() {
            return Ok(vec![]);
        }
        let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| SinkError::Definite(format!("reading {t}: {e}")))?;
        reader
            .map(|b| b.map_err(|e| SinkError::Definite(format!("reading {t}: {e}"))))
            .collect()
    }

    async fn read_checkpoint(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        let rows = match self
            .rows(&format!(
                "SELECT checkpoint FROM {} FINAL WHERE pipeline = {} AND `table` = ''",
                self.checkpoints(),
                lit(&self.config.pipeline)
            ))
            .await
        {
            Ok(r) => r,
            // no checkpoint table yet: nothing replicated
            Err(clickhouse::error::Error::BadResponse(b))
                if error_code(&b) == Some(60) || error_code(&b) == Some(81) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(classify(e, "reading the checkpoint", None)),
        };
        match rows
            .first()
            .and_then(|r| r.get("checkpoint")?.as_str().map(str::to_string))
        {
            None => Ok(None),
            Some(j) => serde_json::from_str(&j).map(Some).map_err(|e| {
                SinkError::Definite(format!(
                    "the checkpoint in {} is not readable: {e}",
                    self.checkpoints()
                ))
            }),
        }
    }

    async fn begin_commit(&mut self) -> Result<u64, SinkError> {
        Ok(self.last_seq + 1)
    }

    async fn write_tables(&mut self, seq: u64, batches: &[TableBatch]) -> Result<(), SinkError> {
        let _ = seq; // the versions make replays idempotent; the seq is in the checkpoint row
                     // every batch: an empty one makes its table exist (ensure_table creates it)
        for tb in batches {
            if let (Some(g), false) = (tb.generation, tb.primary_key.is_empty()) {
                // a re-snapshot: into its shadow, swapped in with its last batch (ddl.rs)
                self.write_generation(tb, g).await?;
                continue;
            }
            if let Err(e) = self.ensure_table(tb).await {
                self.tables.remove(&tb.table.to_string());
                return Err(e);
            }
            let name = self.table_name(&tb.table);
            if tb.primary_key.is_empty() {
                // A keyless changelog has no version to collapse on: rows of transactions it
                // already holds (a replay after a crash) are dropped here instead. Inserts are
                // atomic per table and batches hold whole transactions, so the table's highest
                // version says exactly which transactions are in.
                let key = tb.table.to_string();
                if tb.replace {
                    // A keyless table's whole content (its read): swapped in atomically (see
                    // `replace_keyless`). A crash before the checkpoint reads it again at
                    // restart, and that read replaces this one.
                    self.replace_keyless(tb, &name).await?;
                    let before = self.applied.get(&key).copied().unwrap_or(0);
                    self.applied.insert(key, before.max(tb.max_version));
                    continue;
                }
                let high = match self.applied.get(&key) {
                    Some(v) => *v,
                    None => self.max_version(&tb.table).await?,
                };
                let batch = newer_than(&tb.batch, high)?;
                if batch.num_rows() > 0 {
                    self.insert(&tb.table, &name, &batch).await?;
                } else {
                    debug!(table = %key, "keyless batch already in the table (replay); skipped");
                }
                self.applied.insert(key, high.max(tb.max_version));
                continue;
            }
            if tb.batch.num_rows() > 0 {
                self.insert(&tb.table, &name, &tb.batch).await?;
                debug!(table = %tb.table, rows = tb.batch.num_rows(), "inserted");
            }
            if let Some(below) = tb.purge_below {
                self.purge(&tb.table, &name, below).await?;
            }
        }
        Ok(())
    }

    async fn write_meta(
        &mut self,
        seq: u64,
        table: MetaTable,
        rows: &RecordBatch,
    ) -> Result<(), SinkError> {
        let _ = seq;
        match table {
            MetaTable::Rejects => self.insert_rejects(rows).await,
            MetaTable::Watermarks => self.insert_watermarks(rows).await,
        }
    }

    async fn write_checkpoint(
        &mut self,
        seq: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), SinkError> {
        // Written last: a crash before it replays the batches, which the version makes
        // idempotent in every `_current` view.
        self.insert_checkpoint(checkpoint).await?;
        self.last_seq = seq;
        Ok(())
    }

    fn after_commit(&mut self, checkpoint: &Checkpoint) {
        let tables: Vec<TableId> = checkpoint.tables.keys().cloned().collect();
        self.schedule_maintenance(tables);
    }

    async fn apply_table_ddl(
        &mut self,
        table: &TableId,
        kind: DdlKind,
        version: u64,
    ) -> Result<(), SinkError> {
        self.apply_ddl(table, kind, version).await
    }
}

//! Table mapping (`map`): the target table each source table is written to.
//!
//! `map = { "shop.*" = "warehouse.{table}", "crm.accounts" = "crm_eu.accounts" }`: a key is a
//! table pattern (the syntax of `tables`), a value the target `db.table`, where `{db}` and
//! `{table}` stand for the source table's parts. A table no entry matches keeps its name.
//!
//! Invariants:
//! - **One-to-one.** One pipeline's checkpoint, Delta transaction ids, re-snapshots and
//!   TRUNCATEs are per target table, so two source tables written to one target table would
//!   overwrite each other's progress and rows. Within a process (every pipeline of
//!   `[[pipelines]]`), the first source table to reach a target table owns it; another one
//!   mapped there is stopped with an error naming both, and the others go on.
//! - **Stable.** The checkpoint records where each mapped table was written
//!   ([`binlake_sink::Checkpoint::targets`]). A restart whose `map` sends a table elsewhere stops
//!   with an error naming it: the new target table would silently miss every row replicated
//!   before.
//! - **Invisible to the pipeline.** [`MappedSink`] renames between the pipeline and the sink:
//!   the pipeline, its checkpoint and `_binlake_watermarks` / `_binlake_rejects` keep source
//!   names; the sink sees only target names, and errors it raises about a target table come
//!   back under the source table's name.
//! - **Shards** (`origin_in_key`): a pipeline with it adds the column `_binlake_origin` (its
//!   name) to every row and to each table's key, and may share a target table with other
//!   pipelines that have it too (never with one that has not, and never two source tables of
//!   one pipeline). Rows of different origins are then different rows, whatever their source
//!   keys, and everything a sink does per pipeline (checkpoint, TRUNCATE, a re-snapshot's end)
//!   touches only its own origin's rows: the Parquet sink computes tombstones from its own
//!   pipeline's files only; Delta and ClickHouse put a predicate on the origin column.
//!   Re-snapshots are applied in place rather than swapped in whole (outside Parquet).
//!   Statements that would change every origin's rows (DROP / RENAME COLUMN in Delta and
//!   ClickHouse) stop the table for the pipeline that saw them.
//! - An exact pattern (no `*` or `?`) wins over globs; a table two globs send to different
//!   targets is an error naming both entries, rather than a choice by entry order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use arrow_array::RecordBatch;
use binlake_sink::{Checkpoint, DdlKind, MetaTable, Sink, SinkError, TableBatch, TableId};

use crate::filter::TableFilter;

/// A `map` entry that cannot work, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` = `{value}`: {reason}")]
pub struct MapError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Rule {
    key: String,
    value: String,
    filter: TableFilter,
    exact: bool,
    db: String,
    table: String,
}

/// The `map` setting, checked.
#[derive(Debug, Clone, Default)]
pub struct TableMap {
    rules: Vec<Rule>,
}

/// Replaces `{db}` and `{table}` in one part of a target template.
fn fill(part: &str, src: &TableId) -> String {
    part.replace("{db}", &src.db).replace("{table}", &src.table)
}

impl TableMap {
    pub fn parse(entries: &BTreeMap<String, String>) -> Result<TableMap, MapError> {
        let mut rules = Vec::new();
        for (key, value) in entries {
            let err = |reason: &str| MapError {
                key: key.clone(),
                value: value.clone(),
                reason: reason.to_string(),
            };
            if key.trim_start().starts_with('!') || key.contains(',') {
                return Err(err(
                    "the key is one table pattern (no `!`, no list); exclude tables with `tables`",
                ));
            }
            let filter = TableFilter::parse(&[key.as_str()]).map_err(|e| err(&e.to_string()))?;
            let (db, rest) = binlake_sink::split_name_part(value.trim())
                .map_err(|e| err(&format!("expected the target `db.table`: {e}")))?;
            let (table, tail) = binlake_sink::split_name_part(rest)
                .map_err(|e| err(&format!("expected the target `db.table`: {e}")))?;
            if db.is_empty() || table.is_empty() || !tail.is_empty() {
                return Err(err(
                    "expected the target `db.table` ({db} and {table} stand for the source's)",
                ));
            }
            for part in [&db, &table] {
                let stripped = part.replace("{db}", "").replace("{table}", "");
                if stripped.contains(['{', '}', '*', '?']) {
                    return Err(err(
                        "the target takes no wildcards; {db} and {table} are its only placeholders",
                    ));
                }
            }
            rules.push(Rule {
                key: key.clone(),
                value: value.clone(),
                filter,
                exact: !key.contains(['*', '?']),
                db,
                table,
            });
        }
        Ok(TableMap { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The target of `src` (itself when no entry matches).
    pub fn target(&self, src: &TableId) -> Result<TableId, MapError> {
        let hits: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.filter.matches(&src.db, &src.table))
            .collect();
        let exact: Vec<&&Rule> = hits.iter().filter(|r| r.exact).collect();
        let pick: Vec<&Rule> = if exact.is_empty() {
            hits
        } else {
            exact.into_iter().copied().collect()
        };
        let mut out: Option<(TableId, &Rule)> = None;
        for r in pick {
            let t = TableId::new(fill(&r.db, src), fill(&r.table, src));
            match &out {
                Some((o, first)) if *o != t => {
                    return Err(MapError {
                        key: r.key.clone(),
                        value: r.value.clone(),
                        reason: format!(
                            "{src} matches both this entry and `{}` = `{}`, which send it to different tables ({t} and {o}); make one of them exact or narrower",
                            first.key, first.value
                        ),
                    });
                }
                Some(_) => {}
                None => out = Some((t, r)),
            }
        }
        Ok(out.map(|(t, _)| t).unwrap_or_else(|| src.clone()))
    }
}

/// The column that names a row's origin (its pipeline) under `origin_in_key`.
pub const COL_ORIGIN: &str = "_binlake_origin";

/// One writer of a target table: its pipeline, its source table, and whether it writes with
/// `origin_in_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    pipeline: String,
    source: TableId,
    shard: bool,
    /// Writes last-writer-wins versions (`conflict`).
    lww: bool,
}

/// Which pipelines and source tables write each target table, in this process.
fn owners() -> &'static Mutex<HashMap<TableId, Vec<Owner>>> {
    static O: OnceLock<Mutex<HashMap<TableId, Vec<Owner>>>> = OnceLock::new();
    O.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Why `me` cannot write `target` next to `others`, if it cannot.
fn refuse(me: &Owner, target: &TableId, others: &[Owner]) -> Option<String> {
    let other = others
        .iter()
        .find(|o| o.pipeline == me.pipeline || !((o.shard && me.shard) || (o.lww && me.lww)))?;
    Some(if other.pipeline == me.pipeline {
        format!(
            "map: {} and {} (both of pipeline `{}`) would both be written to {target}; a target table holds one source table per pipeline (its checkpoint, re-snapshots and TRUNCATE are per table). Map them to different tables, or read them with one pipeline each with origin_in_key",
            me.source, other.source, me.pipeline
        )
    } else {
        format!(
            "map: {} (pipeline `{}`) and {} (pipeline `{}`) would both be written to {target}. Several sources share a table only with origin_in_key = true in both pipelines (each row then carries its origin in its key), or with conflict = \"last_writer_wins\" and neither in origin_in_key (one row per key, the last writer's); or map them to different tables",
            me.source, me.pipeline, other.source, other.pipeline
        )
    })
}

/// A sink that writes each source table to its mapped target table (see the module doc).
pub struct MappedSink {
    inner: Box<dyn Sink>,
    map: TableMap,
    pipeline: String,
    /// `origin_in_key`: every row carries `_binlake_origin` = the pipeline's name, in its key.
    origin: bool,
    /// Source -> target, of the tables seen (owned in [`owners`]).
    to: HashMap<TableId, TableId>,
    /// Target -> source, to name errors by the source table.
    from: HashMap<TableId, TableId>,
    /// `conflict = "last_writer_wins"`: the pipeline's clock and rank (see [`crate::lww`]).
    lww: Option<(Arc<crate::lww::LwwClock>, u8)>,
    /// Target tables written keyless (their versions stay the pipeline's own).
    keyless: std::collections::HashSet<TableId>,
}

impl MappedSink {
    /// `conflict`: the pipeline's rank under `conflict = "last_writer_wins"`.
    pub fn new(
        inner: Box<dyn Sink>,
        map: TableMap,
        pipeline: &str,
        origin: bool,
        conflict: Option<u8>,
    ) -> MappedSink {
        MappedSink {
            inner,
            map,
            pipeline: pipeline.to_string(),
            origin,
            to: HashMap::new(),
            from: HashMap::new(),
            lww: conflict.map(|rank| (crate::lww::clock(pipeline), rank)),
            keyless: Default::default(),
        }
    }

    /// The target of `src`, owned by this pipeline's `src` in this process.
    fn target(&mut self, src: &TableId) -> Result<TableId, SinkError> {
        if let Some(t) = self.to.get(src) {
            return Ok(t.clone());
        }
        let t = self.map.target(src).map_err(|e| SinkError::Table {
            table: src.clone(),
            message: format!("map: {e}"),
        })?;
        let me = Owner {
            pipeline: self.pipeline.clone(),
            source: src.clone(),
            shard: self.origin,
            lww: self.lww.is_some(),
        };
        {
            let mut owners = owners().lock().expect("owners");
            let all = owners.entry(t.clone()).or_default();
            if !all.contains(&me) {
                if let Some(message) = refuse(&me, &t, all) {
                    return Err(SinkError::Table {
                        table: src.clone(),
                        message,
                    });
                }
                all.push(me);
            }
        }
        self.to.insert(src.clone(), t.clone());
        self.from.insert(t.clone(), src.clone());
        Ok(t)
    }

    /// Gives up `src`'s target (renamed away at the source).
    fn release(&mut self, src: &TableId) {
        if let Some(t) = self.to.remove(src) {
            self.from.remove(&t);
            let mut owners = owners().lock().expect("owners");
            if let Some(all) = owners.get_mut(&t) {
                all.retain(|o| !(o.pipeline == self.pipeline && o.source == *src));
            }
        }
    }

    /// `b` (mapped to its target) under `conflict = "last_writer_wins"`: with `_binlake_origin`
    /// (not in the key) and last-writer-wins versions. Keyless tables keep their rows and
    /// versions as they are, and are not shared. Re-snapshots, which remove what they did not
    /// read again, are refused: they would remove rows other sources wrote.
    fn last_writer_wins(
        &mut self,
        mut b: TableBatch,
        src: &TableId,
        clock: &crate::lww::LwwClock,
        rank: u8,
    ) -> Result<TableBatch, SinkError> {
        let table_err = |message: String| SinkError::Table {
            table: src.clone(),
            message,
        };
        if b.primary_key.is_empty() {
            let shared = owners()
                .lock()
                .expect("owners")
                .get(&b.table)
                .is_some_and(|all| all.iter().any(|o| o.pipeline != self.pipeline));
            if shared {
                return Err(table_err(format!(
                    "{} has no primary key: rows of several sources have no key to decide between under conflict = \"last_writer_wins\". Map it to a table of its own per pipeline",
                    b.table
                )));
            }
            self.keyless.insert(b.table.clone());
            return Ok(b);
        }
        if b.purge_below.is_some() || b.generation.is_some() || b.replace {
            return Err(table_err(format!(
                "{} is written under conflict = \"last_writer_wins\": a re-snapshot of it (its content read again, and the rows not found removed) would remove rows other sources wrote, and is not supported. Rebuild the target table from every source, or map this table apart",
                b.table
            )));
        }
        b = with_origin(b, &self.pipeline, false)?;
        // another source may hold these keys already (or bring them later): merged, never
        // appended as new
        b.insert_only = false;
        let schema = b.batch.schema();
        let (Ok(vi), Ok(oi)) = (
            schema.index_of(binlake_sink::COL_VERSION),
            schema.index_of(binlake_sink::COL_OP),
        ) else {
            return Err(SinkError::Definite(format!(
                "{}: a batch without {} or {}",
                b.table,
                binlake_sink::COL_VERSION,
                binlake_sink::COL_OP
            )));
        };
        let cast = |i: usize, t: &arrow_schema::DataType| {
            arrow_cast::cast(b.batch.column(i), t)
                .map_err(|e| SinkError::Definite(format!("{}: {e}", b.table)))
        };
        let versions = cast(vi, &arrow_schema::DataType::UInt64)?;
        let versions = versions
            .as_any()
            .downcast_ref::<arrow_array::UInt64Array>()
            .expect("cast to UInt64");
        let ops = cast(oi, &arrow_schema::DataType::Utf8)?;
        let ops = ops
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .expect("cast to Utf8");
        let (mut min, mut max, mut stream_max) = (u64::MAX, 0u64, 0u64);
        let mut lookup = clock.lookup(rank);
        let lww: arrow_array::UInt64Array = (0..b.batch.num_rows())
            .map(|i| {
                let snapshot = b.snapshot_rows && ops.value(i) == "snapshot";
                let v = lookup.version(versions.value(i), snapshot);
                (min, max) = (min.min(v), max.max(v));
                if !snapshot {
                    stream_max = stream_max.max(v);
                }
                v
            })
            .collect();
        drop(lookup);
        let mut columns = b.batch.columns().to_vec();
        columns[vi] = Arc::new(lww);
        b.batch = RecordBatch::try_new(schema, columns)
            .map_err(|e| SinkError::Definite(format!("{}: {e}", b.table)))?;
        if b.batch.num_rows() > 0 {
            (b.min_version, b.max_version, b.stream_max_version) = (min, max, stream_max);
        }
        Ok(b)
    }

    /// An error about a target table, named by its source table.
    fn back(&self, e: SinkError) -> SinkError {
        let src = |t: TableId| self.from.get(&t).cloned().unwrap_or(t);
        match e {
            SinkError::Table { table, message } => SinkError::Table {
                table: src(table),
                message,
            },
            SinkError::Reread { table, message } => SinkError::Reread {
                table: src(table),
                message,
            },
            other => other,
        }
    }

    /// Every table the checkpoint knows, with where it is written now (mapped ones only).
    fn targets_of(&mut self, cp: &Checkpoint) -> BTreeMap<TableId, TableId> {
        let mut out = BTreeMap::new();
        for t in cp
            .tables
            .keys()
            .chain(cp.snapshots.keys())
            .chain(cp.loaded.keys())
        {
            if let Ok(to) = self.map.target(t) {
                if to != *t {
                    out.insert(t.clone(), to);
                }
            }
        }
        out
    }

    /// A checkpoint whose `map` sends a table somewhere else than where it was written.
    fn check_stable(&mut self, cp: &Checkpoint) -> Result<(), SinkError> {
        if cp.origin_in_key != self.origin && !cp.tables.is_empty() {
            return Err(SinkError::Definite(format!(
                "origin_in_key: pipeline `{}` wrote its tables with origin_in_key = {}, and it is now {}; that changes the key of every row written. Put it back, or replicate under a new pipeline name into new tables",
                self.pipeline, cp.origin_in_key, self.origin
            )));
        }
        if cp.lww_clock.is_some() != self.lww.is_some() && !cp.tables.is_empty() {
            return Err(SinkError::Definite(format!(
                "conflict: pipeline `{}` wrote its tables {} last-writer-wins versions, and now would {}; every version written would change meaning. Put `conflict` back as it was, or replicate under a new pipeline name into new tables",
                self.pipeline,
                if cp.lww_clock.is_some() { "with" } else { "without" },
                if self.lww.is_some() { "use them" } else { "not" },
            )));
        }
        let now = self.targets_of(cp);
        for t in cp.tables.keys() {
            let was = cp.targets.get(t).unwrap_or(t);
            let is = now.get(t).unwrap_or(t);
            if was != is {
                return Err(SinkError::Definite(format!(
                    "map: pipeline `{}` wrote {t} to {was}, and `map` now sends it to {is}, which would miss every row replicated so far. Put the old mapping back, or replicate under a new pipeline name (it reads every table again into its new target)",
                    self.pipeline
                )));
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for MappedSink {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn open(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        let cp = self.inner.open().await?;
        if let Some(cp) = &cp {
            self.check_stable(cp)?;
        }
        if let Some((clock, _)) = &self.lww {
            // the stream resumes right after the checkpoint's position
            match &cp {
                Some(cp) => clock.resume(cp.lww_clock.unwrap_or_default(), cp.position.version()),
                None => clock.resume((0, 0), 0),
            }
        }
        Ok(cp)
    }

    async fn read_checkpoint(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        self.inner.read_checkpoint().await
    }

    async fn begin_commit(&mut self) -> Result<u64, SinkError> {
        self.inner.begin_commit().await
    }

    async fn write_tables(&mut self, seq: u64, batches: &[TableBatch]) -> Result<(), SinkError> {
        let mut mapped = Vec::with_capacity(batches.len());
        for b in batches {
            let mut b = b.clone();
            if self.origin {
                b = with_origin(b, &self.pipeline, true)?;
                if self.inner.kind() != "parquet" {
                    // a re-snapshot is applied in place: swapping in a shadow of this origin's
                    // rows would replace the other origins' too (a Parquet swap file holds only
                    // the pipeline's own files' rows)
                    b.generation = None;
                }
            }
            let src = b.table.clone();
            b.table = self.target(&src)?;
            if let Some((clock, rank)) = self.lww.clone() {
                b = self.last_writer_wins(b, &src, &clock, rank)?;
            }
            mapped.push(b);
        }
        let r = self.inner.write_tables(seq, &mapped).await;
        r.map_err(|e| self.back(e))
    }

    async fn write_meta(
        &mut self,
        seq: u64,
        table: MetaTable,
        rows: &RecordBatch,
    ) -> Result<(), SinkError> {
        self.inner.write_meta(seq, table, rows).await
    }

    async fn write_checkpoint(&mut self, seq: u64, cp: &Checkpoint) -> Result<(), SinkError> {
        let mut cp = cp.clone();
        cp.targets = self.targets_of(&cp);
        cp.origin_in_key = self.origin;
        cp.lww_clock = self
            .lww
            .as_ref()
            .map(|(clock, _)| clock.mark(cp.position.version()));
        self.inner.write_checkpoint(seq, &cp).await
    }

    fn after_commit(&mut self, cp: &Checkpoint) {
        let mut mapped = cp.clone();
        mapped.tables = cp
            .tables
            .iter()
            .map(|(t, v)| (self.to.get(t).cloned().unwrap_or_else(|| t.clone()), *v))
            .collect();
        self.inner.after_commit(&mapped);
    }

    async fn apply_table_ddl(
        &mut self,
        table: &TableId,
        kind: DdlKind,
        version: u64,
    ) -> Result<(), SinkError> {
        let target = self.target(table)?;
        let kind = match kind {
            DdlKind::RenameTable { to } => {
                let to_target = self.target(&to)?;
                let r = self
                    .inner
                    .apply_table_ddl(&target, DdlKind::RenameTable { to: to_target }, version)
                    .await;
                if r.is_ok() {
                    self.release(table);
                }
                return r.map_err(|e| self.back(e));
            }
            other => other,
        };
        // (in the version space of the table's rows)
        let version = match &self.lww {
            Some((clock, rank)) if !self.keyless.contains(&target) => {
                clock.version(version, false, *rank)
            }
            _ => version,
        };
        let r = self.inner.apply_table_ddl(&target, kind, version).await;
        r.map_err(|e| self.back(e))
    }

    fn date_range_days(&self) -> Option<(i32, i32)> {
        self.inner.date_range_days()
    }

    fn prefers_large_commits(&self) -> bool {
        self.inner.prefers_large_commits()
    }

    fn min_commit_interval(&self) -> std::time::Duration {
        self.inner.min_commit_interval()
    }

    fn commit_pause(&self) -> std::time::Duration {
        self.inner.commit_pause()
    }

    async fn read_table(&mut self, table: &TableId) -> Result<Vec<RecordBatch>, SinkError> {
        let t = self.map.target(table).map_err(|e| SinkError::Table {
            table: table.clone(),
            message: format!("map: {e}"),
        })?;
        let batches = self.inner.read_table(&t).await?;
        if !self.origin {
            return Ok(batches);
        }
        // this origin's rows, as its source has them
        batches
            .iter()
            .map(|b| own_rows(b, &self.pipeline))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SinkError::Definite(format!("reading {t}: {e}")))
    }

    async fn read_table_whole(&mut self, table: &TableId) -> Result<Vec<RecordBatch>, SinkError> {
        let t = self.map.target(table).map_err(|e| SinkError::Table {
            table: table.clone(),
            message: format!("map: {e}"),
        })?;
        self.inner.read_table_whole(&t).await
    }

    async fn maintain(&mut self) -> Result<(), SinkError> {
        self.inner.maintain().await
    }

    async fn keepalive(&mut self) -> Result<(), SinkError> {
        self.inner.keepalive().await
    }
}

/// `b` with the column `_binlake_origin` (`origin` in every row) as its last data column, and
/// (`in_key`) in its key.
fn with_origin(mut b: TableBatch, origin: &str, in_key: bool) -> Result<TableBatch, SinkError> {
    let schema = b.batch.schema();
    if schema.index_of(COL_ORIGIN).is_ok() {
        return Err(SinkError::Table {
            table: b.table.clone(),
            message: format!("the source table has a column named {COL_ORIGIN}, which origin_in_key and conflict add; rename it at the source, or leave them off"),
        });
    }
    let at = schema
        .index_of(binlake_sink::COL_VERSION)
        .unwrap_or(schema.fields().len());
    let mut fields: Vec<arrow_schema::FieldRef> = schema.fields().iter().cloned().collect();
    fields.insert(
        at,
        Arc::new(arrow_schema::Field::new(
            COL_ORIGIN,
            arrow_schema::DataType::Utf8,
            false,
        )),
    );
    let mut columns = b.batch.columns().to_vec();
    columns.insert(
        at,
        Arc::new(arrow_array::StringArray::from(vec![
            origin;
            b.batch.num_rows()
        ])),
    );
    b.batch = RecordBatch::try_new_with_options(
        Arc::new(arrow_schema::Schema::new_with_metadata(
            fields,
            schema.metadata().clone(),
        )),
        columns,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(b.batch.num_rows())),
    )
    .map_err(|e| SinkError::Definite(format!("adding {COL_ORIGIN}: {e}")))?;
    if in_key && !b.primary_key.is_empty() {
        b.primary_key.push(COL_ORIGIN.to_string());
    }
    Ok(b)
}

/// The rows of `b` whose origin is `origin`, without the origin column.
fn own_rows(b: &RecordBatch, origin: &str) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let Ok(i) = b.schema().index_of(COL_ORIGIN) else {
        return Ok(b.clone());
    };
    let col = arrow_cast::cast(b.column(i), &arrow_schema::DataType::Utf8)?;
    let col = col
        .as_any()
        .downcast_ref::<arrow_array::StringArray>()
        .expect("cast to Utf8");
    let keep: arrow_array::BooleanArray = col.iter().map(|v| Some(v == Some(origin))).collect();
    let mut out = arrow_select::filter::filter_record_batch(b, &keep)?;
    out.remove_column(i);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> Result<TableMap, MapError> {
        TableMap::parse(
            &entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn t(s: &str) -> TableId {
        s.parse().unwrap()
    }

    #[test]
    fn targets_fill_placeholders_and_exact_entries_win() {
        let m = map(&[
            ("shop.*", "warehouse.{table}"),
            ("shop.orders", "sales.orders"),
            ("crm_*.*", "{db}_eu.{table}"),
        ])
        .unwrap();
        assert_eq!(m.target(&t("shop.items")).unwrap(), t("warehouse.items"));
        assert_eq!(m.target(&t("shop.orders")).unwrap(), t("sales.orders"));
        assert_eq!(m.target(&t("crm_x.acc")).unwrap(), t("crm_x_eu.acc"));
        assert_eq!(m.target(&t("other.t")).unwrap(), t("other.t"));
        // a name holding a dot stays one part
        assert_eq!(
            m.target(&TableId::new("shop", "a.b")).unwrap(),
            TableId::new("warehouse", "a.b")
        );
    }

    #[test]
    fn only_shards_or_last_writer_wins_share_a_target_table() {
        let o = |p: &str, src: &str, shard| Owner {
            pipeline: p.into(),
            source: t(src),
            shard,
            lww: false,
        };
        let l = |p: &str, src: &str| Owner {
            pipeline: p.into(),
            source: t(src),
            shard: false,
            lww: true,
        };
        let w = t("w.orders");
        let r = |me: Owner, other: Owner| refuse(&me, &w, &[other]);
        assert!(r(o("us", "shop.orders", true), o("eu", "shop.orders", true)).is_none());
        let e = r(o("us", "shop.orders", false), o("eu", "shop.orders", true)).unwrap();
        assert!(e.contains("origin_in_key") && e.contains("`eu`"), "{e}");
        assert!(r(o("us", "shop.orders", true), o("eu", "shop.orders", false)).is_some());
        assert!(r(l("us", "shop.orders"), l("eu", "shop.orders")).is_none());
        let e = r(l("us", "shop.orders"), o("eu", "shop.orders", true)).unwrap();
        assert!(e.contains("last_writer_wins"), "{e}");
        assert!(r(l("eu", "shop_a.orders"), l("eu", "shop_b.orders")).is_some());
        // two source tables of one pipeline never share one
        let e = r(
            o("eu", "shop_a.orders", true),
            o("eu", "shop_b.orders", true),
        )
        .unwrap();
        assert!(
            e.contains("shop_a.orders") && e.contains("shop_b.orders"),
            "{e}"
        );
    }

    #[test]
    fn ambiguous_and_bad_entries_are_named() {
        let m = map(&[("shop.*", "a.{table}"), ("*.orders", "b.orders")]).unwrap();
        let e = m.target(&t("shop.orders")).unwrap_err().to_string();
        assert!(e.contains("shop.*") && e.contains("*.orders"), "{e}");
        assert_eq!(m.target(&t("shop.x")).unwrap(), t("a.x"));
        for (k, v) in [
            ("shop.*", "warehouse"),
            ("shop.*", "w.*"),
            ("shop.*", "w.{tbl}"),
            ("!shop.x", "w.x"),
            ("shop", "w.x"),
        ] {
            let e = map(&[(k, v)]).unwrap_err();
            assert_eq!((e.key.as_str(), e.value.as_str()), (k, v));
        }
    }
}

//! `binlake validate`: proves the replica equals the source, chunk by chunk, and names what
//! differs; `--repair` backfills exactly the differing key ranges through the running
//! `replicate` (see [`crate::control`]).
//!
//! How:
//! - The source is read by the snapshot reader (keyset chunks by primary key, each in one
//!   consistent snapshot), so its values are exactly the values binlake replicates.
//! - The target is read back by the sink ([`binlake_sink::Sink::read_table`]), reduced to its
//!   current state (the highest version per key, no tombstones), and cast to the source's Arrow
//!   types. Both sides format each value the same way (Arrow's display), hash each row, and
//!   compare per chunk: row count and the XOR of row hashes, then the rows themselves.
//! - In-flight lag is tolerated by comparing at a point the replica has reached: the target is
//!   read only once its checkpoint covers the source position of the last chunk read. A chunk
//!   that still differs is read again on both sides (up to three rounds), so a row changed
//!   between the two reads is not reported; a difference that persists is.
//! - Under `conflict` (several sources, last writer wins), a source is compared with the keys
//!   whose current row it wrote (tombstones included); keys another source wrote last are
//!   counted and left out, since their rows are rightly not this source's.
//! - Rows present only in the target are reported too (a missed delete). `--repair` sends their
//!   keys with the backfill; the running `replicate` checks them at the source in one consistent
//!   snapshot and writes a tombstone for each key the source does not have, versioned at that
//!   snapshot's binlog point like a chunk (so a re-insert the stream brings later still wins).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::SchemaRef;
use binlake_sink::{Sink, TableId, COL_DELETED, COL_VERSION};
use mysql_async::prelude::Queryable;
use mysql_async::Value as My;
use thiserror::Error;
use tracing::info;

use crate::columnar::ChunkBuilder;
use crate::decode::Value;
use crate::position::{MariaGtidState, Position};
use crate::snapshot::values::{describe, key_cells, key_compare, SnapTable};
use crate::source::SourceError;

#[derive(Debug, Error)]
pub enum ValidateError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("target: {0}")]
    Sink(#[from] binlake_sink::SinkError),
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("building the source's rows: {0}")]
    Build(#[from] crate::columnar::BuildError),
    #[error("column {column}: {source}")]
    Cast {
        column: String,
        source: arrow_schema::ArrowError,
    },
    #[error("{0}")]
    Definite(String),
}

/// One chunk: its key range `(lo, hi]` (JSON key cells) and what each side holds in it.
#[derive(Debug, Clone)]
pub struct ChunkDiff {
    pub lo: Option<serde_json::Value>,
    pub hi: Option<serde_json::Value>,
    /// Keys (as text) whose rows differ or are missing from the target.
    pub keys: Vec<String>,
    pub source_rows: usize,
    pub target_rows: usize,
}

/// What `validate` found for one table.
#[derive(Debug, Default)]
pub struct TableReport {
    pub table: String,
    pub chunks: usize,
    pub rows: usize,
    pub different: Vec<ChunkDiff>,
    /// Keys only in the target (as text).
    pub only_in_target: Vec<String>,
    /// The same keys as JSON key cells, for a repair to check at the source and delete
    /// (empty when a key's type cannot be read back, or a column rule reshapes the table).
    pub only_in_target_cells: Vec<serde_json::Value>,
    pub skipped: Option<String>,
    /// No primary key: compared as a multiset of rows; a backfill cannot repair it.
    pub keyless: bool,
    /// `conflict`: keys whose current row in the target another source wrote (last writer
    /// wins), not compared with this source.
    pub others: usize,
}

impl TableReport {
    pub fn equal(&self) -> bool {
        self.different.is_empty() && self.only_in_target.is_empty() && self.skipped.is_none()
    }
}

impl std::fmt::Display for TableReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(why) = &self.skipped {
            return write!(f, "{}: skipped: {why}", self.table);
        }
        write!(
            f,
            "{}: {} chunks checked, {} different; {} source rows",
            self.table,
            self.chunks,
            self.different.len(),
            self.rows
        )?;
        if !self.only_in_target.is_empty() {
            write!(f, "; {} rows only in the target", self.only_in_target.len())?;
        }
        if self.others > 0 {
            write!(
                f,
                "; {} keys last written by other sources (not compared)",
                self.others
            )?;
        }
        let first: Vec<&str> = self
            .different
            .iter()
            .flat_map(|c| c.keys.iter())
            .chain(self.only_in_target.iter())
            .take(5)
            .map(String::as_str)
            .collect();
        if !first.is_empty() {
            write!(f, "; first differing keys: {}", first.join(" "))?;
        }
        Ok(())
    }
}

/// One side of a chunk: key text -> row hash.
type Rows = HashMap<String, u64>;

fn hash_str(s: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Calls `f(row, key text, row hash)` for every row of `batch`, whose first `ncols` columns are
/// in the source's types: each value formatted by Arrow's display (the same on both sides).
fn each_row(
    batch: &RecordBatch,
    ncols: usize,
    pk: &[usize],
    mut f: impl FnMut(usize, String, u64),
) -> Result<(), ValidateError> {
    let opts = FormatOptions::default().with_null("\u{0}NULL");
    let fmts = batch
        .columns()
        .iter()
        .take(ncols)
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
        .collect::<Result<Vec<_>, _>>()?;
    let mut row = String::new();
    for i in 0..batch.num_rows() {
        row.clear();
        for f in &fmts {
            row.push_str(&f.value(i).to_string());
            row.push('\u{1f}');
        }
        let key = pk
            .iter()
            .map(|&k| fmts[k].value(i).to_string())
            .collect::<Vec<_>>()
            .join(",");
        f(i, format!("({key})"), hash_str(&row));
    }
    Ok(())
}

/// A batch read back from the target, its first `ncols` columns cast to the source's types by
/// name (a column it lacks is NULL).
fn in_source_types(
    b: &RecordBatch,
    schema: &SchemaRef,
    ncols: usize,
) -> Result<RecordBatch, ValidateError> {
    let fields: Vec<_> = schema.fields().iter().take(ncols).cloned().collect();
    let cols = fields
        .iter()
        .map(|f| match b.column_by_name(f.name()) {
            Some(c) => arrow_cast::cast(c, f.data_type()).map_err(|source| ValidateError::Cast {
                column: f.name().clone(),
                source,
            }),
            None => Ok(arrow_array::new_null_array(f.data_type(), b.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new(
        Arc::new(arrow_schema::Schema::new(fields)),
        cols,
    )?)
}

/// The source rows of a chunk as Arrow columns of the replicated schema (the builders the
/// pipeline and the snapshot readers use, so the types are the ones the sinks were given); data
/// columns only.
fn source_batch(sh: &Shape, rows: Vec<Vec<Value>>) -> Result<RecordBatch, ValidateError> {
    let mut b = ChunkBuilder::new(&sh.map)?;
    for values in rows {
        let values = match &sh.plan {
            Some(p) => sh.rules.apply(p, values),
            None => values,
        };
        for (i, v) in values.iter().enumerate() {
            match v {
                // what the default invalid_values policy stores
                Value::Invalid { .. } => b.append(i, &Value::Null),
                v => b.append(i, v),
            }?;
        }
        b.end_row();
    }
    let chunk = b.finish()?;
    let schema = crate::schema::table_schema(&sh.map);
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .take(chunk.columns.len())
        .cloned()
        .collect();
    Ok(RecordBatch::try_new_with_options(
        Arc::new(arrow_schema::Schema::new(fields)),
        chunk.columns,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(chunk.rows)),
    )?)
}

/// The replicated shape of a source table: its map after the column rules (excluded columns
/// gone, masked ones hashed), which is what the target holds.
struct Shape<'a> {
    map: Arc<crate::decode::TableMap>,
    plan: Option<crate::columns::Plan>,
    rules: &'a crate::columns::ColumnRules,
}

impl<'a> Shape<'a> {
    fn new(
        t: &SnapTable,
        rules: &'a crate::columns::ColumnRules,
    ) -> Result<Shape<'a>, ValidateError> {
        let plan = rules
            .plan(&t.map)
            .map_err(|e| ValidateError::Definite(e.to_string()))?;
        Ok(Shape {
            map: plan
                .as_ref()
                .map_or_else(|| t.map.clone(), |p| p.table.clone()),
            plan,
            rules,
        })
    }
}

/// A batch's `_binlake_deleted` as booleans (ClickHouse stores it as UInt8: 1 is a tombstone).
fn deleted_of(b: &RecordBatch) -> Option<BooleanArray> {
    let c = b.column_by_name(COL_DELETED)?;
    let c = arrow_cast::cast(c, &arrow_schema::DataType::Boolean).ok()?;
    c.as_any().downcast_ref::<BooleanArray>().cloned()
}

/// The target's current state in the source's types: highest version per key, no tombstones.
/// With `origin` (`conflict`), only the keys whose current row (a tombstone included) that
/// origin wrote; the keys other origins hold are returned apart.
fn target_rows(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    ncols: usize,
    pk: &[usize],
    origin: Option<&str>,
) -> Result<(Rows, std::collections::HashSet<String>), ValidateError> {
    // (row hash, version, deleted, another origin's) per key, the highest version winning
    let mut best: HashMap<String, (u64, u64, bool, bool)> = HashMap::new();
    for b in batches {
        let origins = origin.and_then(|_| {
            let c = b.column_by_name(crate::mapping::COL_ORIGIN)?;
            let c = arrow_cast::cast(c, &arrow_schema::DataType::Utf8).ok()?;
            c.as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .cloned()
        });
        let data = in_source_types(b, schema, ncols)?;
        let versions = b
            .column_by_name(COL_VERSION)
            .and_then(|c| arrow_cast::cast(c, &arrow_schema::DataType::UInt64).ok())
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>().cloned());
        let deleted = deleted_of(b);
        each_row(&data, ncols, pk, |i, key, h| {
            let v = versions.as_ref().map_or(0, |a| a.value(i));
            let d = deleted
                .as_ref()
                .is_some_and(|a| a.is_valid(i) && a.value(i));
            let other = match (origin, &origins) {
                (Some(me), Some(o)) => o.is_valid(i) && o.value(i) != me,
                _ => false,
            };
            if best.get(&key).is_none_or(|(_, bv, _, _)| *bv <= v) {
                best.insert(key, (h, v, d, other));
            }
        })?;
    }
    let mut others = std::collections::HashSet::new();
    let mut rows = Rows::new();
    for (k, (h, _, d, other)) in best {
        if other {
            others.insert(k);
        } else if !d {
            rows.insert(k, h);
        }
    }
    Ok((rows, others))
}

/// The key cells (JSON, as the snapshot reader writes them) of the target's rows whose key text
/// is in `keys`; `None` when one of them has a type that cannot be read back.
fn key_cells_of(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    ncols: usize,
    map: &crate::decode::TableMap,
    keys: &[String],
) -> Result<Option<Vec<serde_json::Value>>, ValidateError> {
    let wanted: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
    let mut found: HashMap<String, serde_json::Value> = HashMap::new();
    let mut unreadable = false;
    for b in batches {
        let data = in_source_types(b, schema, ncols)?;
        each_row(&data, ncols, &map.primary_key, |i, key, _| {
            if unreadable || !wanted.contains(key.as_str()) || found.contains_key(&key) {
                return;
            }
            let cells: Option<Vec<My>> = map
                .primary_key
                .iter()
                .map(|&k| {
                    crate::snapshot::values::key_cell_from_arrow(
                        data.column(k).as_ref(),
                        i,
                        &map.columns[k].ty,
                    )
                })
                .collect();
            match cells {
                Some(c) => {
                    found.insert(key, crate::snapshot::values::key_json(&c));
                }
                None => unreadable = true,
            }
        })?;
    }
    if unreadable {
        return Ok(None);
    }
    Ok(Some(keys.iter().filter_map(|k| found.remove(k)).collect()))
}

/// The source's GTID position now, as the checkpoint would write it.
async fn source_position(
    conn: &mut mysql_async::Conn,
) -> Result<Option<MariaGtidState>, ValidateError> {
    let s: Option<String> = conn
        .query_first("SELECT @@GLOBAL.gtid_binlog_pos")
        .await
        .map_err(|e| SourceError::from_mysql(e, "reading gtid_binlog_pos"))?;
    Ok(s.and_then(|s| s.parse().ok())
        .filter(|s: &MariaGtidState| !s.is_empty()))
}

/// Waits until the target's checkpoint covers `pos` (the replica has applied everything the
/// source had when it was read).
async fn wait_covered(
    sink: &mut dyn Sink,
    pos: &Option<MariaGtidState>,
    timeout: Duration,
) -> Result<(), ValidateError> {
    let Some(pos) = pos else { return Ok(()) };
    let start = Instant::now();
    loop {
        let cp = sink.read_checkpoint().await?;
        let at = cp.as_ref().map(|c| c.position.clone());
        if let Some(Position::MariaDb(s)) = &at {
            if pos.is_covered_by(s) {
                return Ok(());
            }
        }
        if start.elapsed() > timeout {
            return Err(ValidateError::Definite(format!(
                "the replica has not reached the source's position {pos} after {timeout:?} (at {}): is replicate running?",
                cp.map(|c| c.position.to_string()).unwrap_or_else(|| "no checkpoint".into())
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Reads the source chunk by chunk: per chunk its range and rows (key -> hash).
async fn read_source(
    conn: &mut mysql_async::Conn,
    id: &TableId,
    t: &SnapTable,
    sh: &Shape<'_>,
    chunk_rows: usize,
    range: Option<(&Option<serde_json::Value>, &Option<serde_json::Value>)>,
) -> Result<Vec<(ChunkDiff, Rows)>, ValidateError> {
    let ncols = sh.map.columns.len();
    let (mut after, end) = match range {
        Some((lo, hi)) => (lo.clone(), hi.clone()),
        None => (None, None),
    };
    let mut out = Vec::new();
    loop {
        let mut bounds = Vec::new();
        if let Some(a) = &after {
            bounds.push((">", a));
        }
        if let Some(h) = &end {
            bounds.push(("<=", h));
        }
        let (sql, params) = t
            .chunk_query(id, &bounds, None, Some(chunk_rows))
            .ok_or_else(|| ValidateError::Definite(format!("{id}: a key cannot be read back")))?;
        let (rows, last) =
            crate::snapshot::read_chunk(conn, &sql, params, t, &t.map.primary_key).await?;
        let n = rows.len();
        if n == 0 && !out.is_empty() {
            // the previous chunk was the last: it covers the rest of the range
            if let Some((c, _)) = out.last_mut() {
                let c: &mut ChunkDiff = c;
                c.hi = if range.is_some() { end.clone() } else { None };
            }
            return Ok(out);
        }
        let batch = source_batch(sh, rows)?;
        debug_assert_eq!(batch.num_columns(), ncols);
        let mut r = Rows::new();
        each_row(&batch, ncols, &sh.map.primary_key, |_, k, h| {
            r.insert(k, h);
        })?;
        let done = n < chunk_rows;
        let hi = if done && range.is_some() {
            end.clone()
        } else if done {
            None
        } else {
            last.clone()
        };
        out.push((
            ChunkDiff {
                lo: after.clone(),
                hi,
                keys: vec![],
                source_rows: n,
                target_rows: 0,
            },
            r,
        ));
        if done {
            return Ok(out);
        }
        after = last;
    }
}

/// Validates one table; `rounds` re-reads of differing chunks tolerate rows changed meanwhile.
pub async fn validate_table(
    opts: &mysql_async::Opts,
    sink: &mut dyn Sink,
    id: &TableId,
    chunk_rows: usize,
    rules: &crate::columns::ColumnRules,
    origin: Option<&str>,
) -> Result<TableReport, ValidateError> {
    let mut conn = crate::snapshot::session(opts).await?;
    let mut report = TableReport {
        table: id.to_string(),
        ..Default::default()
    };
    let Some(t) = describe(&mut conn, &id.db, &id.table).await? else {
        report.skipped = Some("not in the source".into());
        return Ok(report);
    };
    let sh = Shape::new(&t, rules)?;
    if t.keyless() {
        return validate_keyless(&mut conn, sink, id, &t, &sh, report).await;
    }
    let schema = crate::schema::table_schema(&sh.map);
    let ncols = sh.map.columns.len();
    let pk = sh.map.primary_key.clone();
    let started = Instant::now();
    let mut chunks = read_source(&mut conn, id, &t, &sh, chunk_rows, None).await?;
    report.chunks = chunks.len();
    report.rows = chunks.iter().map(|(c, _)| c.source_rows).sum();
    let mut round = 0;
    let mut whole = true;
    loop {
        round += 1;
        let pos = source_position(&mut conn).await?;
        wait_covered(sink, &pos, Duration::from_secs(120)).await?;
        // (under `conflict`, every source's rows: which one wrote each key last)
        let batches = match origin {
            Some(_) => sink.read_table_whole(id).await?,
            None => sink.read_table(id).await?,
        };
        let (mut target, others) = target_rows(&batches, &schema, ncols, &pk, origin)?;
        report.others = others.len();
        let mut different = Vec::new();
        for (mut c, rows) in std::mem::take(&mut chunks) {
            let mut keys: Vec<String> = Vec::new();
            let mut in_target = 0;
            for (k, h) in &rows {
                if others.contains(k) {
                    continue;
                }
                match target.remove(k) {
                    Some(th) => {
                        in_target += 1;
                        if th != *h {
                            keys.push(k.clone());
                        }
                    }
                    None => keys.push(k.clone()),
                }
            }
            c.target_rows = in_target;
            if !keys.is_empty() {
                keys.sort();
                c.keys = keys;
                different.push((c, rows));
            }
        }
        // Target keys no source chunk holds (deleted at the source, not in the target).
        // (only when the chunks cover the whole table: a re-read of some chunks says nothing
        // about the keys outside them)
        let mut extra: Vec<String> = if whole {
            target.into_keys().collect()
        } else {
            vec![]
        };
        extra.sort();
        if (different.is_empty() && extra.is_empty()) || round == 3 {
            report.different = different.into_iter().map(|(c, _)| c).collect();
            if !extra.is_empty() && sh.plan.is_none() {
                report.only_in_target_cells =
                    key_cells_of(&batches, &schema, ncols, &sh.map, &extra)?.unwrap_or_default();
            }
            report.only_in_target = extra;
            break;
        }
        // Read what differs again on both sides: a row changed between the reads settles.
        info!(table = %id, round, chunks = different.len(), extra = extra.len(), "differences found; reading them again");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut again = Vec::new();
        for (c, _) in &different {
            again.extend(
                read_source(&mut conn, id, &t, &sh, chunk_rows, Some((&c.lo, &c.hi))).await?,
            );
        }
        whole = !extra.is_empty();
        if whole {
            // the whole table again: the extra keys may have been inserted since
            chunks = read_source(&mut conn, id, &t, &sh, chunk_rows, None).await?;
            report.chunks = chunks.len();
            report.rows = chunks.iter().map(|(c, _)| c.source_rows).sum();
        } else {
            chunks = again;
        }
    }
    info!(table = %id, chunks = report.chunks, different = report.different.len(), secs = started.elapsed().as_secs_f64(), "validated");
    Ok(report)
}

/// A table without a key holds a changelog in the target (rows, and tombstones of deleted rows):
/// its current state is the multiset of rows minus the multiset of tombstones, compared with the
/// source's rows read in one consistent snapshot.
async fn validate_keyless(
    conn: &mut mysql_async::Conn,
    sink: &mut dyn Sink,
    id: &TableId,
    t: &SnapTable,
    sh: &Shape<'_>,
    mut report: TableReport,
) -> Result<TableReport, ValidateError> {
    report.keyless = true;
    let (sql, _) = t
        .chunk_query(id, &[], None, None)
        .expect("no key to read back");
    let ncols = sh.map.columns.len();
    let schema = crate::schema::table_schema(&sh.map);
    for _round in 0..3 {
        let (rows, _) = crate::snapshot::read_chunk(conn, &sql, vec![], t, &[]).await?;
        report.rows = rows.len();
        report.chunks = 1;
        let mut counts: HashMap<u64, i64> = HashMap::new();
        let batch = source_batch(sh, rows)?;
        count_rows(&batch, ncols, None, &mut counts, 1)?;
        let pos = source_position(conn).await?;
        wait_covered(sink, &pos, Duration::from_secs(120)).await?;
        let mut target_n = 0i64;
        for b in sink.read_table(id).await? {
            let data = in_source_types(&b, &schema, ncols)?;
            let deleted = deleted_of(&b);
            target_n += count_rows(&data, ncols, deleted.as_ref(), &mut counts, -1)?;
        }
        let off: i64 = counts.values().map(|c| c.abs()).sum();
        if off == 0 {
            report.different.clear();
            return Ok(report);
        }
        report.different = vec![ChunkDiff {
            lo: None,
            hi: None,
            keys: vec![format!(
                "({off} rows differ between the source's {} rows and the target's {target_n})",
                report.rows
            )],
            source_rows: report.rows,
            target_rows: target_n.max(0) as usize,
        }];
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(report)
}

/// Adds `sign` per row to its hash's count (a tombstone row counts the other way); returns the
/// net number of rows.
fn count_rows(
    batch: &RecordBatch,
    ncols: usize,
    deleted: Option<&BooleanArray>,
    counts: &mut HashMap<u64, i64>,
    sign: i64,
) -> Result<i64, ValidateError> {
    let mut net = 0;
    each_row(batch, ncols, &[], |i, _, h| {
        let d = deleted.is_some_and(|a| a.is_valid(i) && a.value(i));
        *counts.entry(h).or_default() += if d { -sign } else { sign };
        net += if d { -1 } else { 1 };
    })?;
    Ok(net)
}

/// The SQL predicate of a chunk's key range `(lo, hi]`, with the key values as literals (for a
/// backfill request).
pub fn range_predicate(
    t: &SnapTable,
    lo: &Option<serde_json::Value>,
    hi: &Option<serde_json::Value>,
) -> Option<String> {
    let keys: Vec<_> = t.key_columns().collect();
    let mut conds = Vec::new();
    for (b, op) in [(lo, ">"), (hi, "<=")] {
        if let Some(k) = b {
            let cells = key_cells(k)?;
            let (sql, params) = key_compare(&keys, op, &cells);
            conds.push(inline(&sql, &params)?);
        }
    }
    if conds.is_empty() {
        Some("1 = 1".into())
    } else {
        Some(conds.join(" AND "))
    }
}

/// Replaces each `?` with the next parameter as an SQL literal.
fn inline(sql: &str, params: &[My]) -> Option<String> {
    let mut out = String::with_capacity(sql.len() + 16 * params.len());
    let mut it = params.iter();
    for ch in sql.chars() {
        if ch == '?' {
            out.push_str(&literal(it.next()?));
        } else {
            out.push(ch);
        }
    }
    Some(out)
}

fn literal(v: &My) -> String {
    match v {
        My::NULL => "NULL".into(),
        My::Int(i) => i.to_string(),
        My::UInt(u) => u.to_string(),
        My::Float(f) => format!("{f:e}"),
        My::Double(f) => format!("{f:e}"),
        My::Bytes(b) if b.is_empty() => "''".into(),
        My::Bytes(b) => format!("X'{}'", crate::decode::rows::hex(b)),
        My::Date(y, m, d, h, mi, s, us) => {
            format!("'{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}'")
        }
        My::Time(neg, d, h, m, s, us) => format!(
            "'{}{}:{m:02}:{s:02}.{us:06}'",
            if *neg { "-" } else { "" },
            *d as u64 * 24 + *h as u64
        ),
    }
}

/// The live rows of a table shared by several pipelines per `_binlake_origin`: the highest
/// version per `key` (with the origin when it is part of the key: `origin_in_key`) that is not
/// a tombstone. `validate` checks that every origin is one of its pipelines (rows of another
/// origin make the table more than the union of its sources).
pub fn live_rows_by_origin(
    batches: &[RecordBatch],
    key: &[String],
    origin_in_key: bool,
) -> Result<std::collections::BTreeMap<String, u64>, ValidateError> {
    let origin = crate::mapping::COL_ORIGIN;
    let opts = FormatOptions::default().with_null("\u{0}NULL");
    // (version, deleted, origin) per key
    let mut best: HashMap<String, (u64, bool, String)> = HashMap::new();
    for b in batches {
        let named = |n: &str| {
            b.column_by_name(n).ok_or_else(|| {
                ValidateError::Definite(format!("the shared table has no column `{n}`"))
            })
        };
        let cols = key
            .iter()
            .map(|k| named(k))
            .chain([named(origin)])
            .collect::<Result<Vec<_>, _>>()?;
        let fmts = cols
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()?;
        let in_key = if origin_in_key {
            fmts.len()
        } else {
            fmts.len() - 1
        };
        let versions = b
            .column_by_name(COL_VERSION)
            .and_then(|c| arrow_cast::cast(c, &arrow_schema::DataType::UInt64).ok())
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>().cloned());
        let deleted = deleted_of(b);
        for i in 0..b.num_rows() {
            let k = fmts[..in_key]
                .iter()
                .map(|f| f.value(i).to_string())
                .collect::<Vec<_>>()
                .join("\u{1f}");
            let v = versions.as_ref().map_or(0, |a| a.value(i));
            let d = deleted
                .as_ref()
                .is_some_and(|a| a.is_valid(i) && a.value(i));
            if best.get(&k).is_none_or(|(bv, _, _)| *bv <= v) {
                let o = fmts.last().expect("origin column").value(i).to_string();
                best.insert(k, (v, d, o));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for (_, (_, d, o)) in best {
        if !d {
            *out.entry(o).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// Describes a table for `--repair` (the key columns' SQL).
pub async fn describe_for_repair(
    opts: &mysql_async::Opts,
    id: &TableId,
) -> Result<Option<SnapTable>, ValidateError> {
    let mut conn = crate::source::connect(opts).await?;
    Ok(describe(&mut conn, &id.db, &id.table).await?)
}

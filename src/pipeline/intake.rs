//! Intake: whole transactions (and snapshot rows) into the per-table buffers, through the column
//! rules and the invalid-value policy.
//!
//! Invariants:
//! - A transaction's rows for a table enter its buffer in one call, so a batch never holds part
//!   of a source transaction.
//! - A change is skipped when its table is quarantined, when its version is not above the
//!   table's checkpointed version (a replay after restart), or when a keyless snapshot read at
//!   startup already holds it. Nothing else drops a change.
//! - Every invalid value (one the target cannot hold, or a date outside its range) goes through
//!   the policy: NULL and counted, the whole row to the dead-letter table, or a stop naming
//!   table, column, value and position. Never a silent change of value.
//! - A row image that lacks a column (binlog_row_image other than FULL) stops the pipeline.
//! - A stream transaction that changes a table's shape while rows of the old shape are buffered
//!   is taken only after those rows are committed ([`changes_shape`]; the event loop commits
//!   first). So one commit never holds two shapes of a table from the stream, and a crash in the
//!   commit that alters the target (a column added, a type widened) replays only rows of the new
//!   shape: the target is never ahead of the rows replayed into it.
//! - Snapshot rows whose table changed shape while others were buffered keep their shape: the
//!   buffered ones are set aside and written first by the next commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use binlake_sink::TableId;
use tracing::{debug, info, warn};

use super::buffer::{BufRow, Op, Provenance, TableBuffer};
use super::state::State;
use super::{BadValue, PipelineConfig, PipelineError};
use crate::columnar::{key_bytes, out_of_target_range, ColumnChunk};
use crate::decode::{RowChange, RowsKind, TableMap, Value};
use crate::position::Coord;
use crate::source::Transaction;

/// What happens to a value the target cannot hold (`invalid_values`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidPolicy {
    /// Store NULL and count it (the default).
    Null,
    /// Stop the pipeline with an error naming the table, column, value and position.
    Fail,
    /// Write the row, its position and the reason to `_binlake_rejects`; skip it in the table.
    DeadLetter,
}

/// An `invalid_values` setting that is none of the policies.
#[derive(Debug, thiserror::Error)]
#[error("`{0}`: expected null, fail or dead_letter")]
pub struct UnknownPolicy(String);

impl std::str::FromStr for InvalidPolicy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "null" => Ok(InvalidPolicy::Null),
            "fail" => Ok(InvalidPolicy::Fail),
            "dead_letter" => Ok(InvalidPolicy::DeadLetter),
            _ => Err(UnknownPolicy(s.to_string())),
        }
    }
}

/// A row the dead-letter policy took out of its table.
pub(super) struct Reject {
    pub table: TableId,
    pub position: String,
    pub reason: String,
    pub row_json: String,
    pub version: u64,
}

/// The buffers and what the invalid-value policy and column rules keep between transactions.
#[derive(Default)]
pub(super) struct Intake {
    /// Days the target can hold (dates and times outside are invalid values), if limited.
    pub date_range: Option<(i32, i32)>,
    pub buffers: HashMap<TableId, TableBuffer>,
    /// Buffers of an older table shape, written before `buffers` by the next commit.
    pub set_aside: Vec<TableBuffer>,
    pub rejects: Vec<Reject>,
    pub rejects_since: Option<Instant>,
    pub invalid_by_table: HashMap<TableId, u64>,
    /// Column rules per table: the source table map they were made for, and the plan.
    pub plans: HashMap<TableId, (Arc<TableMap>, Option<crate::columns::Plan>)>,
}

impl Intake {
    /// Bytes buffered, over every table.
    pub fn bytes(&self) -> usize {
        self.buffers.values().map(|b| b.bytes).sum()
    }

    /// Binlog changes (not only snapshot rows) are buffered.
    pub fn holds_changes(&self) -> bool {
        self.buffers.values().any(|b| b.txns > 0)
    }

    /// Something waits to be committed.
    pub fn has_data(&self) -> bool {
        self.buffers
            .values()
            .any(|b| !b.is_empty() || b.ensure || b.purge_below.is_some())
            || !self.set_aside.is_empty()
            || !self.rejects.is_empty()
    }

    /// When the oldest buffered row (or reject) arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.buffers
            .values()
            .filter_map(|b| b.oldest)
            .chain(self.rejects_since)
            .min()
    }

    /// Drops whatever is buffered for `t` (the table was stopped).
    pub fn forget(&mut self, t: &TableId) {
        self.buffers.remove(t);
        self.set_aside.retain(|b| &b.id != t);
    }
}

/// What every row of one transaction shares.
struct TxnMeta {
    version: u64,
    commit_us: i64,
    /// See [`Transaction::clock_us`].
    clock_us: i64,
    source: Arc<Provenance>,
    /// The GTID (or file:pos) for errors and rejects.
    pos: String,
    /// Binlog end of the transaction (keyless snapshots skip what they already hold).
    file_pos: Coord,
}

/// True when `txn` holds rows of a table in another shape than the rows buffered for it (the
/// table was altered at the source): the buffered rows must be committed before it is taken.
pub(super) fn changes_shape(
    st: &mut State,
    cfg: &PipelineConfig,
    txn: &Transaction,
) -> Result<bool, PipelineError> {
    let mut last: Option<&Arc<TableMap>> = None;
    for c in &txn.changes {
        if last.is_some_and(|l| Arc::ptr_eq(l, &c.table)) {
            continue;
        }
        last = Some(&c.table);
        let id = TableId::new(&c.table.db, &c.table.table);
        if let Some(spec) = cfg.outbox.iter().find(|o| o.table == id) {
            // an outbox's events take its shape (and `_binlake_seq`)
            let events = st.outbox.events_map(spec, &c.table)?;
            if st
                .intake
                .buffers
                .get(&spec.events)
                .is_some_and(|b| !b.is_empty() && !Arc::ptr_eq(&b.table, &events))
            {
                let (shaped, _) = apply_column_rules(st, cfg, &spec.events, &events, Vec::new())?;
                if !st.intake.buffers[&spec.events].same_shape(&shaped) {
                    return Ok(true);
                }
            }
        }
        let Some(buf) = st.intake.buffers.get(&id) else {
            continue;
        };
        if buf.is_empty() || Arc::ptr_eq(&buf.table, &c.table) {
            continue;
        }
        let (shaped, _) = apply_column_rules(st, cfg, &id, &c.table, Vec::new())?;
        if !st.intake.buffers[&id].same_shape(&shaped) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Takes one transaction in: its rows into the buffers, its position as the one the next commit
/// records.
pub(super) fn take_txn(
    st: &mut State,
    cfg: &PipelineConfig,
    txn: Transaction,
) -> Result<(), PipelineError> {
    st.progress.summary.transactions += 1;
    cfg.metrics().transactions(1);
    for d in &txn.ddl {
        info!(ddl = %d.sql, db = %d.db, gtid = ?txn.gtid, "DDL in the stream");
    }
    let Transaction {
        gtid,
        version,
        commit_us,
        clock_us,
        origin_server_id,
        read_server_id,
        position,
        file_pos,
        changes,
        ..
    } = txn;
    if !changes.is_empty() {
        let meta = TxnMeta {
            version,
            commit_us,
            clock_us,
            pos: gtid.clone().unwrap_or_else(|| file_pos.to_string()),
            file_pos: file_pos.key(),
            source: Arc::new(Provenance::Binlog {
                server_id: origin_server_id,
                gtid,
                via: read_server_id,
                at: file_pos,
            }),
        };
        // Consecutive changes of one statement share their table map: take them as a group, so
        // names, version checks and buffer lookups happen per group, not per row.
        let mut it = changes.into_iter().peekable();
        while let Some(first) = it.next() {
            let tm = first.table;
            let mut group = vec![first.change];
            while let Some(next) = it.next_if(|n| Arc::ptr_eq(&n.table, &tm)) {
                group.push(next.change);
            }
            take_group(st, cfg, &tm, group, &meta)?;
        }
    }
    st.progress.position = position;
    st.progress.last_commit_us = commit_us;
    Ok(())
}

fn take_group(
    st: &mut State,
    cfg: &PipelineConfig,
    tm: &Arc<TableMap>,
    changes: Vec<RowChange>,
    meta: &TxnMeta,
) -> Result<(), PipelineError> {
    let id = TableId::new(&tm.db, &tm.table);
    if let Some(spec) = cfg.outbox.iter().find(|o| o.table == id) {
        take_events(st, cfg, spec, tm, &changes, meta)?;
        if !spec.replicated {
            return Ok(());
        }
    }
    if st.tables.quarantined.contains_key(&id) {
        return Ok(()); // stopped: see the checkpoint's `quarantined`
    }
    if st
        .tables
        .versions
        .get(&id)
        .is_some_and(|&v| meta.version <= v)
    {
        return Ok(()); // already in the target (a replay after restart)
    }
    if st
        .snap
        .keyless_cut
        .get(&id)
        .is_some_and(|&cut| meta.file_pos <= cut)
    {
        return Ok(()); // in the keyless snapshot read at startup
    }
    let mk = |values: Vec<Value>, op: Op, deleted: bool| BufRow {
        values,
        version: meta.version,
        op,
        deleted,
        commit_us: meta.commit_us,
        source: meta.source.clone(),
    };
    let mut rows: Vec<BufRow> = Vec::with_capacity(changes.len());
    let (mut kb, mut ka) = (Vec::new(), Vec::new());
    for change in changes {
        match change.kind {
            RowsKind::Write => rows.push(mk(change.after.unwrap_or_default(), Op::Insert, false)),
            RowsKind::Delete => rows.push(mk(change.before.unwrap_or_default(), Op::Delete, true)),
            RowsKind::Update => {
                let before = change.before.unwrap_or_default();
                let after = change.after.unwrap_or_default();
                if tm.primary_key.is_empty() {
                    // a keyless changelog: the old row out, the new row in (a reader that
                    // counts inserts minus deletes per row holds the table)
                    rows.push(mk(before, Op::Delete, true));
                } else {
                    key_bytes(&before, &tm.primary_key, &mut kb);
                    key_bytes(&after, &tm.primary_key, &mut ka);
                    if kb != ka {
                        // the key changed: a tombstone for the old key, then the new row
                        rows.push(mk(before, Op::Delete, true));
                    }
                }
                rows.push(mk(after, Op::Update, false));
            }
        }
    }
    st.snap.note_changed(&id, tm, &rows);
    take_rows(st, cfg, tm, rows, &meta.pos, false)?;
    if let Some(b) = st.intake.buffers.get_mut(&id) {
        if b.first_clock_us == 0 {
            b.first_clock_us = meta.clock_us;
        }
    }
    Ok(())
}

/// An outbox table's inserts as events of its event table (see [`crate::outbox`]): deletes
/// emit nothing, updates emit nothing and are logged.
fn take_events(
    st: &mut State,
    cfg: &PipelineConfig,
    spec: &crate::outbox::OutboxSpec,
    tm: &Arc<TableMap>,
    changes: &[RowChange],
    meta: &TxnMeta,
) -> Result<(), PipelineError> {
    let ev = &spec.events;
    if st.tables.quarantined.contains_key(ev)
        || st
            .tables
            .versions
            .get(ev)
            .is_some_and(|&v| meta.version <= v)
    {
        return Ok(()); // stopped, or a replay of events already in the target
    }
    let mut inserted = Vec::new();
    let mut updates = 0;
    for c in changes {
        match c.kind {
            RowsKind::Write => inserted.push(c.after.clone().unwrap_or_default()),
            RowsKind::Update => updates += 1,
            RowsKind::Delete => {}
        }
    }
    if updates > 0 {
        warn!(outbox = %spec.table, updates, position = %meta.pos, "updates of outbox rows emit no event (the insert was the event)");
    }
    if inserted.is_empty() {
        return Ok(());
    }
    let etm = st.outbox.events_map(spec, tm)?;
    let rows: Vec<BufRow> = st
        .outbox
        .number(
            spec,
            &etm,
            inserted,
            &crate::outbox::EventMeta {
                version: meta.version,
                commit_us: meta.commit_us,
                source: &meta.source.to_string(),
            },
        )
        .into_iter()
        .map(|e| BufRow {
            values: e.values,
            version: meta.version,
            op: Op::Insert,
            deleted: false,
            commit_us: meta.commit_us,
            source: meta.source.clone(),
        })
        .collect();
    take_rows(st, cfg, &etm, rows, &meta.pos, false)?;
    if let Some(b) = st.intake.buffers.get_mut(ev) {
        if b.first_clock_us == 0 {
            b.first_clock_us = meta.clock_us;
        }
    }
    Ok(())
}

/// Checks values against the invalid-value policy and the target's range, and buffers the rows
/// (stream changes and snapshot rows alike). `fresh`: the rows' keys are new to the target.
pub(super) fn take_rows(
    st: &mut State,
    cfg: &PipelineConfig,
    tm: &Arc<TableMap>,
    rows: Vec<BufRow>,
    pos: &str,
    fresh: bool,
) -> Result<(), PipelineError> {
    let id = TableId::new(&tm.db, &tm.table);
    let (tm, rows) = apply_column_rules(st, cfg, &id, tm, rows)?;
    let tm = &tm;
    let mut accepted: Vec<BufRow> = Vec::with_capacity(rows.len());
    'rows: for mut row in rows {
        for (i, v) in row.values.iter_mut().enumerate() {
            if let Some((lo, hi)) = st.intake.date_range {
                out_of_target_range(v, lo, hi);
            }
            let column = || {
                tm.columns
                    .get(i)
                    .map(|c| c.name.clone())
                    .unwrap_or_default()
            };
            match v {
                Value::Absent => {
                    return Err(PipelineError::RowImage {
                        table: id,
                        column: column(),
                        position: pos.to_string(),
                    });
                }
                Value::Invalid { reason, text } => match cfg.invalid_values {
                    InvalidPolicy::Fail => {
                        return Err(PipelineError::InvalidValue(Box::new(BadValue {
                            table: id,
                            column: column(),
                            position: pos.to_string(),
                            reason,
                            text: text.clone(),
                        })));
                    }
                    InvalidPolicy::Null => {
                        *st.intake.invalid_by_table.entry(id.clone()).or_default() += 1;
                        st.progress.summary.invalid_nulled += 1;
                        debug!(table = %id, column = %column(), position = %pos, reason = *reason, value = %text, "invalid value stored as NULL");
                        *v = Value::Null;
                    }
                    InvalidPolicy::DeadLetter => {
                        let reason = format!("column `{}`: {reason} ({text})", column());
                        *st.intake.invalid_by_table.entry(id.clone()).or_default() += 1;
                        st.progress.summary.rejected += 1;
                        st.intake.rejects.push(Reject {
                            table: id.clone(),
                            position: pos.to_string(),
                            reason,
                            row_json: row_json(tm, &row.values),
                            version: row.version,
                        });
                        st.intake.rejects_since.get_or_insert_with(Instant::now);
                        continue 'rows;
                    }
                },
                _ => {}
            }
        }
        accepted.push(row);
    }
    if accepted.is_empty() {
        return Ok(());
    }
    st.progress.summary.rows += accepted.len() as u64;
    // A schema change for a table with buffered rows: those rows keep their old shape and are
    // written, before the new ones, by the next commit.
    let buf = buffer_for(&mut st.intake, id.clone(), tm)?;
    if !fresh {
        buf.insert_only = false;
    }
    for row in &accepted {
        buf.push(row).map_err(|source| PipelineError::Build {
            table: id.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Column rules: the target's shape of this table, and its rows in that shape.
fn apply_column_rules(
    st: &mut State,
    cfg: &PipelineConfig,
    id: &TableId,
    tm: &Arc<TableMap>,
    rows: Vec<BufRow>,
) -> Result<(Arc<TableMap>, Vec<BufRow>), PipelineError> {
    if cfg.columns.is_empty() {
        return Ok((tm.clone(), rows));
    }
    let plan = match st.intake.plans.get(id) {
        Some((src, plan)) if Arc::ptr_eq(src, tm) => plan.clone(),
        _ => {
            let plan = cfg.columns.plan(tm)?;
            st.intake
                .plans
                .insert(id.clone(), (tm.clone(), plan.clone()));
            plan
        }
    };
    Ok(match plan {
        None => (tm.clone(), rows),
        Some(p) => {
            let rows = rows
                .into_iter()
                .map(|mut r| {
                    r.values = cfg.columns.apply(&p, std::mem::take(&mut r.values));
                    r
                })
                .collect();
            (p.table.clone(), rows)
        }
    })
}

/// The shape the target holds of `tm` (after the column rules already planned for it).
pub(super) fn target_shape(intake: &Intake, id: &TableId, tm: &Arc<TableMap>) -> Arc<TableMap> {
    match intake.plans.get(id) {
        Some((src, Some(plan))) if Arc::ptr_eq(src, tm) => plan.table.clone(),
        _ => tm.clone(),
    }
}

/// The buffer for a table in shape `tm`: rows buffered in another shape are set aside first
/// (they keep their shape and go out, before the new ones, with the next commit).
pub(super) fn buffer_for<'a>(
    intake: &'a mut Intake,
    id: TableId,
    tm: &Arc<TableMap>,
) -> Result<&'a mut TableBuffer, PipelineError> {
    let build = |id: TableId| {
        TableBuffer::new(id.clone(), tm.clone())
            .map_err(|source| PipelineError::Build { table: id, source })
    };
    if let Some(b) = intake.buffers.get_mut(&id) {
        if !b.same_shape(tm) {
            let old = std::mem::replace(b, build(id.clone())?);
            if !old.is_empty() {
                info!(table = %old.id, "table shape changed; older rows go out in their own batch");
                intake.set_aside.push(old);
            }
        }
    }
    Ok(match intake.buffers.entry(id) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let b = build(e.key().clone())?;
            e.insert(b)
        }
    })
}

/// Buffers snapshot rows that a reader put in columns (no invalid values, no column rules:
/// the reader checked). The columnar counterpart of [`take_rows`].
pub(super) fn take_columns(
    st: &mut State,
    tm: &Arc<TableMap>,
    cols: ColumnChunk,
    version: u64,
    read_at_us: i64,
    source: &Provenance,
    fresh: bool,
) -> Result<(), PipelineError> {
    let id = TableId::new(&tm.db, &tm.table);
    let n = cols.rows as u64;
    let buf = buffer_for(&mut st.intake, id.clone(), tm)?;
    if !fresh {
        buf.insert_only = false;
    }
    buf.push_columns(cols, version, read_at_us, source)
        .map_err(|source| PipelineError::Build { table: id, source })?;
    st.progress.summary.rows += n;
    Ok(())
}

/// A rejected row as JSON (the dead-letter table's `row_json`).
fn row_json(tm: &TableMap, values: &[Value]) -> String {
    let mut m = serde_json::Map::new();
    for (c, v) in tm.columns.iter().zip(values) {
        let j = match v {
            Value::Null | Value::Absent => serde_json::Value::Null,
            Value::Int(i) => (*i).into(),
            Value::UInt(u) => (*u).into(),
            Value::F32(f) => serde_json::Value::from(*f as f64),
            Value::F64(f) => serde_json::Value::from(*f),
            Value::Str(s) => s.clone().into(),
            Value::Bin(b) => format!("0x{}", crate::decode::rows::hex(b)).into(),
            Value::Invalid { text, .. } => text.clone().into(),
            other => format!("{other:?}").into(),
        };
        m.insert(c.name.clone(), j);
    }
    serde_json::Value::Object(m).to_string()
}

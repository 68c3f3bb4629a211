//! The snapshot handoff: the pipeline's side of snapshots (see [`crate::snapshot`] for the
//! reads). Places each chunk a reader delivers among the stream's transactions, drops the rows
//! the stream already holds newer state for, and records progress in the checkpoint.
//!
//! Invariants (what makes a snapshot taken while the source writes exact):
//! - A chunk read in the window `(low, high]` of binlog positions is taken only once the stream
//!   has read past `high`; it is versioned right after the last transaction at or before `high`
//!   (below the next one), so a later binlog change of a key always wins over it.
//! - Rows of keys the stream changed with a version at or above the one after `low` are
//!   dropped: the stream holds those keys' state (the read may or may not have seen the change).
//! - Reads of a snapshot queued now start after every transaction the pipeline has taken in
//!   without recording the keys it changed ([`SnapState::read_floor`]).
//! - A keyless table (no key to continue after or to drop rows by) is read whole in one
//!   consistent snapshot before the stream runs and committed at once; the stream then skips its
//!   transactions up to the read's binlog point (the checkpoint's `cut`).
//! - Progress is written with the rows it describes: a restart continues after the last chunk
//!   the target holds.
//! - Active-active reading (transactions taken from whichever server delivers first) keeps
//!   these with the stricter rules of [`super::ahead`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use binlake_sink::{SnapshotProgress, TableId};
use mysql_async::prelude::Queryable;
use thiserror::Error;
use tracing::{debug, error, info};

use super::ahead::Ahead;
use super::buffer::{BufRow, Op, Provenance};
use super::commit::{commit_and_wait, Committer};
use super::intake::{buffer_for, take_columns, take_rows, target_shape};
use super::state::State;
use super::{PipelineConfig, PipelineError};
use crate::clock::now_us;
use crate::columnar::{key_bytes, key_bytes_at};
use crate::control::{Backfill, BackfillRefused};
use crate::decode::TableMap;
use crate::position::{BinlogPos, Coord, MariaGtidState, Position};
use crate::snapshot::{Chunk, ChunkRows, Snapshotter, Window};
use crate::source::start::Started;
use crate::source::{self, Flavor, SourceError, StartAt};

/// The progress reason of a keyless table read at startup: it stays in the checkpoint until the
/// stream has passed the read's binlog point.
pub(super) const KEYLESS: &str = "keyless";

/// Transactions remembered while snapshots run, to place reads among them.
const HISTORY_MAX: usize = 1 << 20;

/// A read arrived after the stream's history moved past its window's start.
#[derive(Debug, Error)]
#[error("a read at {at} arrived after the stream's history moved past it")]
pub(super) struct HistoryGone {
    at: BinlogPos,
}

/// The pipeline's side of snapshots.
#[derive(Default)]
pub(super) struct SnapState {
    /// In progress, as the next checkpoint records them.
    pub progress: BTreeMap<TableId, SnapshotProgress>,
    /// Tables whose last snapshot finished, and when (checkpointed).
    pub loaded: BTreeMap<TableId, i64>,
    /// Per table being snapshotted: the highest version of a binlog change per key, so chunk
    /// rows older than a change already taken are dropped.
    changed: HashMap<TableId, HashMap<Vec<u8>, u64>>,
    /// (binlog end, version) of recent transactions, to give a chunk read at P the version
    /// right after the last transaction at or before P.
    history: VecDeque<(Coord, u64)>,
    /// The last entry pruned from `history` (or the start position's version).
    floor: (Coord, u64),
    /// How far the stream has read (binlog end of the last transaction or heartbeat).
    stream_at: Option<BinlogPos>,
    /// The binlog's end when this run started (after its start position was chosen): the
    /// stream delivers every transaction after it.
    start_floor: BinlogPos,
    /// A chunk read at a point the stream has not reached yet.
    pub pending: Option<Chunk>,
    /// Keyless tables read at startup: the stream skips their transactions up to this point.
    pub keyless_cut: HashMap<TableId, Coord>,
    /// Rows read per table in this run, and when its reading started (for the progress view).
    pub run_rows: HashMap<TableId, (u64, Instant)>,
    /// Tables whose initial snapshot started in this run (their rows may be appended).
    fresh: HashSet<TableId>,
    /// The highest version given to snapshot rows (checkpointed).
    pub last_version: u64,
    /// Re-snapshots queued by [`reread`], for the readers (see [`restart_snapshots`]).
    pub restart: Vec<(TableId, SnapshotProgress)>,
    /// The highest version of a transaction taken in so far, this run.
    applied_max: u64,
    /// Active-active reading only (see [`Ahead`]).
    ahead: Option<Ahead>,
}

impl SnapState {
    /// The handoff as a checkpoint left it; `floor_version` is the start position's version.
    pub fn resume(
        progress: BTreeMap<TableId, SnapshotProgress>,
        loaded: BTreeMap<TableId, i64>,
        last_version: u64,
        floor_version: u64,
        start_floor: BinlogPos,
    ) -> SnapState {
        SnapState {
            progress,
            loaded,
            last_version,
            floor: (Coord::default(), floor_version),
            start_floor,
            ..Default::default()
        }
    }

    /// Active-active reading from `start` (see [`Ahead`]).
    pub fn active_active(&mut self, start: &Position) {
        self.ahead = Some(Ahead::new(start));
    }

    /// A transaction was taken in: its `version`, the merged `position` after it, and, when it
    /// came from another server than `via` (`ours` false), the tables it wrote.
    pub fn took<'t>(
        &mut self,
        version: u64,
        position: &Position,
        via_position: Option<&Position>,
        ours: bool,
        tables: impl Iterator<Item = &'t TableMap>,
    ) {
        self.applied_max = self.applied_max.max(version);
        if let Some(a) = &mut self.ahead {
            a.took(position, via_position, ours, tables);
        }
    }

    /// `via` delivered a transaction already taken from another server; `position` is `via`'s
    /// own after it.
    pub fn seen_on_via(&mut self, position: Position) {
        if let Some(a) = &mut self.ahead {
            a.seen(position);
        }
    }

    /// The highest version taken so far.
    pub fn applied_max(&self) -> u64 {
        self.applied_max
    }

    /// Active-active: chunk rows of every key the stream changed are dropped (see [`Ahead`]).
    fn drops_every_changed_key(&self) -> bool {
        self.ahead.as_ref().is_some_and(Ahead::interleaves)
    }

    /// Active-active: a transaction taken ahead of `via` wrote to `t` since its snapshot was
    /// queued.
    fn written_ahead(&self, t: &TableId) -> bool {
        self.ahead.as_ref().is_some_and(|a| a.written_ahead(t))
    }

    /// The floor for a snapshot of `t` queued now, or `None` while `via` has not delivered
    /// every transaction taken (active-active): it is then kept until it has
    /// ([`SnapState::releasable`]).
    fn queue(&mut self, t: &TableId, p: &SnapshotProgress) -> Option<BinlogPos> {
        let floor = self.read_floor();
        let now = self.ahead.as_mut().is_none_or(|a| a.queue(t, p));
        now.then_some(floor)
    }

    /// Snapshots kept by [`SnapState::queue`] that `via` has now caught up with (called per
    /// transaction: nothing is built while none waits).
    fn releasable(&mut self) -> Vec<(TableId, SnapshotProgress)> {
        match &mut self.ahead {
            Some(a) if a.waiting() => a.releasable(),
            _ => Vec::new(),
        }
    }

    /// A snapshot is queued, planned, or has a chunk waiting. (`changed` has an entry from the
    /// moment a snapshot is queued: its plan may still be in the snapshotter's channel, behind
    /// a chunk the pipeline holds.)
    pub fn busy(&self) -> bool {
        self.pending.is_some()
            || !self.progress.is_empty()
            || !self.changed.is_empty()
            || self.ahead.as_ref().is_some_and(Ahead::waiting)
    }

    /// A snapshot of `t` is planned (its progress reached the pipeline).
    pub fn planned(&mut self, t: TableId, progress: SnapshotProgress) {
        self.run_rows.insert(t.clone(), (0, Instant::now()));
        self.changed.entry(t.clone()).or_default();
        self.progress.insert(t, progress);
    }

    /// `t`'s snapshot ended without finishing (the table was stopped).
    pub fn forget(&mut self, t: &TableId) {
        self.progress.remove(t);
        self.changed.remove(t);
        if let Some(a) = &mut self.ahead {
            a.forget(t);
        }
    }

    /// Records the keys binlog `rows` of `t` change, while `t` is being snapshotted.
    pub fn note_changed(&mut self, t: &TableId, tm: &TableMap, rows: &[BufRow]) {
        let Some(changed) = self.changed.get_mut(t) else {
            return;
        };
        if tm.primary_key.is_empty() {
            return;
        }
        let mut kb = Vec::new();
        for r in rows {
            key_bytes(&r.values, &tm.primary_key, &mut kb);
            let v = changed.entry(kb.clone()).or_insert(0);
            *v = (*v).max(r.version);
        }
    }

    /// The stream has read up to `at` (a transaction with `version`, or a heartbeat).
    pub fn saw(&mut self, at: &BinlogPos, version: Option<u64>) {
        let p = at.key();
        if self.stream_at.as_ref().is_none_or(|s| s.key() < p) {
            self.stream_at = Some(at.clone());
        }
        if let Some(v) = version {
            // Active-active with several domains: versions taken ahead may be above the one
            // `via` gives, and the highest taken is the bound (see `ahead.rs`). With one domain
            // `via`'s own is exact, and a higher one would place a read above a change taken
            // ahead that it does not hold.
            let v = match &self.ahead {
                Some(a) if a.interleaves() => v.max(self.applied_max),
                _ => v,
            };
            self.history.push_back((p, v));
            // Without a snapshot in progress only the last entry matters: a chunk read later is
            // read at a point at or after it.
            // (`changed` has an entry for every snapshot queued, planned or not: chunks of a
            // table may be read before its plan reaches the pipeline)
            let keep =
                if self.progress.is_empty() && self.changed.is_empty() && self.pending.is_none() {
                    1
                } else {
                    HISTORY_MAX
                };
            while self.history.len() > keep {
                if let Some(e) = self.history.pop_front() {
                    self.floor = e;
                }
            }
        }
    }

    /// The version of a chunk whose read follows transaction A (`base` = v(A) + 1): above every
    /// snapshot version given after A before, so a later read (a backfill repairing a change the
    /// binlog never carried) wins over an earlier one of the same key, and below the next
    /// transaction's version (the 2^16 sub-versions a GTID version leaves free). File-position
    /// versions reserve no sub-versions: there every read after A gets `base`.
    fn next_snapshot_version(&mut self, base: u64) -> u64 {
        let a = base - 1;
        let block_end = a | ((1 << crate::position::VERSION_SUB_BITS) - 1);
        let v = if a.trailing_zeros() < crate::position::VERSION_SUB_BITS {
            base
        } else if self.last_version >= base && self.last_version <= block_end {
            (self.last_version + 1).min(block_end)
        } else {
            base
        };
        self.last_version = self.last_version.max(v);
        v
    }

    /// Where the reads of a snapshot queued now must start (see [`crate::snapshot`]): after
    /// every transaction the pipeline has taken in without recording the keys it changed, and
    /// after the stream's start.
    pub fn read_floor(&self) -> BinlogPos {
        match &self.stream_at {
            Some(s) if s.key() > self.start_floor.key() => s.clone(),
            _ => self.start_floor.clone(),
        }
    }

    /// The version right after the last transaction the stream delivered at or before `at`.
    fn base_at(&self, at: &BinlogPos) -> Result<u64, HistoryGone> {
        let p = at.key();
        let i = self.history.partition_point(|(q, _)| *q <= p);
        if i > 0 {
            return Ok(self.history[i - 1].1 + 1);
        }
        if p >= self.floor.0 {
            return Ok(self.floor.1 + 1);
        }
        Err(HistoryGone { at: at.clone() })
    }

    /// For rows read in `w`: the versions right after the last transactions at or before
    /// `w.low` and `w.high`. `None` until the stream has read past `w.high`; `Some(Err)` when
    /// the history no longer reaches back to `w.low`.
    fn window_versions(&self, w: &Window) -> Option<Result<(u64, u64), HistoryGone>> {
        if self
            .stream_at
            .as_ref()
            .is_none_or(|s| s.key() < w.high.key())
        {
            return None;
        }
        Some(
            self.base_at(&w.low)
                .and_then(|low| Ok((low, self.base_at(&w.high)?))),
        )
    }
}

/// Queues a backfill's tables; it is in the next checkpoint (an empty plan, planned again after
/// a restart). A stopped table is un-stopped and read again whole (see [`reread`]).
pub(super) fn queue_backfill(
    st: &mut State,
    snapshotter: &Snapshotter,
    b: &Backfill,
) -> Result<Vec<TableId>, BackfillRefused> {
    for t in &b.tables {
        if st.snap.progress.contains_key(t) {
            return Err(BackfillRefused::InProgress {
                table: t.to_string(),
            });
        }
    }
    for t in &b.tables {
        if let Some(why) = st.tables.quarantined.remove(t) {
            // A stopped table is rebuilt: read again whole in the source's current shape, the
            // rows it does not find removed at the end (a filter or key list cannot rebuild it).
            info!(table = %t, stopped_for = %why, "backfill of a stopped table: it is read again whole and resumes");
            reread(st, t, st.progress.position.version());
            restart_snapshots(st, snapshotter);
            continue;
        }
        let mut p = match (&b.filter, b.absent.is_empty()) {
            // only keys to check: no key range to read again
            (None, false) => crate::snapshot::new_progress(b.reason, Some("FALSE".into())),
            (f, _) => crate::snapshot::new_progress(b.reason, f.clone()),
        };
        p.absent = b.absent.clone();
        st.snap.planned(t.clone(), p.clone());
        hand_over(st, snapshotter, t.clone(), p);
    }
    Ok(b.tables.clone())
}

/// After the stream moved: finishes keyless snapshots it has passed, and takes a pending chunk
/// whose binlog point it has reached.
pub(super) fn after_stream_moved(
    st: &mut State,
    cfg: &PipelineConfig,
) -> Result<(), PipelineError> {
    if !st.snap.keyless_cut.is_empty() {
        let pos = st
            .snap
            .stream_at
            .as_ref()
            .map(|s| s.key())
            .unwrap_or_default();
        let passed: Vec<TableId> = st
            .snap
            .keyless_cut
            .iter()
            .filter(|(_, &cut)| pos >= cut)
            .map(|(t, _)| t.clone())
            .collect();
        for t in passed {
            st.snap.keyless_cut.remove(&t);
            st.snap.progress.remove(&t);
            st.snap.loaded.insert(t, now_us());
        }
    }
    let Some(chunk) = st.snap.pending.take() else {
        return Ok(());
    };
    match st.snap.window_versions(&chunk.window) {
        None => {
            st.snap.pending = Some(chunk); // the stream has not read that far yet
            Ok(())
        }
        Some(Ok((low, base))) => {
            let version = st.snap.next_snapshot_version(base);
            take_chunk(st, cfg, chunk, version, low)
        }
        Some(Err(gone)) => {
            // Cannot happen with a history of a million transactions unless a chunk waited for
            // very long; read the table again rather than guess a version.
            error!(table = %chunk.table, error = %gone, "snapshot chunk dropped");
            st.tables.quarantined.insert(
                chunk.table.clone(),
                format!("snapshot: {gone}; backfill the table to resume"),
            );
            st.snap.forget(&chunk.table);
            Ok(())
        }
    }
}

/// Buffers a chunk's rows with `version`, and records the chunk as read in the progress that
/// the next checkpoint carries (with those rows). Rows of keys a transaction after the read's
/// lower bound changed (a version at or above `low`) are dropped: the stream holds those keys'
/// state.
fn take_chunk(
    st: &mut State,
    cfg: &PipelineConfig,
    chunk: Chunk,
    version: u64,
    low: u64,
) -> Result<(), PipelineError> {
    let id = chunk.table.clone();
    if st.tables.quarantined.contains_key(&id) {
        return Ok(());
    }
    match st.snap.progress.get(&id) {
        Some(p) if p.started_at_us == chunk.plan => {}
        Some(_) => {
            // read for a plan a DDL statement replaced: the new plan reads it again
            debug!(table = %id, "chunk of a replaced snapshot dropped");
            return Ok(());
        }
        None => return Ok(()),
    }
    let tm = chunk.map.clone();
    let read = chunk.rows.len() as u64;
    let source = Arc::new(Provenance::Snapshot {
        high: chunk.window.high.clone(),
        low: Some(chunk.window.low.clone()),
    });
    // rows of an initial snapshot of this run whose keys no binlog change touched are new to
    // the target: the sink may append them. Tombstones of keys the source lacks (a repair of
    // missed deletes) are snapshot rows like any chunk's: versioned at the read, never taken for
    // binlog changes.
    let deleted = chunk.tombstones;
    // A keyless table's whole read (see `read_whole`): no transaction wrote to it inside the
    // window, so the read holds exactly its transactions at or below `version`; the buffered
    // rows below go, the read replaces what the target holds below `version`, and the stream's
    // later rows stay on top.
    let keyless = tm.primary_key.is_empty();
    if keyless && st.snap.written_ahead(&id) {
        // active-active: a transaction taken from another server before `via` delivered it
        // wrote to the table; no version tells whether the read holds its rows
        info!(table = %id, "a keyless table was written from another server during its read: it is read again");
        let below = st.snap.progress.get(&id).and_then(|p| p.purge_below);
        reread(st, &id, below.unwrap_or(st.snap.applied_max()));
        return Ok(());
    }
    if keyless {
        // (and of an older shape set aside, which the commit would write before the read)
        let set_aside = st.intake.set_aside.iter_mut().filter(|b| b.id == id);
        for buf in st.intake.buffers.get_mut(&id).into_iter().chain(set_aside) {
            buf.drop_below(version).map_err(|e| PipelineError::Build {
                table: id.clone(),
                source: e,
            })?;
        }
    }
    let mut fresh = st.snap.fresh.contains(&id) && !deleted && !keyless;
    let changed = st.snap.changed.get(&id).filter(|c| !c.is_empty());
    // DBLog: rows whose key the stream changed in or after this read's window are dropped;
    // a key the stream changed before it is not new to the target.
    let check = changed.is_some() && !keyless;
    let every = st.snap.drops_every_changed_key();
    let mut keep = |kb: &[u8]| match changed.and_then(|c| c.get(kb)) {
        Some(&v) if v >= low || every => false,
        Some(_) => {
            fresh = false;
            true
        }
        None => true,
    };
    let mut kb = Vec::new();
    let mut dropped = 0u64;
    let (rows, columns) = match chunk.rows {
        ChunkRows::Rows(rows) => {
            let rows: Vec<BufRow> = rows
                .into_iter()
                .filter_map(|values| {
                    if check {
                        key_bytes(&values, &tm.primary_key, &mut kb);
                        if !keep(&kb) {
                            dropped += 1;
                            return None;
                        }
                    }
                    Some(BufRow {
                        values,
                        version,
                        op: Op::Snapshot,
                        deleted,
                        commit_us: chunk.read_at_us,
                        source: source.clone(),
                    })
                })
                .collect();
            (rows, None)
        }
        ChunkRows::Columns(cols) if !check => (Vec::new(), Some(cols).filter(|c| c.rows > 0)),
        ChunkRows::Columns(mut cols) => {
            let mask: Vec<bool> = (0..cols.rows)
                .map(|r| {
                    key_bytes_at(&cols.columns, &tm.primary_key, r, &mut kb);
                    keep(&kb)
                })
                .collect();
            let kept = mask.iter().filter(|k| **k).count();
            if kept < cols.rows {
                dropped = (cols.rows - kept) as u64;
                let mask = arrow_array::BooleanArray::from(mask);
                cols.columns = cols
                    .columns
                    .iter()
                    .map(|c| arrow_select::filter::filter(c.as_ref(), &mask))
                    .collect::<Result<_, _>>()
                    .map_err(|e| PipelineError::Build {
                        table: id.clone(),
                        source: e.into(),
                    })?;
                cols.bytes = cols.bytes * kept / cols.rows.max(1);
                cols.rows = kept;
            }
            (Vec::new(), Some(cols).filter(|c| c.rows > 0))
        }
    };
    if dropped > 0 {
        debug!(table = %id, dropped, "snapshot rows of keys the stream changed in or after the read's window dropped");
    }
    if let Some(cols) = columns {
        take_columns(st, &tm, cols, version, chunk.read_at_us, &source, fresh)?;
    }
    if !rows.is_empty() {
        let pos = format!("snapshot at {}", chunk.window);
        take_rows(st, cfg, &tm, rows, &pos, fresh)?;
    }
    let read_to = ReadTo {
        range: chunk.range,
        after: chunk.after,
        done: chunk.done,
        tombstones: chunk.tombstones,
    };
    finish_chunk(st, &id, &tm, read, read_to)?;
    if keyless {
        let shape = target_shape(&st.intake, &id, &tm);
        let buf = buffer_for(&mut st.intake, id.clone(), &shape)?;
        buf.replace = true;
        buf.purge_below = Some(version);
        info!(table = %id, rows = read, version, "keyless table read again: it replaces the target's rows below its version");
    }
    Ok(())
}

/// Records a chunk; at a re-snapshot's end, the rows below its start go with the next commit.
fn finish_chunk(
    st: &mut State,
    id: &TableId,
    tm: &Arc<TableMap>,
    read: u64,
    read_to: ReadTo,
) -> Result<(), PipelineError> {
    let plan = st.snap.progress.get(id).map(|p| p.started_at_us);
    let Some(below) = record_chunk(st, id, read, read_to) else {
        return Ok(());
    };
    // The table exists in the target from here on, even when the source's is empty.
    let shape = target_shape(&st.intake, id, tm);
    let buf = buffer_for(&mut st.intake, id.clone(), &shape)?;
    buf.ensure = true;
    // due like a row: even a table read empty is committed within `max_latency`
    buf.oldest.get_or_insert_with(std::time::Instant::now);
    if let Some(below) = below {
        // the keys it did not read again are gone at the source; its last batch ends the
        // generation (see `TableBatch::generation`)
        buf.purge_below = Some(below);
        buf.generation = plan;
        info!(table = %id, below, "re-snapshot finished: rows below its start go with the next commit");
    }
    Ok(())
}

/// The progress reason of a re-snapshot that replaces a table's content.
pub(super) const RESNAPSHOT: &str = "resnapshot";

/// Reads `t` again from the source while the stream goes on, replacing what the target holds
/// of it: the target takes the table's new shape, and once every key is read again the rows
/// below `version` (the statement, or the commit, that made it necessary) are removed. A
/// snapshot of `t` already running is replaced: its queued reads are dropped and chunks of its
/// plan still arriving are ignored. The readers get it from [`restart_snapshots`].
pub(super) fn reread(st: &mut State, t: &TableId, version: u64) {
    let mut p = resnapshot_progress(version);
    if let Some(old) = st.snap.progress.get(t) {
        // a new plan identity (see `Chunk::plan`), and nothing older than the old bound kept
        p.started_at_us = p.started_at_us.max(old.started_at_us + 1);
        p.purge_below = p.purge_below.max(old.purge_below);
        info!(table = %t, version, reason = %old.reason, "a snapshot of the table was running: it starts again in the new shape");
    } else {
        info!(table = %t, version, "re-snapshot queued: the table's content is read again");
    }
    st.snap.fresh.remove(t);
    st.snap.planned(t.clone(), p.clone());
    st.snap.restart.retain(|(r, _)| r != t);
    st.snap.restart.push((t.clone(), p));
}

/// The progress of a re-snapshot that starts at `version` (not planned yet).
pub(super) fn resnapshot_progress(version: u64) -> SnapshotProgress {
    let mut p = crate::snapshot::new_progress(RESNAPSHOT, None);
    p.purge_below = Some(version);
    p
}

/// Hands the readers the re-snapshots [`reread`] queued (dropping queued reads of the plans
/// they replace).
pub(super) fn restart_snapshots(st: &mut State, snapshotter: &Snapshotter) {
    for (t, p) in std::mem::take(&mut st.snap.restart) {
        snapshotter.cancel(&t);
        st.snap.run_rows.insert(t.clone(), (0, Instant::now()));
        hand_over(st, snapshotter, t, p);
    }
}

/// Hands a snapshot of `t` to the readers, with its read floor; active-active, it may wait
/// until `via` has delivered every transaction taken so far (see [`Ahead`]).
fn hand_over(st: &mut State, snapshotter: &Snapshotter, t: TableId, p: SnapshotProgress) {
    if let Some(floor) = st.snap.queue(&t, &p) {
        snapshotter.add(t, p, floor);
    }
}

/// Hands the readers the snapshots that waited for `via` to catch up, once it has.
pub(super) fn release_deferred(st: &mut State, snapshotter: &Snapshotter) {
    let ready = st.snap.releasable();
    if ready.is_empty() {
        return;
    }
    let floor = st.snap.read_floor();
    for (t, p) in ready {
        debug!(table = %t, "its server has caught up: the snapshot is handed to the readers");
        snapshotter.add(t, p, floor.clone());
    }
}

/// How far a chunk read its key range.
struct ReadTo {
    range: usize,
    after: Option<serde_json::Value>,
    done: bool,
    tombstones: bool,
}

/// Records a chunk as read in its table's progress; a table whose ranges are all read (and
/// whose absent keys are checked) is loaded. Returns, when the snapshot finished, the version
/// below which a finished re-snapshot removes rows.
fn record_chunk(st: &mut State, id: &TableId, read: u64, chunk: ReadTo) -> Option<Option<u64>> {
    if let Some(r) = st.snap.run_rows.get_mut(id) {
        r.0 += read;
    }
    let p = st.snap.progress.get_mut(id)?;
    p.rows += read;
    if chunk.tombstones {
        p.absent.clear();
    }
    if let Some(r) = p.ranges.get_mut(chunk.range) {
        if chunk.after.is_some() {
            r.after = chunk.after;
        }
        r.done |= chunk.done;
    }
    if p.ranges.iter().all(|r| r.done) && p.absent.is_empty() {
        let below = p.purge_below;
        let secs = (now_us() - p.started_at_us) as f64 / 1e6;
        info!(table = %id, rows = p.rows, secs, reason = %p.reason, "snapshot finished");
        st.snap.progress.remove(id);
        st.snap.changed.remove(id);
        st.snap.run_rows.remove(id);
        st.snap.fresh.remove(id);
        st.snap.loaded.insert(id.clone(), now_us());
        return Some(below);
    }
    None
}

/// Decides which tables need a snapshot: at a fresh start with `--start-at snapshot`, every
/// selected table; on resume, the snapshots in progress and (with `snapshot`) the selected tables
/// the target has never seen. Keyless tables are read here, before the stream, and committed;
/// the others are queued for the readers.
pub(super) async fn start_snapshots(
    st: &mut State,
    cfg: &PipelineConfig,
    started: &Started,
    fresh: bool,
    recover: Option<u64>,
    committer: &mut Committer,
) -> Result<Snapshotter, PipelineError> {
    let mut snap_cfg = cfg.snapshot.clone();
    // Readers build Arrow columns themselves unless a column rule reshapes rows first.
    snap_cfg.columnar = cfg.columns.is_empty().then_some(crate::snapshot::Columnar {
        date_range: st.intake.date_range,
    });
    let opts = &started.opts;
    let snapshotter = Snapshotter::spawn(opts.clone(), snap_cfg);
    let mut new_tables = Vec::new();
    if let Some(version) = recover {
        // The checkpoint's binlog is gone: every selected table is read again (snapshots in
        // progress too: what they had not read yet may have changed unseen).
        st.snap.progress.clear();
        st.snap.keyless_cut.clear();
        for t in crate::snapshot::list_tables(opts, &started.src.filter).await? {
            if !st.tables.quarantined.contains_key(&t) {
                new_tables.push(t);
            }
        }
        info!(
            tables = new_tables.len(),
            version, "position lost: every table is read again"
        );
    } else if cfg.start_at == StartAt::Snapshot {
        for t in crate::snapshot::list_tables(opts, &started.src.filter).await? {
            let seen = st.tables.versions.contains_key(&t)
                || st.snap.loaded.contains_key(&t)
                || st.snap.progress.contains_key(&t)
                || st.tables.quarantined.contains_key(&t);
            if fresh || !seen {
                new_tables.push(t);
            }
        }
    }
    if !new_tables.is_empty() && started.flavor == Flavor::Mysql {
        return Err(SourceError::Definite(
            "snapshots need MariaDB's Binlog_snapshot_position, which MySQL lacks: on MySQL use --start-at current (only new changes) or earliest".into(),
        )
        .into());
    }
    // keyless snapshots committed before a restart: the stream still skips up to their point
    for (t, p) in &st.snap.progress {
        if p.reason == KEYLESS {
            if let Some(cut) = p.keyless_cut() {
                st.snap.keyless_cut.insert(t.clone(), cut.key());
            }
        }
    }
    for (t, p) in st.snap.progress.clone() {
        if p.reason != KEYLESS {
            st.snap.changed.entry(t.clone()).or_default();
            st.snap.run_rows.insert(t.clone(), (0, Instant::now()));
            hand_over(st, &snapshotter, t, p);
        }
    }
    if new_tables.is_empty() {
        return Ok(snapshotter);
    }
    let mut conn = source::connect(opts).await?;
    let mut keyless = 0;
    for t in new_tables {
        let Some(desc) = crate::snapshot::values::describe(&mut conn, &t.db, &t.table).await?
        else {
            continue;
        };
        if let (Some(version), false) = (recover, desc.keyless()) {
            // a re-snapshot: the target's rows stay until each key is read again, and the
            // ones the source no longer has go when the table is done
            let p = resnapshot_progress(version);
            st.snap.planned(t.clone(), p.clone());
            hand_over(st, &snapshotter, t, p);
            continue;
        }
        if !desc.keyless() {
            info!(table = %t, estimate = desc.estimate, "table gets an initial snapshot");
            st.snap.changed.entry(t.clone()).or_default();
            st.snap.fresh.insert(t.clone());
            hand_over(
                st,
                &snapshotter,
                t,
                crate::snapshot::new_progress("initial", None),
            );
            continue;
        }
        read_keyless(st, cfg, &mut conn, started, t).await?;
        keyless += 1;
    }
    if keyless > 0 {
        // one commit: a keyless snapshot cannot resume halfway (no key to continue after)
        commit_and_wait(st, cfg, committer).await?;
    }
    Ok(snapshotter)
}

/// Reads keyless table `t` whole in one consistent snapshot and buffers it to replace what the
/// target holds of it.
async fn read_keyless(
    st: &mut State,
    cfg: &PipelineConfig,
    conn: &mut mysql_async::Conn,
    started: &Started,
    t: TableId,
) -> Result<(), PipelineError> {
    let (tm, rows, window) =
        crate::snapshot::read_keyless(&started.opts, &t, &st.snap.start_floor).await?;
    // the read holds exactly the table's transactions up to the window's end
    let at = window.high;
    let version = keyless_version(conn, &started.start, &at).await?;
    info!(table = %t, rows = rows.len(), at = %at, "keyless table read in one consistent snapshot");
    let source = Arc::new(Provenance::Snapshot {
        high: at.clone(),
        low: None,
    });
    let now = now_us();
    let n = rows.len() as u64;
    let rows = rows
        .into_iter()
        .map(|values| BufRow {
            values,
            version,
            op: Op::Snapshot,
            deleted: false,
            commit_us: now,
            source: source.clone(),
        })
        .collect();
    take_rows(st, cfg, &tm, rows, &format!("snapshot at {at}"), false)?;
    // The read is the table's whole content: it replaces whatever a first attempt that crashed
    // before its checkpoint left in the target (a sink without cross-table atomic commits would
    // otherwise hold those rows twice). Marked even when the table is empty.
    let shape = target_shape(&st.intake, &t, &tm);
    buffer_for(&mut st.intake, t.clone(), &shape)?.replace = true;
    let mut p = crate::snapshot::new_progress(KEYLESS, None);
    p.rows = n;
    p.estimate = n;
    p.cut = Some(at.clone());
    st.snap.progress.insert(t.clone(), p);
    st.snap.keyless_cut.insert(t, at.key());
    Ok(())
}

/// The version of a keyless read at `at` (before the stream runs, so from the server).
async fn keyless_version(
    conn: &mut mysql_async::Conn,
    start: &Position,
    at: &BinlogPos,
) -> Result<u64, PipelineError> {
    if let Position::File(_) = start {
        return Ok(Position::File(at.clone()).version() + 1);
    }
    let gtid: Option<Option<String>> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (&at.file, at.pos))
        .await
        .map_err(|e| SourceError::from_mysql(e, "BINLOG_GTID_POS"))?;
    Ok(
        match gtid.flatten().as_deref().map(str::parse::<MariaGtidState>) {
            Some(Ok(s)) if !s.is_empty() => Position::MariaDb(s).version() + 1,
            _ => start.version() + 1,
        },
    )
}

#[cfg(test)]
#[path = "handoff_tests.rs"]
mod tests;

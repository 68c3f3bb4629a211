//! What one run of the pipeline keeps, split by who changes it: [`Intake`] (buffers and the
//! invalid-value policy), [`Tables`] (per-table facts the checkpoint carries), [`Progress`]
//! (positions and counters) and [`SnapState`] (the snapshot handoff).
//!
//! Invariants:
//! - Everything here that the checkpoint carries is loaded from the target's checkpoint at the
//!   start of a run ([`State::resume`]) and written back, whole, by every commit: no state that
//!   matters lives only in memory.
//! - `Tables::versions` only advances when a commit is built (to the highest binlog version the
//!   commit holds per table), never when rows are buffered.

use std::collections::BTreeMap;
use std::time::Instant;

use binlake_sink::{Checkpoint, TableId};

use super::handoff::SnapState;
use super::intake::Intake;
use super::Summary;
use crate::position::Position;
use crate::source::start::Started;

pub(super) struct State {
    pub intake: Intake,
    pub tables: Tables,
    pub progress: Progress,
    pub snap: SnapState,
    /// The outboxes' event numbering (rebuilt from the target at the start of a run).
    pub outbox: crate::outbox::Seqs,
}

/// Per-table facts the checkpoint carries.
#[derive(Default)]
pub(super) struct Tables {
    /// Highest applied binlog version per table: changes at or below it are replays.
    pub versions: BTreeMap<TableId, u64>,
    /// Source commit time (µs) of the last change applied, per table.
    pub commit_us: BTreeMap<TableId, i64>,
    /// Tables stopped by a definite table error: their changes are skipped until rebuilt.
    pub quarantined: BTreeMap<TableId, String>,
    /// Tables created in the stream (CREATE TABLE at this version) that have had no rows
    /// since: read once when the source is drained, so that they exist in the target
    /// (checkpointed: a restart reads them too).
    pub created: BTreeMap<TableId, u64>,
}

impl State {
    /// The tables the pipeline knows of: in the checkpoint, being read, or buffered.
    pub fn known_tables(&self) -> std::collections::BTreeSet<TableId> {
        let t = &self.tables;
        t.versions
            .keys()
            .chain(t.quarantined.keys())
            .chain(t.created.keys())
            .chain(self.snap.progress.keys())
            .chain(self.snap.loaded.keys())
            .chain(self.intake.buffers.keys())
            .cloned()
            .collect()
    }

    /// The created tables (see [`Tables::created`]) that got no rows since their CREATE, taken.
    pub fn take_created_empty(&mut self) -> Vec<(TableId, u64)> {
        let created = std::mem::take(&mut self.tables.created);
        created
            .into_iter()
            .filter(|(t, v)| {
                let applied = self.tables.versions.get(t).is_some_and(|a| a > v);
                let buffered = self
                    .intake
                    .buffers
                    .get(t)
                    .is_some_and(|b| b.stream_max_version > *v);
                // a table stopped meanwhile (its creation failed in the target) is not read:
                // its rows would be skipped and the read would never end
                let stopped = self.tables.quarantined.contains_key(t);
                !applied && !buffered && !stopped && !self.snap.progress.contains_key(t)
            })
            .collect()
    }
}

impl Tables {
    /// Stops `t` (its changes are skipped from here on; see the checkpoint's `quarantined`).
    pub fn quarantine(&mut self, t: TableId, why: String) {
        self.versions.remove(&t);
        self.quarantined.insert(t, why);
    }
}

/// Where the run is, and what it did.
pub(super) struct Progress {
    /// Position after the last transaction taken in: what the next commit records.
    pub position: Position,
    /// Position of the last durable commit.
    pub committed: Option<Position>,
    /// Position of the last commit started (durable, or in flight).
    pub started: Option<Position>,
    pub last_commit: Instant,
    /// Source commit time (µs) of the last transaction taken in.
    pub last_commit_us: i64,
    pub summary: Summary,
    /// The last error retried or failed over from (wall-clock µs, message), for `status`.
    pub last_error: Option<(i64, String)>,
}

impl Progress {
    /// The position moved since the last commit started (a position-only commit is due after
    /// `checkpoint_interval`).
    pub fn moved(&self) -> bool {
        self.started.as_ref() != Some(&self.position)
    }
}

impl State {
    /// The last checkpoint is behind: the position moved, or outbox delivery progressed.
    pub fn checkpoint_behind(&self) -> bool {
        self.progress.moved() || self.outbox.delivery_moved()
    }

    /// The state a run starts from: the target's checkpoint, if any, and where the source starts.
    pub fn resume(
        checkpoint: Option<Checkpoint>,
        started: &Started,
        date_range: Option<(i32, i32)>,
    ) -> State {
        let start = started.start.clone();
        let floor_version = start.version();
        let committed = checkpoint.as_ref().map(|c| c.position.clone());
        let cp = checkpoint.unwrap_or_default();
        State {
            intake: Intake {
                date_range,
                ..Default::default()
            },
            tables: Tables {
                versions: cp.tables,
                commit_us: cp.table_commit_us,
                quarantined: cp.quarantined,
                created: cp.created,
            },
            progress: Progress {
                // a fresh start may commit snapshot rows before the stream delivers a transaction
                position: start,
                started: committed.clone(),
                committed,
                last_commit: Instant::now(),
                last_commit_us: cp.source_commit_us,
                summary: Summary::default(),
                last_error: cp.last_error,
            },
            snap: SnapState::resume(
                cp.snapshots,
                cp.loaded,
                cp.snapshot_version,
                floor_version,
                started.start_floor.clone(),
            ),
            outbox: Default::default(),
        }
    }
}

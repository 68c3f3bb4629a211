//! The snapshot handoff under active-active reading: transactions taken *ahead* of the server
//! whose binlog the handoff follows.
//!
//! Active-active, every server of the topology is read at once and each transaction is taken
//! from the first one to deliver it, while the handoff places reads in one server's binlog
//! (`via`). A transaction can then be taken before `via` delivers it. With several GTID domains
//! (or MySQL source UUIDs) written concurrently, servers interleave them differently, so such a
//! transaction can carry a *lower* version than one `via` delivered before it: versions no
//! longer tell whether a read on `via` holds a change. Example: from `1-1-9,2-2-11`, another
//! server delivers `2-2-12` first (version 21); `via` then delivers `1-1-10` (version 22). A read
//! on `via` between the two holds `1-1-10` but not `2-2-12`, and the version after it (22) is
//! above `2-2-12`'s: a row of a key `2-2-12` changed, read before it, would win over it.
//!
//! Invariants this module keeps, with the handoff (`handoff.rs`):
//! - **Versions.** The handoff's history gives each `via` position the highest version taken
//!   so far, so a chunk is versioned above every transaction its read holds and below every one
//!   taken later.
//! - **Floor.** A snapshot is handed to the readers only once `via` has delivered every
//!   transaction taken when it was queued ([`Ahead::queue`], [`Ahead::releasable`]). Its reads
//!   then hold every change the handoff did not record per key.
//! - **Keys.** Chunk rows of every key the stream changed since the snapshot was queued are
//!   dropped, whatever their version: the stream holds those keys' state, whether the read saw
//!   the change or not.
//! - **Keyless tables.** A keyless table written by a transaction taken ahead after its read was
//!   queued is read again ([`Ahead::written_ahead`]): its rows have no key to drop by, and no
//!   version separates the ones the read holds.
//!
//! These rules apply while what was taken holds several domains (or source UUIDs): with one,
//! every server holds the transactions in the same order, a version is the same whichever
//! server delivered it, and the handoff's plain rules are exact (a keyless table written
//! continuously from the faster server would otherwise be read again forever).
//!
//! State is per run (a failover or a switch of `via` starts a new run from the checkpoint) and
//! bounded: two positions, a counter, one number per table, and the snapshots waiting.

use std::collections::HashMap;

use binlake_sink::{SnapshotProgress, TableId};
use tracing::debug;

use crate::decode::TableMap;
use crate::position::Position;

/// What the handoff knows of transactions taken ahead of `via` (see the module doc).
#[derive(Debug, Default)]
pub(super) struct Ahead {
    /// The merged position of what the pipeline has taken in.
    taken: Option<Position>,
    /// `via`'s own position: after the last transaction it delivered or was seen delivering.
    via_at: Option<Position>,
    /// Transactions taken ahead of `via` so far, and per table that count when one last wrote
    /// to it.
    count: u64,
    touched: HashMap<TableId, u64>,
    /// Per table: `count` when its snapshot was queued.
    queued: HashMap<TableId, u64>,
    /// Snapshots waiting for `via` to cover the position taken when they were queued.
    deferred: Vec<(TableId, SnapshotProgress, Position)>,
}

/// `a` holds no transaction that `b` lacks.
fn covered(a: &Position, b: &Position) -> bool {
    match (a, b) {
        (Position::MariaDb(a), Position::MariaDb(b)) => a.is_covered_by(b),
        (Position::Mysql(a), Position::Mysql(b)) => crate::source::ha::is_subset(a, b),
        _ => false,
    }
}

impl Ahead {
    /// A run reading every server from `start`.
    pub fn new(start: &Position) -> Ahead {
        Ahead {
            taken: Some(start.clone()),
            via_at: Some(start.clone()),
            ..Default::default()
        }
    }

    /// A transaction was taken in: the merged `position` after it and, from `via` (`ours`),
    /// `via`'s own position after it; from another server, the tables it wrote.
    pub fn took<'t>(
        &mut self,
        position: &Position,
        via_position: Option<&Position>,
        ours: bool,
        tables: impl Iterator<Item = &'t TableMap>,
    ) {
        self.taken = Some(position.clone());
        if ours {
            if let Some(p) = via_position {
                self.via_at = Some(p.clone());
            }
            return;
        }
        self.count += 1;
        for tm in tables {
            self.touched
                .insert(TableId::new(&tm.db, &tm.table), self.count);
        }
    }

    /// `via` delivered a transaction already taken from another server; `position` is `via`'s
    /// own after it.
    pub fn seen(&mut self, position: Position) {
        self.via_at = Some(position);
    }

    /// Several GTID domains (MySQL: source UUIDs) in what was taken: only then can servers
    /// interleave transactions differently. With one, a transaction's version is the same
    /// whichever server delivered it, and the handoff's plain rules hold.
    pub fn interleaves(&self) -> bool {
        match &self.taken {
            Some(Position::MariaDb(s)) => s.domains.len() > 1,
            Some(Position::Mysql(s)) => s.sets.len() > 1,
            _ => false,
        }
    }

    /// A transaction taken ahead of `via` wrote to `t` since its snapshot was queued (with
    /// several domains).
    pub fn written_ahead(&self, t: &TableId) -> bool {
        self.interleaves()
            && self.touched.get(t).copied().unwrap_or(0) > self.queued.get(t).copied().unwrap_or(0)
    }

    /// A snapshot of `t` is queued: `true` when it may be handed to the readers now; `false`
    /// when `via` has not delivered every transaction taken yet (it is kept until it has).
    pub fn queue(&mut self, t: &TableId, p: &SnapshotProgress) -> bool {
        self.queued.insert(t.clone(), self.count);
        self.deferred.retain(|(d, _, _)| d != t);
        match (&self.taken, &self.via_at) {
            (Some(taken), Some(via)) if self.interleaves() && !covered(taken, via) => {
                debug!(table = %t, "the snapshot waits until its server has delivered every transaction taken from the others");
                self.deferred.push((t.clone(), p.clone(), taken.clone()));
                false
            }
            _ => true,
        }
    }

    /// The snapshots kept by [`Ahead::queue`] that `via` has caught up with since.
    pub fn releasable(&mut self) -> Vec<(TableId, SnapshotProgress)> {
        let Some(via) = &self.via_at else {
            return Vec::new();
        };
        let mut out = Vec::new();
        self.deferred.retain(|(t, p, q)| {
            if covered(q, via) {
                out.push((t.clone(), p.clone()));
                false
            } else {
                true
            }
        });
        out
    }

    /// A snapshot waits for `via`.
    pub fn waiting(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// `t`'s snapshot ended (the table was stopped).
    pub fn forget(&mut self, t: &TableId) {
        self.deferred.retain(|(d, _, _)| d != t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(s: &str) -> Position {
        Position::MariaDb(s.parse().unwrap())
    }

    fn table(name: &str) -> TableMap {
        TableMap {
            table_id: 1,
            db: "shop".into(),
            table: name.into(),
            columns: vec![],
            primary_key: vec![],
            full_metadata: true,
        }
    }

    /// One domain: servers hold it in one order, nothing waits.
    #[test]
    fn one_domain_needs_none_of_it() {
        let t = TableId::new("shop", "orders");
        let mut a = Ahead::new(&pos("0-1-9"));
        let o = table("orders");
        a.took(&pos("0-1-10"), None, false, [&o].into_iter());
        assert!(!a.interleaves());
        assert!(a.queue(&t, &SnapshotProgress::default()));
        a.took(&pos("0-1-11"), None, false, [&o].into_iter());
        assert!(!a.written_ahead(&t));
    }

    /// Two domains, delivered in different orders by two servers: a snapshot queued while a
    /// transaction is taken ahead of `via` waits until `via` has delivered it, and a keyless
    /// table written ahead after the queueing is read again.
    #[test]
    fn a_snapshot_waits_for_what_was_taken_ahead() {
        let t = TableId::new("shop", "orders");
        let log = TableId::new("shop", "log");
        let mut a = Ahead::new(&pos("1-1-9,2-2-11"));
        // another server delivers 2-2-12 first, writing to both tables
        let (o, l) = (table("orders"), table("log"));
        a.took(&pos("1-1-9,2-2-12"), None, false, [&o, &l].into_iter());
        let p = SnapshotProgress::default();
        assert!(!a.queue(&t, &p), "via lacks 2-2-12: the read must wait");
        assert!(!a.queue(&log, &p), "the keyless table's read waits too");
        assert!(
            !a.written_ahead(&log),
            "written ahead before the queueing: the read waits for it instead"
        );
        // via delivers 1-1-10: still without 2-2-12
        a.took(
            &pos("1-1-10,2-2-12"),
            Some(&pos("1-1-10,2-2-11")),
            true,
            [].into_iter(),
        );
        assert!(a.releasable().is_empty());
        assert!(a.waiting());
        // via is seen delivering 2-2-12: both snapshots go
        a.seen(pos("1-1-10,2-2-12"));
        let ready: Vec<TableId> = a.releasable().into_iter().map(|(t, _)| t).collect();
        assert_eq!(ready, vec![t.clone(), log.clone()]);
        assert!(!a.waiting());
        // queued now (via covers everything taken): handed over at once
        assert!(a.queue(&t, &p));
        // a transaction taken ahead after the queueing writes to the keyless table
        a.took(&pos("1-1-10,2-2-13"), None, false, [&l].into_iter());
        assert!(a.written_ahead(&log));
        assert!(!a.written_ahead(&t));
        // a new queueing starts from there
        assert!(!a.queue(&log, &p));
        assert!(!a.written_ahead(&log));
        a.forget(&log);
        assert!(!a.waiting());
    }
}

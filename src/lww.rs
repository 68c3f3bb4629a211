//! Last-writer-wins versions (`conflict = "last_writer_wins"`): a `_binlake_version` that
//! orders the changes of several independent sources to one table by source commit time.
//!
//! Versions of different sources are not comparable: each derives from its own GTID history.
//! Under `conflict`, each pipeline writes, instead, a version that every pipeline derives the
//! same way from the transaction's commit time:
//!
//! `t << 32 | rank << 27 | n << 8 | sub`
//!
//! - `t`: the source commit time in whole seconds since 2020-01-01 (MariaDB logs whole seconds),
//!   never going back within one source: a transaction committed at a time below the source's
//!   last one (a clock stepped back, a failover to a server whose clock is behind) takes the
//!   last one's `t`, so a source's own changes keep their binlog order.
//! - `rank`: the pipeline's place in the config's pipeline names, sorted (32 at most): changes
//!   of two sources in the same second are ordered by origin name, the greater name winning.
//! - `n`: the transaction's ordinal among the source's transactions in second `t` (2^19 per
//!   second; past that, `t` moves on by one).
//! - `sub`: 0 for binlog changes, 1 for snapshot rows.
//!
//! **Snapshot rows** carry no commit time (a row read by a snapshot may have been written long
//! before the read): they are versioned `t = 0`, below every streamed change of any source.
//! Within one source that changes nothing a reader sees: the handoff keeps a snapshot row only
//! when no change the stream still brings is newer, and then the stream's last change of the key
//! (if any) holds the same values. Between sources, rows read by snapshots are ordered by rank
//! alone. A backfill cannot repair a row under `conflict` (its rows lose to the row they would
//! repair).
//!
//! Invariants:
//! - **Strictly increasing within a source**, in binlog order, across restarts: the clock's
//!   state after the last committed transaction is stored in the checkpoint
//!   ([`binlake_sink::Checkpoint::lww_clock`]) and the stream resumes right after it, so a
//!   replay stamps the same transactions with the same versions.
//! - **The same whichever order sources are read in**: a version is a function of the source's
//!   own history only. Sinks keep, per key, the row with the highest version, which is then the
//!   last writer's whatever the order the rows arrive in.
//! - Every transaction the pipeline takes in is stamped, in order, before its rows reach a sink
//!   ([`LwwClock::stamp`]); the sink side ([`crate::mapping::MappedSink`]) only looks versions up.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

/// 2020-01-01T00:00:00Z, in seconds since the Unix epoch.
pub const EPOCH_S: i64 = 1_577_836_800;
/// Transactions per second per source before `t` moves on.
const N_MAX: u64 = 1 << 19;
/// Transactions remembered between their stamp and their commit through the sink (a commit
/// holds far fewer).
const LOG_MAX: usize = 1 << 20;
/// Origins one config may have (the rank's bits).
pub const RANKS: usize = 32;

#[derive(Debug, Default)]
struct State {
    /// `(t, n)` of the last transaction stamped.
    last: (u64, u64),
    /// `(GTID version, t, n)` of recent transactions, in order.
    log: VecDeque<(u64, u64, u64)>,
}

/// One pipeline's clock (shared by its intake, which stamps, and its sink, which looks up).
#[derive(Debug, Default)]
pub struct LwwClock {
    state: Mutex<State>,
}

/// The clock of `pipeline`, in this process.
pub fn clock(pipeline: &str) -> Arc<LwwClock> {
    static C: OnceLock<Mutex<HashMap<String, Arc<LwwClock>>>> = OnceLock::new();
    C.get_or_init(Default::default)
        .lock()
        .expect("lww clocks")
        .entry(pipeline.to_string())
        .or_default()
        .clone()
}

/// The version of `(t, n)` with `rank` and `sub`.
pub fn encode(t: u64, n: u64, rank: u8, sub: u64) -> u64 {
    (t << 32) | (u64::from(rank) << 27) | (n << 8) | sub.min(255)
}

impl LwwClock {
    /// Starts from a checkpoint: `last` is the clock after the transaction at `version`.
    pub fn resume(&self, last: (u64, u64), version: u64) {
        let mut s = self.state.lock().expect("lww clock");
        s.last = last;
        s.log.clear();
        s.log.push_back((version, last.0, last.1));
    }

    /// Stamps the transaction at `version`, committed at `commit_us` (µs since the epoch). A
    /// version already stamped (or below) is left as it is. Returns how many seconds the
    /// commit time was below the source's previous one (it is stamped with the previous one):
    /// a clock stepped back, or, in MariaDB, whose event times are when a statement started, a
    /// long transaction committed after shorter ones.
    pub fn stamp(&self, version: u64, commit_us: i64) -> u64 {
        let mut s = self.state.lock().expect("lww clock");
        if s.log.back().is_some_and(|(v, _, _)| *v >= version) {
            return 0;
        }
        let ts = (commit_us.div_euclid(1_000_000) - EPOCH_S).max(0) as u64;
        let (t, n) = s.last;
        let next = if ts > t {
            (ts, 0)
        } else if n + 1 < N_MAX {
            (t, n + 1)
        } else {
            (t + 1, 0)
        };
        s.last = next;
        s.log.push_back((version, next.0, next.1));
        if s.log.len() > LOG_MAX {
            s.log.pop_front();
        }
        t.saturating_sub(ts)
    }

    /// The last-writer-wins version of a binlog change at `version` (`snapshot`: of a snapshot
    /// row, below every change), for the origin of `rank`.
    pub fn version(&self, version: u64, snapshot: bool, rank: u8) -> u64 {
        self.lookup(rank).version(version, snapshot)
    }

    /// Looks versions up under one lock (a batch's rows).
    pub fn lookup(&self, rank: u8) -> Lookup<'_> {
        Lookup {
            state: self.state.lock().expect("lww clock"),
            rank,
            last: None,
        }
    }

    /// The clock after the last transaction at or before `version`, for the checkpoint.
    pub fn mark(&self, version: u64) -> (u64, u64) {
        let s = self.state.lock().expect("lww clock");
        s.at(version).unwrap_or(s.last)
    }
}

impl State {
    /// `(t, n)` of the last transaction at or before `version`; `None` when it is older than
    /// every transaction remembered.
    fn at(&self, version: u64) -> Option<(u64, u64)> {
        let i = self.log.partition_point(|(v, _, _)| *v <= version);
        let (_, t, n) = *self.log.get(i.checked_sub(1)?)?;
        Some((t, n))
    }
}

/// Version lookups of one origin under one lock ([`LwwClock::lookup`]). The rows of one
/// transaction share its source version: consecutive ones are looked up once.
pub struct Lookup<'a> {
    state: std::sync::MutexGuard<'a, State>,
    rank: u8,
    /// The last binlog change looked up: (source version, last-writer-wins version).
    last: Option<(u64, u64)>,
}

impl Lookup<'_> {
    /// See [`LwwClock::version`].
    pub fn version(&mut self, version: u64, snapshot: bool) -> u64 {
        if snapshot {
            // below every change
            return encode(0, 0, self.rank, 1);
        }
        if let Some((_, lww)) = self.last.filter(|(v, _)| *v == version) {
            return lww;
        }
        let lww = match self.state.at(version) {
            Some((t, n)) => encode(t, n, self.rank, 0),
            // older than the clock remembers: below every change
            None => encode(0, 0, self.rank, 1),
        };
        self.last = Some((version, lww));
        lww
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn a_source_keeps_its_order_and_sources_order_by_time_then_name() {
        let c = LwwClock::default();
        c.resume((0, 0), 0);
        let t0 = (EPOCH_S + 100) * S;
        c.stamp(1 << 16, t0);
        c.stamp(2 << 16, t0 + 500_000); // same second
        assert_eq!(c.stamp(3 << 16, t0 - 50 * S), 50, "the clock stepped back");
        c.stamp(4 << 16, t0 + 2 * S);
        let v: Vec<u64> = (1..=4).map(|i| c.version(i << 16, false, 3)).collect();
        assert!(v.windows(2).all(|w| w[0] < w[1]), "{v:?}");
        assert_eq!(v[0] >> 32, 100);
        assert_eq!(v[2] >> 32, 100, "not back in time");
        // another source, same second as v[0] and v[1]: the rank decides
        assert!(encode(100, 0, 4, 0) > v[1]);
        assert!(encode(100, 0, 2, 0) < v[0]);
        // a snapshot row: below every change, of any source
        let s = c.version((2 << 16) + 1, true, 3);
        assert!(s < v[0] && s < encode(1, 0, 0, 0));
        assert!(
            s > encode(0, 0, 2, 1),
            "snapshot rows of two sources: the rank decides"
        );
        // replays stamp nothing new; a resume continues from the mark
        c.stamp(4 << 16, t0 + 9 * S);
        assert_eq!(c.version(4 << 16, false, 3), v[3]);
        let mark = c.mark(3 << 16);
        let d = LwwClock::default();
        d.resume(mark, 3 << 16);
        d.stamp(4 << 16, t0 + 2 * S);
        assert_eq!(
            d.version(4 << 16, false, 3),
            v[3],
            "the same after a restart"
        );
    }
}

//! The event loop of one run: messages from the source, the snapshot readers and the control
//! endpoint in, commits out, and the periodic work (metrics, progress, keepalive) in between.
//!
//! Invariants:
//! - Messages are handled one at a time, in the order the loop takes them; a source
//!   transaction is taken whole (see [`super::intake`]) before anything else happens.
//! - A DDL statement that a sink must follow (TRUNCATE, DROP TABLE, DROP/RENAME COLUMN, RENAME
//!   TABLE of a replicated table) is applied only after everything before it is committed, and
//!   the position moves past it only after it is applied: a crash in between replays it, and
//!   sinks apply it idempotently.
//! - A transaction that changes a table's shape waits until the rows of the old shape are
//!   committed (see [`super::intake`]): a commit that alters the target replays, after a crash,
//!   only rows of the new shape.
//! - Whatever ends the loop (stop, caught up, an error, a failover), what is complete is
//!   committed before the run returns.

use crate::progress::TableProgress;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::commit::{
    apply_ddl, commit, commit_and_wait, drained_due, needs_size_flush, next_deadline, note_done,
    size_exceeds, time_due, Committer,
};
use super::ddl::{ddl_steps, DdlStep};
use super::handoff::{
    after_stream_moved, queue_backfill, release_deferred, reread, restart_snapshots, KEYLESS,
};
use super::intake::{changes_shape, take_txn};
use super::state::State;
use super::{PipelineConfig, PipelineError, Summary};
use crate::clock::now_us;
use crate::control::Backfill;
use crate::filter::TableFilter;
use crate::position::BinlogPos;
use crate::snapshot::{SnapshotMsg, Snapshotter};
use crate::source::{SourceError, SourceMsg, Transaction};

/// How the loop ended.
pub(super) enum End {
    /// Stop requested, caught up, or the source ended.
    Stopped,
    /// Start again from the checkpoint on source `from` (failover, switch).
    Restart {
        from: usize,
        why: String,
    },
    Failed(PipelineError),
}

/// One run's loop and what it keeps between messages.
pub(super) struct Run<'a> {
    pub cfg: &'a PipelineConfig,
    pub filter: &'a TableFilter,
    pub st: State,
    pub committer: Committer,
    pub snapshotter: Snapshotter,
    /// The server whose binlog positions the snapshot handoff and caught-up check use.
    pub via: usize,
    /// With `exit_when_caught_up`: the binlog end to reach.
    pub target: Option<BinlogPos>,
    pub caught_up: bool,
    /// The source said it has nothing newer since the last transaction.
    idle: bool,
    view: View,
}

/// Periodic output: metrics, the progress view, the progress log, the sink keepalive.
struct View {
    progress: crate::progress::ProgressView,
    last_log: Instant,
    rows_at_last_log: u64,
    snap_metrics: bool,
    last_snap_metrics: Instant,
    last_keepalive: Instant,
}

impl<'a> Run<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &'a PipelineConfig,
        filter: &'a TableFilter,
        st: State,
        committer: Committer,
        snapshotter: Snapshotter,
        via: usize,
        target: Option<BinlogPos>,
    ) -> Run<'a> {
        // an empty binlog: nothing to catch up with
        let caught_up = target
            .as_ref()
            .is_some_and(|t| t.pos <= 4 && t.file.is_empty());
        Run {
            cfg,
            filter,
            st,
            committer,
            snapshotter,
            via,
            target,
            caught_up,
            idle: false,
            view: View {
                progress: crate::progress::ProgressView::new(),
                last_log: Instant::now(),
                rows_at_last_log: 0,
                snap_metrics: false,
                last_snap_metrics: Instant::now(),
                last_keepalive: Instant::now(),
            },
        }
    }

    /// Runs until stopped, caught up (with `exit_when_caught_up`), restarted or failed.
    pub async fn run(
        &mut self,
        rx: &mut mpsc::Receiver<SourceMsg>,
        bf_rx: &mut mpsc::Receiver<Backfill>,
        src_task: &mut tokio::task::JoinSet<Result<(), SourceError>>,
        several: usize,
        source_url: &str,
        mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<End, PipelineError> {
        loop {
            if self.caught_up && self.cfg.exit_when_caught_up && !self.st.snap.busy() {
                // What is complete goes in first: the target may still ask for a table to be
                // read again (a shape it cannot follow in place), and that is work to finish.
                commit_and_wait(&mut self.st, self.cfg, &mut self.committer).await?;
                self.read_created_empty();
                restart_snapshots(&mut self.st, &self.snapshotter);
                if !self.st.snap.busy() {
                    return Ok(End::Stopped);
                }
            }
            let mut deadline = next_deadline(&self.st, self.cfg, self.committer.pause);
            if self.idle && self.st.intake.holds_changes() {
                // drained: commit once the floor since the last commit has passed
                deadline = deadline.min(self.st.progress.last_commit + self.floor());
            }
            if self.committer.busy() {
                // look again soon: the next commit starts as soon as this one is done
                deadline = deadline.min(Instant::now() + Duration::from_millis(20));
            }
            let end = tokio::select! {
                biased;
                _ = shutdown.as_mut() => {
                    info!("stop requested: committing what is complete, then exiting");
                    Some(End::Stopped)
                }
                msg = rx.recv() => match msg {
                    Some(m) => self.on_source(m).await?,
                    None => Some(source_ended(src_task, several, self.via, source_url).await),
                },
                msg = self.snapshotter.rx.recv(), if self.st.snap.pending.is_none() => match msg {
                    Some(m) => self.on_snapshot(m).await?,
                    None => None,
                },
                Some(b) = bf_rx.recv() => {
                    self.on_backfill(b);
                    None
                }
                _ = tokio::time::sleep_until(deadline.into()) => None,
            };
            if let Some(end) = end {
                return Ok(end);
            }
            restart_snapshots(&mut self.st, &self.snapshotter);
            self.tick().await?;
        }
    }

    /// A source message. `Some` ends the loop.
    async fn on_source(&mut self, msg: SourceMsg) -> Result<Option<End>, PipelineError> {
        match msg {
            SourceMsg::Txn(txn) => return self.on_txn(txn).await,
            SourceMsg::Seen {
                via,
                file_pos,
                version,
                position,
            } if via == self.via => {
                // (`version` is `via`'s own: with several domains the history takes the
                // highest taken so far instead, see `SnapState::saw`)
                self.st.snap.seen_on_via(position);
                self.st.snap.saw(&file_pos, Some(version));
                release_deferred(&mut self.st, &self.snapshotter);
                return Ok(self.moved(file_pos));
            }
            SourceMsg::Seen { .. } => {}
            // Positions of another server from here on: start again from the checkpoint there
            // (snapshots, backfills and the caught-up check follow that server).
            SourceMsg::Switched { via } => {
                return Ok(Some(End::Restart {
                    from: via,
                    why: format!("now following source #{via}"),
                }))
            }
            SourceMsg::Idle { via, .. } if via != self.via => {}
            SourceMsg::Idle { file_pos, .. } => {
                // The server has nothing newer: whatever is buffered is all there is.
                self.idle = true;
                self.st.snap.saw(&file_pos, None);
                self.read_created_empty();
                return Ok(self.moved(file_pos));
            }
            SourceMsg::Reconnecting { error, attempt } => {
                debug!(%error, attempt, "source reconnecting");
                self.cfg.metrics().reconnect();
                self.cfg.metrics().error(true);
                self.st.progress.last_error = Some((now_us(), format!("source: {error}")));
            }
        }
        Ok(None)
    }

    /// Tables created in the stream that got no rows: read once (they may be empty, or filled
    /// without row events), so that they exist in the target.
    fn read_created_empty(&mut self) {
        for (t, version) in self.st.take_created_empty() {
            info!(table = %t, "a table created in the stream has no rows yet: it is read once so that it exists in the target");
            reread(&mut self.st, &t, version);
        }
    }

    /// The stream reached `at` on the handoff's server: chunks waiting for it are taken, and
    /// the caught-up check looks at it.
    fn moved(&mut self, at: BinlogPos) -> Option<End> {
        if let Err(e) = after_stream_moved(&mut self.st, self.cfg) {
            return Some(End::Failed(e));
        }
        if self.target.as_ref().is_some_and(|t| at.key() >= t.key()) {
            self.caught_up = true;
        }
        None
    }

    async fn on_txn(&mut self, txn: Transaction) -> Result<Option<End>, PipelineError> {
        self.idle = false;
        if let Some(clock) = &self.cfg.lww {
            // before its statements or rows reach the sink, which looks its version up
            let behind = clock.stamp(txn.version, txn.commit_us);
            if behind > 0 {
                self.cfg.metrics().lww_held();
                if behind >= 60 {
                    warn!(gtid = ?txn.gtid, behind_s = behind, "a commit time is well below the source's previous one (its clock stepped back?): last_writer_wins stamps it with the previous one");
                }
            }
        }
        let file_pos = txn.file_pos.clone();
        let txn_version = txn.version;
        let ours = txn.via == self.via;
        let filter = self.filter;
        let steps = if txn.ddl.is_empty() {
            Vec::new()
        } else {
            ddl_steps(&txn.ddl, filter, &self.st.known_tables())
        };
        let mut to_reread = Vec::new();
        if !steps.is_empty() {
            // A CREATE TABLE alone changes no stored row: it is recorded in the state and goes
            // out with the next checkpoint (a crash before it replays the CREATE), so a burst
            // of them (a schema per tenant, a migration tool) costs no commit each.
            if steps.iter().any(|s| !matches!(s, DdlStep::Created(_))) {
                commit_and_wait(&mut self.st, self.cfg, &mut self.committer).await?;
            }
            for step in steps {
                match step {
                    DdlStep::Apply(table, kind) => {
                        apply_ddl(&mut self.st, &mut self.committer, &table, kind, txn.version)
                            .await?;
                        // a snapshot running was planned in the old shape: it starts again
                        if self.st.snap.progress.contains_key(&table) {
                            to_reread.push(table);
                        }
                    }
                    DdlStep::Reread(table, why) => {
                        info!(table = %table, why, "the table is read again (re-snapshot)");
                        to_reread.push(table);
                    }
                    DdlStep::Created(table) => {
                        self.st.tables.created.insert(table, txn.version);
                    }
                }
            }
        }
        if changes_shape(&mut self.st, self.cfg, &txn)? {
            info!(position = %txn.position, "a table changed shape: committing its older rows first");
            commit_and_wait(&mut self.st, self.cfg, &mut self.committer).await?;
        }
        self.st.snap.took(
            txn.version,
            &txn.position,
            txn.via_position.as_ref(),
            ours,
            txn.changes.iter().map(|c| c.table.as_ref()),
        );
        if ours {
            self.st.snap.saw(&file_pos, Some(txn.version));
            release_deferred(&mut self.st, &self.snapshotter);
        }
        if let Err(e) = take_txn(&mut self.st, self.cfg, txn) {
            return Ok(Some(End::Failed(e)));
        }
        // Read after the statement (handed to the readers by the loop, with a read floor past
        // it), versioned above it.
        for t in to_reread {
            reread(&mut self.st, &t, txn_version);
        }
        if let Err(e) = after_stream_moved(&mut self.st, self.cfg) {
            return Ok(Some(End::Failed(e)));
        }
        // At the size bound intake waits for the commit in flight (memory stays bounded: one
        // batch buffered, one being written), unless the sink prefers large commits: then the
        // batch grows to 4x the bounds meanwhile.
        self.size_flush(4).await?;
        if ours
            && self
                .target
                .as_ref()
                .is_some_and(|t| file_pos.key() >= t.key())
        {
            self.caught_up = true;
        }
        Ok(None)
    }

    /// Commits at the size bounds: at once, unless a commit runs and the sink prefers large
    /// commits; then once the buffers reach `factor` times the bounds.
    async fn size_flush(&mut self, factor: usize) -> Result<(), PipelineError> {
        let (st, cfg) = (&mut self.st, self.cfg);
        if needs_size_flush(st, cfg)
            && (!self.committer.busy() || !self.committer.large || size_exceeds(st, cfg, factor))
        {
            commit(st, cfg, &mut self.committer).await?;
        }
        Ok(())
    }

    async fn on_snapshot(&mut self, msg: SnapshotMsg) -> Result<Option<End>, PipelineError> {
        match msg {
            SnapshotMsg::Planned { table, progress } => {
                // A plan that a re-read replaced before its message came in is stale: the
                // newer plan (a later `started_at_us`, see `Chunk::plan`) stays.
                let stale = self
                    .st
                    .snap
                    .progress
                    .get(&table)
                    .is_some_and(|p| p.started_at_us > progress.started_at_us);
                if stale {
                    debug!(%table, "the plan of a replaced snapshot ignored");
                } else if !self.st.tables.quarantined.contains_key(&table) {
                    self.st.snap.planned(table, progress);
                }
            }
            SnapshotMsg::Chunk(chunk) => {
                self.st.snap.pending = Some(chunk);
                if let Err(e) = after_stream_moved(&mut self.st, self.cfg) {
                    return Ok(Some(End::Failed(e)));
                }
                // Snapshot rows appended (insert-only) gain less from large commits than merges
                // do: they grow to twice the bounds, not four times (memory).
                let insert_only = self.st.intake.buffers.values().all(|b| b.insert_only);
                self.size_flush(if insert_only { 2 } else { 4 }).await?;
            }
            SnapshotMsg::Failed {
                table,
                error,
                plan,
                reshaped,
                gone,
            } => {
                let current = self.st.snap.progress.get(&table).map(|p| p.started_at_us);
                if plan.is_some() && plan != current {
                    debug!(%table, %error, "a read of a replaced snapshot failed; ignored");
                    return Ok(None);
                }
                if gone {
                    // dropped or renamed at the source: the stream's statement decides
                    warn!(%table, %error, "the table is gone at the source; its snapshot ends");
                    self.st.snap.forget(&table);
                    return Ok(None);
                }
                if reshaped {
                    // The table changed at the source since it was planned (a DDL statement
                    // the stream has not reached yet): read it again in its current shape.
                    warn!(%table, %error, "the table changed while its snapshot ran: it is read again");
                    let version = self.st.progress.position.version();
                    reread(&mut self.st, &table, version);
                    return Ok(None);
                }
                error!(%table, %error, "snapshot failed: the table is stopped (quarantined); the other tables go on");
                self.st.snap.forget(&table);
                self.st.intake.buffers.remove(&table);
                self.st
                    .tables
                    .quarantine(table, format!("snapshot failed: {error}"));
            }
        }
        Ok(None)
    }

    fn on_backfill(&mut self, b: Backfill) {
        let r = queue_backfill(&mut self.st, &self.snapshotter, &b);
        match &r {
            Ok(t) => {
                info!(tables = ?t.iter().map(ToString::to_string).collect::<Vec<_>>(), filter = ?b.filter, reason = b.reason, "backfill queued")
            }
            Err(e) => warn!(error = %e, reason = b.reason, "backfill refused"),
        }
        if let Some(reply) = b.reply {
            let _ = reply.send(r.map(|t| t.iter().map(ToString::to_string).collect()));
        }
    }

    /// The floor between commits made because the source is drained: the configured or the
    /// sink's, stretched by what the sink asked after its last commit.
    fn floor(&self) -> Duration {
        let base = self.cfg.min_commit_interval.unwrap_or(self.committer.floor);
        base.max(self.committer.pause)
    }

    /// Between messages: metrics and progress, finished commits, commits due by time, the
    /// sink keepalive, the progress log.
    async fn tick(&mut self) -> Result<(), PipelineError> {
        let st = &mut self.st;
        self.cfg
            .metrics()
            .freshness(st.progress.last_commit_us, self.idle);
        self.view.snapshots(st, self.cfg.metrics());
        let done = self.committer.reap().await?;
        note_done(st, done);
        // A commit is due when the source is drained (group commit: a quiet source is visible
        // at once, a busy one batches while the last commit runs) or by time. One that falls
        // due while another runs is deferred, and then takes everything buffered meanwhile:
        // adaptive commit size.
        let floor = self.floor();
        let st = &mut self.st;
        if (drained_due(st, floor, self.idle)
            || time_due(st, self.cfg, self.committer.pause)
            || (self.committer.large && needs_size_flush(st, self.cfg)))
            && !self.committer.busy()
        {
            commit(st, self.cfg, &mut self.committer).await?;
        }
        if self.view.last_keepalive.elapsed() >= Duration::from_secs(10) {
            self.committer.keepalive().await?;
            self.view.last_keepalive = Instant::now();
        }
        self.view.log(st, self.idle);
        Ok(())
    }

    /// Ends the run: commits what is complete, whatever ended the loop (with the error that
    /// ended it, for `binlake status`).
    pub async fn finish(&mut self, end: &End) -> Result<(), PipelineError> {
        let st = &mut self.st;
        match end {
            End::Failed(e) => {
                st.progress.last_error = Some((now_us(), e.to_string()));
                self.cfg.metrics().error(false);
            }
            End::Restart { why, .. } => {
                st.progress.last_error = Some((now_us(), why.clone()));
                self.cfg.metrics().error(true);
            }
            End::Stopped => {}
        }
        commit_and_wait(st, self.cfg, &mut self.committer).await?;
        st.progress.summary.position = st.progress.committed.clone();
        st.progress.summary.caught_up = self.caught_up;
        Ok(())
    }

    pub fn summary(&self) -> Summary {
        self.st.progress.summary.clone()
    }
}

/// The source's channel closed: its task ended. With several sources a transient error fails
/// over to the next one.
async fn source_ended(
    src_task: &mut tokio::task::JoinSet<Result<(), SourceError>>,
    several: usize,
    via: usize,
    url: &str,
) -> End {
    match src_task.join_next().await {
        Some(Ok(Err(e))) if e.is_transient() && several > 1 => {
            warn!(source = %crate::source::redact(url), error = %e, "source lost; failing over");
            End::Restart {
                from: (via + 1) % several,
                why: format!("failover: {e}"),
            }
        }
        Some(Ok(Err(e))) => End::Failed(e.into()),
        Some(Ok(Ok(()))) | None => End::Stopped,
        Some(Err(e)) => {
            End::Failed(SourceError::Definite(format!("source task failed: {e}")).into())
        }
    }
}

impl View {
    /// Snapshot metrics (every 500 ms while snapshots run, once more after) and the progress
    /// view.
    fn snapshots(&mut self, st: &State, metrics: &crate::metrics::Metrics) {
        let progress = &st.snap.progress;
        if (!progress.is_empty() || self.snap_metrics)
            && self.last_snap_metrics.elapsed() >= Duration::from_millis(500)
        {
            self.last_snap_metrics = Instant::now();
            self.snap_metrics = !progress.is_empty();
            metrics.snapshots(
                &progress
                    .iter()
                    .map(|(t, p)| (t.to_string(), p.rows, p.estimate.max(p.rows)))
                    .collect::<Vec<_>>(),
            );
        }
        if (!progress.is_empty() || self.progress.active()) && self.progress.due() {
            let now = Instant::now();
            let rows: Vec<TableProgress> = progress
                .iter()
                .filter(|(_, p)| p.reason != KEYLESS)
                .map(|(t, p)| {
                    let (run, since) = st.snap.run_rows.get(t).copied().unwrap_or((0, now));
                    TableProgress {
                        table: t.to_string(),
                        rows: p.rows,
                        estimate: p.estimate.max(p.rows),
                        rate: run as f64 / now.duration_since(since).as_secs_f64().max(0.001),
                    }
                })
                .collect();
            self.progress.show(&rows);
        }
    }

    /// The progress log line, every 10 s.
    fn log(&mut self, st: &State, idle: bool) {
        if self.last_log.elapsed() < Duration::from_secs(10) {
            return;
        }
        let p = &st.progress;
        let rows = p.summary.rows;
        let rate = (rows - self.rows_at_last_log) as f64 / self.last_log.elapsed().as_secs_f64();
        // Replication lag: how old the newest applied change is, unless the source has told us
        // (heartbeat) that there is nothing newer, and nothing is waiting in the buffers.
        let buffered = st.intake.buffers.values().any(|b| !b.is_empty());
        let lag_s = if idle && !buffered {
            0.0
        } else if p.last_commit_us > 0 {
            (now_us() - p.last_commit_us) as f64 / 1e6
        } else {
            0.0
        };
        let position = p.committed.as_ref().map(ToString::to_string);
        info!(transactions = p.summary.transactions, rows, rows_per_s = rate as u64, commits = p.summary.commits, lag_s, position = ?position, "progress");
        self.last_log = Instant::now();
        self.rows_at_last_log = rows;
    }
}

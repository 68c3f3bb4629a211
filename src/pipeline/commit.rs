//! Commits: when one is due, building it from everything buffered, and running it in the
//! background against the sink.
//!
//! Invariants:
//! - A commit holds every buffer (tables set aside by a shape change first), the dead-letter
//!   rows, the watermarks and the checkpoint at the position after the last transaction taken
//!   in: the target's checkpoint always says exactly which transactions are applied.
//! - One commit runs at a time, in order ([`Committer`]); intake goes on meanwhile. A commit
//!   that falls due by time while another runs starts the moment it ends, with everything
//!   buffered meanwhile (adaptive commit size). At the size bounds intake waits for the commit
//!   in flight, unless the sink prefers large commits: then up to four times the bounds.
//! - Transient sink errors are retried with backoff, forever, with the same commit (sinks are
//!   idempotent); a table error stops that table and commits the others; anything else ends the
//!   run after what is complete is committed.
//! - A table's checkpointed version advances only to the highest binlog version its batch holds
//!   (snapshot versions say nothing about other keys' binlog changes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{StringBuilder, TimestampMicrosecondBuilder, UInt64Builder};
use arrow_array::RecordBatch;
use arrow_schema::Schema;
use binlake_sink::{rejects_fields, Checkpoint, Commit, DdlKind, Sink, SinkError, TableId};
use tracing::{debug, error, info, warn};

use super::buffer::TableBuffer;
use super::intake::Reject;
use super::state::State;
use super::{PipelineConfig, PipelineError};
use crate::clock::now_us;
use crate::metrics::Metrics;

/// Opens the sink and reads its checkpoint. At start a target that does not answer is more
/// likely misconfigured than briefly down: a few retries, then a clear error (once running,
/// commits retry until it is back).
pub(super) async fn open_sink(
    sink: &mut dyn Sink,
    metrics: &'static Metrics,
) -> Result<Option<Checkpoint>, PipelineError> {
    let mut attempt = 0;
    loop {
        match sink.open().await {
            Ok(c) => return Ok(c),
            Err(e) if e.is_transient() && attempt < 2 => {
                backoff(metrics, "open", &e, &mut attempt).await
            }
            Err(e) => return Err(PipelineError::TargetUnreachable(e)),
        }
    }
}

/// When the loop must look again: the oldest buffered row's time bound (no sooner than the
/// sink's pause after the last commit), or a position-only commit's, at the latest in 10 s
/// (keepalive, progress log).
pub(super) fn next_deadline(st: &State, cfg: &PipelineConfig, pause: Duration) -> Instant {
    let far = Instant::now() + Duration::from_secs(10);
    let data = st
        .intake
        .oldest()
        .map(|t| (t + cfg.max_latency).max(st.progress.last_commit + pause))
        .unwrap_or(far);
    let pos_only = if st.checkpoint_behind() {
        st.progress.last_commit + cfg.checkpoint_interval.max(pause)
    } else {
        far
    };
    data.min(pos_only)
}

/// A commit is due because the source is drained (`idle`: it has nothing more right now):
/// binlog changes are buffered and the floor since the last commit has passed. Snapshot rows
/// alone wait for the size or time bounds (a drained source says nothing about them).
pub(super) fn drained_due(st: &State, floor: Duration, idle: bool) -> bool {
    idle && Instant::now() >= st.progress.last_commit + floor && st.intake.holds_changes()
}

/// A commit is due by time: rows waited `max_latency` and the sink's pause since the last
/// commit passed, or the position moved `checkpoint_interval` ago.
pub(super) fn time_due(st: &State, cfg: &PipelineConfig, pause: Duration) -> bool {
    let now = Instant::now();
    if now < st.progress.last_commit + pause {
        return false;
    }
    let data = st
        .intake
        .oldest()
        .is_some_and(|t| now >= t + cfg.max_latency);
    data || (now >= st.progress.last_commit + cfg.checkpoint_interval && st.checkpoint_behind())
}

/// Buffers past `factor` times the size bounds.
pub(super) fn size_exceeds(st: &State, cfg: &PipelineConfig, factor: usize) -> bool {
    st.intake.bytes() >= cfg.max_batch_bytes.saturating_mul(factor)
        || st
            .intake
            .buffers
            .values()
            .any(|b| b.len() >= cfg.max_batch_rows.saturating_mul(factor))
}

/// Buffers at the size bounds.
pub(super) fn needs_size_flush(st: &State, cfg: &PipelineConfig) -> bool {
    size_exceeds(st, cfg, 1)
}

/// Applies a table DDL (after everything before it is committed). A table error stops the
/// table (and a renamed table's new name: a table starting empty there would be a partial
/// replica); transient errors are retried.
pub(super) async fn apply_ddl(
    st: &mut State,
    committer: &mut Committer,
    table: &TableId,
    kind: DdlKind,
    version: u64,
) -> Result<(), PipelineError> {
    if st.tables.quarantined.contains_key(table) {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        match committer.apply_ddl(table, kind.clone(), version).await {
            Ok(()) => {
                info!(%table, ?kind, version, "applied to the target");
                return Ok(());
            }
            Err(PipelineError::Sink(e)) if e.is_transient() => {
                backoff(committer.metrics, "DDL", &e, &mut attempt).await
            }
            Err(PipelineError::Sink(SinkError::Reread { message, .. })) => {
                warn!(%table, reason = %message, "the table is read again (re-snapshot) in its new shape");
                super::handoff::reread(st, table, version);
                return Ok(());
            }
            Err(PipelineError::Sink(SinkError::Table { message, .. })) => {
                error!(%table, error = %message, "table stopped (quarantined); the other tables go on");
                let mut stopped = vec![table.clone()];
                if let DdlKind::RenameTable { to } = &kind {
                    stopped.push(to.clone());
                }
                for t in stopped {
                    // nothing of it is read or buffered any more (a snapshot of it would
                    // never finish)
                    st.intake.forget(&t);
                    st.snap.forget(&t);
                    st.tables.quarantine(t, message.clone());
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// One watermark row (see [`binlake_sink::watermark_fields`]).
struct Mark {
    /// None: the pipeline as a whole (`*`).
    table: Option<TableId>,
    gtid: Option<String>,
    version: u64,
    commit_us: i64,
}

fn watermarks_batch(
    pipeline: &str,
    position: &str,
    marks: &[Mark],
    applied_us: i64,
) -> Option<RecordBatch> {
    let mut pl = StringBuilder::new();
    let mut t = StringBuilder::new();
    let mut g = StringBuilder::new();
    let mut p = StringBuilder::new();
    let mut v = UInt64Builder::new();
    let mut c = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut a = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for m in marks {
        pl.append_value(pipeline);
        match &m.table {
            Some(id) => t.append_value(id.to_string()),
            None => t.append_value("*"),
        }
        g.append_option(m.gtid.as_deref());
        p.append_value(position);
        v.append_value(m.version);
        c.append_value(m.commit_us);
        a.append_value(applied_us);
    }
    RecordBatch::try_new(
        Arc::new(Schema::new(binlake_sink::watermark_fields())),
        vec![
            Arc::new(pl.finish()),
            Arc::new(t.finish()),
            Arc::new(g.finish()),
            Arc::new(p.finish()),
            Arc::new(v.finish()),
            Arc::new(c.finish()),
            Arc::new(a.finish()),
        ],
    )
    .ok()
}

fn rejects_batch(rejects: &[Reject]) -> Option<RecordBatch> {
    if rejects.is_empty() {
        return None;
    }
    let now = now_us();
    let mut t = StringBuilder::new();
    let mut p = StringBuilder::new();
    let mut r = StringBuilder::new();
    let mut j = StringBuilder::new();
    let mut v = UInt64Builder::new();
    let mut ts = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for x in rejects {
        t.append_value(x.table.to_string());
        p.append_value(&x.position);
        r.append_value(&x.reason);
        j.append_value(&x.row_json);
        v.append_value(x.version);
        ts.append_value(now);
    }
    RecordBatch::try_new(
        Arc::new(Schema::new(rejects_fields())),
        vec![
            Arc::new(t.finish()),
            Arc::new(p.finish()),
            Arc::new(r.finish()),
            Arc::new(j.finish()),
            Arc::new(v.finish()),
            Arc::new(ts.finish()),
        ],
    )
    .ok()
}

/// Runs commits in the background, one at a time and in order, so that encoding and writing a
/// batch overlaps with taking in the next transactions (the source keeps decoding meanwhile).
pub(super) struct Committer {
    /// The sink prefers fewer, larger commits (see `Sink::prefers_large_commits`).
    pub large: bool,
    /// The sink's floor between commits made because the source is drained.
    pub floor: Duration,
    /// What the sink asked after its last commit (see `Sink::commit_pause`).
    pub pause: Duration,
    /// When a long pause was last logged.
    pause_logged: Option<Instant>,
    sink: Option<Box<dyn Sink>>,
    /// The pipeline's metrics.
    pub metrics: &'static Metrics,
    inflight: Option<tokio::task::JoinHandle<CommitOutcome>>,
}

/// What a commit task hands back: the sink, and how the commit went.
type CommitOutcome = (Box<dyn Sink>, Result<Done, SinkError>);

pub(super) struct Done {
    /// What the commit applied per table, for metrics, and the checkpoint's version.
    applied: Vec<crate::metrics::Applied>,
    version: u64,
    position: binlake_sink::Position,
    rows: usize,
    took: Duration,
    /// Tables this commit had to stop (see `Checkpoint::quarantined`).
    quarantined: Vec<(TableId, String)>,
    /// Tables the target asked to read again, and the version their re-snapshot starts at
    /// (already in this commit's checkpoint).
    rereads: Vec<(TableId, u64)>,
    /// The pipeline's metrics, which the commit updates.
    metrics: &'static Metrics,
}

impl Committer {
    pub fn new(sink: Box<dyn Sink>, metrics: &'static Metrics) -> Committer {
        Committer {
            metrics,
            large: sink.prefers_large_commits(),
            floor: sink.min_commit_interval(),
            pause: Duration::ZERO,
            pause_logged: None,
            sink: Some(sink),
            inflight: None,
        }
    }

    /// The sink back, once nothing is in flight (a restart hands it to the next run).
    pub fn into_sink(mut self) -> Box<dyn Sink> {
        self.sink
            .take()
            .expect("sink present when nothing is in flight")
    }

    /// Waits for the commit in flight, if any, and returns what it did.
    async fn wait(&mut self) -> Result<Option<Done>, PipelineError> {
        let Some(h) = self.inflight.take() else {
            return Ok(None);
        };
        let (sink, r) = h
            .await
            .map_err(|e| SinkError::Definite(format!("commit task failed: {e}")))?;
        self.pause = sink.commit_pause();
        self.metrics.commit_pause(self.pause);
        let quiet = self
            .pause_logged
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60));
        if self.pause > Duration::from_secs(1) && !quiet {
            // (at most once a minute: it holds while a large table is updated all over)
            info!(pause_ms = self.pause.as_millis() as u64, "commits spaced out: the last one rewrote more than the sink's rewrite budget allows (see rewrite_budget)");
            self.pause_logged = Some(Instant::now());
        }
        self.sink = Some(sink);
        Ok(Some(r?))
    }

    /// Starts `commit` after the previous one finished. Transient errors are retried inside,
    /// forever, with backoff: the pipeline waits for the target and loses nothing meanwhile.
    async fn start(
        &mut self,
        commit: Commit,
        applied: Vec<crate::metrics::Applied>,
        version: u64,
    ) -> Result<Option<Done>, PipelineError> {
        let done = self.wait().await?;
        let sink = self
            .sink
            .take()
            .expect("sink present when nothing is in flight");
        self.inflight = Some(tokio::spawn(tracing::Instrument::in_current_span(
            run_commit(sink, commit, applied, version, self.metrics),
        )));
        Ok(done)
    }

    /// Applies a table DDL once nothing is in flight.
    async fn apply_ddl(
        &mut self,
        table: &TableId,
        kind: DdlKind,
        version: u64,
    ) -> Result<(), PipelineError> {
        let done = self.wait().await?;
        debug_assert!(done.is_none(), "commit_and_wait ran before");
        let sink = self
            .sink
            .as_mut()
            .expect("sink present when nothing is in flight");
        Ok(sink.apply_table_ddl(table, kind, version).await?)
    }

    /// A commit is running.
    pub fn busy(&self) -> bool {
        self.inflight.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Collects a commit that has finished, without waiting for one that has not.
    pub async fn reap(&mut self) -> Result<Option<Done>, PipelineError> {
        if self.inflight.as_ref().is_some_and(|h| h.is_finished()) {
            self.wait().await
        } else {
            Ok(None)
        }
    }

    pub async fn keepalive(&mut self) -> Result<(), PipelineError> {
        // a commit in flight renews the sink's lease itself
        if let Some(s) = self.sink.as_mut() {
            s.keepalive().await?;
        }
        Ok(())
    }
}

/// One commit, in its own task: retried while the error is transient; a table the target
/// cannot take is stopped and the others committed.
async fn run_commit(
    mut sink: Box<dyn Sink>,
    mut commit: Commit,
    applied: Vec<crate::metrics::Applied>,
    version: u64,
    metrics: &'static Metrics,
) -> CommitOutcome {
    let started = Instant::now();
    let position = commit.checkpoint.position.clone();
    let rows = commit.rows();
    let mut attempt = 0;
    let mut quarantined = Vec::new();
    let mut rereads = Vec::new();
    loop {
        match sink.commit(commit.clone()).await {
            Ok(()) => {
                let took = started.elapsed();
                if let Err(e) = sink.maintain().await {
                    warn!(error = %e, "target maintenance failed; it is tried again after the next commit");
                }
                let done = Done {
                    applied,
                    version,
                    position,
                    rows,
                    took,
                    quarantined,
                    rereads,
                    metrics,
                };
                return (sink, Ok(done));
            }
            Err(e) if e.is_transient() => backoff(metrics, "commit", &e, &mut attempt).await,
            // One table the target cannot take: stop that table, commit the others.
            Err(SinkError::Table { table, message })
                if commit.batches.iter().any(|b| b.table == table) =>
            {
                error!(%table, error = %message, "table stopped (quarantined); the other tables go on");
                metrics.error(false);
                commit.batches.retain(|b| b.table != table);
                commit.checkpoint.tables.remove(&table);
                commit
                    .checkpoint
                    .quarantined
                    .insert(table.clone(), message.clone());
                quarantined.push((table, message));
            }
            // A shape change the target cannot follow in place: the table is read again (its
            // batch here is dropped; the re-snapshot, in this commit's checkpoint, brings
            // every key again above this commit's version).
            Err(SinkError::Reread { table, message })
                if commit.batches.iter().any(|b| b.table == table) =>
            {
                warn!(%table, reason = %message, "the table is read again (re-snapshot) in its new shape");
                commit.batches.retain(|b| b.table != table);
                commit
                    .checkpoint
                    .snapshots
                    .insert(table.clone(), super::handoff::resnapshot_progress(version));
                rereads.push((table, version));
            }
            Err(e) => return (sink, Err(e)),
        }
    }
}

/// Takes in what a finished commit did.
pub(super) fn note_done(st: &mut State, done: Option<Done>) {
    let Some(d) = done else { return };
    for (t, why) in d.quarantined {
        st.intake.forget(&t);
        st.snap.forget(&t);
        st.tables.quarantine(t, why);
    }
    for (t, version) in d.rereads {
        super::handoff::reread(st, &t, version);
    }
    debug!(rows = d.rows, ms = d.took.as_millis() as u64, position = %d.position, "committed");
    d.metrics
        .committed(&d.applied, d.took.as_micros() as u64, now_us(), d.version);
    st.progress.committed = Some(d.position);
    st.progress.summary.commits += 1;
    st.outbox.release(d.version);
}

/// Builds the commit of everything buffered and starts it (see [`Committer`]).
pub(super) async fn commit(
    st: &mut State,
    cfg: &PipelineConfig,
    committer: &mut Committer,
) -> Result<(), PipelineError> {
    if !st.intake.has_data() && !st.checkpoint_behind() {
        return Ok(());
    }
    let synced = now_us();
    let mut batches = Vec::new();
    let mut bufs: Vec<TableBuffer> = std::mem::take(&mut st.intake.set_aside);
    bufs.extend(st.intake.buffers.drain().map(|(_, b)| b));
    let mut marks: Vec<Mark> = Vec::new();
    let mut applied = Vec::new();
    for buf in bufs {
        let table = buf.id.clone();
        let stream_max = buf.stream_max_version;
        applied.push(crate::metrics::Applied {
            table: table.to_string(),
            rows: buf.len() as u64,
            transactions: buf.txns,
            bytes: buf.bytes as u64,
            last_commit_us: buf.last_change.as_ref().map_or(0, |c| c.1),
            first_clock_us: buf.first_clock_us,
        });
        if let Some((version, commit_us, source)) = &buf.last_change {
            st.tables.commit_us.insert(table.clone(), *commit_us);
            marks.push(Mark {
                table: Some(table.clone()),
                gtid: source.gtid().map(str::to_string),
                version: *version,
                commit_us: *commit_us,
            });
        }
        match buf.into_batch(synced) {
            Ok(Some(mut b)) => {
                let replacing = st
                    .snap
                    .progress
                    .get(&b.table)
                    .filter(|p| p.purge_below.is_some());
                b.reshape = b.purge_below.is_some() || replacing.is_some();
                // a keyed table's re-snapshot, from its start to its last batch (a keyless
                // table's read replaces it in one batch)
                if !b.primary_key.is_empty() && !b.replace {
                    b.generation = b.generation.or(replacing.map(|p| p.started_at_us));
                } else {
                    b.generation = None;
                }
                if stream_max > 0 {
                    let v = st.tables.versions.entry(b.table.clone()).or_default();
                    *v = (*v).max(stream_max);
                }
                batches.push(b);
            }
            Ok(None) => {}
            Err(source) => return Err(PipelineError::Build { table, source }),
        }
    }
    let position = st.progress.position.clone();
    marks.push(Mark {
        table: None,
        gtid: None,
        version: position.version(),
        commit_us: st.progress.last_commit_us,
    });
    let watermarks = watermarks_batch(&cfg.name, &position.to_string(), &marks, synced);
    // Outbox events given up on go to `_binlake_rejects` with the checkpoint that settles them:
    // the delivery marks are read first, and a deliverer records an event given up on before it
    // counts it settled, so the marks never count one whose reject is not in this commit.
    let delivered = st.outbox.marks(&cfg.outbox);
    for (table, g) in st.outbox.take_gave_up(&cfg.outbox) {
        st.intake.rejects.push(super::intake::Reject {
            table,
            position: format!("version {}", g.event.version),
            reason: format!(
                "outbox delivery gave up after {} attempts: {}",
                g.attempts, g.last_error
            ),
            row_json: g.event.json,
            version: g.event.version,
        });
    }
    let rejects = rejects_batch(&st.intake.rejects);
    st.intake.rejects.clear();
    st.intake.rejects_since = None;
    let checkpoint = Checkpoint {
        quarantined: st.tables.quarantined.clone(),
        pipeline: cfg.name.clone(),
        position: position.clone(),
        tables: st.tables.versions.clone(),
        source_commit_us: st.progress.last_commit_us,
        committed_at_us: now_us(),
        seq: 0,
        snapshots: st.snap.progress.clone(),
        loaded: st.snap.loaded.clone(),
        snapshot_version: st.snap.last_version,
        table_commit_us: st.tables.commit_us.clone(),
        last_error: st.progress.last_error.clone(),
        created: st.tables.created.clone(),
        outbox_delivered: delivered,
        // (filled by the mapping sink, see `crate::mapping`)
        targets: Default::default(),
        origin_in_key: false,
        lww_clock: None,
    };
    let commit = Commit {
        batches,
        rejects,
        watermarks,
        checkpoint,
    };
    let done = committer.start(commit, applied, position.version()).await?;
    note_done(st, done);
    st.progress.started = Some(position);
    st.progress.last_commit = Instant::now();
    Ok(())
}

/// Commits what is buffered and waits until everything is durable.
pub(super) async fn commit_and_wait(
    st: &mut State,
    cfg: &PipelineConfig,
    committer: &mut Committer,
) -> Result<(), PipelineError> {
    commit(st, cfg, committer).await?;
    let done = committer.wait().await?;
    note_done(st, done);
    Ok(())
}

/// Waits before retrying a transient sink error (1 s doubling to 30 s). Callers retry forever: the
/// pipeline waits for the target to come back and loses nothing meanwhile.
pub(super) async fn backoff(
    metrics: &'static Metrics,
    what: &str,
    e: &SinkError,
    attempt: &mut u32,
) {
    *attempt += 1;
    metrics.error(true);
    let wait = Duration::from_secs(1u64 << (*attempt).min(5).saturating_sub(1))
        .min(Duration::from_secs(30));
    warn!(error = %e, attempt = *attempt, wait_s = wait.as_secs(), "sink {what} failed; retrying");
    tokio::time::sleep(wait).await;
}

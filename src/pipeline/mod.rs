//! The pipeline: transactions from the source, per-table buffers, commits to the sink.
//!
//! The flow, one module each: [`crate::source::start`] chooses and checks the server and fixes
//! the start; [`run`] is the loop; [`intake`] takes transactions into the [`buffer`]s (column
//! rules, the invalid-value policy); [`handoff`] places snapshot chunks among the stream's
//! transactions; [`commit`] builds commits and runs them against the sink; [`state`] is what a
//! run keeps. This file only wires them.
//!
//! Invariants (what makes kill -9 safe):
//! - Only whole transactions enter the buffers, and a commit flushes every buffer at once with the
//!   position after the last transaction it contains. So the checkpoint in the target always says
//!   exactly which transactions are applied: all up to it, none after.
//! - At start the checkpoint is read back from the sink, never from local state; the source
//!   resumes right after it. As a second guard, a change whose version is not above its table's
//!   checkpointed version is skipped (idempotent replays).
//! - A commit happens when the source is drained (it has no next event right now) and binlog
//!   changes are buffered, no sooner than `min_commit_interval` after the last one (group
//!   commit: a quiet source is visible at once); when a table's buffer reaches `max_batch_rows`
//!   or `max_batch_bytes`; or when the oldest buffered transaction has waited `max_latency`: a
//!   partial buffer never waits longer than the time bound. With no data but an advancing position (changes to tables not
//!   replicated), a position-only commit happens every `checkpoint_interval`.
//! - Adaptive commit size: one commit runs at a time, in the background, while intake goes on.
//!   A commit that falls due by time while another runs starts the moment it ends, with
//!   everything buffered meanwhile: when the target is slow (a Delta MERGE into a big table)
//!   batches grow instead of commits queueing, and a quiet table still commits within
//!   `max_latency`. At the size bounds intake waits for the commit in flight, so memory holds
//!   at most one batch being written and one filling, unless the sink prefers large commits
//!   (Delta): then the filling batch may grow to four times the bounds first.
//! - Transient sink errors are retried with backoff (the same commit, idempotent); transient
//!   source errors reconnect in the source. Definite errors flush what is complete and stop.

mod ahead;
pub mod buffer;
mod commit;
mod ddl;
mod handoff;
mod intake;
mod run;
mod state;

pub use intake::{InvalidPolicy, UnknownPolicy};

use std::time::Duration;

use binlake_sink::{Sink, SinkError, TableId};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

use crate::columnar::BuildError;
use crate::position::Position;
use crate::source::{self, SourceConfig, SourceError, SourceMode, SourceMsg, StartAt};
use commit::{open_sink, Committer};
use run::{End, Run};
use state::State;

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub name: String,
    pub max_batch_rows: usize,
    pub max_batch_bytes: usize,
    pub max_latency: Duration,
    /// The floor between commits made because the source is drained (None: the sink's
    /// [`Sink::min_commit_interval`]).
    pub min_commit_interval: Option<Duration>,
    pub checkpoint_interval: Duration,
    pub invalid_values: InvalidPolicy,
    pub on_position_lost: OnPositionLost,
    pub exit_when_caught_up: bool,
    pub start_at: StartAt,
    pub snapshot: crate::snapshot::SnapshotConfig,
    /// Where to listen for backfill requests (see [`crate::control`]).
    pub control_addr: Option<String>,
    /// What requests to `control_addr` must carry (`Authorization: Bearer`), if anything.
    pub control_token: Option<String>,
    pub schedules: Vec<crate::control::Scheduled>,
    /// Columns excluded or masked (see [`crate::columns`]).
    pub columns: crate::columns::ColumnRules,
    /// Outbox tables whose inserts become events (see [`crate::outbox`]).
    pub outbox: Vec<crate::outbox::OutboxSpec>,
    /// A source that cannot be reached at the start is tried again with backoff (capped at
    /// 30 s) until it answers, instead of stopping the run: one of several pipelines in a
    /// process (`[[pipelines]]`) waits for its server while the others go on.
    pub wait_for_source: bool,
    /// This pipeline's metrics (label `pipeline`), looked up once: intake counts every
    /// transaction.
    pub metrics: &'static crate::metrics::Metrics,
    /// `conflict = "last_writer_wins"`: the clock every transaction taken in is stamped on
    /// (see [`crate::lww`]).
    pub lww: Option<std::sync::Arc<crate::lww::LwwClock>>,
}

impl PipelineConfig {
    /// This pipeline's metrics (label `pipeline`).
    pub fn metrics(&self) -> &'static crate::metrics::Metrics {
        self.metrics
    }
}

/// What a run does when the source no longer has the binlog its checkpoint needs
/// (`on_position_lost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPositionLost {
    /// Start from the source's current position and read every selected table again while the
    /// stream goes on (keyed tables: a re-snapshot whose end removes the rows it did not find;
    /// keyless ones: read whole and replaced). The default: the replica converges without a
    /// person, and no reader sees a table empty.
    Resnapshot,
    /// Stop, naming the recovery command.
    Fail,
}

/// An `on_position_lost` setting that is neither policy.
#[derive(Debug, thiserror::Error)]
#[error("`{0}`: expected resnapshot or fail")]
pub struct UnknownOnPositionLost(String);

impl std::str::FromStr for OnPositionLost {
    type Err = UnknownOnPositionLost;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "resnapshot" => Ok(OnPositionLost::Resnapshot),
            "fail" => Ok(OnPositionLost::Fail),
            _ => Err(UnknownOnPositionLost(s.to_string())),
        }
    }
}

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    #[error("invalid value in {}.{} at {}: {} ({}); invalid_values = \"fail\" stops here. Use \"null\" or \"dead_letter\" to go on.", .0.table, .0.column, .0.position, .0.reason, .0.text)]
    InvalidValue(Box<BadValue>),
    #[error("table {table}: the row image at {position} lacks column `{column}`; binlake needs binlog_row_image=FULL")]
    RowImage {
        table: TableId,
        column: String,
        position: String,
    },
    #[error(transparent)]
    Columns(#[from] crate::columns::ColumnRuleError),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error("table {table}: cannot build a batch: {source}")]
    Build { table: TableId, source: BuildError },
    #[error("cannot open the target: {0}")]
    TargetUnreachable(SinkError),
    #[error("control_addr `{addr}`: cannot listen: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// A value the target cannot hold, where it was found (boxed in [`PipelineError::InvalidValue`]).
#[derive(Debug)]
pub struct BadValue {
    pub table: TableId,
    pub column: String,
    pub position: String,
    pub reason: &'static str,
    pub text: String,
}

/// What a run did, for the CLI and the tests.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub transactions: u64,
    pub rows: u64,
    pub commits: u64,
    pub invalid_nulled: u64,
    pub rejected: u64,
    pub position: Option<Position>,
    pub caught_up: bool,
}

impl Summary {
    fn add(&mut self, o: Summary) {
        self.transactions += o.transactions;
        self.rows += o.rows;
        self.commits += o.commits;
        self.invalid_nulled += o.invalid_nulled;
        self.rejected += o.rejected;
        self.position = o.position.or(self.position.take());
        self.caught_up = o.caught_up;
    }
}

/// Runs until caught up (with `exit_when_caught_up`), `shutdown` resolves, or a definite error.
pub async fn run(
    cfg: PipelineConfig,
    src: SourceConfig,
    sink: Box<dyn Sink>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Summary, PipelineError> {
    tokio::pin!(shutdown);
    let mut sink = sink;
    let mut from = 0;
    let mut lost = false;
    let mut total = Summary::default();
    let mut unreachable = 0u32;
    loop {
        match run_once(&cfg, &src, sink, from, lost, shutdown.as_mut()).await? {
            Outcome::Done(s) => {
                total.add(s);
                return Ok(total);
            }
            Outcome::Unreachable { sink: back, error } => {
                unreachable += 1;
                let wait =
                    Duration::from_secs(1 << unreachable.min(5)).min(Duration::from_secs(30));
                warn!(%error, attempt = unreachable, retry_in_s = wait.as_secs(), "the source cannot be reached; trying again (the other pipelines go on)");
                cfg.metrics().error(true);
                sink = back;
                tokio::select! {
                    _ = shutdown.as_mut() => return Ok(total),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Outcome::Restart {
                sink: back,
                from: next,
                summary,
                why,
                position_lost,
            } => {
                info!(reason = %why, "restarting the pipeline");
                unreachable = 0;
                total.add(summary);
                sink = back;
                from = next;
                lost = position_lost;
            }
        }
    }
}

/// How one run ended: done (caught up, stopped), or to be started again from the checkpoint on
/// another source (failover) with the sink handed back.
enum Outcome {
    Done(Summary),
    /// The source could not be reached at the start (with `wait_for_source`): try again later.
    Unreachable {
        sink: Box<dyn Sink>,
        error: SourceError,
    },
    Restart {
        sink: Box<dyn Sink>,
        from: usize,
        summary: Summary,
        why: String,
        /// The source no longer has the checkpoint's binlog: the next run starts at the
        /// current position and reads every table again (`on_position_lost = "resnapshot"`).
        position_lost: bool,
    },
}

/// One run: from the target's checkpoint on the first fit source from `from` on, until the
/// loop ends. `lost`: the checkpoint's binlog is gone; the run starts at the source's current
/// position and reads every selected table again.
async fn run_once(
    cfg: &PipelineConfig,
    src: &SourceConfig,
    mut sink: Box<dyn Sink>,
    from: usize,
    lost: bool,
    shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Outcome, PipelineError> {
    let checkpoint = open_sink(sink.as_mut(), cfg.metrics()).await?;
    let started = match source::start::start(
        src,
        checkpoint.as_ref().map(|c| &c.position).filter(|_| !lost),
        from,
        if lost {
            &StartAt::Current
        } else {
            &cfg.start_at
        },
    )
    .await
    {
        Ok(s) => s,
        Err(error) if cfg.wait_for_source && error.is_transient() => {
            return Ok(Outcome::Unreachable { sink, error });
        }
        Err(e) => return Err(e.into()),
    };
    let fresh = checkpoint.is_none();
    let recover = lost.then(|| started.start.version());
    if let Some(v) = recover {
        warn!(position = %started.start, version = v, "the checkpoint's binlog is gone (on_position_lost = resnapshot): streaming from the current position and reading every table again");
    }
    let marks = checkpoint
        .as_ref()
        .map(|c| c.outbox_delivered.clone())
        .unwrap_or_default();
    let mut st = State::resume(checkpoint, &started, sink.date_range_days());
    if started.src.urls.len() > 1 && started.src.mode == SourceMode::ActiveActive {
        st.snap.active_active(&started.start);
    }
    st.outbox =
        crate::outbox::restore(sink.as_mut(), &cfg.outbox, &st.tables.versions, &marks).await?;
    // outbox delivery: tasks that end with this run (the next one resumes from the checkpoint)
    let mut deliveries = tokio::task::JoinSet::new();
    st.outbox
        .start_delivery(&cfg.outbox, &marks, &mut deliveries, cfg.metrics())?;
    let mut committer = Committer::new(sink, cfg.metrics());

    // Bounded: with large transactions, 32 in flight is already many rows of memory.
    let (tx, mut rx) = mpsc::channel::<SourceMsg>(32);
    let mut src_task = tokio::task::JoinSet::new();
    let s = &started;
    if s.src.urls.len() > 1 && s.src.mode == SourceMode::ActiveActive {
        let stream = source::ha::active_active(s.src.clone(), s.flavor, s.start.clone(), s.via, tx);
        // (in the pipeline's span: with [[pipelines]], its log lines name it)
        src_task.spawn(stream.in_current_span());
    } else {
        let (src, opts) = (s.src.clone(), s.opts.clone());
        src_task.spawn(
            source::stream::run(src, opts, s.flavor, s.start.clone(), s.via, tx).in_current_span(),
        );
    }
    let snapshotter =
        handoff::start_snapshots(&mut st, cfg, s, fresh, recover, &mut committer).await?;
    let (bf_tx, mut bf_rx) = mpsc::channel::<crate::control::Backfill>(8);
    // Tasks that end with this run (a restart listens again).
    let mut aux = spawn_control(cfg, s, bf_tx).await?;

    // With exit_when_caught_up: the binlog end at the start (positions of the chosen server).
    let target = cfg.exit_when_caught_up.then(|| s.start_floor.clone());
    let filter = &s.src.filter;
    let mut run = Run::new(cfg, filter, st, committer, snapshotter, s.via, target);
    let several = s.src.urls.len();
    let end = run
        .run(
            &mut rx,
            &mut bf_rx,
            &mut src_task,
            several,
            &s.src.url,
            shutdown,
        )
        .await?;
    run.finish(&end).await?;
    let summary = run.summary();
    // (next server, why, position lost) for a run that starts again with the sink handed back
    let again = match end {
        End::Failed(PipelineError::Source(SourceError::PositionGone { position, message }))
            if cfg.on_position_lost == OnPositionLost::Resnapshot && !lost =>
        {
            let why = format!("the source no longer has the binlog at {position} ({message})");
            (from, why, true)
        }
        End::Failed(e) => return Err(e),
        End::Restart { from, why } => (from, why, false),
        End::Stopped => {
            for (t, n) in &run.st.intake.invalid_by_table {
                warn!(table = %t, count = n, policy = ?cfg.invalid_values, "invalid values handled by policy");
            }
            return Ok(Outcome::Done(summary));
        }
    };
    src_task.abort_all();
    aux.abort_all();
    deliveries.abort_all();
    let Run { committer, .. } = run;
    let (from, why, position_lost) = again;
    Ok(Outcome::Restart {
        sink: committer.into_sink(),
        from,
        summary,
        why,
        position_lost,
    })
}

/// The control endpoint (backfill requests), if configured, and the backfill schedules.
async fn spawn_control(
    cfg: &PipelineConfig,
    started: &source::start::Started,
    bf_tx: mpsc::Sender<crate::control::Backfill>,
) -> Result<tokio::task::JoinSet<()>, PipelineError> {
    let mut aux = tokio::task::JoinSet::new();
    let (opts, filter) = (&started.opts, &started.src.filter);
    if let Some(addr) = &cfg.control_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| PipelineError::Listen {
                addr: addr.clone(),
                source,
            })?;
        info!(%addr, "listening for backfill requests");
        aux.spawn(crate::control::serve(
            listener,
            opts.clone(),
            filter.clone(),
            bf_tx.clone(),
            cfg.control_token.clone(),
        ));
    }
    aux.spawn(crate::control::run_schedule(
        cfg.schedules.clone(),
        opts.clone(),
        filter.clone(),
        bf_tx,
    ));
    Ok(aux)
}

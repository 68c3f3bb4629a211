//! The pipeline: transactions from the source, per-table buffers, commits to the sink.
//!
//! Invariants (what makes kill -9 safe):
//! - Only whole transactions enter the buffers, and a commit flushes every buffer at once with the
//!   position after the last transaction it contains. So the checkpoint in the target always says
//!   exactly which transactions are applied: all up to it, none after.
//! - At start the checkpoint is read back from the sink, never from local state; the source
//!   resumes right after it. As a second guard, a change whose version is not above its table's
//!   checkpointed version is skipped (idempotent replays).
//! - A commit happens when a table's buffer reaches `max_batch_rows` or `max_batch_bytes`, or
//!   when the oldest buffered transaction has waited `max_latency`: a partial buffer never waits
//!   longer than the time bound. With no data but an advancing position (changes to tables not
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

pub mod buffer;
pub mod ddl;

pub use ddl::table_ddl;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{StringBuilder, TimestampMicrosecondBuilder, UInt64Builder};
use arrow_array::RecordBatch;
use arrow_schema::Schema;
use binlake_sink::{rejects_fields, Checkpoint, Commit, DdlKind, Sink, SinkError, TableId};
use mysql_async::prelude::Queryable;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::clock::now_us;
use crate::decode::{RowChange, RowsKind, TableMap, Value};
use crate::position::{BinlogPos, MariaGtidState, MysqlGtidSet, Position};
use crate::snapshot::{Chunk, ChunkRows, SnapshotMsg, Snapshotter, Window};
use crate::source::{
    self, Flavor, SourceConfig, SourceError, SourceMode, SourceMsg, StartAt, Transaction,
};
use binlake_sink::SnapshotProgress;
use buffer::{key_bytes, key_bytes_at, BufRow, ColumnChunk, Op, TableBuffer};

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

impl std::str::FromStr for InvalidPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "null" => Ok(InvalidPolicy::Null),
            "fail" => Ok(InvalidPolicy::Fail),
            "dead_letter" => Ok(InvalidPolicy::DeadLetter),
            _ => Err(format!("`{s}`: expected null, fail or dead_letter")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub name: String,
    pub max_batch_rows: usize,
    pub max_batch_bytes: usize,
    pub max_latency: Duration,
    pub checkpoint_interval: Duration,
    pub invalid_values: InvalidPolicy,
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
}

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    #[error("invalid value in {table}.{column} at {position}: {reason} ({text}); invalid_values = \"fail\" stops here. Use \"null\" or \"dead_letter\" to go on.")]
    InvalidValue {
        table: String,
        column: String,
        position: String,
        reason: &'static str,
        text: String,
    },
    #[error("table {table}: the row image at {position} lacks column `{column}`; binlake needs binlog_row_image=FULL")]
    RowImage {
        table: String,
        column: String,
        position: String,
    },
    #[error(transparent)]
    Columns(#[from] crate::columns::ColumnRuleError),
    #[error("table {table}: cannot build a batch: {message}")]
    Build { table: String, message: String },
    #[error("cannot open the target: {0}")]
    TargetUnreachable(String),
    #[error("the checkpoint position `{0}` in the target cannot be parsed")]
    BadCheckpoint(String),
}

/// What a run did, for the CLI and the tests.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub transactions: u64,
    pub rows: u64,
    pub commits: u64,
    pub invalid_nulled: u64,
    pub rejected: u64,
    pub position: Option<String>,
    pub caught_up: bool,
}

struct Reject {
    table: String,
    position: String,
    reason: String,
    row_json: String,
    version: u64,
}

struct State {
    /// Days the target can hold (dates and times outside are invalid values), if limited.
    date_range: Option<(i32, i32)>,
    buffers: HashMap<TableId, TableBuffer>,
    /// Buffers of an older table shape, written before `buffers` by the next commit.
    set_aside: Vec<TableBuffer>,
    rejects: Vec<Reject>,
    rejects_since: Option<Instant>,
    table_versions: BTreeMap<String, u64>,
    /// Position after the last transaction taken in.
    position: Option<Position>,
    committed_position: Option<String>,
    /// Position of the last commit started (committed, or in flight).
    started_position: Option<String>,
    last_commit: Instant,
    last_commit_us: i64,
    summary: Summary,
    invalid_by_table: HashMap<String, u64>,
    /// Tables stopped by a definite table error: their changes are skipped (see the checkpoint).
    quarantined: BTreeMap<String, String>,
    snap: SnapState,
    /// Column rules per table: the source table map they were made for, and the plan.
    plans: HashMap<String, (Arc<TableMap>, Option<crate::columns::Plan>)>,
    /// Source commit time of the last change applied, per table (checkpointed).
    table_commit_us: BTreeMap<String, i64>,
    last_error: Option<(i64, String)>,
}

/// The pipeline's side of snapshots (see [`crate::snapshot`]).
#[derive(Default)]
struct SnapState {
    /// In progress, as the next checkpoint records them.
    progress: BTreeMap<String, SnapshotProgress>,
    loaded: BTreeMap<String, i64>,
    /// Per table being snapshotted: the highest version of a binlog change per key, so chunk
    /// rows older than a change already taken are dropped.
    changed: HashMap<String, HashMap<Vec<u8>, u64>>,
    /// (binlog end, version) of recent transactions, to give a chunk read at P the version
    /// right after the last transaction at or before P.
    history: std::collections::VecDeque<((u64, u64), u64)>,
    /// The last entry pruned from `history` (or the start position's version).
    floor: ((u64, u64), u64),
    /// How far the stream has read (binlog end of the last transaction or heartbeat).
    stream_pos: Option<(u64, u64)>,
    /// The same, as a position.
    stream_at: Option<BinlogPos>,
    /// The binlog's end when this run started (after its start position was chosen): the
    /// stream delivers every transaction after it.
    start_floor: BinlogPos,
    /// A chunk read at a point the stream has not reached yet.
    pending: Option<crate::snapshot::Chunk>,
    /// Keyless tables read at startup: the stream skips their transactions up to this point.
    keyless_cut: HashMap<String, (u64, u64)>,
    /// Rows read per table in this run, and when its reading started (for the progress view).
    run_rows: HashMap<String, (u64, Instant)>,
    /// Tables whose initial snapshot started in this run (their rows may be appended).
    fresh: std::collections::HashSet<String>,
    /// The highest version given to snapshot rows (checkpointed).
    last_version: u64,
}

const HISTORY_MAX: usize = 1 << 20;

fn pos_key(p: &BinlogPos) -> (u64, u64) {
    (p.file_index(), p.pos)
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
    let mut total = Summary::default();
    loop {
        match run_once(&cfg, &src, sink, from, shutdown.as_mut()).await? {
            Outcome::Done(s) => {
                total.add(s);
                return Ok(total);
            }
            Outcome::Restart {
                sink: back,
                from: next,
                summary,
                why,
            } => {
                info!(reason = %why, "restarting the pipeline from the target's checkpoint");
                total.add(summary);
                sink = back;
                from = next;
            }
        }
    }
}

/// How one run ended: done (caught up, stopped), or to be started again from the checkpoint on
/// another source (failover) with the sink handed back.
enum Outcome {
    Done(Summary),
    Restart {
        sink: Box<dyn Sink>,
        from: usize,
        summary: Summary,
        why: String,
    },
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

async fn run_once(
    cfg: &PipelineConfig,
    src: &SourceConfig,
    mut sink: Box<dyn Sink>,
    from: usize,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Outcome, PipelineError> {
    let cfg = cfg.clone();
    let mut src = src.clone();
    // At start a target that does not answer is more likely misconfigured than briefly down:
    // a few retries, then a clear error (once running, commits retry until it is back).
    let mut attempt = 0;
    let checkpoint = loop {
        match sink.open().await {
            Ok(c) => break c,
            Err(e) if e.is_transient() && attempt < 2 => backoff("open", &e, &mut attempt).await,
            Err(e) => return Err(PipelineError::TargetUnreachable(e.to_string())),
        }
    };

    // Several sources: the first fit one from `from` on (up, passes preflight, and its binlog
    // holds everything the checkpoint has applied: never backwards).
    let mut via = 0;
    let checkpoint_pos = match &checkpoint {
        Some(c) => Some(
            c.position
                .parse::<Position>()
                .map_err(|_| PipelineError::BadCheckpoint(c.position.clone()))?,
        ),
        None => None,
    };
    let several = src.urls.len() > 1;
    if several {
        via = source::ha::choose(&src, checkpoint_pos.as_ref(), from)
            .await?
            .0;
        src.url = src.urls[via].clone();
        if src.mode == SourceMode::Failover {
            src.give_up_after = Some(2);
        }
        info!(source = %source::redact(&src.url), index = via, mode = ?src.mode, "reading from");
    }
    let (opts, mut conn, report) = loop {
        let opts = source::parse_url(&src.url).map_err(SourceError::Definite)?;
        let attempt = async {
            let mut conn = source::connect(&opts).await?;
            let report = source::preflight::run(&mut conn).await?;
            Ok::<_, SourceError>((conn, report))
        };
        match attempt.await {
            Ok((conn, report)) => break (opts, conn, report),
            // the chosen server died in between: the next fit one
            Err(e) if several && e.is_transient() => {
                warn!(source = %source::redact(&src.url), error = %e, "source lost before reading; choosing another");
                via = source::ha::choose(&src, checkpoint_pos.as_ref(), via + 1)
                    .await?
                    .0;
                src.url = src.urls[via].clone();
            }
            Err(e) => return Err(e.into()),
        }
    };
    if report.failed() {
        return Err(SourceError::Preflight(report.to_string()).into());
    }
    let flavor = report.server.flavor;
    let (start, table_versions) = match &checkpoint {
        Some(c) => {
            let p: Position = c
                .position
                .parse()
                .map_err(|_| PipelineError::BadCheckpoint(c.position.clone()))?;
            info!(position = %p, seq = c.seq, "resuming from the target's checkpoint");
            (p, c.tables.clone())
        }
        None => {
            let p = resolve_start(&mut conn, flavor, &cfg.start_at).await?;
            info!(position = %p, start_at = ?cfg.start_at, "no checkpoint in the target; starting");
            (p, BTreeMap::new())
        }
    };
    if src.urls.len() > 1 && matches!(start, Position::File(_)) {
        return Err(SourceError::Definite(format!(
            "several sources need GTIDs to fail over, but the start position {start} is a binlog file position; start from a GTID"
        ))
        .into());
    }
    // Snapshot reads start only once the source has committed what this point covers: the
    // start position can name a transaction in the binlog that is not committed yet, which the
    // stream will not deliver and a snapshot taken before its commit would not see.
    let start_floor = source::current_file_pos(&mut conn).await?;
    let target = if cfg.exit_when_caught_up {
        Some(start_floor.clone())
    } else {
        None
    };
    drop(conn);

    // Bounded: with large transactions, 128 in flight is already ~100k rows of memory.
    let date_range = sink.date_range_days();
    let mut committer = Committer {
        large: sink.prefers_large_commits(),
        sink: Some(sink),
        inflight: None,
    };
    let (tx, mut rx) = mpsc::channel::<SourceMsg>(32);
    let snap_opts = opts.clone();
    let mut src_task = tokio::task::JoinSet::new();
    if src.urls.len() > 1 && src.mode == SourceMode::ActiveActive {
        src_task.spawn(source::ha::active_active(
            src.clone(),
            flavor,
            start.clone(),
            via,
            tx,
        ));
    } else {
        src_task.spawn(source::stream::run(
            src.clone(),
            opts,
            flavor,
            start.clone(),
            via,
            tx,
        ));
    }
    // Binlog file positions (snapshot handoff, caught-up check) are those of this server.
    let snap_via = via;
    let mut restart: Option<(usize, String)> = None;

    let mut st = State {
        date_range,
        buffers: HashMap::new(),
        set_aside: Vec::new(),
        rejects: Vec::new(),
        rejects_since: None,
        table_versions,
        // A fresh start may commit snapshot rows before the stream delivers a transaction.
        position: Some(start.clone()),
        committed_position: checkpoint.as_ref().map(|c| c.position.clone()),
        started_position: checkpoint.as_ref().map(|c| c.position.clone()),
        last_commit: Instant::now(),
        last_commit_us: checkpoint.as_ref().map(|c| c.source_commit_us).unwrap_or(0),
        summary: Summary::default(),
        invalid_by_table: HashMap::new(),
        quarantined: checkpoint
            .as_ref()
            .map(|c| c.quarantined.clone())
            .unwrap_or_default(),
        snap: SnapState {
            progress: checkpoint
                .as_ref()
                .map(|c| c.snapshots.clone())
                .unwrap_or_default(),
            loaded: checkpoint
                .as_ref()
                .map(|c| c.loaded.clone())
                .unwrap_or_default(),
            floor: ((0, 0), start.version()),
            start_floor,
            last_version: checkpoint.as_ref().map_or(0, |c| c.snapshot_version),
            ..Default::default()
        },
        plans: HashMap::new(),
        table_commit_us: checkpoint
            .as_ref()
            .map(|c| c.table_commit_us.clone())
            .unwrap_or_default(),
        last_error: checkpoint.as_ref().and_then(|c| c.last_error.clone()),
    };
    let snapshotter = start_snapshots(
        &mut st,
        &cfg,
        &src,
        &snap_opts,
        flavor,
        &start,
        checkpoint.is_none(),
        &mut committer,
    )
    .await?;
    let mut snapshotter = snapshotter;
    let (bf_tx, mut bf_rx) = mpsc::channel::<crate::control::Backfill>(8);
    // Tasks that end with this run (a restart listens again).
    let mut aux = tokio::task::JoinSet::new();
    if let Some(addr) = &cfg.control_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            SourceError::Definite(format!("control_addr `{addr}`: cannot listen: {e}"))
        })?;
        info!(%addr, "listening for backfill requests");
        aux.spawn(crate::control::serve(
            listener,
            snap_opts.clone(),
            src.filter.clone(),
            bf_tx.clone(),
            cfg.control_token.clone(),
        ));
    }
    aux.spawn(crate::control::run_schedule(
        cfg.schedules.clone(),
        snap_opts.clone(),
        src.filter.clone(),
        bf_tx,
    ));
    let mut progress_view = crate::snapshot::ProgressView::new();
    let mut caught_up_at: Option<BinlogPos> = None;
    let reached = |p: &BinlogPos, t: &BinlogPos| (p.file_index(), p.pos) >= (t.file_index(), t.pos);
    let mut last_log = Instant::now();
    let mut rows_at_last_log = 0u64;
    let mut failure: Option<PipelineError> = None;
    let mut idle_since_last_txn = false;
    let mut snap_metrics = false;
    let mut last_snap_metrics = Instant::now();
    let mut last_keepalive = Instant::now();

    if let Some(t) = &target {
        if t.pos <= 4 && t.file.is_empty() {
            caught_up_at = Some(t.clone());
        }
    }
    loop {
        if caught_up_at.is_some() && cfg.exit_when_caught_up && !snapshots_busy(&st) {
            break;
        }
        let mut deadline = next_deadline(&st, &cfg);
        if committer.busy() {
            // look again soon: the next commit starts as soon as this one is done
            deadline = deadline.min(Instant::now() + Duration::from_millis(20));
        }
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => {
                info!("stop requested: committing what is complete, then exiting");
                break;
            }
            msg = rx.recv() => match msg {
                Some(SourceMsg::Txn(txn)) => {
                    idle_since_last_txn = false;
                    let file_pos = txn.file_pos.clone();
                    let ours = txn.via == snap_via;
                    // TRUNCATE, DROP TABLE, DROP/RENAME COLUMN, RENAME TABLE of a replicated
                    // table (see `ddl`): everything before it is committed, then the sink applies
                    // it, and only then does the position move past it (a crash in between
                    // replays it; sinks apply it idempotently).
                    let actions: Vec<(TableId, DdlKind)> = txn.ddl.iter().flat_map(table_ddl).filter(|(t, k)| src.filter.matches(&t.db, &t.table) || matches!(k, DdlKind::RenameTable { to } if src.filter.matches(&to.db, &to.table))).collect();
                    if !actions.is_empty() {
                        commit_and_wait(&mut st, &cfg, &mut committer).await?;
                        for (table, kind) in actions {
                            apply_ddl(&mut st, &mut committer, &table, kind, txn.version).await?;
                        }
                    }
                    if ours {
                        st.snap.saw(&file_pos, Some(txn.version));
                    }
                    if let Err(e) = take_txn(&mut st, &cfg, txn) {
                        failure = Some(e);
                        break;
                    }
                    if let Err(e) = after_stream_moved(&mut st, &cfg) {
                        failure = Some(e);
                        break;
                    }
                    // At the size bound intake waits for the commit in flight (memory stays
                    // bounded: one batch buffered, one being written), unless the sink prefers
                    // large commits: then the batch grows to 4x the bounds meanwhile.
                    if needs_size_flush(&st, &cfg) && (!committer.busy() || !committer.large || size_exceeds(&st, &cfg, 4)) {
                        commit(&mut st, &cfg, &mut committer).await?;
                    }
                    if let Some(t) = target.as_ref().filter(|_| ours) {
                        if reached(&file_pos, t) {
                            caught_up_at = Some(file_pos);
                        }
                    }
                }
                Some(SourceMsg::Seen { via, file_pos, version }) if via == snap_via => {
                    st.snap.saw(&file_pos, Some(version));
                    if let Err(e) = after_stream_moved(&mut st, &cfg) {
                        failure = Some(e);
                        break;
                    }
                    if let Some(t) = &target {
                        if reached(&file_pos, t) {
                            caught_up_at = Some(file_pos);
                        }
                    }
                }
                Some(SourceMsg::Seen { .. }) => {}
                Some(SourceMsg::Switched { via }) => {
                    // Positions of another server from here on: start again from the checkpoint
                    // there (snapshots, backfills and the caught-up check follow that server).
                    restart = Some((via, format!("now following source #{via}")));
                    break;
                }
                Some(SourceMsg::Idle { via, .. }) if via != snap_via => {}
                Some(SourceMsg::Idle { file_pos, .. }) => {
                    // The server has nothing newer: whatever is buffered is all there is.
                    idle_since_last_txn = true;
                    st.snap.saw(&file_pos, None);
                    if let Err(e) = after_stream_moved(&mut st, &cfg) {
                        failure = Some(e);
                        break;
                    }
                    if let Some(t) = &target {
                        if reached(&file_pos, t) {
                            caught_up_at = Some(file_pos);
                        }
                    }
                }
                Some(SourceMsg::Reconnecting { error, attempt }) => {
                    debug!(%error, attempt, "source reconnecting");
                    crate::metrics::get().reconnect();
                    crate::metrics::get().error(true);
                    st.last_error = Some((now_us(), format!("source: {error}")));
                }
                None => {
                    match src_task.join_next().await {
                        // Failover: this server's stream gave up; the next fit one takes over.
                        Some(Ok(Err(e))) if e.is_transient() && src.urls.len() > 1 => {
                            warn!(source = %source::redact(&src.url), error = %e, "source lost; failing over");
                            restart = Some(((snap_via + 1) % src.urls.len(), format!("failover: {e}")));
                        }
                        Some(Ok(Err(e))) => failure = Some(e.into()),
                        Some(Ok(Ok(()))) | None => {}
                        Some(Err(e)) => failure = Some(SourceError::Definite(format!("source task failed: {e}")).into()),
                    }
                    break;
                }
            },
            msg = snapshotter.rx.recv(), if st.snap.pending.is_none() => match msg {
                Some(SnapshotMsg::Planned { table, progress }) => {
                    let name = table.to_string();
                    if !st.quarantined.contains_key(&name) {
                        st.snap.run_rows.insert(name.clone(), (0, Instant::now()));
                        st.snap.changed.entry(name.clone()).or_default();
                        st.snap.progress.insert(name, progress);
                    }
                }
                Some(SnapshotMsg::Chunk(chunk)) => {
                    st.snap.pending = Some(chunk);
                    if let Err(e) = after_stream_moved(&mut st, &cfg) {
                        failure = Some(e);
                        break;
                    }
                    // Snapshot rows appended (insert-only) gain less from large commits than
                    // merges do: they grow to twice the bounds, not four times (memory).
                    let factor = if st.buffers.values().all(|b| b.insert_only) { 2 } else { 4 };
                    if needs_size_flush(&st, &cfg) && (!committer.busy() || !committer.large || size_exceeds(&st, &cfg, factor)) {
                        commit(&mut st, &cfg, &mut committer).await?;
                    }
                }
                Some(SnapshotMsg::Failed { table, error }) => {
                    let name = table.to_string();
                    error!(table = %name, %error, "snapshot failed: the table is stopped (quarantined); the other tables go on");
                    st.snap.progress.remove(&name);
                    st.snap.changed.remove(&name);
                    st.table_versions.remove(&name);
                    st.buffers.remove(&table);
                    st.quarantined.insert(name, format!("snapshot failed: {error}"));
                }
                None => {}
            },
            Some(b) = bf_rx.recv() => {
                let r = queue_backfill(&mut st, &snapshotter, &b);
                match &r {
                    Ok(t) => info!(tables = ?t, filter = ?b.filter, reason = b.reason, "backfill queued"),
                    Err(e) => warn!(error = %e, reason = b.reason, "backfill refused"),
                }
                if let Some(reply) = b.reply {
                    let _ = reply.send(r);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        crate::metrics::get().freshness(st.last_commit_us, idle_since_last_txn);
        if (!st.snap.progress.is_empty() || snap_metrics)
            && last_snap_metrics.elapsed() >= Duration::from_millis(500)
        {
            last_snap_metrics = Instant::now();
            snap_metrics = !st.snap.progress.is_empty();
            crate::metrics::get().snapshots(
                &st.snap
                    .progress
                    .iter()
                    .map(|(t, p)| (t.clone(), p.rows, p.estimate.max(p.rows)))
                    .collect::<Vec<_>>(),
            );
        }
        if !st.snap.progress.is_empty() && progress_view.due() {
            let now = Instant::now();
            let rows: Vec<(String, u64, u64, f64)> = st
                .snap
                .progress
                .iter()
                .filter(|(_, p)| p.reason != KEYLESS)
                .map(|(t, p)| {
                    let (run, since) = st.snap.run_rows.get(t).copied().unwrap_or((0, now));
                    let rate = run as f64 / now.duration_since(since).as_secs_f64().max(0.001);
                    (t.clone(), p.rows, p.estimate.max(p.rows), rate)
                })
                .collect();
            progress_view.show(&rows);
        }
        let done = committer.reap().await?;
        note_done(&mut st, done);
        // A time-bound commit is deferred while another runs, and then takes everything
        // buffered meanwhile: adaptive commit size.
        if (time_due(&st, &cfg) || (committer.large && needs_size_flush(&st, &cfg)))
            && !committer.busy()
        {
            commit(&mut st, &cfg, &mut committer).await?;
        }
        if last_keepalive.elapsed() >= Duration::from_secs(10) {
            committer.keepalive().await?;
            last_keepalive = Instant::now();
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            let rows = st.summary.rows;
            let rate = (rows - rows_at_last_log) as f64 / last_log.elapsed().as_secs_f64();
            // Replication lag: how old the newest applied change is, unless the source has told us
            // (heartbeat) that there is nothing newer, and nothing is waiting in the buffers.
            let buffered = st.buffers.values().any(|b| !b.is_empty());
            let lag_s = if idle_since_last_txn && !buffered {
                0.0
            } else if st.last_commit_us > 0 {
                (now_us() - st.last_commit_us) as f64 / 1e6
            } else {
                0.0
            };
            info!(transactions = st.summary.transactions, rows, rows_per_s = rate as u64, commits = st.summary.commits, lag_s, position = ?st.committed_position, "progress");
            last_log = Instant::now();
            rows_at_last_log = rows;
        }
    }
    // Commit what is complete, whatever ended the loop (with the error that ended it, for
    // `binlake status`).
    if let Some(e) = &failure {
        st.last_error = Some((now_us(), e.to_string()));
        crate::metrics::get().error(false);
    }
    if let Some((_, why)) = &restart {
        st.last_error = Some((now_us(), why.clone()));
        crate::metrics::get().error(true);
    }
    commit_and_wait(&mut st, &cfg, &mut committer).await?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some((from, why)) = restart {
        src_task.abort_all();
        aux.abort_all();
        drop(snapshotter);
        st.summary.position = st.committed_position.clone();
        let sink = committer
            .sink
            .take()
            .expect("sink present when nothing is in flight");
        return Ok(Outcome::Restart {
            sink,
            from,
            summary: st.summary,
            why,
        });
    }
    st.summary.caught_up = caught_up_at.is_some();
    st.summary.position = st.committed_position.clone();
    for (t, n) in &st.invalid_by_table {
        warn!(table = %t, count = n, policy = ?cfg.invalid_values, "invalid values handled by policy");
    }
    Ok(Outcome::Done(st.summary))
}

async fn resolve_start(
    conn: &mut mysql_async::Conn,
    flavor: Flavor,
    at: &StartAt,
) -> Result<Position, SourceError> {
    let q = |e| SourceError::from_mysql(e, "resolving --start-at");
    Ok(match at {
        StartAt::At(p) => p.clone(),
        StartAt::Earliest => {
            let logs: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await.map_err(q)?;
            let first: String = logs.first().and_then(|r| r.get(0)).ok_or_else(|| {
                SourceError::Definite("SHOW BINARY LOGS returned no files".into())
            })?;
            Position::File(BinlogPos {
                file: first,
                pos: 4,
            })
        }
        StartAt::Current | StartAt::Snapshot => match flavor {
            Flavor::MariaDb => {
                let s: Option<String> = conn
                    .query_first("SELECT @@GLOBAL.gtid_binlog_pos")
                    .await
                    .map_err(q)?;
                match s.as_deref().map(str::parse::<MariaGtidState>) {
                    Some(Ok(st)) if !st.is_empty() => Position::MariaDb(st),
                    _ => Position::File(source::current_file_pos(conn).await?),
                }
            }
            Flavor::Mysql => {
                let s: Option<String> = conn
                    .query_first("SELECT @@GLOBAL.gtid_executed")
                    .await
                    .ok()
                    .flatten();
                match s
                    .as_deref()
                    .map(|t| t.replace('\n', "").parse::<MysqlGtidSet>())
                {
                    Some(Ok(set)) if !set.is_empty() => Position::Mysql(set),
                    _ => Position::File(source::current_file_pos(conn).await?),
                }
            }
        },
    })
}

fn next_deadline(st: &State, cfg: &PipelineConfig) -> Instant {
    // wake at least every 10 s (sink keepalive, progress log)
    let far = Instant::now() + Duration::from_secs(10);
    let data = st
        .buffers
        .values()
        .filter_map(|b| b.oldest)
        .chain(st.rejects_since)
        .min()
        .map(|t| t + cfg.max_latency)
        .unwrap_or(far);
    let pos_only = if st.position.as_ref().map(|p| p.to_string()) != st.started_position {
        st.last_commit + cfg.checkpoint_interval
    } else {
        far
    };
    data.min(pos_only)
}

fn time_due(st: &State, cfg: &PipelineConfig) -> bool {
    let now = Instant::now();
    let data = st
        .buffers
        .values()
        .filter_map(|b| b.oldest)
        .chain(st.rejects_since)
        .any(|t| now >= t + cfg.max_latency);
    data || (now >= st.last_commit + cfg.checkpoint_interval
        && st.position.as_ref().map(|p| p.to_string()) != st.started_position)
}

/// Buffers past `factor` times the size bounds.
fn size_exceeds(st: &State, cfg: &PipelineConfig, factor: usize) -> bool {
    let total: usize = st.buffers.values().map(|b| b.bytes).sum();
    total >= cfg.max_batch_bytes.saturating_mul(factor)
        || st
            .buffers
            .values()
            .any(|b| b.len() >= cfg.max_batch_rows.saturating_mul(factor))
}

fn needs_size_flush(st: &State, cfg: &PipelineConfig) -> bool {
    let total: usize = st.buffers.values().map(|b| b.bytes).sum();
    total >= cfg.max_batch_bytes || st.buffers.values().any(|b| b.len() >= cfg.max_batch_rows)
}

async fn apply_ddl(
    st: &mut State,
    committer: &mut Committer,
    table: &TableId,
    kind: DdlKind,
    version: u64,
) -> Result<(), PipelineError> {
    let name = table.to_string();
    if st.quarantined.contains_key(&name) {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        match committer.apply_ddl(table, kind.clone(), version).await {
            Ok(()) => {
                info!(table = %name, ?kind, version, "applied to the target");
                return Ok(());
            }
            Err(PipelineError::Sink(e)) if e.is_transient() => {
                backoff("DDL", &e, &mut attempt).await
            }
            Err(PipelineError::Sink(SinkError::Table { message, .. })) => {
                error!(table = %name, error = %message, "table stopped (quarantined); the other tables go on");
                if let DdlKind::RenameTable { to } = &kind {
                    // the new name holds the same rows: a table starting empty there would be
                    // a silently partial replica
                    st.table_versions.remove(&to.to_string());
                    st.quarantined.insert(to.to_string(), message.clone());
                }
                st.table_versions.remove(&name);
                st.quarantined.insert(name, message);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// A date or time outside the target's range becomes an invalid value (the policy decides).
pub(crate) fn out_of_target_range(v: &mut Value, lo: i32, hi: i32) {
    const US_PER_DAY: i64 = 86_400_000_000;
    let day = match v {
        Value::Date(d) => *d as i64,
        Value::DateTime(us) | Value::Timestamp(us) => us.div_euclid(US_PER_DAY),
        _ => return,
    };
    if day < lo as i64 || day > hi as i64 {
        let (y, m, d) = crate::decode::rows::civil_from_days(
            day.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        );
        let text = format!("{y:04}-{m:02}-{d:02}");
        *v = Value::Invalid {
            reason: "outside the dates the target can hold",
            text,
        };
    }
}

/// What every row of one transaction shares.
struct TxnMeta {
    version: u64,
    commit_us: i64,
    /// `_binlake_source`: origin server, GTID, binlog file and position.
    source: Arc<str>,
    /// The GTID (or file:pos) for errors and rejects.
    pos: String,
    /// Binlog end of the transaction (keyless snapshots skip what they already hold).
    file_pos: (u64, u64),
}

/// The progress marker of a keyless table read at startup (see [`crate::snapshot`]): it stays in
/// the checkpoint until the stream has passed the read's binlog point.
const KEYLESS: &str = "keyless";

impl SnapState {
    /// The stream has read up to `at` (a transaction with `version`, or a heartbeat).
    fn saw(&mut self, at: &BinlogPos, version: Option<u64>) {
        let p = pos_key(at);
        if self.stream_pos.is_none_or(|s| s < p) {
            self.stream_pos = Some(p);
            self.stream_at = Some(at.clone());
        }
        if let Some(v) = version {
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
    fn read_floor(&self) -> BinlogPos {
        match &self.stream_at {
            Some(s) if s.key() > self.start_floor.key() => s.clone(),
            _ => self.start_floor.clone(),
        }
    }

    /// The version right after the last transaction the stream delivered at or before `p`.
    fn base_at(&self, p: (u64, u64), at: &BinlogPos) -> Result<u64, String> {
        let i = self.history.partition_point(|(q, _)| *q <= p);
        if i > 0 {
            return Ok(self.history[i - 1].1 + 1);
        }
        if p >= self.floor.0 {
            return Ok(self.floor.1 + 1);
        }
        Err(format!(
            "a read at {at} arrived after the stream's history moved past it"
        ))
    }

    /// For rows read in `w`: the versions right after the last transactions at or before
    /// `w.low` and `w.high`. `None` until the stream has read past `w.high`; `Some(Err)` when
    /// the history no longer reaches back to `w.low`.
    fn window_versions(&self, w: &Window) -> Option<Result<(u64, u64), String>> {
        let high = pos_key(&w.high);
        if self.stream_pos.is_none_or(|s| s < high) {
            return None;
        }
        Some(
            self.base_at(pos_key(&w.low), &w.low)
                .and_then(|low| Ok((low, self.base_at(high, &w.high)?))),
        )
    }
}

/// Queues a backfill's tables; it is in the next checkpoint (an empty plan, planned again after
/// a restart).
fn queue_backfill(
    st: &mut State,
    snapshotter: &Snapshotter,
    b: &crate::control::Backfill,
) -> Result<Vec<String>, String> {
    for t in &b.tables {
        let name = t.to_string();
        if let Some(why) = st.quarantined.get(&name) {
            return Err(format!("{name} is stopped ({why}); rebuild it instead"));
        }
        if st.snap.progress.contains_key(&name) {
            return Err(format!("{name} has a snapshot in progress already"));
        }
    }
    let mut queued = Vec::new();
    for t in &b.tables {
        let name = t.to_string();
        let mut p = match (&b.filter, b.absent.is_empty()) {
            // only keys to check: no key range to read again
            (None, false) => crate::snapshot::new_progress(b.reason, Some("FALSE".into())),
            (f, _) => crate::snapshot::new_progress(b.reason, f.clone()),
        };
        p.absent = b.absent.clone();
        st.snap.changed.entry(name.clone()).or_default();
        st.snap.run_rows.insert(name.clone(), (0, Instant::now()));
        st.snap.progress.insert(name.clone(), p.clone());
        snapshotter.add(t.clone(), p, st.snap.read_floor());
        queued.push(name);
    }
    Ok(queued)
}

/// A snapshot is queued, planned, or has a chunk waiting. (`changed` has an entry from the
/// moment a snapshot is queued: its plan may still be in the snapshotter's channel, behind a
/// chunk the pipeline holds.)
fn snapshots_busy(st: &State) -> bool {
    st.snap.pending.is_some() || !st.snap.progress.is_empty() || !st.snap.changed.is_empty()
}

/// After the stream moved: finishes keyless snapshots it has passed, and takes a pending chunk
/// whose binlog point it has reached.
fn after_stream_moved(st: &mut State, cfg: &PipelineConfig) -> Result<(), PipelineError> {
    if !st.snap.keyless_cut.is_empty() {
        let pos = st.snap.stream_pos.unwrap_or((0, 0));
        let passed: Vec<String> = st
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
        Some(Err(message)) => {
            // Cannot happen with a history of a million transactions unless a chunk waited for
            // very long; read the table again rather than guess a version.
            let name = chunk.table.to_string();
            error!(table = %name, %message, "snapshot chunk dropped");
            st.quarantined.insert(
                name.clone(),
                format!("snapshot: {message}; backfill the table to resume"),
            );
            st.snap.progress.remove(&name);
            st.snap.changed.remove(&name);
            Ok(())
        }
    }
}

/// Buffers a chunk's rows with `version`, and records the chunk as read in the progress that
/// the next checkpoint carries (with those rows). Rows of keys a transaction after the read's
/// lower bound changed (a version at or above `low`) are dropped: the stream holds those keys'
/// state (see [`crate::snapshot`]).
fn take_chunk(
    st: &mut State,
    cfg: &PipelineConfig,
    chunk: Chunk,
    version: u64,
    low: u64,
) -> Result<(), PipelineError> {
    let name = chunk.table.to_string();
    if st.quarantined.contains_key(&name) || !st.snap.progress.contains_key(&name) {
        return Ok(());
    }
    let tm = chunk.map.clone();
    let read = chunk.rows.len() as u64;
    let source: Arc<str> = Arc::from(format!(
        "snapshot file={} pos={} low={}",
        chunk.window.high.file, chunk.window.high.pos, chunk.window.low
    ));
    let changed = st.snap.changed.get(&name).filter(|c| !c.is_empty());
    let mut kb = Vec::new();
    let mut dropped = 0u64;
    // rows of an initial snapshot of this run whose keys no binlog change touched are new to
    // the target: the sink may append them
    let mut fresh = st.snap.fresh.contains(&name);
    let pos = format!("snapshot at {}", chunk.window);
    // Tombstones of keys the source lacks (a repair of missed deletes) are snapshot rows like
    // any chunk's: versioned at the read, never taken for binlog changes (they must not advance
    // a table's applied version, nor be skipped as a replay below it).
    let deleted = chunk.tombstones;
    fresh &= !deleted;
    let (rows, columns) = match chunk.rows {
        ChunkRows::Rows(rows) => (rows, None),
        ChunkRows::Columns(mut cols) => {
            // DBLog: rows whose key the stream changed in or after this read's window are dropped.
            if let Some(ch) = changed {
                let keep: Vec<bool> = (0..cols.rows)
                    .map(|r| {
                        key_bytes_at(&cols.columns, &tm.primary_key, r, &mut kb);
                        match ch.get(&kb) {
                            Some(&v) if v >= low => false,
                            Some(_) => {
                                fresh = false;
                                true
                            }
                            None => true,
                        }
                    })
                    .collect();
                let kept = keep.iter().filter(|k| **k).count();
                if kept < cols.rows {
                    dropped = (cols.rows - kept) as u64;
                    let mask = arrow_array::BooleanArray::from(keep);
                    cols.columns = cols
                        .columns
                        .iter()
                        .map(|c| arrow_select::filter::filter(c.as_ref(), &mask))
                        .collect::<Result<_, _>>()
                        .map_err(|e| PipelineError::Build {
                            table: name.clone(),
                            message: e.to_string(),
                        })?;
                    cols.bytes = cols.bytes * kept / cols.rows.max(1);
                    cols.rows = kept;
                }
            }
            (Vec::new(), Some(cols).filter(|c| c.rows > 0))
        }
    };
    let rows: Vec<BufRow> = rows
        .into_iter()
        .filter_map(|values| {
            if let Some(ch) = changed {
                key_bytes(&values, &tm.primary_key, &mut kb);
                match ch.get(&kb) {
                    Some(&v) if v >= low => {
                        dropped += 1;
                        return None; // the stream has this key's state
                    }
                    Some(_) => fresh = false,
                    None => {}
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
    if dropped > 0 {
        debug!(table = %name, dropped, "snapshot rows of keys the stream changed in or after the read's window dropped");
    }
    if let Some(cols) = columns {
        take_columns(st, &tm, cols, version, chunk.read_at_us, &source, fresh)?;
    }
    if !rows.is_empty() {
        take_rows(st, cfg, &tm, rows, &pos, fresh)?;
    }
    if let Some(r) = st.snap.run_rows.get_mut(&name) {
        r.0 += read;
    }
    let Some(p) = st.snap.progress.get_mut(&name) else {
        return Ok(());
    };
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
        let secs = (now_us() - p.started_at_us) as f64 / 1e6;
        info!(table = %name, rows = p.rows, secs, reason = %p.reason, "snapshot finished");
        st.snap.progress.remove(&name);
        st.snap.changed.remove(&name);
        st.snap.run_rows.remove(&name);
        st.snap.fresh.remove(&name);
        st.snap.loaded.insert(name, now_us());
    }
    Ok(())
}

/// Decides which tables need a snapshot: at a fresh start with `--start-at snapshot`, every
/// selected table; on resume, the snapshots in progress and (with `snapshot`) the selected tables
/// the target has never seen. Keyless tables are read here, before the stream, and committed;
/// the others are queued for the readers.
#[allow(clippy::too_many_arguments)]
async fn start_snapshots(
    st: &mut State,
    cfg: &PipelineConfig,
    src: &SourceConfig,
    opts: &mysql_async::Opts,
    flavor: Flavor,
    start: &Position,
    fresh: bool,
    committer: &mut Committer,
) -> Result<Snapshotter, PipelineError> {
    let mut snap_cfg = cfg.snapshot.clone();
    // Readers build Arrow columns themselves unless a column rule reshapes rows first.
    snap_cfg.columnar = cfg.columns.is_empty().then_some(crate::snapshot::Columnar {
        date_range: st.date_range,
    });
    let snapshotter = Snapshotter::spawn(opts.clone(), snap_cfg);
    let mut new_tables = Vec::new();
    if cfg.start_at == StartAt::Snapshot {
        for t in crate::snapshot::list_tables(opts, &src.filter).await? {
            let name = t.to_string();
            let seen = st.table_versions.contains_key(&name)
                || st.snap.loaded.contains_key(&name)
                || st.snap.progress.contains_key(&name)
                || st.quarantined.contains_key(&name);
            if fresh || !seen {
                new_tables.push(t);
            }
        }
    }
    if !new_tables.is_empty() && flavor == Flavor::Mysql {
        return Err(SourceError::Definite(
            "snapshots need MariaDB's Binlog_snapshot_position, which MySQL lacks: on MySQL use --start-at current (only new changes) or earliest".into(),
        )
        .into());
    }
    // keyless snapshots committed before a restart: the stream still skips up to their point
    for (name, p) in &st.snap.progress {
        if p.reason == KEYLESS {
            let cut = p
                .ranges
                .first()
                .and_then(|r| r.after.as_ref())
                .and_then(|a| a.get("cut"))
                .and_then(|c| c.as_str())
                .and_then(|c| c.parse::<BinlogPos>().ok());
            if let Some(cut) = cut {
                st.snap.keyless_cut.insert(name.clone(), pos_key(&cut));
            }
        }
    }
    for (name, p) in st.snap.progress.clone() {
        if p.reason != KEYLESS {
            if let Some((db, t)) = name.split_once('.') {
                st.snap.changed.entry(name.clone()).or_default();
                st.snap.run_rows.insert(name.clone(), (0, Instant::now()));
                snapshotter.add(TableId::new(db, t), p, st.snap.read_floor());
            }
        }
    }
    if new_tables.is_empty() {
        return Ok(snapshotter);
    }
    let mut conn = source::connect(opts).await?;
    let mut keyless = 0;
    for t in new_tables {
        let name = t.to_string();
        let Some(desc) = crate::snapshot::values::describe(&mut conn, &t.db, &t.table).await?
        else {
            continue;
        };
        if !desc.keyless() {
            info!(table = %name, estimate = desc.estimate, "table gets an initial snapshot");
            st.snap.changed.entry(name.clone()).or_default();
            st.snap.fresh.insert(name.clone());
            snapshotter.add(
                t,
                crate::snapshot::new_progress("initial", None),
                st.snap.read_floor(),
            );
            continue;
        }
        let (tm, rows, window) =
            crate::snapshot::read_keyless(opts, &t, &st.snap.start_floor).await?;
        // the read holds exactly the table's transactions up to the window's end
        let at = window.high;
        let version = keyless_version(&mut conn, start, &at).await?;
        info!(table = %name, rows = rows.len(), at = %at, "keyless table read in one consistent snapshot");
        let source: Arc<str> = Arc::from(format!("snapshot file={} pos={}", at.file, at.pos));
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
        // The read is the table's whole content: it replaces whatever a first attempt that
        // crashed before its checkpoint left in the target (a sink without cross-table atomic
        // commits would otherwise hold those rows twice). Marked even when the table is empty.
        let shape = match st.plans.get(&name) {
            Some((src, Some(plan))) if Arc::ptr_eq(src, &tm) => plan.table.clone(),
            _ => tm.clone(),
        };
        buffer_for(st, t.clone(), &shape)?.replace = true;
        let mut p = crate::snapshot::new_progress(KEYLESS, None);
        p.rows = n;
        p.estimate = n;
        p.ranges.push(binlake_sink::RangeProgress {
            after: Some(serde_json::json!({ "cut": at.to_string() })),
            done: true,
            ..Default::default()
        });
        st.snap.progress.insert(name.clone(), p);
        st.snap.keyless_cut.insert(name, pos_key(&at));
        keyless += 1;
    }
    if keyless > 0 {
        // one commit: a keyless snapshot cannot resume halfway (no key to continue after)
        commit_and_wait(st, cfg, committer).await?;
    }
    Ok(snapshotter)
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

fn take_txn(st: &mut State, cfg: &PipelineConfig, txn: Transaction) -> Result<(), PipelineError> {
    st.summary.transactions += 1;
    crate::metrics::get().transactions(1);
    for d in &txn.ddl {
        info!(ddl = %d.sql, db = %d.db, gtid = ?txn.gtid, "DDL in the stream");
    }
    let Transaction {
        gtid,
        version,
        commit_us,
        origin_server_id,
        read_server_id,
        position,
        file_pos,
        changes,
        ..
    } = txn;
    if !changes.is_empty() {
        // The origin server, the GTID, and where it was read: that server's binlog file and
        // position (with several sources, `via` names which server's file).
        let source = Arc::from(format!(
            "server_id={origin_server_id} gtid={} via={read_server_id} file={} pos={}",
            gtid.as_deref().unwrap_or("-"),
            file_pos.file,
            file_pos.pos
        ));
        let meta = TxnMeta {
            version,
            commit_us,
            source,
            pos: gtid.unwrap_or_else(|| file_pos.to_string()),
            file_pos: pos_key(&file_pos),
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
    st.position = Some(position);
    st.last_commit_us = commit_us;
    Ok(())
}

fn take_group(
    st: &mut State,
    cfg: &PipelineConfig,
    tm: &Arc<TableMap>,
    changes: Vec<RowChange>,
    meta: &TxnMeta,
) -> Result<(), PipelineError> {
    let name = format!("{}.{}", tm.db, tm.table);
    if st.quarantined.contains_key(&name) {
        return Ok(()); // stopped: see the checkpoint's `quarantined`
    }
    if st
        .table_versions
        .get(&name)
        .is_some_and(|&v| meta.version <= v)
    {
        return Ok(()); // already in the target (a replay after restart)
    }
    if st
        .snap
        .keyless_cut
        .get(&name)
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
                if !tm.primary_key.is_empty() {
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
    if let Some(changed) = st.snap.changed.get_mut(&name) {
        if !tm.primary_key.is_empty() {
            for r in &rows {
                key_bytes(&r.values, &tm.primary_key, &mut kb);
                let v = changed.entry(kb.clone()).or_insert(0);
                *v = (*v).max(r.version);
            }
        }
    }
    take_rows(st, cfg, tm, rows, &meta.pos, false)
}

/// Checks values against the invalid-value policy and the target's range, and buffers the rows
/// (stream changes and snapshot rows alike).
fn take_rows(
    st: &mut State,
    cfg: &PipelineConfig,
    tm: &Arc<TableMap>,
    rows: Vec<BufRow>,
    pos: &str,
    fresh: bool,
) -> Result<(), PipelineError> {
    let id = TableId::new(&tm.db, &tm.table);
    let name = id.to_string();
    // Column rules: the target's shape of this table, and its rows in that shape.
    let (tm, rows) = if cfg.columns.is_empty() {
        (tm.clone(), rows)
    } else {
        let plan = match st.plans.get(&name) {
            Some((src, plan)) if Arc::ptr_eq(src, tm) => plan.clone(),
            _ => {
                let plan = cfg.columns.plan(tm)?;
                st.plans.insert(name.clone(), (tm.clone(), plan.clone()));
                plan
            }
        };
        match plan {
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
        }
    };
    let tm = &tm;
    let mut accepted: Vec<BufRow> = Vec::with_capacity(rows.len());
    'rows: for mut row in rows {
        for (i, v) in row.values.iter_mut().enumerate() {
            if let Some((lo, hi)) = st.date_range {
                out_of_target_range(v, lo, hi);
            }
            match v {
                Value::Absent => {
                    let column = tm
                        .columns
                        .get(i)
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    return Err(PipelineError::RowImage {
                        table: name,
                        column,
                        position: pos.to_string(),
                    });
                }
                Value::Invalid { reason, text } => {
                    let column = tm
                        .columns
                        .get(i)
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    match cfg.invalid_values {
                        InvalidPolicy::Fail => {
                            return Err(PipelineError::InvalidValue {
                                table: name,
                                column,
                                position: pos.to_string(),
                                reason,
                                text: text.clone(),
                            });
                        }
                        InvalidPolicy::Null => {
                            *st.invalid_by_table.entry(name.clone()).or_default() += 1;
                            st.summary.invalid_nulled += 1;
                            debug!(table = %name, %column, position = %pos, reason = *reason, value = %text, "invalid value stored as NULL");
                            *v = Value::Null;
                        }
                        InvalidPolicy::DeadLetter => {
                            let reason = format!("column `{column}`: {reason} ({text})");
                            *st.invalid_by_table.entry(name.clone()).or_default() += 1;
                            st.summary.rejected += 1;
                            st.rejects.push(Reject {
                                table: name.clone(),
                                position: pos.to_string(),
                                reason,
                                row_json: row_json(tm, &row.values),
                                version: row.version,
                            });
                            st.rejects_since.get_or_insert_with(Instant::now);
                            continue 'rows;
                        }
                    }
                }
                _ => {}
            }
        }
        accepted.push(row);
    }
    if accepted.is_empty() {
        return Ok(());
    }
    st.summary.rows += accepted.len() as u64;
    // A schema change for a table with buffered rows: those rows keep their old shape and are
    // written, before the new ones, by the next commit.
    let buf = buffer_for(st, id, tm)?;
    if !fresh {
        buf.insert_only = false;
    }
    for row in &accepted {
        buf.push(row).map_err(|message| PipelineError::Build {
            table: name.clone(),
            message,
        })?;
    }
    Ok(())
}

/// The buffer for a table in shape `tm`: rows buffered in another shape are set aside first
/// (they keep their shape and go out, before the new ones, with the next commit).
fn buffer_for<'a>(
    st: &'a mut State,
    id: TableId,
    tm: &Arc<TableMap>,
) -> Result<&'a mut TableBuffer, PipelineError> {
    let build = |id: TableId| {
        TableBuffer::new(id.clone(), tm.clone()).map_err(|message| PipelineError::Build {
            table: id.to_string(),
            message,
        })
    };
    if let Some(b) = st.buffers.get_mut(&id) {
        if !b.same_shape(tm) {
            let old = std::mem::replace(b, build(id.clone())?);
            if !old.is_empty() {
                info!(table = %old.id, "table shape changed; older rows go out in their own batch");
                st.set_aside.push(old);
            }
        }
    }
    Ok(match st.buffers.entry(id) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let b = build(e.key().clone())?;
            e.insert(b)
        }
    })
}

/// Buffers snapshot rows that a reader put in columns (no invalid values, no column rules:
/// the reader checked). The columnar counterpart of [`take_rows`].
fn take_columns(
    st: &mut State,
    tm: &Arc<TableMap>,
    cols: ColumnChunk,
    version: u64,
    read_at_us: i64,
    source: &str,
    fresh: bool,
) -> Result<(), PipelineError> {
    let id = TableId::new(&tm.db, &tm.table);
    let n = cols.rows as u64;
    let buf = buffer_for(st, id.clone(), tm)?;
    if !fresh {
        buf.insert_only = false;
    }
    buf.push_columns(cols, version, read_at_us, source)
        .map_err(|message| PipelineError::Build {
            table: id.to_string(),
            message,
        })?;
    st.summary.rows += n;
    Ok(())
}

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

/// One watermark row (see [`binlake_sink::watermark_fields`]).
struct Mark {
    table: String,
    gtid: Option<String>,
    version: u64,
    commit_us: i64,
}

/// The GTID in a `_binlake_source` text (`... gtid=0-1-42 ...`).
fn gtid_of(source: &str) -> Option<String> {
    source
        .split(' ')
        .find_map(|w| w.strip_prefix("gtid="))
        .filter(|g| *g != "-")
        .map(str::to_string)
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
        t.append_value(&m.table);
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
        t.append_value(&x.table);
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
struct Committer {
    /// The sink prefers fewer, larger commits (see `Sink::prefers_large_commits`).
    large: bool,
    sink: Option<Box<dyn Sink>>,
    inflight: Option<tokio::task::JoinHandle<CommitOutcome>>,
}

/// What a commit task hands back: the sink, and how the commit went.
type CommitOutcome = (Box<dyn Sink>, Result<Done, SinkError>);

struct Done {
    /// What the commit applied per table, for metrics, and the checkpoint's version.
    applied: Vec<crate::metrics::Applied>,
    version: u64,
    position: String,
    rows: usize,
    took: Duration,
    /// Tables this commit had to stop (see [`PipelineError`] and `Checkpoint::quarantined`).
    quarantined: Vec<(String, String)>,
}

impl Committer {
    /// Waits for the commit in flight, if any, and returns what it did.
    async fn wait(&mut self) -> Result<Option<Done>, PipelineError> {
        let Some(h) = self.inflight.take() else {
            return Ok(None);
        };
        let (sink, r) = h
            .await
            .map_err(|e| SinkError::Definite(format!("commit task failed: {e}")))?;
        self.sink = Some(sink);
        Ok(Some(r?))
    }

    /// Starts `commit` after the previous one finished. Transient errors are retried inside,
    /// forever, with backoff: the pipeline waits for the target and loses nothing meanwhile.
    async fn start(
        &mut self,
        mut commit: Commit,
        applied: Vec<crate::metrics::Applied>,
        version: u64,
    ) -> Result<Option<Done>, PipelineError> {
        let done = self.wait().await?;
        let mut sink = self
            .sink
            .take()
            .expect("sink present when nothing is in flight");
        self.inflight = Some(tokio::spawn(async move {
            let started = Instant::now();
            let position = commit.checkpoint.position.clone();
            let rows = commit.rows();
            let mut attempt = 0;
            let mut quarantined = Vec::new();
            loop {
                match sink.commit(commit.clone()).await {
                    Ok(()) => {
                        return (
                            sink,
                            Ok(Done {
                                applied,
                                version,
                                position,
                                rows,
                                took: started.elapsed(),
                                quarantined,
                            }),
                        )
                    }
                    Err(e) if e.is_transient() => backoff("commit", &e, &mut attempt).await,
                    // One table the target cannot take: stop that table, commit the others.
                    Err(SinkError::Table { table, message })
                        if commit.batches.iter().any(|b| b.table == table) =>
                    {
                        error!(table = %table, error = %message, "table stopped (quarantined); the other tables go on");
                        crate::metrics::get().error(false);
                        commit.batches.retain(|b| b.table != table);
                        commit.checkpoint.tables.remove(&table.to_string());
                        commit
                            .checkpoint
                            .quarantined
                            .insert(table.to_string(), message.clone());
                        quarantined.push((table.to_string(), message));
                    }
                    Err(e) => return (sink, Err(e)),
                }
            }
        }));
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
    fn busy(&self) -> bool {
        self.inflight.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Collects a commit that has finished, without waiting for one that has not.
    async fn reap(&mut self) -> Result<Option<Done>, PipelineError> {
        if self.inflight.as_ref().is_some_and(|h| h.is_finished()) {
            self.wait().await
        } else {
            Ok(None)
        }
    }

    async fn keepalive(&mut self) -> Result<(), PipelineError> {
        // a commit in flight renews the sink's lease itself
        if let Some(s) = self.sink.as_mut() {
            s.keepalive().await?;
        }
        Ok(())
    }
}

fn note_done(st: &mut State, done: Option<Done>) {
    if let Some(d) = done {
        for (t, why) in d.quarantined {
            st.table_versions.remove(&t);
            st.buffers.retain(|id, _| id.to_string() != t);
            st.set_aside.retain(|b| b.id.to_string() != t);
            st.snap.progress.remove(&t);
            st.snap.changed.remove(&t);
            st.quarantined.insert(t, why);
        }
        debug!(rows = d.rows, ms = d.took.as_millis() as u64, position = %d.position, "committed");
        crate::metrics::get().committed(&d.applied, d.took.as_micros() as u64, now_us(), d.version);
        st.committed_position = Some(d.position);
        st.summary.commits += 1;
    }
}

/// Builds the commit of everything buffered and starts it (see [`Committer`]).
async fn commit(
    st: &mut State,
    cfg: &PipelineConfig,
    committer: &mut Committer,
) -> Result<(), PipelineError> {
    let Some(position) = st.position.as_ref().map(|p| p.to_string()) else {
        return Ok(());
    };
    let has_data = st.buffers.values().any(|b| !b.is_empty())
        || !st.set_aside.is_empty()
        || !st.rejects.is_empty();
    if !has_data && st.started_position.as_deref() == Some(position.as_str()) {
        return Ok(());
    }
    let synced = now_us();
    let mut batches = Vec::new();
    let mut bufs: Vec<TableBuffer> = std::mem::take(&mut st.set_aside);
    bufs.extend(st.buffers.drain().map(|(_, b)| b));
    let mut marks: Vec<Mark> = Vec::new();
    let mut applied = Vec::new();
    for buf in bufs {
        let table = buf.id.to_string();
        let stream_max = buf.stream_max_version;
        applied.push(crate::metrics::Applied {
            table: table.clone(),
            rows: buf.len() as u64,
            transactions: buf.txns,
            bytes: buf.bytes as u64,
            last_commit_us: buf.last_change.as_ref().map_or(0, |c| c.1),
        });
        if let Some((version, commit_us, source)) = &buf.last_change {
            st.table_commit_us.insert(table.clone(), *commit_us);
            marks.push(Mark {
                table: table.clone(),
                gtid: gtid_of(source),
                version: *version,
                commit_us: *commit_us,
            });
        }
        match buf.into_batch(synced) {
            Ok(Some(b)) => {
                if stream_max > 0 {
                    let v = st.table_versions.entry(b.table.to_string()).or_default();
                    *v = (*v).max(stream_max);
                }
                batches.push(b);
            }
            Ok(None) => {}
            Err(message) => return Err(PipelineError::Build { table, message }),
        }
    }
    marks.push(Mark {
        table: "*".into(),
        gtid: None,
        version: st.position.as_ref().map_or(0, |p| p.version()),
        commit_us: st.last_commit_us,
    });
    let watermarks = watermarks_batch(&cfg.name, &position, &marks, synced);
    let rejects = rejects_batch(&st.rejects);
    st.rejects.clear();
    st.rejects_since = None;
    let checkpoint = Checkpoint {
        quarantined: st.quarantined.clone(),
        pipeline: cfg.name.clone(),
        position: position.clone(),
        tables: st.table_versions.clone(),
        source_commit_us: st.last_commit_us,
        committed_at_us: now_us(),
        seq: 0,
        snapshots: st.snap.progress.clone(),
        loaded: st.snap.loaded.clone(),
        snapshot_version: st.snap.last_version,
        table_commit_us: st.table_commit_us.clone(),
        last_error: st.last_error.clone(),
    };
    let done = committer
        .start(
            Commit {
                batches,
                rejects,
                watermarks,
                checkpoint,
            },
            applied,
            st.position.as_ref().map_or(0, |p| p.version()),
        )
        .await?;
    note_done(st, done);
    st.started_position = Some(position);
    st.last_commit = Instant::now();
    Ok(())
}

/// Commits what is buffered and waits until everything is durable.
async fn commit_and_wait(
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
async fn backoff(what: &str, e: &SinkError, attempt: &mut u32) {
    *attempt += 1;
    crate::metrics::get().error(true);
    let wait = Duration::from_secs(1u64 << (*attempt).min(5).saturating_sub(1))
        .min(Duration::from_secs(30));
    warn!(error = %e, attempt = *attempt, wait_s = wait.as_secs(), "sink {what} failed; retrying");
    tokio::time::sleep(wait).await;
}

#[cfg(test)]
mod snapshot_version_tests {
    use super::SnapState;
    use crate::position::BinlogPos;
    use crate::snapshot::Window;

    fn at(pos: u64) -> BinlogPos {
        BinlogPos {
            file: "binlog.000001".into(),
            pos,
        }
    }

    /// A read's window takes its version from `high` and its drop threshold from `low`, and
    /// waits until the stream has read past `high`.
    #[test]
    fn a_window_is_placed_by_its_bounds() {
        let mut s = SnapState {
            floor: ((0, 0), 0),
            ..Default::default()
        };
        s.changed.insert("shop.t".into(), Default::default()); // a snapshot in progress
        let w = Window {
            low: at(150),
            high: at(250),
        };
        s.saw(&at(100), Some(1 << 16)); // A
        s.saw(&at(200), Some(2 << 16)); // B: in the window
        assert_eq!(
            s.window_versions(&w),
            None,
            "the stream has not passed high"
        );
        s.saw(&at(240), None); // a heartbeat short of high
        assert_eq!(s.window_versions(&w), None);
        s.saw(&at(300), Some(3 << 16)); // C: after the window
        assert_eq!(
            s.window_versions(&w),
            Some(Ok(((1 << 16) + 1, (2 << 16) + 1))),
            "rows of keys B changed are dropped (B >= low), the rest placed after B"
        );
        // a window with nothing between its bounds
        let w = Window {
            low: at(200),
            high: at(200),
        };
        assert_eq!(
            s.window_versions(&w),
            Some(Ok(((2 << 16) + 1, (2 << 16) + 1)))
        );
        // before the run's first transaction: the start position's version
        let mut f = SnapState {
            floor: ((0, 0), 5 << 16),
            ..Default::default()
        };
        f.saw(&at(90), None);
        let w = Window {
            low: at(80),
            high: at(90),
        };
        assert_eq!(
            f.window_versions(&w),
            Some(Ok(((5 << 16) + 1, (5 << 16) + 1)))
        );
    }

    /// Reads of a snapshot queued now start after the stream's position and the run's start.
    #[test]
    fn the_read_floor_is_the_later_of_the_start_and_the_stream() {
        let mut s = SnapState {
            start_floor: at(500),
            ..Default::default()
        };
        assert_eq!(s.read_floor(), at(500));
        s.saw(&at(400), None);
        assert_eq!(s.read_floor(), at(500));
        s.saw(&at(600), Some(1 << 16));
        assert_eq!(s.read_floor(), at(600));
    }

    #[test]
    fn later_reads_at_the_same_point_win_and_stay_below_the_next_transaction() {
        let mut s = SnapState::default();
        let a = 7u64 << 16; // a GTID version
        assert_eq!(s.next_snapshot_version(a + 1), a + 1);
        assert_eq!(s.next_snapshot_version(a + 1), a + 2, "a later read wins");
        assert_eq!(s.next_snapshot_version(a + 1), a + 3);
        // after the next transaction, the block starts again
        let b = 8u64 << 16;
        assert_eq!(s.next_snapshot_version(b + 1), b + 1);
        // a full block saturates below the next transaction
        s.last_version = a | 0xffff;
        assert_eq!(s.next_snapshot_version(a + 1), a | 0xffff);
        // file-position versions reserve nothing
        let mut f = SnapState::default();
        assert_eq!(f.next_snapshot_version(1235), 1235);
        assert_eq!(f.next_snapshot_version(1235), 1235);
    }
}

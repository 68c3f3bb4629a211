//! Snapshots: reading tables' existing rows into the same stream of changes as the binlog
//! (initial loads, backfills), without locks and without writing to the source.
//!
//! ## How a chunk joins the stream (the handoff argument)
//! A keyed table is read in chunks by primary key (keyset paging: `WHERE key > last ORDER BY key
//! LIMIT n`), each chunk in its own `START TRANSACTION WITH CONSISTENT SNAPSHOT` (the read
//! view S). Where S sits in the binlog is never taken from one server answer; each read gets a
//! [`Window`] of two bounds that cannot be raced, and the stream decides the rest:
//! - `low`, read just before S starts: the end of the last transaction group the server has
//!   *committed*. Every transaction ending at or before `low` is visible to S.
//! - `high`, read just after S starts (`SHOW MASTER STATUS`): the end of the binlog. No
//!   transaction ending after `high` is visible to S.
//!
//! For the transactions between the bounds S may hold any subset, so the pipeline uses none of
//! what S says about the keys they changed: it holds the chunk until the stream has read past
//! `high`, then drops every chunk row whose key a binlog change at or after the first
//! transaction past `low` touched (the pipeline records, per table being snapshotted, the highest
//! version of a change per key). The other rows get the version `v(H) + 1`, H being the last
//! transaction at or before `high`, so for each key the replica converges to the source:
//! - a kept key was changed by no transaction in (`low`, `high`]: S holds exactly its state
//!   after every transaction up to `high`, which is older than every later change (`v(H) + 1 <
//!   v(B)` for every B after `high`, as binlog versions are multiples of 2^16, see
//!   [`crate::position`]) and newer than every earlier one;
//! - a dropped key's state comes from the stream: its last change in the window or later
//!   carries the whole row (`binlog_row_image = FULL`, checked by preflight) or its tombstone.
//!
//! Later reads after the same H get the next sub-versions (`v(H) + 2`, ...; the highest is
//! checkpointed), so a later read of a key, say a backfill repairing a change the binlog never
//! carried, wins over an earlier one. The stream reads on meanwhile from its own position (it
//! never waits for the snapshot), so a long snapshot cannot outlive binlog retention.
//!
//! **Why `low` holds.** `SHOW STATUS LIKE 'binlog_snapshot_%'` outside a transaction reports the
//! server's last committed position, which the group-commit leader sets under
//! `LOCK_commit_ordered` and keeps that lock until every transaction of the group has run its
//! engine commit (`commit_ordered`), and the reader copies it under the same lock. `START
//! TRANSACTION WITH CONSISTENT SNAPSHOT` creates the InnoDB read view under that lock too, later:
//! so S sees every group up to `low`. MariaDB commits in binlog order, so "up to" is a prefix.
//! - *Two-phase commit.* A transaction is in the binlog (and in `SHOW MASTER STATUS`,
//!   `@@gtid_binlog_pos` and the stream) before its engine commit; a semi-synchronous primary
//!   holds it there for seconds. It is past `low` until it commits, so it is in the window, and
//!   the keys it changes come from the stream.
//! - *Group commit.* `low` moves by whole groups, after the whole group committed.
//! - *Concurrent `SHOW STATUS`.* The answer goes through shared variables that another session's
//!   `SHOW STATUS` can overwrite (measured here: 1.6% of reads beside a monitoring loop). Inside
//!   a snapshot that can name a transaction S does not see, which is why nothing is read there.
//!   Outside one, any session's value is its own snapshot point, its own last commit, or the
//!   server's last commit, each committed when written: an overwrite can make `low` older (a
//!   larger window, more keys taken from the stream), never newer.
//! - *Rotation.* The one exception: when a file rotates while a group waits between its binlog
//!   write and its commit, the server publishes the new file's start before that group commits,
//!   and a `FLUSH LOGS` then can pair the new file's name with the old file's offset. A `low` at
//!   a file's start or past the binlog's end is used only once it and the binlog's end have stood
//!   still for a second (no group in flight), and then as the binlog's end.
//! - *Parallel readers.* Each read takes its own bounds on its own connection; nothing is shared.
//!
//! **The stream's start and the recorded keys.** Dropping keys needs every change after `low`
//! to be known, so a read waits until `low` is at or past its snapshot's *floor*: the binlog's
//! end when the run started (the stream starts at `@@gtid_binlog_pos`, which may name a
//! transaction in the binlog but not yet committed: the stream never delivers it, and a read
//! must see it), or the stream's position when the snapshot was queued (the pipeline records
//! changed keys from then on). The wait ends when the server commits what it has written.
//!
//! Keys a transaction before `low` deleted are absent from the chunk; their tombstones stay. As
//! in Netflix's DBLog, rows whose key the stream changed in or after the window never reach a
//! buffer: a hard-deleting sink must not see the old row again. Repair tombstones (keys the
//! source lacks, [`read_absent`]) are read and placed the same way.
//!
//! ## Resume
//! The progress of each key range (the last key read) is put in the checkpoint when the chunk's
//! rows are taken into the buffers, so the checkpoint that commits those rows also records them
//! as read. After kill -9 the pipeline continues each range after its last committed key, with
//! new chunks (and new, higher versions): nothing is skipped, and a row read twice is written
//! with the version of its newest read.
//!
//! ## Tables without a primary key
//! They cannot be paged or merged by key, so they are read whole in one consistent read. Rows
//! cannot be dropped by key, so the read's window must hold no transaction that wrote to the
//! table: the binlog between `low` and `high` is checked for a table map of it (`SHOW BINLOG
//! EVENTS`), and the table is read again when one is there. The read then holds exactly the
//! table's transactions up to `high`.
//! - At startup (a table new to the target) the read comes before the stream, is committed in
//!   one commit, and the stream drops that table's transactions at or before `high` (the cut).
//! - While the stream runs (a re-snapshot after RENAME TABLE into the name or a lost position,
//!   a backfill) it is one chunk ([`read_whole`]), placed by the pipeline at its window like any
//!   chunk: versioned between the last transaction at or before `high` and the next, it replaces
//!   what the target holds of the table below that version, while the stream's later changes
//!   stay. A backfill `--where` is refused (the read is whole).
//!
//! The read's batch is marked as the table's whole content (`TableBatch::replace`): a crash
//! between its data and its checkpoint, in a sink whose commits are not atomic across tables,
//! makes the restart read the table again, and that read replaces the first attempt's rows
//! (Delta: one overwrite commit; ClickHouse: a shadow table swapped in with `EXCHANGE TABLES`;
//! Parquet: delete rows that cancel what the changelog counted, in the read's file) instead of
//! adding to them.
//!
//! ## Reading
//! Key ranges are read through [`wire`], binlake's own client for the chunk queries (the same
//! session settings, prepared statements and binary rows as mysql_async, string cells appended
//! to Arrow from the socket buffer). When it cannot serve the server's setup (TLS, another login
//! plugin, an unexpected packet) the reader falls back to mysql_async for good, and re-reads the
//! chunk it was on: nothing of a chunk leaves the reader before the chunk is complete. Plans,
//! absent-key lookups, keyless tables and `validate` use mysql_async. Both read the bounds on
//! the chunk's own connection, as text queries.
//!
//! ## Memory
//! At most `parallelism` chunks are in flight between readers and the pipeline, each at most
//! `chunk_rows` rows; the pipeline's size bounds apply to snapshot rows as to stream rows.
//! The only state that grows with the snapshot's duration is the set of keys the stream changed
//! in a table while it is being snapshotted (a few dozen bytes per changed key).

mod plan;
mod read;
pub mod values;
mod window;
pub mod wire;

pub(crate) use read::read_chunk;
use read::{chunk_rows, read_range, Reading};

use plan::plan;
pub use window::Window;
use window::{begin_read, touched};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use binlake_sink::{RangeProgress, SnapshotProgress, TableId};
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Value as My};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::columnar::{columnar_key, ChunkBuilder, ColumnChunk};
use crate::decode::{ColType, TableMap, Value};
use crate::position::BinlogPos;
use crate::source::{self, SourceError};
use values::{ident, key_json, SnapTable};
use wire::{Cell, Wire, WireError};

#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// Key ranges read at once (`snapshot_parallelism`).
    pub parallelism: usize,
    /// Rows per chunk (`snapshot_chunk_rows`).
    pub chunk_rows: usize,
    /// Readers put keyed tables' rows straight into Arrow columns (set by the pipeline when
    /// no column rule changes rows on their way in).
    pub columnar: Option<Columnar>,
}

/// What a reader needs to put rows into columns as the pipeline would.
#[derive(Debug, Clone, Copy)]
pub struct Columnar {
    /// Days the target can hold (dates outside are invalid values: the row path decides).
    pub date_range: Option<(i32, i32)>,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            parallelism: 2,
            chunk_rows: 20_000,
            columnar: None,
        }
    }
}

/// Rows read in one consistent snapshot.
#[derive(Debug)]
pub struct Chunk {
    pub table: TableId,
    pub range: usize,
    pub map: Arc<TableMap>,
    pub rows: ChunkRows,
    /// The last key read (JSON cells), where the range resumes.
    pub after: Option<serde_json::Value>,
    /// The range has no rows after this chunk.
    pub done: bool,
    /// Binlog positions around the read (see the module doc).
    pub window: Window,
    pub read_at_us: i64,
    /// The rows are tombstones (key columns set, the rest NULL) of keys the source does not
    /// have at `at`: the answer to a progress's `absent` keys. Not a key range's chunk.
    pub tombstones: bool,
    /// The plan it belongs to (its progress's `started_at_us`): a chunk of a snapshot that was
    /// replaced since (a DDL statement started the table's snapshot again) is dropped.
    pub plan: i64,
}

/// A chunk's rows: values per row, or (the fast path) already in Arrow columns.
#[derive(Debug)]
pub enum ChunkRows {
    Rows(Vec<Vec<Value>>),
    Columns(ColumnChunk),
}

impl ChunkRows {
    pub fn len(&self) -> usize {
        match self {
            ChunkRows::Rows(r) => r.len(),
            ChunkRows::Columns(c) => c.rows,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the readers tell the pipeline.
#[derive(Debug)]
pub enum SnapshotMsg {
    /// A table was planned: its key ranges (progress to put in the checkpoint).
    Planned {
        table: TableId,
        progress: SnapshotProgress,
    },
    Chunk(Chunk),
    /// The table cannot be snapshotted (definite): the pipeline stops that table.
    Failed {
        table: TableId,
        error: String,
        /// The plan the failed work belonged to (None: planning itself failed).
        plan: Option<i64>,
        /// The table changed shape at the source since it was planned (an unknown column, a
        /// changed definition): it is read again.
        reshaped: bool,
        /// The table is gone at the source: the stream's DROP or RENAME decides what follows.
        gone: bool,
    },
}

/// Work for the readers.
#[derive(Debug, Clone)]
enum Work {
    /// Plan a table's ranges (or take the ranges of a snapshot in progress).
    Plan {
        table: TableId,
        progress: SnapshotProgress,
        floor: BinlogPos,
    },
    Range {
        table: Arc<SnapTable>,
        id: TableId,
        range: usize,
        progress: RangeProgress,
        filter: Option<String>,
        floor: BinlogPos,
        plan: i64,
    },
    /// Read a keyless table whole in one consistent read (see [`read_whole`]).
    Whole {
        table: Arc<SnapTable>,
        id: TableId,
        floor: BinlogPos,
        plan: i64,
    },
    /// Check which of these keys the source lacks (see `SnapshotProgress::absent`).
    Absent {
        table: Arc<SnapTable>,
        id: TableId,
        keys: Vec<serde_json::Value>,
        floor: BinlogPos,
        plan: i64,
    },
}

impl Work {
    fn plan(&self) -> Option<i64> {
        match self {
            Work::Plan { .. } => None,
            Work::Range { plan, .. } | Work::Absent { plan, .. } | Work::Whole { plan, .. } => {
                Some(*plan)
            }
        }
    }

    /// What a read of this work needs (None: planning).
    fn reading(&self) -> Option<Reading<'_>> {
        match self {
            Work::Plan { .. } => None,
            Work::Range {
                table,
                id,
                floor,
                plan,
                ..
            }
            | Work::Whole {
                table,
                id,
                floor,
                plan,
            }
            | Work::Absent {
                table,
                id,
                floor,
                plan,
                ..
            } => Some(Reading {
                table,
                id,
                floor,
                plan: *plan,
            }),
        }
    }

    fn table(&self) -> TableId {
        match self {
            Work::Plan { table, .. } => table.clone(),
            Work::Range { id, .. } | Work::Absent { id, .. } | Work::Whole { id, .. } => id.clone(),
        }
    }
}

/// The readers: `parallelism` tasks taking work from one queue.
pub struct Snapshotter {
    queue: Arc<Mutex<VecDeque<Work>>>,
    notify: Arc<Notify>,
    pub rx: mpsc::Receiver<SnapshotMsg>,
    /// The readers end with the snapshotter (a pipeline restart starts new ones).
    _readers: tokio::task::JoinSet<()>,
}

impl Snapshotter {
    pub fn spawn(opts: Opts, cfg: SnapshotConfig) -> Snapshotter {
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        let notify = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(cfg.parallelism.max(1));
        let mut readers = tokio::task::JoinSet::new();
        for worker in 0..cfg.parallelism.max(1) {
            let (q, n, tx, opts, cfg) = (
                queue.clone(),
                notify.clone(),
                tx.clone(),
                opts.clone(),
                cfg.clone(),
            );
            // (in the pipeline's span: with [[pipelines]], its log lines name it)
            readers.spawn(tracing::Instrument::in_current_span(async move {
                if let Err(e) = reader(worker, q, n, tx, opts, cfg).await {
                    warn!(worker, error = %e, "snapshot reader stopped");
                }
            }));
        }
        Snapshotter {
            queue,
            notify,
            rx,
            _readers: readers,
        }
    }

    /// Plans `table` (a new snapshot, or one in progress to continue). Every read of it starts
    /// only once the source has committed everything up to `floor` (see the module doc).
    /// Drops the queued reads of `table` (its snapshot was replaced; reads in progress finish,
    /// and the pipeline ignores their chunks).
    pub fn cancel(&self, table: &TableId) {
        self.queue
            .lock()
            .expect("queue")
            .retain(|w| &w.table() != table);
    }

    pub fn add(&self, table: TableId, progress: SnapshotProgress, floor: BinlogPos) {
        self.queue.lock().expect("queue").push_back(Work::Plan {
            table,
            progress,
            floor,
        });
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

/// A new snapshot's progress before planning.
pub fn new_progress(reason: &str, filter: Option<String>) -> SnapshotProgress {
    SnapshotProgress {
        reason: reason.to_string(),
        filter,
        ranges: vec![],
        rows: 0,
        estimate: 0,
        started_at_us: crate::clock::now_us(),
        absent: vec![],
        cut: None,
        purge_below: None,
    }
}

/// A snapshot session's settings. Results come back as the stored bytes (decoded like the
/// binlog's). Parameters go in as bytes too (character_set_client = binary): a key read back
/// from a latin1 column is bound as `CONVERT(CAST(? AS BINARY) USING latin1)`, and a utf8mb4
/// client would first cut it at the first byte that is not valid UTF-8.
const SESSION_SETUP: [&str; 3] = [
    "SET SESSION time_zone = '+00:00', SESSION character_set_results = NULL",
    "SET SESSION character_set_client = binary",
    "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
];

pub(crate) async fn session(opts: &Opts) -> Result<mysql_async::Conn, SourceError> {
    let mut conn = source::connect(opts).await?;
    for sql in SESSION_SETUP {
        conn.query_drop(sql)
            .await
            .map_err(|e| SourceError::from_mysql(e, "snapshot session"))?;
    }
    Ok(conn)
}

async fn reader(
    worker: usize,
    queue: Arc<Mutex<VecDeque<Work>>>,
    notify: Arc<Notify>,
    tx: mpsc::Sender<SnapshotMsg>,
    opts: Opts,
    cfg: SnapshotConfig,
) -> Result<(), SourceError> {
    let mut conn: Option<mysql_async::Conn> = None;
    // chunk reads go through the snapshot client (see `wire`) unless the server's setup needs
    // mysql_async (then `wire_off`, for the rest of the process)
    let mut wire: Option<Wire> = None;
    let mut wire_off =
        std::env::var_os("BINLAKE_SNAPSHOT_CLIENT").is_some_and(|v| v == "mysql_async");
    let mut attempt = 0u32;
    loop {
        let work = loop {
            let w = queue.lock().expect("queue").pop_front();
            match w {
                Some(w) => break w,
                None => {
                    if tx.is_closed() {
                        return Ok(());
                    }
                    tokio::select! {
                        _ = notify.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let on_wire = matches!(work, Work::Range { .. }) && !wire_off;
        if on_wire && wire.is_none() {
            match Wire::connect(&opts, &SESSION_SETUP).await {
                Ok(w) => {
                    debug!(
                        worker,
                        "snapshot chunks are read through the snapshot client"
                    );
                    wire = Some(w)
                }
                Err(WireError::Unsupported(why) | WireError::Protocol(why)) => {
                    info!(worker, reason = %why, "snapshot chunks are read through mysql_async");
                    wire_off = true;
                }
                Err(WireError::Source(e)) => {
                    if !connect_failed(worker, e, work, &queue, &tx, &mut attempt).await {
                        return Ok(());
                    }
                    continue;
                }
            }
        }
        let result = match (&mut wire, &work) {
            (
                Some(w),
                Work::Range {
                    range,
                    progress,
                    filter,
                    ..
                },
            ) if !wire_off => {
                let r = work.reading().expect("a read");
                let (range, progress, filter) = (*range, progress.clone(), filter.clone());
                read_range(
                    &mut ChunkConn::Wire(w),
                    &tx,
                    r,
                    range,
                    progress,
                    filter,
                    &cfg,
                )
                .await
            }
            _ => {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match session(&opts).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            if !connect_failed(worker, e, work, &queue, &tx, &mut attempt).await {
                                return Ok(());
                            }
                            continue;
                        }
                    },
                };
                match &work {
                    Work::Plan {
                        table,
                        progress,
                        floor,
                    } => {
                        let (t, p, f) = (table.clone(), progress.clone(), floor.clone());
                        plan(c, &queue, &notify, &tx, t, p, f, &cfg)
                            .await
                            .map(|_| ())
                    }
                    Work::Range {
                        range,
                        progress,
                        filter,
                        ..
                    } => {
                        let r = work.reading().expect("a read");
                        let (range, progress, filter) = (*range, progress.clone(), filter.clone());
                        read_range(&mut ChunkConn::My(c), &tx, r, range, progress, filter, &cfg)
                            .await
                    }
                    Work::Whole { .. } => read_whole(c, &tx, work.reading().expect("a read")).await,
                    Work::Absent { keys, .. } => {
                        let r = work.reading().expect("a read");
                        read_absent(&mut ChunkConn::My(c), &tx, r, keys).await
                    }
                }
            }
        };
        match result {
            Ok(()) => attempt = 0,
            Err(Failure::Closed) => return Ok(()),
            Err(Failure::Wire(why)) => {
                // nothing of the failed chunk was sent: read it again through mysql_async
                warn!(worker, reason = %why, "the snapshot client met a packet it does not handle; reading through mysql_async from now on");
                wire = None;
                wire_off = true;
                queue.lock().expect("queue").push_front(work);
            }
            Err(Failure::Source(e)) if e.is_transient() => {
                // The connection broke mid-chunk: that chunk was not sent; read it again.
                attempt += 1;
                warn!(worker, error = %e, attempt, "snapshot read failed; retrying");
                conn = None;
                wire = None;
                queue.lock().expect("queue").push_front(work);
                tokio::time::sleep(Duration::from_secs(1 << attempt.min(5))).await;
            }
            Err(Failure::Source(e)) => {
                let table = work.table();
                if tx
                    .send(SnapshotMsg::Failed {
                        table,
                        reshaped: reshaped(&e),
                        gone: gone(&e),
                        error: e.to_string(),
                        plan: work.plan(),
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                conn = None;
                wire = None;
            }
        }
    }
}

/// A reader could not connect for `work`: a transient error puts the work back and waits (with
/// backoff); a definite one fails the work's table (the pipeline stops it, the others go on).
/// False when the pipeline is gone.
async fn connect_failed(
    worker: usize,
    e: SourceError,
    work: Work,
    queue: &Mutex<VecDeque<Work>>,
    tx: &mpsc::Sender<SnapshotMsg>,
    attempt: &mut u32,
) -> bool {
    if e.is_transient() {
        *attempt += 1;
        warn!(worker, error = %e, attempt = *attempt, "snapshot reader cannot connect; retrying");
        queue.lock().expect("queue").push_front(work);
        tokio::time::sleep(Duration::from_secs(1 << (*attempt).min(5))).await;
        return true;
    }
    let failed = SnapshotMsg::Failed {
        table: work.table(),
        reshaped: reshaped(&e),
        gone: gone(&e),
        error: e.to_string(),
        plan: work.plan(),
    };
    tx.send(failed).await.is_ok()
}

/// The error says the table changed shape since it was planned: an unknown column (1054), a
/// definition changed under the read's snapshot (1412).
fn reshaped(e: &SourceError) -> bool {
    matches!(
        e,
        SourceError::Server {
            code: 1054 | 1412,
            ..
        }
    )
}

/// The error says the table is gone (1146: no such table).
fn gone(e: &SourceError) -> bool {
    matches!(e, SourceError::Server { code: 1146, .. })
}

/// The connection a key range is read through.
enum ChunkConn<'a> {
    My(&'a mut mysql_async::Conn),
    Wire(&'a mut Wire),
}

enum Failure {
    Source(SourceError),
    /// The snapshot client cannot go on with this server (see [`wire`]).
    Wire(String),
    /// The pipeline is gone.
    Closed,
}

impl Failure {
    /// For reads outside the readers (no pipeline channel, no snapshot client).
    fn into_source(self) -> SourceError {
        match self {
            Failure::Source(e) => e,
            Failure::Wire(why) => SourceError::Definite(why),
            Failure::Closed => SourceError::Definite("the pipeline stopped".into()),
        }
    }
}

impl From<SourceError> for Failure {
    fn from(e: SourceError) -> Self {
        Failure::Source(e)
    }
}

impl From<WireError> for Failure {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Source(e) => Failure::Source(e),
            WireError::Unsupported(why) | WireError::Protocol(why) => Failure::Wire(why),
        }
    }
}

const ABSENT_PER_QUERY: usize = 500;

/// Which of `keys` (JSON key cells) the source does not have, in one consistent snapshot: their
/// tombstones go to the pipeline as one chunk, with the read's window like any chunk (so a change
/// the stream brings in or after the window still wins). A key is present only when the source
/// returns exactly its bytes (a key equal only in the column's collation is another key in the
/// target).
async fn read_absent(
    conn: &mut ChunkConn<'_>,
    tx: &mpsc::Sender<SnapshotMsg>,
    r: Reading<'_>,
    keys: &[serde_json::Value],
) -> Result<(), Failure> {
    let (table, id) = (r.table, r.id);
    let q = |e| SourceError::from_mysql(e, "checking keys the target holds");
    let wanted: Vec<Vec<My>> = keys
        .iter()
        .map(|k| {
            values::key_cells(k).ok_or_else(|| {
                Failure::Source(SourceError::Definite(format!(
                    "repair of {id}: the key {k} cannot be read back"
                )))
            })
        })
        .collect::<Result<_, _>>()?;
    let kcols: Vec<&values::SnapColumn> = table.key_columns().collect();
    let select = kcols
        .iter()
        .map(|c| ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let one = kcols
        .iter()
        .map(|c| format!("{} = {}", ident(&c.name), c.param_sql))
        .collect::<Vec<_>>()
        .join(" AND ");
    let window = begin_read(conn, r.floor, Some(tx)).await?;
    let ChunkConn::My(conn) = conn else {
        unreachable!("absent keys are read through mysql_async")
    };
    let cols = &table.map.columns;
    let pk = &table.map.primary_key;
    // a key's identity: its cells as the pipeline's values, in the pipeline's key bytes
    let identity = |cells: Vec<My>| -> (Vec<Value>, Vec<u8>) {
        let mut values = vec![Value::Null; cols.len()];
        for (&i, cell) in pk.iter().zip(cells) {
            values[i] = values::cell(cell, &cols[i].ty);
        }
        let mut kb = Vec::new();
        crate::columnar::key_bytes(&values, pk, &mut kb);
        (values, kb)
    };
    let mut present = std::collections::HashSet::new();
    for part in wanted.chunks(ABSENT_PER_QUERY) {
        let cond = vec![format!("({one})"); part.len()].join(" OR ");
        let sql = format!(
            "SELECT {select} FROM {}.{} WHERE {cond}",
            ident(&id.db),
            ident(&id.table)
        );
        let params: Vec<My> = part.iter().flatten().cloned().collect();
        let rows: Vec<mysql_async::Row> = conn.exec(sql, params).await.map_err(q)?;
        for r in rows {
            present.insert(identity(r.unwrap()).1);
        }
    }
    conn.query_drop("COMMIT").await.map_err(q)?;
    let mut rows = Vec::new();
    for cells in wanted {
        let (values, kb) = identity(cells);
        if !present.contains(&kb) {
            rows.push(values);
        }
    }
    info!(table = %id, checked = keys.len(), absent = rows.len(), window = %window, "keys only in the target checked at the source");
    tx.send(SnapshotMsg::Chunk(Chunk {
        table: id.clone(),
        range: usize::MAX,
        map: table.map.clone(),
        rows: ChunkRows::Rows(rows),
        after: None,
        done: true,
        window,
        read_at_us: crate::clock::now_us(),
        tombstones: true,
        plan: r.plan,
    }))
    .await
    .map_err(|_| Failure::Closed)
}

/// A keyless table read whole in one consistent snapshot (at startup, before the stream), with
/// the read's window (see [`read_whole_table`]).
pub async fn read_keyless(
    opts: &Opts,
    id: &TableId,
    floor: &BinlogPos,
) -> Result<(Arc<TableMap>, Vec<Vec<Value>>, Window), SourceError> {
    let mut conn = session(opts).await?;
    let table = values::describe(&mut conn, &id.db, &id.table)
        .await?
        .ok_or_else(|| SourceError::Definite(format!("table {id} does not exist")))?;
    let (rows, window) = read_whole_table(&mut conn, &table, id, floor, None)
        .await
        .map_err(Failure::into_source)?;
    Ok((table.map.clone(), rows, window))
}

/// A keyless table read again while the stream runs (a re-snapshot, a backfill): the whole
/// table in one chunk, placed by the pipeline at its window like any chunk, where it replaces
/// what the target holds of the table below the chunk's version.
async fn read_whole(
    conn: &mut mysql_async::Conn,
    tx: &mpsc::Sender<SnapshotMsg>,
    r: Reading<'_>,
) -> Result<(), Failure> {
    let (rows, window) = read_whole_table(conn, r.table, r.id, r.floor, Some(tx)).await?;
    info!(table = %r.id, rows = rows.len(), %window, "keyless table read again whole in one consistent snapshot");
    tx.send(SnapshotMsg::Chunk(Chunk {
        table: r.id.clone(),
        range: 0,
        map: r.table.map.clone(),
        rows: ChunkRows::Rows(rows),
        after: None,
        done: true,
        window,
        read_at_us: crate::clock::now_us(),
        tombstones: false,
        plan: r.plan,
    }))
    .await
    .map_err(|_| Failure::Closed)
}

/// Reads keyless `table` whole, with the read's window. No transaction between the window's
/// bounds wrote to the table (checked in the binlog, read again otherwise), so the read holds
/// exactly the table's transactions up to `window.high`: the stream skips those and applies
/// the rest. Gives up (definite) when every read for 10 minutes had a write to the table inside.
async fn read_whole_table(
    conn: &mut mysql_async::Conn,
    table: &SnapTable,
    id: &TableId,
    floor: &BinlogPos,
    tx: Option<&mpsc::Sender<SnapshotMsg>>,
) -> Result<(Vec<Vec<Value>>, Window), Failure> {
    let (sql, _) = table
        .chunk_query(id, &[], None, None)
        .expect("no key to read back");
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        let window = begin_read(&mut ChunkConn::My(conn), floor, tx).await?;
        let (rows, _) = chunk_rows(conn, &sql, vec![], table, &[], None).await?;
        conn.query_drop("COMMIT")
            .await
            .map_err(|e| SourceError::from_mysql(e, "reading a keyless table"))?;
        let rows = match rows {
            ChunkRows::Rows(r) => r,
            ChunkRows::Columns(_) => unreachable!("rows were asked for"),
        };
        if !touched(&mut ChunkConn::My(conn), &window, id).await? {
            return Ok((rows, window));
        }
        attempt += 1;
        if started.elapsed() > Duration::from_secs(600) {
            return Err(SourceError::Definite(format!(
                "{id} has no primary key and was written to during each of {attempt} reads in 10 minutes: binlake cannot tell which of those writes a read holds. Give the table a primary key, or backfill it while it is quieter"
            ))
            .into());
        }
        info!(table = %id, %window, attempt, "a transaction inside the read's window wrote to the keyless table; reading it again");
        tokio::time::sleep(Duration::from_millis(10 << attempt.min(7))).await;
    }
}

/// Base tables of the source that `filter` selects.
pub async fn list_tables(
    opts: &Opts,
    filter: &crate::filter::TableFilter,
) -> Result<Vec<TableId>, SourceError> {
    let mut conn = source::connect(opts).await?;
    let rows: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await
        .map_err(|e| SourceError::from_mysql(e, "listing tables"))?;
    Ok(rows
        .into_iter()
        .filter(|(d, t)| filter.matches(d, t))
        .map(|(d, t)| TableId::new(d, t))
        .collect())
}

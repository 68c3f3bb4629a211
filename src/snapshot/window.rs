//! Where a consistent read sits in the binlog: the [`Window`] of two positions around it, and
//! how they are read without trusting a server variable another session can overwrite (the
//! argument is in the parent module's doc, "How a chunk joins the stream").
//!
//! Invariants: every transaction that ends at or before `low` is visible to the read, none that
//! ends after `high` is, and `low` is at or past the caller's floor (the read waits for the
//! server to commit up to there). For keyless reads, [`touched`] says whether a transaction
//! between the two wrote to the table.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use binlake_sink::TableId;
use mysql_async::prelude::Queryable;
use mysql_async::Value as My;
use tokio::sync::mpsc;
use tracing::warn;

use super::{ChunkConn, Failure, SnapshotMsg};
use crate::position::BinlogPos;
use crate::source::SourceError;

/// The binlog positions around one consistent read: every transaction that ends at or before
/// `low` is in the read, and none that ends after `high` is. What the read holds of the
/// transactions between the two is not known, so the pipeline takes the keys those transactions
/// changed from the stream instead (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub low: BinlogPos,
    pub high: BinlogPos,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.low, self.high)
    }
}

impl ChunkConn<'_> {
    pub(super) async fn query_drop(&mut self, sql: &str) -> Result<(), Failure> {
        match self {
            ChunkConn::My(c) => c
                .query_drop(sql)
                .await
                .map_err(|e| SourceError::from_mysql(e, "snapshot session").into()),
            ChunkConn::Wire(w) => w.query_drop(sql).await.map_err(Into::into),
        }
    }

    /// A text-protocol query's rows, every value as text.
    pub(super) async fn text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Failure> {
        match self {
            ChunkConn::My(c) => {
                let rows: Vec<mysql_async::Row> = c
                    .query(sql)
                    .await
                    .map_err(|e| SourceError::from_mysql(e, "snapshot bounds"))?;
                Ok(rows
                    .into_iter()
                    .map(|r| {
                        r.unwrap()
                            .into_iter()
                            .map(|v| match v {
                                My::NULL => None,
                                My::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                                other => Some(other.as_sql(true).trim_matches('\'').to_string()),
                            })
                            .collect()
                    })
                    .collect())
            }
            ChunkConn::Wire(w) => w.query_text(sql).await.map_err(Into::into),
        }
    }

    /// `SHOW MASTER STATUS`: the end of what the server has written to its binlog. Transactions
    /// the server has committed are all before it (the binlog write comes first).
    async fn binlog_end(&mut self) -> Result<BinlogPos, Failure> {
        let rows = self.text("SHOW MASTER STATUS").await?;
        match rows.first().map(|r| &r[..]) {
            Some([Some(file), Some(pos), ..]) if !file.is_empty() => Ok(BinlogPos {
                file: file.clone(),
                pos: pos.parse().unwrap_or(0),
            }),
            _ => Err(SourceError::Definite(
                "SHOW MASTER STATUS returned nothing: snapshots need log_bin on".into(),
            )
            .into()),
        }
    }

    /// The end of the last transaction group the server has committed (made visible to new
    /// snapshots), as `SHOW STATUS LIKE 'binlog_snapshot_%'` reports it outside a transaction.
    async fn committed(&mut self) -> Result<BinlogPos, Failure> {
        let rows = self.text("SHOW STATUS LIKE 'binlog_snapshot_%'").await?;
        let pairs: Vec<(String, String)> = rows
            .into_iter()
            .filter_map(|r| match &r[..] {
                [Some(k), Some(v)] => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect();
        Ok(position_of(&pairs)?)
    }

    /// Whether no transaction of `at.file` ends at or before `at` (the file's header only).
    async fn file_start(&mut self, at: &BinlogPos) -> Result<bool, Failure> {
        if at.pos > FILE_HEADER_MAX {
            return Ok(false);
        }
        let sql = format!(
            "SHOW BINLOG EVENTS IN '{}' LIMIT 16",
            at.file.replace('\\', "\\\\").replace('\'', "''")
        );
        for e in self.text(&sql).await? {
            // Log_name, Pos, Event_type, Server_id, End_log_pos, Info
            let (Some(Some(ty)), Some(Some(end))) = (e.get(2), e.get(4)) else {
                continue;
            };
            let end: u64 = end.parse().unwrap_or(u64::MAX);
            if end > at.pos {
                return Ok(true);
            }
            if !matches!(
                ty.as_str(),
                "Format_desc"
                    | "Gtid_list"
                    | "Binlog_checkpoint"
                    | "Start_encryption"
                    | "Previous_gtids"
                    | "Rotate"
            ) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// A binlog file's header events (format description, GTID list, checkpoint) end before this.
const FILE_HEADER_MAX: u64 = 64 * 1024;

/// How long a lower bound that cannot be taken at its word (the start of a binlog file, or past
/// the binlog's end) must stay unchanged, with the binlog's end, before nothing is in flight: a
/// second, plus the semi-synchronous wait for a replica's acknowledgement when that is on (a
/// group waits that long between its binlog write and its commit).
async fn settle_time(conn: &mut ChunkConn<'_>) -> Duration {
    let semi = conn
        .text("SELECT @@rpl_semi_sync_master_enabled, @@rpl_semi_sync_master_timeout")
        .await
        .ok()
        .and_then(|r| r.into_iter().next());
    let wait_ms = match semi.as_deref() {
        Some([Some(on), Some(ms)]) if on == "1" => ms.parse().unwrap_or(10_000),
        _ => 0,
    };
    Duration::from_secs(1) + Duration::from_millis(wait_ms)
}

/// The last (lower bound, binlog end) pair that stood still for [`settle_time`]: later reads that
/// find the same pair need not wait again (a quiet source after a rotation would otherwise cost
/// every chunk a second).
static SETTLED: Mutex<Option<(BinlogPos, BinlogPos)>> = Mutex::new(None);

/// The lower bound of a read about to start: a position every transaction before which is
/// committed, at or after `floor` (waiting for the server to commit up to there).
///
/// `binlog_snapshot_*` outside a transaction is the server's last committed group end, set and
/// read under the lock that orders commits. Another session's `SHOW STATUS` can replace it in the
/// shared variable before it reaches us, but only with a value that was committed then too (that
/// session's own snapshot or commit): never a later one. Two exceptions, both when a binlog file
/// is rotated while a group is between its binlog write and its commit: the server publishes the
/// new file's start before that group commits, and a `FLUSH LOGS` then can pair the new file's
/// name with the old file's offset. Such a bound (the start of a file, or past the binlog's end)
/// is taken only once it and the binlog's end have not moved for a while: then no group is in
/// flight, and everything up to the binlog's end is committed.
async fn committed_low(
    conn: &mut ChunkConn<'_>,
    floor: &BinlogPos,
    tx: Option<&mpsc::Sender<SnapshotMsg>>,
) -> Result<BinlogPos, Failure> {
    let started = Instant::now();
    let mut warned = false;
    let mut unsure: Option<(BinlogPos, BinlogPos, Instant)> = None;
    loop {
        let low = conn.committed().await?;
        let end = conn.binlog_end().await?;
        let plausible = low.key() <= end.key() && !conn.file_start(&low).await?;
        let bound = if plausible {
            Some(low)
        } else if SETTLED.lock().expect("settled").as_ref() == Some(&(low.clone(), end.clone())) {
            Some(end.clone()) // settled for an earlier read, and nothing moved since
        } else {
            match &unsure {
                Some((l, e, since)) if *l == low && *e == end => {
                    let settled = since.elapsed() >= settle_time(conn).await;
                    if settled {
                        *SETTLED.lock().expect("settled") = Some((low, end.clone()));
                    }
                    settled.then(|| end.clone())
                }
                _ => {
                    unsure = Some((low, end.clone(), Instant::now()));
                    None
                }
            }
        };
        if let Some(b) = bound {
            if b.key() >= floor.key() {
                return Ok(b);
            }
        }
        if tx.is_some_and(|t| t.is_closed()) {
            return Err(Failure::Closed);
        }
        if !warned && started.elapsed() > Duration::from_secs(10) {
            warned = true;
            warn!(%floor, binlog_end = %end, "a snapshot read waits for the source to commit the transactions written to its binlog before {floor} (a semi-synchronous wait for a replica's acknowledgement?)");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts a read's consistent snapshot between its bounds (the transaction stays open).
pub(super) async fn begin_read(
    conn: &mut ChunkConn<'_>,
    floor: &BinlogPos,
    tx: Option<&mpsc::Sender<SnapshotMsg>>,
) -> Result<Window, Failure> {
    let low = committed_low(conn, floor, tx).await?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await?;
    race_failpoint().await;
    let high = conn.binlog_end().await?;
    Ok(Window { low, high })
}

/// Test failpoint `snapshot-race` (`BINLAKE_FAILPOINT`): the first read after it is armed stops
/// right after its consistent snapshot starts, creates `$BINLAKE_FAILPOINT_FILE.ready` and waits
/// (at most 120 s) until `$BINLAKE_FAILPOINT_FILE` exists, so that a test can commit a change the
/// snapshot cannot see before anything else of the read happens: every position read after the
/// snapshot started then names that change (the effect of MariaDB's `SHOW STATUS` race).
pub(crate) async fn race_failpoint() -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FIRED: AtomicBool = AtomicBool::new(false);
    if std::env::var("BINLAKE_FAILPOINT").ok().as_deref() != Some("snapshot-race")
        || FIRED.swap(true, Ordering::SeqCst)
    {
        return false;
    }
    let Ok(gate) = std::env::var("BINLAKE_FAILPOINT_FILE") else {
        return false;
    };
    let _ = std::fs::write(format!("{gate}.ready"), b"");
    let start = Instant::now();
    while !std::path::Path::new(&gate).exists() && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    warn!("failpoint snapshot-race: a read's snapshot was held open (test)");
    true
}

fn position_of(rows: &[(String, String)]) -> Result<BinlogPos, SourceError> {
    let get = |n: &str| {
        rows.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    match (get("Binlog_snapshot_file"), get("Binlog_snapshot_position")) {
        (Some(file), Some(pos)) if !file.is_empty() => Ok(BinlogPos {
            file,
            pos: pos.parse().unwrap_or(0),
        }),
        _ => Err(SourceError::Definite(
            "the source does not report Binlog_snapshot_file/position (a MariaDB feature): snapshots need MariaDB with log_bin on. On MySQL, start with --start-at current and load existing rows yourself".into(),
        )),
    }
}

/// Whether a transaction that ends inside `w` (after `low`, at or before `high`) wrote to `id`:
/// a table map of it in the binlog between the two.
pub(super) async fn touched(
    conn: &mut ChunkConn<'_>,
    w: &Window,
    id: &TableId,
) -> Result<bool, Failure> {
    if w.low.key() >= w.high.key() {
        return Ok(false);
    }
    let files: Vec<String> = if w.low.file == w.high.file {
        vec![w.low.file.clone()]
    } else {
        conn.text("SHOW BINARY LOGS")
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .filter(|f| {
                let k = BinlogPos {
                    file: f.clone(),
                    pos: 0,
                }
                .file_index();
                k >= w.low.file_index() && k <= w.high.file_index()
            })
            .collect()
    };
    let needle = format!("({}.{})", id.db, id.table);
    const PAGE: usize = 1000;
    for file in files {
        let mut from = if file == w.low.file { w.low.pos } else { 4 };
        loop {
            let sql = format!(
                "SHOW BINLOG EVENTS IN '{}' FROM {from} LIMIT {PAGE}",
                file.replace('\\', "\\\\").replace('\'', "''")
            );
            let events = conn.text(&sql).await?;
            for e in &events {
                // Log_name, Pos, Event_type, Server_id, End_log_pos, Info
                let get = |i: usize| e.get(i).cloned().flatten().unwrap_or_default();
                let pos: u64 = get(1).parse().unwrap_or(0);
                if file == w.high.file && pos >= w.high.pos {
                    return Ok(false);
                }
                if get(2) == "Table_map" && get(5).ends_with(&needle) {
                    return Ok(true);
                }
                from = get(4).parse().unwrap_or(from);
            }
            if events.len() < PAGE {
                break;
            }
        }
    }
    Ok(false)
}

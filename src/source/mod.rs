//! The binlog source: connects as a replica, checks the server, and streams whole transactions.
//!
//! Invariants:
//! - Only complete transactions leave the source ([`Transaction`]): a half-read transaction is
//!   dropped when the connection breaks and re-read after the reconnect, from the position after
//!   the last transaction delivered.
//! - Every transaction carries the position *after* it and its `_binlake_version`
//!   (see [`crate::position`]), so the pipeline can checkpoint without knowing the flavour.
//! - Errors are classified: [`SourceError::is_transient`] ones are retried with backoff by
//!   [`stream::run`]; the rest stop the pipeline with a message naming what to fix.

pub mod ha;
pub mod preflight;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use mysql_async::{Conn, Opts, OptsBuilder};
use thiserror::Error;

use crate::decode::{DecodeError, RowChange, TableMap};
use crate::filter::TableFilter;
use crate::position::{BinlogPos, MariaGtid, MysqlGtid, Position};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MariaDb,
    Mysql,
}

#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub flavor: Flavor,
    pub version: String,
    pub server_id: u32,
    pub gtid_enabled: bool,
}

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot connect to the source ({context}): {message}")]
    Connect { context: String, message: String },
    #[error("the source refused the login: {0}. Check the user and password in `source`.")]
    Auth(String),
    #[error("source preflight failed:\n{0}")]
    Preflight(String),
    #[error("the source cannot serve the requested position {position}: {message}. The binlogs it needs may have been purged: start again with --start-at (the table needs a fresh load).")]
    PositionGone { position: String, message: String },
    #[error("source server error {code} ({context}): {message}")]
    Server {
        code: u16,
        message: String,
        context: String,
    },
    #[error("binlog stream broke: {0}")]
    Stream(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Definite(String),
}

impl SourceError {
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect { .. } | SourceError::Stream(_) => true,
            // 1040 too many connections, 1205 lock wait, 1213 deadlock, 2013 lost connection,
            // 1927 connection killed, 1053 server shutdown
            SourceError::Server { code, .. } => {
                matches!(code, 1040 | 1053 | 1205 | 1213 | 1927 | 2006 | 2013)
            }
            _ => false,
        }
    }

    pub fn from_mysql(e: mysql_async::Error, context: &str) -> SourceError {
        match e {
            mysql_async::Error::Server(s) if s.code == 1045 || s.code == 1698 => {
                SourceError::Auth(s.message)
            }
            mysql_async::Error::Server(s) => SourceError::Server {
                code: s.code,
                message: s.message,
                context: context.to_string(),
            },
            mysql_async::Error::Io(io) => SourceError::Connect {
                context: context.to_string(),
                message: io.to_string(),
            },
            mysql_async::Error::Driver(d) => SourceError::Stream(format!("{context}: {d}")),
            other => SourceError::Connect {
                context: context.to_string(),
                message: other.to_string(),
            },
        }
    }
}

/// One row change of a replicated table.
#[derive(Debug, Clone)]
pub struct TableChange {
    pub table: Arc<TableMap>,
    pub change: RowChange,
}

/// A committed source transaction, filtered to the replicated tables.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// The GTID, as the server writes it (None without GTIDs).
    pub gtid: Option<String>,
    pub version: u64,
    /// Source commit time, µs since the epoch.
    pub commit_us: i64,
    /// Server that originally wrote the transaction (the event header's server id).
    pub origin_server_id: u32,
    /// The GTID, parsed (MariaDB or MySQL flavour), for deduplication across sources.
    pub maria: Option<MariaGtid>,
    pub mysql: Option<MysqlGtid>,
    /// Index (in `SourceConfig::urls`) of the server it was read from, and that server's id.
    pub via: usize,
    pub read_server_id: u32,
    /// Position after this transaction: where to resume so that it is not read again.
    pub position: Position,
    /// End of the commit event in the server's binlog we read it from.
    pub file_pos: BinlogPos,
    pub changes: Vec<TableChange>,
    /// DDL statements in this transaction, with the database they ran in (column changes come
    /// from table maps; TRUNCATE and DROP TABLE are applied from these).
    pub ddl: Vec<Ddl>,
}

/// A statement from a Query event and the default database it ran in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ddl {
    pub db: String,
    pub sql: String,
}

/// What the source tells the pipeline.
#[derive(Debug)]
pub enum SourceMsg {
    Txn(Transaction),
    /// Nothing to deliver; the server is at `file_pos` (heartbeat or end of a skipped event).
    Idle {
        via: usize,
        file_pos: BinlogPos,
    },
    /// A transaction already applied from another source, seen again in `via`'s binlog at
    /// `file_pos` (active-active: the snapshot handoff needs every position of its server).
    Seen {
        via: usize,
        file_pos: BinlogPos,
        version: u64,
    },
    /// The pipeline now follows server `via` (failover, or a new snapshot server in
    /// active-active mode): binlog file positions before this message belong to another server.
    Switched {
        via: usize,
    },
    /// The connection broke and is being re-established (for metrics and logs).
    Reconnecting {
        error: String,
        attempt: u32,
    },
}

/// Where the stream starts when the target has no checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// Snapshot every selected table, then stream from the snapshot's start (the default):
    /// the replica starts with the tables' existing rows. Also: tables the target has never
    /// seen get a snapshot when the pipeline resumes.
    Snapshot,
    /// The oldest binlog the server still has.
    Earliest,
    /// The server's position now: only new changes.
    Current,
    /// A position given by the user (GTID state/set or file:pos).
    At(Position),
}

impl std::str::FromStr for StartAt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "snapshot" => return Ok(StartAt::Snapshot),
            "earliest" => return Ok(StartAt::Earliest),
            "current" => return Ok(StartAt::Current),
            _ => {}
        }
        if let Ok(p) = s.parse::<Position>() {
            return Ok(StartAt::At(p));
        }
        // bare forms: `0-1-100[,..]`, `uuid:1-5`, `binlog.000003:4`
        if let Ok(st) = s.parse::<crate::position::MariaGtidState>() {
            if !st.is_empty() {
                return Ok(StartAt::At(Position::MariaDb(st)));
            }
        }
        if let Ok(set) = s.parse::<crate::position::MysqlGtidSet>() {
            if !set.is_empty() {
                return Ok(StartAt::At(Position::Mysql(set)));
            }
        }
        if let Ok(p) = s.parse::<BinlogPos>() {
            return Ok(StartAt::At(Position::File(p)));
        }
        Err(format!(
            "`{s}`: expected snapshot, earliest, current, a GTID (0-1-100 or uuid:1-5), or file:position"
        ))
    }
}

/// How several sources (servers of one replication topology) are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceMode {
    /// One server at a time; the next healthy one when it fails (the default).
    Failover,
    /// Every server at once; each transaction applied once, from whichever delivers it first.
    ActiveActive,
}

impl std::str::FromStr for SourceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "failover" => Ok(SourceMode::Failover),
            "active-active" | "active_active" => Ok(SourceMode::ActiveActive),
            _ => Err(format!("`{s}`: expected failover or active-active")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The server this run reads (and snapshots) from: one of `urls`.
    pub url: String,
    /// Every server of the topology, in order of preference.
    pub urls: Vec<String>,
    pub mode: SourceMode,
    /// Changes written by these servers (the GTID's / event's origin server id) are dropped.
    pub exclude_server_ids: Vec<u32>,
    /// Changes of these MariaDB GTID domains are dropped.
    pub exclude_gtid_domains: Vec<u32>,
    /// Reconnect attempts to one server before its stream gives up (None: forever). Several
    /// sources set it, so that a dead server is left for another.
    pub give_up_after: Option<u32>,
    /// Server id binlake registers with (must be unique among the source's replicas).
    pub replica_server_id: u32,
    pub heartbeat: Duration,
    pub filter: TableFilter,
}

/// Parses a `mysql://user:pw@host:port` URL; the error names the `source` key.
pub fn parse_url(url: &str) -> Result<Opts, String> {
    let opts = Opts::from_url(url).map_err(|e| {
        format!(
            "`{}`: {e} (expected mysql://user:password@host:port)",
            redact(url)
        )
    })?;
    Ok(OptsBuilder::from_opts(opts).prefer_socket(false).into())
}

/// The URL with its password hidden, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((u, _)) => format!("{}://{}:***@{}", &url[..s], u, &url[at + 1..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub async fn connect(opts: &Opts) -> Result<Conn, SourceError> {
    let ctx = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    match tokio::time::timeout(Duration::from_secs(10), Conn::new(opts.clone())).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(SourceError::from_mysql(e, &ctx)),
        Err(_) => Err(SourceError::Connect {
            context: ctx,
            message: "timed out after 10 s".into(),
        }),
    }
}

/// The server's binlog end now (`SHOW MASTER STATUS`).
pub async fn current_file_pos(conn: &mut Conn) -> Result<BinlogPos, SourceError> {
    use mysql_async::prelude::Queryable;
    let row: Option<mysql_async::Row> = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .map_err(|e| SourceError::from_mysql(e, "SHOW MASTER STATUS"))?;
    let row = row.ok_or_else(|| {
        SourceError::Definite("SHOW MASTER STATUS returned nothing: is log_bin on?".into())
    })?;
    let file: String = row.get(0).unwrap_or_default();
    let pos: u64 = row.get(1).unwrap_or_default();
    Ok(BinlogPos { file, pos })
}

/// Loads the server's collation table so that every charset id in table maps resolves.
pub async fn load_collations(conn: &mut Conn) {
    use mysql_async::prelude::Queryable;
    for q in [
        "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL",
        "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATION_CHARACTER_SET_APPLICABILITY WHERE ID IS NOT NULL",
    ] {
        if let Ok(rows) = conn.query::<(u32, String), _>(q).await {
            crate::decode::charset::register_collations(rows);
        }
    }
}

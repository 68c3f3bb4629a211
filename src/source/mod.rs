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
pub mod start;
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
    /// An encrypted connection could not be set up as configured (definite: a wrong CA, a
    /// certificate for another host, a server without TLS, or one that refuses plain ones).
    #[error("TLS to the source ({context}): {message}")]
    Tls { context: String, message: String },
    #[error("source preflight failed:\n{0}")]
    Preflight(String),
    #[error("the source cannot serve the requested position {position}: {message}. The binlogs it needs have been purged (or this server never had them). To recover, run replicate once with `--on-position-lost resnapshot` (or set on_position_lost = \"resnapshot\"): it streams from the current position and reads every table again, replacing each table's rows as it finishes.")]
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
    #[error(transparent)]
    Url(#[from] UrlError),
    /// Rows read could not be put in Arrow columns (the decoder and the schema disagree).
    #[error("building Arrow columns: {0}")]
    Build(#[from] crate::columnar::BuildError),
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
        if let Some(message) = tls_failure(&e) {
            return SourceError::Tls {
                context: context.to_string(),
                message,
            };
        }
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

/// What went wrong, when `e` is a failure to set up TLS (not a broken connection).
fn tls_failure(e: &mysql_async::Error) -> Option<String> {
    use mysql_async::{DriverError, Error, IoError};
    let fix = "Give the CA bundle that signed the server's certificate with `tls_ca` (--tls-ca), or `verify_ca=false` in the source URL to skip the check (not recommended)";
    match e {
        Error::Io(IoError::Tls(t)) => Some(format!("{t}. {fix}")),
        Error::Io(IoError::Io(io)) => {
            let inner = io.get_ref()?;
            let r = inner.downcast_ref::<rustls::Error>()?;
            Some(match r {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. },
                ) => format!("the server's certificate is not for this host name ({r}). Connect with the name the certificate has, or `verify_identity=false` in the source URL to skip the check"),
                rustls::Error::InvalidCertificate(_) => format!("the server's certificate was not accepted ({r}). {fix}"),
                other => format!("{other}"),
            })
        }
        Error::Driver(DriverError::NoClientSslFlagFromServer) => Some(
            "the source URL asks for TLS (`require_ssl=true`) but the server does not offer it (its `have_ssl` is not YES): configure ssl_cert/ssl_key on the server, or drop require_ssl".into(),
        ),
        _ => None,
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
    /// The commit time on a µs clock, as well as binlake can tell, for freshness metrics:
    /// `commit_us` when the source logs µs (MySQL's commit timestamps); MariaDB logs whole
    /// seconds, so there it is the moment binlake received the transaction when that falls in
    /// the logged second (the transfer, well under a millisecond on a LAN, is left out).
    pub clock_us: i64,
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
    /// Active-active: the position after this transaction in the binlog of the server that
    /// delivered it (`position` is then the merged one, of every server). `None` otherwise.
    pub via_position: Option<Position>,
    /// End of the commit event in the server's binlog we read it from.
    pub file_pos: BinlogPos,
    pub changes: Vec<TableChange>,
    /// DDL statements in this transaction, with the database they ran in (column changes come
    /// from table maps; TRUNCATE and DROP TABLE are applied from these).
    pub ddl: Vec<Ddl>,
}

/// A statement from a Query event, the default database it ran in, and what it does to tables
/// a sink must follow (parsed when the event is decoded: see [`crate::decode::ddl`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ddl {
    pub db: String,
    pub sql: String,
    pub actions: Vec<(binlake_sink::TableId, binlake_sink::DdlKind)>,
    /// Tables it changes without row events, which must be read again, and why.
    pub rereads: Vec<(binlake_sink::TableId, &'static str)>,
    /// A table it creates (`CREATE TABLE`; with `OR REPLACE`, `actions` drops it first).
    pub created: Option<binlake_sink::TableId>,
    /// A database it drops with all its tables.
    pub dropped_db: Option<String>,
}

impl Ddl {
    pub fn new(db: String, sql: String) -> Ddl {
        use crate::decode::ddl;
        let mut actions = ddl::table_ddl(&db, &sql);
        let rereads = ddl::reread_ddl(&db, &sql);
        let created = ddl::created_table(&db, &sql).map(|(t, replaces)| {
            if replaces {
                actions.push((t.clone(), binlake_sink::DdlKind::DropTable));
            }
            t
        });
        let dropped_db = ddl::dropped_database(&sql);
        Ddl {
            db,
            sql,
            actions,
            rereads,
            created,
            dropped_db,
        }
    }
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
        /// The position after it in `via`'s binlog.
        position: Position,
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

/// A source setting (`start_at`, `mode`) that does not parse, with what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSetting(String);

impl std::str::FromStr for StartAt {
    type Err = BadSetting;
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
        Err(BadSetting(format!(
            "`{s}`: expected snapshot, earliest, current, a GTID (0-1-100 or uuid:1-5), or file:position"
        )))
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
    type Err = BadSetting;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "failover" => Ok(SourceMode::Failover),
            "active-active" | "active_active" => Ok(SourceMode::ActiveActive),
            _ => Err(BadSetting(format!(
                "`{s}`: expected failover or active-active"
            ))),
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
    /// Tables read for their changes though `filter` does not select them (outbox tables).
    pub also_read: Vec<binlake_sink::TableId>,
}

impl SourceConfig {
    /// The stream keeps the changes of this table.
    pub fn reads(&self, db: &str, table: &str) -> bool {
        self.filter.matches(db, table)
            || self
                .also_read
                .iter()
                .any(|t| t.db == db && t.table == table)
    }
}

/// binlake's own URL parameters (the rest are mysql_async's: `require_ssl`, `verify_ca`,
/// `verify_identity`, `built_in_roots`, ...): files for TLS, set from the `tls_ca`, `tls_cert`
/// and `tls_key` keys.
pub const TLS_PARAMS: [&str; 3] = ["tls_ca", "tls_cert", "tls_key"];

/// A source URL (the `source` key) or one of its TLS files that cannot be used.
#[derive(Debug, Error)]
pub enum UrlError {
    #[error("`{url}`: {message} (expected mysql://user:password@host:port)")]
    Syntax { url: String, message: String },
    #[error("`{url}`: {source}")]
    Unparsable {
        url: String,
        source: url::ParseError,
    },
    #[error("`{key}`: {path} is not a file")]
    NotAFile { key: &'static str, path: String },
    #[error("`{key}`: cannot read {path}: {source}")]
    Unreadable {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("`tls_cert` and `tls_key` go together (a client certificate and its key)")]
    CertWithoutKey,
}

impl UrlError {
    /// The config key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            UrlError::Syntax { .. } | UrlError::Unparsable { .. } => "source",
            UrlError::NotAFile { key, .. } | UrlError::Unreadable { key, .. } => key,
            UrlError::CertWithoutKey => "tls_cert",
        }
    }
}

/// Parses a `mysql://user:pw@host:port` URL; the error names the `source` key. `tls_ca` (a PEM
/// CA bundle) and `tls_cert` + `tls_key` (a client certificate, for users that `REQUIRE X509`)
/// turn TLS on, verified (the server's certificate against the bundle, and its host name)
/// unless `verify_ca=false` / `verify_identity=false` say otherwise.
pub fn parse_url(url: &str) -> Result<Opts, UrlError> {
    let (base, tls) = split_tls_params(url)?;
    let opts = Opts::from_url(&base).map_err(|e| UrlError::Syntax {
        url: redact(url),
        message: e.to_string(),
    })?;
    let mut b = OptsBuilder::from_opts(opts.clone()).prefer_socket(false);
    let file = |key: &'static str| -> Result<Option<std::path::PathBuf>, UrlError> {
        match tls.get(key) {
            None => Ok(None),
            Some(p) => match std::fs::metadata(p) {
                Ok(m) if m.is_file() => Ok(Some(std::path::PathBuf::from(p))),
                Ok(_) => Err(UrlError::NotAFile {
                    key,
                    path: p.clone(),
                }),
                Err(source) => Err(UrlError::Unreadable {
                    key,
                    path: p.clone(),
                    source,
                }),
            },
        }
    };
    let (ca, cert, key) = (file("tls_ca")?, file("tls_cert")?, file("tls_key")?);
    if ca.is_some() || cert.is_some() || key.is_some() {
        let mut ssl = opts.ssl_opts().cloned().unwrap_or_default();
        if let Some(ca) = ca {
            ssl = ssl.with_root_certs(vec![ca.into()]);
        }
        ssl = match (cert, key) {
            (Some(c), Some(k)) => {
                ssl.with_client_identity(Some(mysql_async::ClientIdentity::new(c.into(), k.into())))
            }
            (None, None) => ssl,
            _ => return Err(UrlError::CertWithoutKey),
        };
        b = b.ssl_opts(Some(ssl));
    }
    Ok(b.into())
}

/// The URL without binlake's TLS parameters, and their values.
fn split_tls_params(
    url: &str,
) -> Result<(String, std::collections::HashMap<String, String>), UrlError> {
    let mut found = std::collections::HashMap::new();
    if !TLS_PARAMS.iter().any(|p| url.contains(p)) {
        return Ok((url.to_string(), found));
    }
    let mut u = url::Url::parse(url).map_err(|e| UrlError::Unparsable {
        url: redact(url),
        source: e,
    })?;
    let rest: Vec<(String, String)> = u
        .query_pairs()
        .filter_map(|(k, v)| {
            if TLS_PARAMS.contains(&k.as_ref()) {
                found.insert(k.into_owned(), v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    if rest.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok((u.to_string(), found))
}

/// `url` with TLS files added as binlake's URL parameters (those it has already win).
pub fn with_tls_params(url: &str, files: &[(&str, Option<&str>)]) -> String {
    let mut out = url.to_string();
    for (k, v) in files {
        let Some(v) = v else { continue };
        let has = url::Url::parse(url)
            .map(|u| u.query_pairs().any(|(q, _)| q == *k))
            .unwrap_or(false);
        if has {
            continue;
        }
        let sep = if out.contains('?') { '&' } else { '?' };
        let enc: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
        out = format!("{out}{sep}{k}={enc}");
    }
    out
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
        Ok(Err(e)) => {
            let e = SourceError::from_mysql(e, &ctx);
            if matches!(e, SourceError::Auth(_)) && opts.ssl_opts().is_none() {
                return Err(plain_refused(opts, &ctx).await.unwrap_or(e));
            }
            Err(e)
        }
        Err(_) => Err(SourceError::Connect {
            context: ctx,
            message: "timed out after 10 s".into(),
        }),
    }
}

/// After a plain login was refused: whether the same login succeeds over TLS, i.e. the server
/// refuses plain connections (`require_secure_transport`, or a user that `REQUIRE SSL`), which
/// MariaDB reports as a wrong password. The probe does not check the certificate (it only asks
/// whether TLS would work; nothing but the login is sent).
async fn plain_refused(opts: &Opts, ctx: &str) -> Option<SourceError> {
    let probe: Opts = OptsBuilder::from_opts(opts.clone())
        .ssl_opts(Some(
            mysql_async::SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ))
        .into();
    let c = tokio::time::timeout(Duration::from_secs(10), Conn::new(probe))
        .await
        .ok()?
        .ok()?;
    let _ = c.disconnect().await;
    Some(SourceError::Tls {
        context: ctx.to_string(),
        message: "the server refuses plain (unencrypted) connections for this user (require_secure_transport=ON or REQUIRE SSL). Add `require_ssl=true` to the source URL (mysql://user:password@host:port?require_ssl=true), and `tls_ca` (--tls-ca) with the CA bundle that signed the server's certificate unless a public CA did".into(),
    })
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

//! Starting a run's source: choosing the server, connecting, preflight, and the start position.
//!
//! Invariants:
//! - With several servers, the one chosen is the first fit one from `from` on: up, passing
//!   preflight, and holding in its binlog everything the checkpoint has applied (never
//!   backwards). A server lost between choosing and reading makes the next fit one the choice.
//! - The start position is the checkpoint's when there is one (the target, not local state, says
//!   what is applied); otherwise `start_at` resolved on the chosen server.
//! - `start_floor` is the binlog end of the chosen server read after the start position was
//!   fixed: the stream delivers every transaction after it, and snapshot reads wait until the
//!   server has committed up to it (the start position can name a transaction that is in the
//!   binlog but not committed yet).

use mysql_async::prelude::Queryable;
use mysql_async::Opts;
use tracing::{info, warn};

use super::{
    current_file_pos, ha, parse_url, preflight, redact, Flavor, SourceConfig, SourceError,
    SourceMode, StartAt,
};
use crate::position::{BinlogPos, MariaGtidState, MysqlGtidSet, Position};

/// The source a run reads from, ready to stream.
#[derive(Debug, Clone)]
pub struct Started {
    /// The configuration with `url` set to the chosen server.
    pub src: SourceConfig,
    pub opts: Opts,
    pub flavor: Flavor,
    /// Index of the chosen server in `src.urls`.
    pub via: usize,
    /// Where the stream starts.
    pub start: Position,
    /// The chosen server's binlog end once the start was fixed (see the module doc).
    pub start_floor: BinlogPos,
}

/// Chooses, connects and checks the source, and fixes where the stream starts: at `checkpoint`
/// when the target has one, else at `start_at`.
pub async fn start(
    src: &SourceConfig,
    checkpoint: Option<&Position>,
    from: usize,
    start_at: &StartAt,
) -> Result<Started, SourceError> {
    let mut src = src.clone();
    let several = src.urls.len() > 1;
    let mut via = 0;
    if several {
        via = ha::choose(&src, checkpoint, from).await?.0;
        src.url = src.urls[via].clone();
        if src.mode == SourceMode::Failover {
            src.give_up_after = Some(2);
        }
        info!(source = %redact(&src.url), index = via, mode = ?src.mode, "reading from");
    }
    let (opts, mut conn, report) = loop {
        let opts = parse_url(&src.url)?;
        let attempt = async {
            let mut conn = super::connect(&opts).await?;
            let report = preflight::run(&mut conn).await?;
            Ok::<_, SourceError>((conn, report))
        };
        match attempt.await {
            Ok((conn, report)) => break (opts, conn, report),
            // the chosen server died in between: the next fit one
            Err(e) if several && e.is_transient() => {
                warn!(source = %redact(&src.url), error = %e, "source lost before reading; choosing another");
                via = ha::choose(&src, checkpoint, via + 1).await?.0;
                src.url = src.urls[via].clone();
            }
            Err(e) => return Err(e),
        }
    };
    if report.failed() {
        return Err(SourceError::Preflight(report.to_string()));
    }
    let flavor = report.server.flavor;
    let start = match checkpoint {
        Some(p) => {
            info!(position = %p, "resuming from the target's checkpoint");
            p.clone()
        }
        None => {
            let p = resolve_start(&mut conn, flavor, start_at).await?;
            info!(position = %p, ?start_at, "no checkpoint in the target; starting");
            p
        }
    };
    if several && matches!(start, Position::File(_)) {
        return Err(SourceError::Definite(format!(
            "several sources need GTIDs to fail over, but the start position {start} is a binlog file position; start from a GTID"
        )));
    }
    let start_floor = current_file_pos(&mut conn).await?;
    Ok(Started {
        src,
        opts,
        flavor,
        via,
        start,
        start_floor,
    })
}

/// The position `at` names on this server.
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
                    _ => Position::File(current_file_pos(conn).await?),
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
                    _ => Position::File(current_file_pos(conn).await?),
                }
            }
        },
    })
}

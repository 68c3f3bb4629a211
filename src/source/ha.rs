//! Several sources of one replication topology: failover and active-active reading.
//!
//! The sources are servers that hold the same GTID history (a primary and its replicas with
//! `log_slave_updates`). Because a GTID names the same transaction on every server, a position
//! (the last GTID per domain, or MySQL's executed set) taken on one server resumes on another.
//! `_binlake_version` is derived from the merged position, so it increases strictly in the
//! order binlake takes transactions in. With one GTID domain (or one source UUID) that order is
//! the same on every server; with several written concurrently, servers interleave them
//! differently and a transaction's version depends on which server delivered what first. The
//! replica converges all the same (each key's changes come in one domain's order); the snapshot
//! handoff does not rely on versions there (see `pipeline::ahead`).
//!
//! Invariants:
//! - **Never backwards.** A server is only read from once its binlog holds everything already
//!   delivered ([`probe`]: its `gtid_binlog_pos` / `gtid_executed` covers the position). A replica
//!   that lags is skipped, with the reason in the log, and retried later.
//! - **Each transaction once, in order.** Failover: one reader at a time; when its stream gives
//!   up, the pipeline commits what it holds and starts again from the target's checkpoint on the
//!   next server [`choose`] finds fit, exactly as after a restart. Active-active: every server is read at
//!   once and a transaction is passed on only when its GTID is not yet in the merged position
//!   (per domain: a higher sequence number; MySQL: not in the set). The merged position is
//!   bounded state: one GTID per domain, or a set of intervals, never a list of GTIDs. It is the
//!   position the pipeline checkpoints, so dedup state survives restarts with the data.
//! - **No GTID, no failover.** A file:position means nothing on another server: with several
//!   sources, a position without GTIDs is refused with an error saying so.
//! - One server's binlog file positions are never compared with another's: every message says
//!   which server (`via`) it came from, and [`SourceMsg::Switched`] tells the pipeline when the
//!   server whose positions the snapshot handoff follows changes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::{connect, parse_url, redact, Flavor, SourceConfig, SourceError, SourceMsg};
use crate::position::{MariaGtidState, MysqlGtidSet, Position};

/// Why a server cannot be read from now.
#[derive(Debug)]
pub enum Unfit {
    /// Unreachable or failing: try again later.
    Down(String),
    /// Its binlog lacks transactions already applied: reading it would move backwards.
    Behind(String),
    /// Cannot serve this pipeline at all (no GTIDs, fails preflight, refuses the login).
    Definite(String),
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::Down(m) => write!(f, "down: {m}"),
            Unfit::Behind(m) => write!(f, "behind: {m}"),
            Unfit::Definite(m) => write!(f, "{m}"),
        }
    }
}

/// Checks that the server at `url` is up, passes preflight, and holds everything up to `pos`.
pub async fn probe(url: &str, pos: Option<&Position>) -> Result<Flavor, Unfit> {
    let opts = parse_url(url).map_err(|e| Unfit::Definite(e.to_string()))?;
    let mut conn = match connect(&opts).await {
        Ok(c) => c,
        Err(SourceError::Auth(m)) => return Err(Unfit::Definite(format!("login refused: {m}"))),
        Err(e) => return Err(Unfit::Down(e.to_string())),
    };
    let report = super::preflight::run(&mut conn)
        .await
        .map_err(|e| Unfit::Down(e.to_string()))?;
    if report.failed() {
        return Err(Unfit::Definite(format!("fails preflight:\n{report}")));
    }
    let flavor = report.server.flavor;
    let Some(pos) = pos else {
        return Ok(flavor);
    };
    let q = |e: mysql_async::Error| Unfit::Down(e.to_string());
    let (have, covered) = match pos {
        Position::MariaDb(ours) => {
            let text: String = conn
                .query_first("SELECT @@gtid_binlog_pos")
                .await
                .map_err(q)?
                .unwrap_or_default();
            let theirs: MariaGtidState = text.parse().unwrap_or_default();
            (text, ours.is_covered_by(&theirs))
        }
        Position::Mysql(ours) => {
            let text: String = conn
                .query_first("SELECT @@GLOBAL.gtid_executed")
                .await
                .map_err(q)?
                .unwrap_or_default();
            let theirs: MysqlGtidSet = text.replace('\n', "").parse().unwrap_or_default();
            (text, is_subset(ours, &theirs))
        }
        Position::File(p) => {
            return Err(Unfit::Definite(format!(
                "the position {p} is a binlog file position, which means nothing on another server: \
                 failover needs GTIDs (MariaDB: always on; MySQL: gtid_mode=ON). Start the pipeline \
                 from a GTID (--start-at snapshot or current does so on a GTID server)"
            )))
        }
    };
    if covered {
        return Ok(flavor);
    }
    let lsu: Option<i64> = conn
        .query_first("SELECT @@log_slave_updates")
        .await
        .ok()
        .flatten();
    let hint = if lsu == Some(0) {
        " (log_slave_updates is OFF: a replica's binlog then lacks the replicated transactions; set log_slave_updates=ON)"
    } else {
        ""
    };
    Err(Unfit::Behind(format!(
        "its binlog has {have:?}, binlake has applied {pos}{hint}"
    )))
}

/// True when every transaction of `a` is in `b`.
pub fn is_subset(a: &MysqlGtidSet, b: &MysqlGtidSet) -> bool {
    a.sets.iter().all(|(k, ivs)| {
        let Some(theirs) = b.sets.get(k) else {
            return ivs.is_empty();
        };
        ivs.iter()
            .all(|&(s, e)| theirs.iter().any(|&(s2, e2)| s2 <= s && e <= e2))
    })
}

/// The first server, in order from `from`, that can be read from at `pos`. Waits (retrying every
/// few seconds, with the reasons logged) while none can; fails when every server is unfit for a
/// definite reason.
pub async fn choose(
    src: &SourceConfig,
    pos: Option<&Position>,
    from: usize,
) -> Result<(usize, Flavor), SourceError> {
    let n = src.urls.len();
    let mut round = 0u32;
    loop {
        let mut reasons = Vec::new();
        let mut definite = 0;
        for k in 0..n {
            let i = (from + k) % n;
            match probe(&src.urls[i], pos).await {
                Ok(flavor) => {
                    if round > 0 || k > 0 {
                        info!(source = %redact(&src.urls[i]), index = i, "source chosen");
                    }
                    return Ok((i, flavor));
                }
                Err(u) => {
                    if matches!(u, Unfit::Definite(_)) {
                        definite += 1;
                    }
                    warn!(source = %redact(&src.urls[i]), reason = %u, "source skipped");
                    reasons.push(format!("{}: {u}", redact(&src.urls[i])));
                }
            }
        }
        if definite == n {
            return Err(SourceError::Definite(format!(
                "no source can be read from:\n  {}",
                reasons.join("\n  ")
            )));
        }
        round += 1;
        let wait = Duration::from_secs(u64::from(round.min(5)));
        warn!(
            round,
            wait_s = wait.as_secs(),
            "no source is healthy and caught up; waiting"
        );
        tokio::time::sleep(wait).await;
    }
}

/// Errors after which another server would fail the same way: stop.
fn fatal(e: &SourceError) -> bool {
    matches!(e, SourceError::Decode(_))
}

fn one(src: &SourceConfig, i: usize) -> Result<(SourceConfig, mysql_async::Opts), SourceError> {
    let mut c = src.clone();
    c.url = src.urls[i].clone();
    c.give_up_after = Some(2);
    let opts = parse_url(&c.url)?;
    Ok((c, opts))
}

/// A transaction's GTID is already in `merged` (applied from another source).
fn applied(merged: &Position, t: &super::Transaction) -> bool {
    match merged {
        Position::MariaDb(st) => t
            .maria
            .is_some_and(|g| st.get(g.domain).is_some_and(|m| m.seq >= g.seq)),
        Position::Mysql(set) => t
            .mysql
            .as_ref()
            .is_some_and(|g| set.contains(g.sid, &g.tag, g.gno)),
        Position::File(_) => false,
    }
}

fn advance(merged: &mut Position, t: &super::Transaction) {
    match merged {
        Position::MariaDb(st) => {
            if let Some(g) = t.maria {
                st.apply(g);
            }
        }
        Position::Mysql(set) => {
            if let Some(g) = &t.mysql {
                set.add(g.sid, &g.tag, g.gno);
            }
        }
        Position::File(_) => {}
    }
}

/// One reader per server, restarted (from the merged position, once the server covers it) when
/// its stream gives up.
async fn reader(
    src: SourceConfig,
    flavor: Flavor,
    i: usize,
    merged: Arc<Mutex<Position>>,
    tx: mpsc::Sender<SourceMsg>,
    status: mpsc::Sender<(usize, Result<(), SourceError>)>,
) {
    let mut wait = Duration::from_secs(1);
    loop {
        let at = merged.lock().expect("merged position").clone();
        match probe(&src.urls[i], Some(&at)).await {
            Ok(_) => {
                let Ok((cfg, opts)) = one(&src, i) else {
                    return;
                };
                let _ = status.send((i, Ok(()))).await;
                let r = super::stream::run(cfg, opts, flavor, at, i, tx.clone()).await;
                if tx.is_closed() {
                    return;
                }
                let r = r.and(Err(SourceError::Stream("stream ended".into())));
                if status.send((i, r)).await.is_err() {
                    return;
                }
                wait = Duration::from_secs(1);
            }
            Err(u) => {
                warn!(source = %redact(&src.urls[i]), reason = %u, "source not read for now");
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// Active-active: reads every source at once from `start`; `first` is the server whose file
/// positions the pipeline follows until it is lost.
pub async fn active_active(
    src: SourceConfig,
    flavor: Flavor,
    start: Position,
    first: usize,
    tx: mpsc::Sender<SourceMsg>,
) -> Result<(), SourceError> {
    if matches!(start, Position::File(_)) {
        return Err(SourceError::Definite(
            "active-active reading needs GTIDs: the position is a binlog file position".into(),
        ));
    }
    let n = src.urls.len();
    let merged = Arc::new(Mutex::new(start.clone()));
    let mut pos = start;
    let (itx, mut irx) = mpsc::channel::<SourceMsg>(64);
    let (stx, mut srx) = mpsc::channel(8);
    let mut readers = JoinSet::new();
    for i in 0..n {
        readers.spawn(reader(
            src.clone(),
            flavor,
            i,
            merged.clone(),
            itx.clone(),
            stx.clone(),
        ));
    }
    drop(itx);
    // The server whose file positions the pipeline follows (snapshot handoff, caught-up check).
    let mut snap = first;
    let mut live = vec![false; n];
    // `choose` has just found it fit; its reader reports in shortly
    live[first] = true;
    loop {
        tokio::select! {
            m = irx.recv() => {
                let Some(m) = m else { return Ok(()) };
                let out = match m {
                    SourceMsg::Txn(mut t) => {
                        if applied(&pos, &t) {
                            if t.via != snap {
                                continue;
                            }
                            SourceMsg::Seen { via: t.via, file_pos: t.file_pos, version: t.version, position: t.position }
                        } else {
                            advance(&mut pos, &t);
                            t.via_position = Some(std::mem::replace(&mut t.position, pos.clone()));
                            t.version = pos.version();
                            *merged.lock().expect("merged position") = pos.clone();
                            SourceMsg::Txn(t)
                        }
                    }
                    SourceMsg::Idle { via, .. } if via != snap => continue,
                    other => other,
                };
                if tx.send(out).await.is_err() {
                    return Ok(());
                }
            }
            s = srx.recv() => {
                let Some((i, r)) = s else { return Ok(()) };
                match r {
                    Ok(()) => {
                        live[i] = true;
                        info!(source = %redact(&src.urls[i]), index = i, "source reading");
                        if !live[snap] {
                            snap = i;
                            if tx.send(SourceMsg::Switched { via: snap }).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Err(e) if fatal(&e) => return Err(e),
                    Err(e) => {
                        live[i] = false;
                        warn!(source = %redact(&src.urls[i]), error = %e, "source lost; the others go on");
                        if i == snap {
                            if let Some(j) = (0..n).find(|&j| live[j]) {
                                snap = j;
                                if tx.send(SourceMsg::Switched { via: snap }).await.is_err() {
                                    return Ok(());
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::{BinlogPos, MariaGtid};
    use crate::source::Transaction;

    fn txn(g: &str) -> Transaction {
        Transaction {
            gtid: Some(g.into()),
            version: 0,
            commit_us: 0,
            clock_us: 0,
            origin_server_id: 1,
            maria: Some(g.parse::<MariaGtid>().unwrap()),
            mysql: None,
            via: 0,
            read_server_id: 2,
            position: Position::MariaDb(MariaGtidState::default()),
            via_position: None,
            file_pos: BinlogPos {
                file: "b.000001".into(),
                pos: 4,
            },
            changes: vec![],
            ddl: vec![],
        }
    }

    #[test]
    fn dedup_keeps_each_gtid_once_and_never_moves_back() {
        let mut merged = Position::MariaDb("0-1-10,1-5-3".parse().unwrap());
        assert!(applied(&merged, &txn("0-1-9")));
        assert!(applied(&merged, &txn("0-1-10")));
        assert!(applied(&merged, &txn("1-5-2")));
        assert!(!applied(&merged, &txn("0-1-11")));
        assert!(!applied(&merged, &txn("2-7-1")), "a new domain");
        advance(&mut merged, &txn("0-1-11"));
        assert_eq!(merged.to_string(), "mariadb-gtid:0-1-11,1-5-3");
        assert!(applied(&merged, &txn("0-1-11")));
    }

    #[test]
    fn mysql_sets_cover_by_intervals() {
        let a: MysqlGtidSet = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5".parse().unwrap();
        let b: MysqlGtidSet = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-9".parse().unwrap();
        assert!(is_subset(&a, &b));
        assert!(!is_subset(&b, &a));
        assert!(is_subset(&MysqlGtidSet::default(), &a));
    }
}

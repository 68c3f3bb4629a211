//! The replication stream: COM_BINLOG_DUMP as a replica, events decoded, whole transactions out.
//!
//! MariaDB speaks its own dialect: we announce `@mariadb_slave_capability=4` so the server sends
//! real GTID events (type 162) instead of dummy queries, and resume with `@slave_connect_state`
//! plus a dump from an empty file name. MySQL resumes with COM_BINLOG_DUMP_GTID and the executed
//! set. Without GTIDs (and for `earliest`/`file:pos` starts) we dump from the start of the file
//! and skip to the position, so the GTID state is known exactly from the file's GTID list /
//! previous-GTIDs event onwards.
//!
//! Transaction boundaries: a GTID event opens one; `BEGIN` marks a multi-statement one; XID or
//! `COMMIT` (or `ROLLBACK`, which still logs non-transactional changes) closes it; a statement
//! outside `BEGIN` (DDL) is a transaction by itself.

use std::time::Duration;

use futures::StreamExt;
use mysql_async::binlog::events::Event;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Opts};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{connect, Flavor, SourceConfig, SourceError, SourceMsg, TableChange, Transaction};
use crate::decode::event::{types, EventBody, EventHeader};
use crate::decode::{Decoded, Decoder, EventLocation};
use crate::position::{BinlogPos, MariaGtid, MariaGtidState, MysqlGtid, MysqlGtidSet, Position};

#[derive(Default)]
struct Open {
    maria: Option<MariaGtid>,
    mysql: Option<MysqlGtid>,
    saw_begin: bool,
    commit_us: Option<u64>,
    origin: u32,
    changes: Vec<TableChange>,
    ddl: Vec<super::Ddl>,
}

struct State {
    /// Index of this server in `SourceConfig::urls`, and its server id (read at connect).
    via: usize,
    server_id: u32,
    /// An event arrived since the last connection error (the server is healthy again).
    delivered: bool,
    flavor: Flavor,
    maria: MariaGtidState,
    mysql: MysqlGtidSet,
    mysql_gtids_seen: bool,
    file: String,
    /// Deliver nothing that ends at or before this (file-position starts).
    skip_until: Option<BinlogPos>,
    /// Position after the last delivered transaction.
    last: Position,
    open: Option<Open>,
    /// Binlog end of the transaction just delivered, until the next event arrives.
    sent: Option<BinlogPos>,
}

/// Streams from `start` until the receiver is dropped. Transient errors reconnect with backoff
/// (1 s doubling to 30 s) from the position after the last delivered transaction.
pub async fn run(
    cfg: SourceConfig,
    opts: Opts,
    flavor: Flavor,
    start: Position,
    via: usize,
    tx: mpsc::Sender<SourceMsg>,
) -> Result<(), SourceError> {
    let mut st = State {
        via,
        server_id: 0,
        delivered: false,
        flavor,
        maria: MariaGtidState::default(),
        mysql: MysqlGtidSet::default(),
        mysql_gtids_seen: false,
        file: String::new(),
        skip_until: None,
        last: start.clone(),
        open: None,
        sent: None,
    };
    let mut attempt = 0u32;
    loop {
        let r = stream_once(&cfg, &opts, &mut st, &tx).await;
        if std::mem::take(&mut st.delivered) {
            attempt = 0;
        }
        match r {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && cfg.give_up_after.is_none_or(|n| attempt < n) => {
                attempt += 1;
                let wait = Duration::from_secs(1u64 << attempt.min(5).saturating_sub(1))
                    .min(Duration::from_secs(30));
                warn!(error = %e, attempt, wait_s = wait.as_secs(), resume = %st.last, "binlog stream lost; reconnecting");
                if tx
                    .send(SourceMsg::Reconnecting {
                        error: e.to_string(),
                        attempt,
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn stream_once(
    cfg: &SourceConfig,
    opts: &Opts,
    st: &mut State,
    tx: &mpsc::Sender<SourceMsg>,
) -> Result<(), SourceError> {
    let mut conn = connect(opts).await?;
    super::load_collations(&mut conn).await;
    st.server_id = conn
        .query_first::<u32, _>("SELECT @@server_id")
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let q = |e| SourceError::from_mysql(e, "preparing the binlog dump");
    let hb_ns = cfg
        .heartbeat
        .as_nanos()
        .clamp(1_000_000, 4_294_967_000_000_000);
    conn.query_drop(format!("SET @master_heartbeat_period = {hb_ns}"))
        .await
        .map_err(q)?;
    let resume = st.last.clone();
    st.open = None;
    st.skip_until = None;
    let mut filename = String::new();
    let mut request = BinlogStreamRequest::new(cfg.replica_server_id).with_pos(4u64);
    match (&resume, st.flavor) {
        (Position::MariaDb(state), Flavor::MariaDb) => {
            conn.query_drop("SET @mariadb_slave_capability = 4")
                .await
                .map_err(q)?;
            conn.query_drop(format!("SET @slave_connect_state = '{state}'"))
                .await
                .map_err(q)?;
            conn.query_drop("SET @slave_gtid_strict_mode = 1")
                .await
                .map_err(q)?;
            st.maria = state.clone();
        }
        (Position::Mysql(set), Flavor::Mysql) => {
            let sids: Vec<mysql_async::Sid<'static>> = set
                .sets
                .iter()
                .filter(|((_, tag), _)| tag.is_empty())
                .map(|((u, _), ivs)| {
                    mysql_async::Sid::new(u.0).with_intervals(
                        ivs.iter()
                            .map(|&(s, e)| mysql_async::GnoInterval::new(s, e))
                            .collect(),
                    )
                })
                .collect();
            request = request.with_gtid().with_gtid_set(sids);
            st.mysql = set.clone();
            st.mysql_gtids_seen = true;
        }
        (Position::File(p), _) => {
            if st.flavor == Flavor::MariaDb {
                conn.query_drop("SET @mariadb_slave_capability = 4")
                    .await
                    .map_err(q)?;
            }
            filename = p.file.clone();
            st.file = p.file.clone();
            st.skip_until = Some(p.clone());
            st.maria = MariaGtidState::default();
            st.mysql = MysqlGtidSet::default();
        }
        (p, f) => {
            return Err(SourceError::Definite(format!(
                "position {p} cannot be used with a {f:?} server"
            )))
        }
    }
    let request = request.with_filename(filename.as_bytes());
    info!(resume = %resume, server_id = cfg.replica_server_id, "starting binlog dump");
    let mut stream = conn
        .get_binlog_stream(request)
        .await
        .map_err(|e| classify_stream_error(e, &resume))?;
    let mut dec = Decoder::new();
    let idle_limit = (cfg.heartbeat * 5).max(Duration::from_secs(10));
    loop {
        let drained_at = st.sent.take();
        let next = {
            let fut = tokio::time::timeout(idle_limit, stream.next());
            tokio::pin!(fut);
            // After a transaction, one poll tells whether the next event has already arrived
            // (it is in the connection's buffers): if not, the source is drained right now and
            // the pipeline hears so (an `Idle`), so that what it holds is committed at once
            // instead of after `max_latency`. While binlake is behind, the next event is always
            // there and nothing extra is sent.
            match drained_at {
                Some(at) => match futures::poll!(&mut fut) {
                    std::task::Poll::Ready(n) => n,
                    std::task::Poll::Pending => {
                        let idle = SourceMsg::Idle {
                            via: st.via,
                            file_pos: at,
                        };
                        if tx.send(idle).await.is_err() {
                            return Ok(());
                        }
                        fut.await
                    }
                },
                None => fut.await,
            }
        };
        let next = match next {
            Ok(n) => n,
            Err(_) => {
                return Err(SourceError::Stream(format!(
                    "no event or heartbeat for {} s",
                    idle_limit.as_secs()
                )))
            }
        };
        let Some(ev) = next else {
            return Err(SourceError::Stream(
                "the server closed the binlog stream".into(),
            ));
        };
        let ev = ev.map_err(|e| classify_stream_error(e, &st.last))?;
        if !handle_event(cfg, st, &mut dec, &ev, tx).await? {
            return Ok(());
        }
        // a delivered event proves the server healthy again: the give-up count starts over
        st.delivered = true;
    }
}

fn strip_crc<'a>(h: &EventHeader, body: &'a [u8]) -> &'a [u8] {
    if body.len() < 4 {
        return body;
    }
    let (payload, crc) = body.split_at(body.len() - 4);
    let mut head = Vec::with_capacity(19 + payload.len());
    head.extend_from_slice(&h.timestamp.to_le_bytes());
    head.push(h.type_code);
    head.extend_from_slice(&h.server_id.to_le_bytes());
    head.extend_from_slice(&h.event_size.to_le_bytes());
    head.extend_from_slice(&h.log_pos.to_le_bytes());
    head.extend_from_slice(&h.flags.to_le_bytes());
    head.extend_from_slice(payload);
    if crc32fast::hash(&head).to_le_bytes() == crc {
        payload
    } else {
        body
    }
}

fn classify_stream_error(e: mysql_async::Error, at: &Position) -> SourceError {
    match e {
        mysql_async::Error::Server(s) if s.code == 1236 => SourceError::PositionGone {
            position: at.to_string(),
            message: s.message,
        },
        other => SourceError::from_mysql(other, "binlog stream"),
    }
}

/// Returns false when the receiver is gone (shutdown).
async fn handle_event(
    cfg: &SourceConfig,
    st: &mut State,
    dec: &mut Decoder,
    ev: &Event,
    tx: &mpsc::Sender<SourceMsg>,
) -> Result<bool, SourceError> {
    let h = ev.header();
    let header = EventHeader {
        timestamp: h.timestamp(),
        type_code: h.event_type_raw(),
        server_id: h.server_id(),
        event_size: h.event_size(),
        log_pos: h.log_pos(),
        flags: h.flags_raw(),
    };
    // mysql_async already expands compressed transaction payloads into their inner events.
    if header.type_code == types::TRANSACTION_PAYLOAD {
        return Ok(true);
    }
    let file = st.file.clone();
    let at = move || EventLocation {
        source: format!("binlog {file}"),
        offset: (header.log_pos as u64).saturating_sub(header.event_size as u64),
    };
    // Before the first format description (the dump's artificial Rotate), the client library
    // cannot know that events carry a CRC32 trailer, so it is still in the data: verify, strip.
    let data = if dec.fde.is_none() {
        strip_crc(&header, ev.data())
    } else {
        ev.data()
    };
    let decoded = dec.decode(&header, data, &at)?;
    let end = BinlogPos {
        file: st.file.clone(),
        pos: header.log_pos as u64,
    };
    match decoded {
        Decoded::TableMap(_) => {}
        Decoded::Rows { table, changes, .. } => {
            if cfg.reads(&table.db, &table.table) {
                let open = st.open.get_or_insert_with(|| Open {
                    origin: header.server_id,
                    ..Default::default()
                });
                open.changes
                    .extend(changes.into_iter().map(|change| TableChange {
                        table: table.clone(),
                        change,
                    }));
            }
        }
        Decoded::Event(body) => match body {
            EventBody::Rotate { file, pos } => {
                st.file = file;
                debug!(file = %st.file, pos, "rotate");
            }
            EventBody::MariaGtid { gtid, .. } => {
                st.open = Some(Open {
                    maria: Some(gtid),
                    origin: header.server_id,
                    ..Default::default()
                });
            }
            EventBody::MysqlGtid {
                gtid,
                immediate_commit_us,
            } => {
                st.open = Some(Open {
                    mysql: gtid,
                    commit_us: immediate_commit_us,
                    origin: header.server_id,
                    ..Default::default()
                });
            }
            // The state before this file: what we start from when reading from a file position.
            EventBody::MariaGtidList(list) if st.skip_until.is_some() || st.maria.is_empty() => {
                for g in list {
                    if st.maria.get(g.domain).is_none_or(|o| o.seq < g.seq) {
                        st.maria.apply(g);
                    }
                }
            }
            EventBody::PreviousGtids(set) if st.skip_until.is_some() || st.mysql.is_empty() => {
                st.mysql = set;
            }
            EventBody::Query { sql, db, .. } => {
                let words: Vec<String> = sql
                    .split_whitespace()
                    .take(2)
                    .map(|w| w.to_ascii_uppercase())
                    .collect();
                let word = match words.as_slice() {
                    [x, s] if x == "XA" && s == "START" => "BEGIN".to_string(),
                    [w, ..] => w.clone(),
                    [] => String::new(),
                };
                match word.as_str() {
                    "BEGIN" => {
                        let open = st.open.get_or_insert_with(|| Open {
                            origin: header.server_id,
                            ..Default::default()
                        });
                        open.saw_begin = true;
                    }
                    "COMMIT" | "ROLLBACK" => return finish(cfg, st, &header, end, tx).await,
                    _ => {
                        let open = st.open.get_or_insert_with(|| Open {
                            origin: header.server_id,
                            ..Default::default()
                        });
                        open.ddl.push(super::Ddl::new(db, sql));
                        if !open.saw_begin {
                            return finish(cfg, st, &header, end, tx).await;
                        }
                    }
                }
            }
            EventBody::Xid(_) => return finish(cfg, st, &header, end, tx).await,
            EventBody::Heartbeat { .. } if header.log_pos != 0 && st.open.is_none() => {
                return Ok(tx
                    .send(SourceMsg::Idle {
                        via: st.via,
                        file_pos: end,
                    })
                    .await
                    .is_ok());
            }
            EventBody::Incident { code, message } => {
                return Err(SourceError::Definite(format!("the source logged an incident (code {code}: {message}) at {end}: changes may be missing from the binlog; re-snapshot the affected tables")));
            }
            _ => {}
        },
    }
    Ok(true)
}

async fn finish(
    cfg: &SourceConfig,
    st: &mut State,
    header: &EventHeader,
    end: BinlogPos,
    tx: &mpsc::Sender<SourceMsg>,
) -> Result<bool, SourceError> {
    let Some(open) = st.open.take() else {
        return Ok(true);
    };
    let mut gtid_text = None;
    if let Some(g) = open.maria {
        st.maria.apply(g);
        gtid_text = Some(g.to_string());
    }
    if let Some(g) = &open.mysql {
        st.mysql.add(g.sid, &g.tag, g.gno);
        st.mysql_gtids_seen = true;
        gtid_text = Some(g.to_string());
    }
    if let Some(skip) = &st.skip_until {
        if end.file == skip.file && end.pos <= skip.pos {
            return Ok(true);
        }
        st.skip_until = None;
    }
    let position = match st.flavor {
        Flavor::MariaDb if !st.maria.is_empty() => Position::MariaDb(st.maria.clone()),
        Flavor::Mysql if st.mysql_gtids_seen && open.mysql.is_some() => {
            Position::Mysql(st.mysql.clone())
        }
        _ => Position::File(end.clone()),
    };
    let version = position.version();
    st.last = position.clone();
    let origin_server_id = open.maria.map(|g| g.server).unwrap_or(open.origin);
    // Origin filters (two-way setups): the transaction still moves the position, its changes
    // are dropped.
    let excluded = cfg.exclude_server_ids.contains(&origin_server_id)
        || open
            .maria
            .is_some_and(|g| cfg.exclude_gtid_domains.contains(&g.domain));
    let (changes, ddl) = if excluded {
        (Vec::new(), Vec::new())
    } else {
        (open.changes, open.ddl)
    };
    let commit_us = open
        .commit_us
        .map(|u| u as i64)
        .unwrap_or(header.timestamp as i64 * 1_000_000);
    let clock_us = match open.commit_us {
        Some(_) => commit_us,
        None => crate::clock::now_us().clamp(commit_us, commit_us + 999_999),
    };
    let txn = Transaction {
        maria: open.maria,
        mysql: open.mysql.clone(),
        via: st.via,
        read_server_id: st.server_id,
        gtid: gtid_text,
        version,
        commit_us,
        clock_us,
        origin_server_id,
        position,
        via_position: None,
        file_pos: end.clone(),
        changes,
        ddl,
    };
    st.sent = Some(end);
    Ok(tx.send(SourceMsg::Txn(txn)).await.is_ok())
}

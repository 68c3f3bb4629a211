//! How other commands reach a running `replicate`: a small HTTP endpoint on `control_addr`
//! (loopback by default, off unless configured; served by axum, the client is hyper's), and the
//! backfill schedule (`[[backfill]]`).
//!
//! `POST /backfill` with `{"tables": "shop.*", "where": "id < 1000"}` queues a snapshot of the
//! matching tables in the running process, so the target keeps exactly one writer: the
//! `binlake backfill` command is only a client. The reply lists the tables queued, or says why
//! nothing was (no table matches, a table without a primary key, a predicate the source rejects).
//!
//! Access: a bare port listens on loopback; any other interface needs a token (`control_token`,
//! or `BINLAKE_CONTROL_TOKEN` in the environment; the config refuses it otherwise), which every
//! request must then carry as
//! `Authorization: Bearer` (401 without it; compared without an early exit).
//!
//! Invariants: a request is checked against the source before it is accepted (the tables exist
//! and have a key, the predicate parses), and once accepted it is in the next checkpoint, so a
//! crash after the reply does not lose it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use binlake_sink::TableId;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::filter::TableFilter;
use crate::snapshot::values::{describe, ident};
use crate::source;

/// What `POST /backfill` carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackfillRequest {
    pub tables: String,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Keys (JSON key cells, as in the checkpoint) that the target holds and the source may
    /// have deleted: each gets a tombstone unless the source has it (`validate --repair` sends
    /// the rows it found only in the target). One table only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<serde_json::Value>,
}

/// Keys a request may ask to check (see [`BackfillRequest::absent`]).
pub const MAX_ABSENT_KEYS: usize = 100_000;

/// A backfill for the pipeline, checked against the source.
#[derive(Debug)]
pub struct Backfill {
    pub tables: Vec<TableId>,
    pub filter: Option<String>,
    /// Keys to delete unless the source has them (see [`BackfillRequest::absent`]).
    pub absent: Vec<serde_json::Value>,
    /// `backfill` (the command), `repair` (one with keys to check) or `schedule`.
    pub reason: &'static str,
    pub reply: Option<oneshot::Sender<Result<Vec<String>, BackfillRefused>>>,
}

/// Why the pipeline did not queue a backfill.
#[derive(Debug, thiserror::Error)]
pub enum BackfillRefused {
    #[error("{table} has a snapshot in progress already")]
    InProgress { table: String },
}

/// A backfill request the pipeline cannot take, with the reason (sent back to the client).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Why `binlake backfill` could not queue its request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot reach a running `binlake replicate` at {addr}: {source}. Start replicate with control_addr = \"{addr}\" (or --control-addr)")]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("{addr} did not answer within {}s", REPLY_TIMEOUT.as_secs())]
    Timeout { addr: String },
    #[error("unexpected reply from {addr} (HTTP {status}): {reason}")]
    Reply {
        addr: String,
        reason: String,
        status: u16,
    },
    /// The pipeline refused the request (the reason it gave).
    #[error("{0}")]
    Refused(String),
}

/// A cron schedule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

/// Checks a request against the source: the tables it selects (within the pipeline's tables),
/// each with a primary key, and the predicate.
pub async fn check(
    opts: &mysql_async::Opts,
    pipeline_filter: &TableFilter,
    req: &BackfillRequest,
) -> Result<Vec<TableId>, BadRequest> {
    let bad = |m: String| BadRequest(m);
    let wanted = TableFilter::parse(&[req.tables.as_str()]).map_err(|e| bad(e.to_string()))?;
    let all = crate::snapshot::list_tables(opts, pipeline_filter)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let tables: Vec<TableId> = all
        .into_iter()
        .filter(|t| wanted.matches(&t.db, &t.table))
        .collect();
    if tables.is_empty() {
        return Err(bad(format!(
            "no replicated table matches `{}` (the pipeline replicates only its `tables`)",
            req.tables
        )));
    }
    if !req.absent.is_empty() && tables.len() != 1 {
        return Err(bad(format!(
            "keys to check (`absent`) need exactly one table; `{}` selects {}",
            req.tables,
            tables.len()
        )));
    }
    if req.absent.len() > MAX_ABSENT_KEYS {
        return Err(bad(format!(
            "{} keys to check (`absent`): at most {MAX_ABSENT_KEYS} per request",
            req.absent.len()
        )));
    }
    let mut conn = source::connect(opts)
        .await
        .map_err(|e| bad(e.to_string()))?;
    for t in &tables {
        let d = describe(&mut conn, &t.db, &t.table)
            .await
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad(format!("{t} does not exist")))?;
        if d.keyless() && (req.filter.is_some() || !req.absent.is_empty()) {
            return Err(bad(format!("{t} has no primary key: it is backfilled whole (read again in one consistent read that replaces its rows), without a predicate or keys to check")));
        }
        if let Some(w) = &req.filter {
            conn.query_drop(format!(
                "SELECT 1 FROM {}.{} WHERE ({w}) LIMIT 0",
                ident(&t.db),
                ident(&t.table)
            ))
            .await
            .map_err(|e| bad(format!("the predicate `{w}` fails on {t}: {e}")))?;
        }
        let width = d.map.primary_key.len();
        if let Some(k) = req
            .absent
            .iter()
            .find(|k| crate::snapshot::values::key_cells(k).is_none_or(|c| c.len() != width))
        {
            return Err(bad(format!(
                "the key {k} in `absent` is not a key of {t} ({width} column(s), JSON key cells)"
            )));
        }
    }
    Ok(tables)
}

/// What every request of the control endpoint shares.
#[derive(Clone)]
struct Endpoint {
    opts: mysql_async::Opts,
    filter: TableFilter,
    tx: mpsc::Sender<Backfill>,
    token: Option<Arc<str>>,
}

type Reply = (StatusCode, Json<serde_json::Value>);

fn reply(code: StatusCode, error: impl Into<String>) -> Reply {
    (code, Json(serde_json::json!({ "error": error.into() })))
}

/// Serves the control endpoint (axum, HTTP/1.1) until the pipeline is gone.
pub async fn serve(
    listener: TcpListener,
    opts: mysql_async::Opts,
    pipeline_filter: TableFilter,
    tx: mpsc::Sender<Backfill>,
    token: Option<String>,
) {
    let gone = tx.clone();
    let app = Router::new()
        .route("/backfill", post(backfill))
        .fallback(unknown)
        .layer(axum::middleware::map_response(crate::metrics::close_after))
        .with_state(Endpoint {
            opts,
            filter: pipeline_filter,
            tx,
            token: token.map(Arc::from),
        });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { gone.closed().await })
        .await
    {
        warn!(error = %e, "control endpoint stopped");
    }
}

/// `POST /backfill`: checks the request against the source, queues it, and answers with the
/// tables queued (200), or why not: 400 (the request), 401 (the token), 409 (the pipeline
/// refused it), 503 (the pipeline is stopping).
async fn backfill(State(ep): State<Endpoint>, headers: HeaderMap, body: Bytes) -> Reply {
    if !authorized(&headers, ep.token.as_deref()) {
        return unauthorized();
    }
    let req = match serde_json::from_slice::<BackfillRequest>(&body) {
        Ok(r) => r,
        Err(e) => return reply(StatusCode::BAD_REQUEST, format!("bad request body: {e}")),
    };
    let tables = match check(&ep.opts, &ep.filter, &req).await {
        Ok(t) => t,
        Err(e) => return reply(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (rtx, rrx) = oneshot::channel();
    let b = Backfill {
        tables,
        filter: req.filter.clone(),
        reason: if req.absent.is_empty() {
            "backfill"
        } else {
            "repair"
        },
        absent: req.absent,
        reply: Some(rtx),
    };
    let stopping = || reply(StatusCode::SERVICE_UNAVAILABLE, "the pipeline is stopping");
    if ep.tx.send(b).await.is_err() {
        return stopping();
    }
    match rrx.await {
        Ok(Ok(q)) => (StatusCode::OK, Json(serde_json::json!({ "queued": q }))),
        Ok(Err(e)) => reply(StatusCode::CONFLICT, e.to_string()),
        Err(_) => stopping(),
    }
}

async fn unknown(State(ep): State<Endpoint>, headers: HeaderMap) -> Reply {
    if !authorized(&headers, ep.token.as_deref()) {
        return unauthorized();
    }
    reply(
        StatusCode::NOT_FOUND,
        "unknown request; this endpoint serves POST /backfill",
    )
}

fn unauthorized() -> Reply {
    reply(
        StatusCode::UNAUTHORIZED,
        "this control endpoint needs the token of BINLAKE_CONTROL_TOKEN",
    )
}

/// The token the clients send: `BINLAKE_CONTROL_TOKEN`, if set.
fn token() -> Option<String> {
    std::env::var("BINLAKE_CONTROL_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
}

/// Whether a request carries the control token (always, when no token is set: then the
/// endpoint listens on loopback only, which the config enforces).
fn authorized(headers: &HeaderMap, want: Option<&str>) -> bool {
    let Some(want) = want else {
        return true;
    };
    let got = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Bearer "));
    // compared in full whatever the first difference (no early exit to time)
    got.is_some_and(|g| {
        g.len() == want.len()
            && g.bytes()
                .zip(want.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
    })
}

/// The `binlake backfill` client (hyper, HTTP/1.1): sends the request, returns the tables
/// queued.
pub async fn request_backfill(
    addr: &str,
    req: &BackfillRequest,
) -> Result<Vec<String>, RequestError> {
    let http = |source| RequestError::Http {
        addr: addr.to_string(),
        source,
    };
    let sock = TcpStream::connect(addr)
        .await
        .map_err(|source| RequestError::Unreachable {
            addr: addr.to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let body = serde_json::to_string(req).expect("a backfill request serialises");
    let mut request = hyper::Request::post("/backfill")
        .header(HOST, addr)
        .header(CONTENT_TYPE, "application/json");
    if let Some(t) = token() {
        request = request.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| RequestError::Reply {
            addr: addr.to_string(),
            reason: e.to_string(),
            status: 0,
        })?;
    let response = tokio::time::timeout(REPLY_TIMEOUT, async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    })
    .await
    .map_err(|_| RequestError::Timeout {
        addr: addr.to_string(),
    })?;
    let (status, body) = response.map_err(http)?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| RequestError::Reply {
        addr: addr.to_string(),
        reason: e.to_string(),
        status: status.as_u16(),
    })?;
    if status == StatusCode::OK {
        Ok(v["queued"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    } else {
        Err(RequestError::Refused(
            v["error"].as_str().unwrap_or("refused").to_string(),
        ))
    }
}

/// How long the client waits for the pipeline's answer (it checks the request against the
/// source first).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// A five-field cron schedule (minute hour day-of-month month day-of-week), evaluated in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    dom_any: bool,
    dow_any: bool,
}

impl std::str::FromStr for Cron {
    type Err = CronError;
    fn from_str(s: &str) -> Result<Self, CronError> {
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() != 5 {
            return Err(CronError(format!(
                "`{s}`: expected 5 fields (minute hour day-of-month month day-of-week)"
            )));
        }
        let field = |t: &str, lo: u64, hi: u64, name: &str| -> Result<u64, CronError> {
            let bad = |m: String| CronError(m);
            let mut bits = 0u64;
            for part in t.split(',') {
                let (range, step) = match part.split_once('/') {
                    Some((r, st)) => (
                        r,
                        st.parse::<u64>()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| bad(format!("`{s}`: bad step in the {name} field")))?,
                    ),
                    None => (part, 1),
                };
                let (a, b) = if range == "*" {
                    (lo, hi)
                } else if let Some((a, b)) = range.split_once('-') {
                    (
                        a.parse()
                            .map_err(|_| bad(format!("`{s}`: bad {name} `{a}`")))?,
                        b.parse()
                            .map_err(|_| bad(format!("`{s}`: bad {name} `{b}`")))?,
                    )
                } else {
                    let v: u64 = range
                        .parse()
                        .map_err(|_| bad(format!("`{s}`: bad {name} `{range}`")))?;
                    (v, if step > 1 { hi } else { v })
                };
                if a < lo || b > hi || a > b {
                    return Err(bad(format!("`{s}`: {name} must be within {lo}-{hi}")));
                }
                let mut v = a;
                while v <= b {
                    bits |= 1 << v;
                    v += step;
                }
            }
            Ok(bits)
        };
        let mut dow = field(f[4], 0, 7, "day-of-week")?;
        if dow & (1 << 7) != 0 {
            dow |= 1; // 7 is Sunday too
        }
        Ok(Cron {
            minute: field(f[0], 0, 59, "minute")?,
            hour: field(f[1], 0, 23, "hour")?,
            dom: field(f[2], 1, 31, "day-of-month")?,
            month: field(f[3], 1, 12, "month")?,
            dow,
            dom_any: f[2] == "*",
            dow_any: f[4] == "*",
        })
    }
}

impl Cron {
    /// The first matching minute strictly after `after_s` (seconds since the epoch, UTC).
    pub fn next_after(&self, after_s: i64) -> i64 {
        let mut t = (after_s.div_euclid(60) + 1) * 60;
        // at most about four years of minutes (Feb 29)
        for _ in 0..(4 * 366 * 24 * 60) {
            let days = t.div_euclid(86_400);
            let (_, m, d) = crate::decode::rows::civil_from_days(days as i32);
            let sod = t.rem_euclid(86_400);
            let (h, mi) = ((sod / 3600) as u64, (sod / 60 % 60) as u64);
            let wd = (days + 4).rem_euclid(7) as u64; // 1970-01-01 was a Thursday
            let day_ok = match (self.dom_any, self.dow_any) {
                (true, true) => true,
                (false, true) => self.dom & (1 << d) != 0,
                (true, false) => self.dow & (1 << wd) != 0,
                (false, false) => self.dom & (1 << d) != 0 || self.dow & (1 << wd) != 0,
            };
            if self.month & (1 << m) == 0 {
                // skip to the first day of the next month
                t = (days + 1) * 86_400;
                continue;
            }
            if !day_ok {
                t = (days + 1) * 86_400;
                continue;
            }
            if self.hour & (1 << h) == 0 {
                t = t - t.rem_euclid(3600) + 3600;
                continue;
            }
            if self.minute & (1 << mi) != 0 {
                return t;
            }
            t += 60;
        }
        i64::MAX
    }
}

/// A scheduled backfill from the config.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub tables: String,
    pub filter: Option<String>,
    pub cron: Cron,
    pub schedule: String,
}

/// Sends each scheduled backfill to the pipeline when it falls due.
pub async fn run_schedule(
    schedules: Vec<Scheduled>,
    opts: mysql_async::Opts,
    pipeline_filter: TableFilter,
    tx: mpsc::Sender<Backfill>,
) {
    if schedules.is_empty() {
        return;
    }
    let now = || crate::clock::now_us() / 1_000_000;
    let mut next: Vec<i64> = schedules.iter().map(|s| s.cron.next_after(now())).collect();
    for (s, n) in schedules.iter().zip(&next) {
        info!(tables = %s.tables, schedule = %s.schedule, next = %crate::clock::format_us(n * 1_000_000), "backfill scheduled");
    }
    loop {
        let (i, &due) = next
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .expect("schedules");
        let wait = (due - now()).max(0) as u64;
        tokio::time::sleep(Duration::from_secs(wait)).await;
        if now() < due {
            continue;
        }
        let s = &schedules[i];
        let req = BackfillRequest {
            tables: s.tables.clone(),
            filter: s.filter.clone(),
            absent: vec![],
        };
        match check(&opts, &pipeline_filter, &req).await {
            Ok(tables) => {
                let b = Backfill {
                    tables,
                    filter: s.filter.clone(),
                    absent: vec![],
                    reason: "schedule",
                    reply: None,
                };
                if tx.send(b).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(tables = %s.tables, schedule = %s.schedule, error = %e, "scheduled backfill skipped")
            }
        }
        next[i] = s.cron.next_after(now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, m: u32, d: u32, h: i64, mi: i64) -> i64 {
        crate::decode::rows::days_from_civil(y, m, d) as i64 * 86_400 + h * 3600 + mi * 60
    }

    #[test]
    fn cron_next() {
        let c: Cron = "0 3 * * *".parse().unwrap();
        assert_eq!(
            c.next_after(at(2026, 11, 21, 9, 30)),
            at(2026, 11, 22, 3, 0)
        );
        assert_eq!(
            c.next_after(at(2026, 11, 21, 2, 59)),
            at(2026, 11, 21, 3, 0)
        );
        let c: Cron = "*/15 * * * *".parse().unwrap();
        assert_eq!(c.next_after(at(2026, 1, 1, 0, 0)), at(2026, 1, 1, 0, 15));
        // Sundays at 04:30 (2026-11-22 is a Sunday); 7 means Sunday too
        for s in ["30 4 * * 0", "30 4 * * 7"] {
            let c: Cron = s.parse().unwrap();
            assert_eq!(
                c.next_after(at(2026, 11, 21, 9, 0)),
                at(2026, 11, 22, 4, 30)
            );
        }
        let c: Cron = "0 0 29 2 *".parse().unwrap();
        assert_eq!(c.next_after(at(2026, 3, 1, 0, 0)), at(2028, 2, 29, 0, 0));
        assert!("0 3 * *".parse::<Cron>().is_err());
        assert!("61 3 * * *".parse::<Cron>().is_err());
        assert!("0 3 * * 1-9".parse::<Cron>().is_err());
    }
}

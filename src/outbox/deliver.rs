//! Delivery of an outbox's events to an HTTP endpoint (`deliver_url`).
//!
//! Each event is POSTed as JSON with the header `Idempotency-Key: <id>`; a 2xx acknowledges it.
//! Events reach the deliverer only once the commit that holds them is durable (the event table
//! has them), in commit order.
//!
//! Invariants:
//! - Per aggregate, strictly in `_binlake_seq` order: the next event of an aggregate is sent only
//!   after the previous one was acknowledged. Different aggregates proceed in parallel, at most
//!   [`IN_FLIGHT`] requests at once.
//! - A failure (connection, timeout, a status that is not 2xx) is retried with exponential
//!   backoff and jitter; only that aggregate waits. With `deliver_max_attempts`, an event that
//!   failed that many times is given up on: it goes to `_binlake_rejects` with its last error
//!   (in the next commit, whose checkpoint counts it as settled) and its aggregate moves on.
//! - Progress ([`Progress`]) says which events are acknowledged: every event at or below a
//!   version, and those above it by id. Each commit's checkpoint carries it, so a restart sends
//!   again at most what was not acknowledged when the last checkpoint was written
//!   (at-least-once; receivers drop repeats by the idempotency key).
//! - A slow or dead endpoint never blocks replication: the deliverer is its own task, fed by an
//!   unbounded queue of events already durable in the target.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use binlake_sink::DeliveryMark;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Requests in flight at once (each to a different aggregate).
pub const IN_FLIGHT: usize = 16;
/// One request's bound.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An event ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub version: u64,
    pub id: String,
    pub aggregate: String,
    pub json: String,
    /// Source commit time (µs), for the delivery lag.
    pub commit_us: i64,
}

/// An event given up on after `deliver_max_attempts` (for `_binlake_rejects`).
#[derive(Debug, Clone)]
pub struct GaveUp {
    pub event: Outgoing,
    pub attempts: u32,
    pub last_error: String,
}

/// What is acknowledged (see the module doc), shared by the deliverer and the commits.
#[derive(Debug, Default)]
pub struct Progress {
    /// Every event at or below this version is acknowledged.
    upto: u64,
    /// Acknowledged events above `upto`.
    acked: BTreeSet<(u64, String)>,
    /// Events handed to the deliverer and not acknowledged, per version.
    open: BTreeMap<u64, usize>,
    /// Acknowledgements so far (a checkpoint that saw fewer is behind).
    pub changes: u64,
}

impl Progress {
    pub fn from_mark(mark: Option<&DeliveryMark>) -> Progress {
        let mark = mark.cloned().unwrap_or_default();
        Progress {
            upto: mark.upto,
            acked: mark.acked.into_iter().collect(),
            ..Default::default()
        }
    }

    /// The event is acknowledged (by this run or an earlier one).
    pub fn done(&self, version: u64, id: &str) -> bool {
        version <= self.upto || self.acked.contains(&(version, id.to_string()))
    }

    pub fn mark(&self) -> DeliveryMark {
        DeliveryMark {
            upto: self.upto,
            acked: self.acked.iter().cloned().collect(),
        }
    }

    fn handed(&mut self, version: u64) {
        *self.open.entry(version).or_default() += 1;
    }

    fn acked(&mut self, version: u64, id: String) {
        if let Some(n) = self.open.get_mut(&version) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&version);
            }
        }
        self.acked.insert((version, id));
        self.changes += 1;
        // every event below the lowest one still open is acknowledged (events are handed in
        // version order); with none open, every event handed is
        let upto = match self.open.keys().next() {
            Some(&low) => low.saturating_sub(1),
            None => self.acked.iter().next_back().map_or(self.upto, |a| a.0),
        };
        if upto > self.upto {
            self.upto = upto;
            self.acked = self.acked.split_off(&(upto + 1, String::new()));
        }
    }
}

/// The handle a run keeps: where to send events, and the progress to checkpoint.
#[derive(Clone)]
pub struct Deliverer {
    pub tx: mpsc::UnboundedSender<Outgoing>,
    pub progress: Arc<Mutex<Progress>>,
    /// Events given up on, for the next commit's `_binlake_rejects`.
    pub gave_up: Arc<Mutex<Vec<GaveUp>>>,
}

/// Starts delivering to `url` (`http://host:port/path`); `resend` first (events of earlier runs
/// not acknowledged). Returns the handle and the task.
pub fn start(
    outbox: String,
    url: &str,
    max_attempts: Option<u32>,
    progress: Progress,
    resend: Vec<Outgoing>,
    metrics: &'static crate::metrics::Metrics,
) -> Result<(Deliverer, impl std::future::Future<Output = ()>), String> {
    let target = Target::parse(url)?;
    let progress = Arc::new(Mutex::new(progress));
    let gave_up = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::unbounded_channel();
    if !resend.is_empty() {
        info!(outbox = %outbox, events = resend.len(), "outbox: sending again what was not acknowledged before the restart");
    }
    for e in resend {
        let _ = tx.send(e);
    }
    let task = run(
        Sender {
            outbox,
            target,
            max_attempts,
            metrics,
        },
        rx,
        progress.clone(),
        gave_up.clone(),
    );
    Ok((
        Deliverer {
            tx,
            progress,
            gave_up,
        },
        task,
    ))
}

/// `http://host[:port][/path]`.
#[derive(Clone)]
struct Target {
    addr: String,
    host: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let u = url::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
        if u.scheme() != "http" {
            return Err(format!(
                "`{url}`: only http:// endpoints in this build (put a TLS proxy in front for https)"
            ));
        }
        let host = u.host_str().ok_or(format!("`{url}`: no host"))?.to_string();
        let port = u.port_or_known_default().unwrap_or(80);
        let mut path = u.path().to_string();
        if let Some(q) = u.query() {
            path = format!("{path}?{q}");
        }
        Ok(Target {
            addr: format!("{host}:{port}"),
            host: u.port().map_or(host.clone(), |p| format!("{host}:{p}")),
            path,
        })
    }
}

/// Where and how one outbox's events are sent.
#[derive(Clone)]
struct Sender {
    outbox: String,
    target: Target,
    max_attempts: Option<u32>,
    /// The pipeline's metrics.
    metrics: &'static crate::metrics::Metrics,
}

async fn run(
    s: Sender,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    progress: Arc<Mutex<Progress>>,
    gave_up: Arc<Mutex<Vec<GaveUp>>>,
) {
    let mut queues: HashMap<String, VecDeque<Outgoing>> = HashMap::new();
    let mut ready: VecDeque<String> = VecDeque::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut workers = tokio::task::JoinSet::new();
    let mut open = true;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let metrics = s.metrics;
    loop {
        while workers.len() < IN_FLIGHT {
            let Some(agg) = ready.pop_front() else { break };
            let e = queues[&agg].front().expect("ready has events").clone();
            busy.insert(agg);
            workers.spawn(send_until_acked(s.clone(), e));
        }
        if !open && workers.is_empty() {
            return;
        }
        tokio::select! {
            _ = tick.tick() => {
                // the oldest event not acknowledged heads its aggregate's queue
                let pending: usize = queues.values().map(VecDeque::len).sum();
                let oldest = queues.values().filter_map(|q| q.front()).map(|e| e.commit_us).min();
                let lag = oldest.map_or(0.0, |c| (binlake_sink::store::now_us() - c) as f64 / 1e6);
                metrics.outbox_backlog(&s.outbox, pending, lag);
            }
            got = rx.recv(), if open => match got {
                Some(e) => {
                    if progress.lock().expect("progress").done(e.version, &e.id) {
                        continue;
                    }
                    progress.lock().expect("progress").handed(e.version);
                    let q = queues.entry(e.aggregate.clone()).or_default();
                    if q.is_empty() && !busy.contains(&e.aggregate) {
                        ready.push_back(e.aggregate.clone());
                    }
                    q.push_back(e);
                }
                None => open = false,
            },
            Some(done) = workers.join_next(), if !workers.is_empty() => {
                let Ok((e, outcome)) = done else { continue };
                if let Some(g) = outcome {
                    metrics.outbox_event(&s.outbox, Some(false));
                    gave_up.lock().expect("gave up").push(g);
                } else {
                    metrics.outbox_event(&s.outbox, Some(true));
                }
                progress.lock().expect("progress").acked(e.version, e.id.clone());
                busy.remove(&e.aggregate);
                let q = queues.get_mut(&e.aggregate).expect("queue");
                q.pop_front();
                if q.is_empty() {
                    queues.remove(&e.aggregate);
                } else {
                    ready.push_back(e.aggregate);
                }
            }
        }
    }
}

/// POSTs `e` until a 2xx, or until `max_attempts` failed (then the event comes back with why).
async fn send_until_acked(s: Sender, e: Outgoing) -> (Outgoing, Option<GaveUp>) {
    let mut attempt: u32 = 0;
    loop {
        match post(&s.target, &e).await {
            Ok(()) => {
                debug!(outbox = %s.outbox, id = %e.id, attempt, "event delivered");
                return (e, None);
            }
            Err(why) => {
                attempt += 1;
                s.metrics.outbox_event(&s.outbox, None);
                if s.max_attempts.is_some_and(|m| attempt >= m) {
                    warn!(outbox = %s.outbox, id = %e.id, aggregate = %e.aggregate, attempt, error = %why, "event given up on after deliver_max_attempts: it goes to _binlake_rejects, and its aggregate moves on");
                    let g = GaveUp {
                        event: e.clone(),
                        attempts: attempt,
                        last_error: why,
                    };
                    return (e, Some(g));
                }
                let base = 100u64 << attempt.min(9); // 0.2 s .. 51 s
                let wait = base.min(30_000) / 2 + jitter(base.min(30_000) / 2);
                warn!(outbox = %s.outbox, id = %e.id, aggregate = %e.aggregate, attempt, error = %why, retry_in_ms = wait, "event not delivered; retrying");
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
}

/// A pseudo-random number below `n` (spreads retries; not for anything secret).
fn jitter(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % n.max(1)
}

async fn post(target: &Target, e: &Outgoing) -> Result<(), String> {
    let attempt = async {
        let sock = TcpStream::connect(&target.addr)
            .await
            .map_err(|err| format!("connect {}: {err}", target.addr))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
            .await
            .map_err(|err| err.to_string())?;
        tokio::spawn(conn);
        let request = hyper::Request::post(target.path.as_str())
            .header(hyper::header::HOST, target.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", e.id.as_str())
            .body(Full::new(Bytes::from(e.json.clone())))
            .map_err(|err| err.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| err.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&body);
            Err(format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ))
        }
    };
    tokio::time::timeout(TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no answer in {TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_moves_past_what_is_acknowledged_in_order() {
        let mut p = Progress::default();
        for v in [5, 5, 7, 9] {
            p.handed(v);
        }
        p.acked(7, "c".into());
        assert_eq!(p.upto, 4, "5 is still open (nothing below it was handed)");
        assert!(p.done(7, "c"));
        p.acked(5, "a".into());
        p.acked(5, "b".into());
        assert_eq!(p.upto, 8, "everything below 9 is acknowledged, 9 is open");
        assert!(p.acked.is_empty());
        p.acked(9, "d".into());
        assert_eq!(p.upto, 9);
        let m = p.mark();
        let back = Progress::from_mark(Some(&m));
        assert!(back.done(9, "d") && !back.done(10, "e"));
    }
}

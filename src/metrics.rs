//! Prometheus metrics: `replicate --metrics-addr 127.0.0.1:9187` serves `GET /metrics` in the
//! text exposition format.
//!
//! Invariants:
//! - Counters only count what the target has durably applied (updated when a commit is done),
//!   so `rate(binlake_rows_applied_total[1m])` is the replica's real progress.
//! - Lag is measured from the source commit time of a change to the moment its commit finished
//!   in the target (per table), and, for the pipeline, from the newest applied source commit to
//!   now unless the source reported that nothing newer exists (then 0).
//! - Recording is a few atomic updates per table and commit, never per row.
//! - Every series carries the label `pipeline`: one process may run several pipelines
//!   (`[[pipelines]]`), each with its own counters, lag and errors, all served at one endpoint.
//! - The registry and the text format are the `prometheus` crate's, the HTTP server is axum.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::routing;
use axum::Router;
use prometheus::{
    Counter, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// What one commit applied to one table.
pub struct Applied {
    pub table: String,
    pub rows: u64,
    pub transactions: u64,
    pub bytes: u64,
    /// Source commit time (µs) of the newest change of the table in the commit (0: none).
    pub last_commit_us: i64,
    /// Commit time (µs clock, see `Transaction::clock_us`) of the oldest change of the table in
    /// the commit (0: none).
    pub first_clock_us: i64,
}

/// One pipeline's metrics: every series carries the label `pipeline="<name>"`.
pub struct Metrics {
    pipeline: String,
    rows: IntCounterVec,
    table_transactions: IntCounterVec,
    bytes: IntCounterVec,
    batches: IntCounterVec,
    table_lag: GaugeVec,
    /// Source commit to durable in the target, per table (one observation per table and
    /// commit: its oldest change, the commit's worst case).
    commit_to_visible: HistogramVec,
    snapshot_rows: GaugeVec,
    snapshot_estimate: GaugeVec,
    /// Tables whose snapshot gauges are set (removed when their snapshot ends).
    snapshotting: Mutex<Vec<String>>,
    lag: Gauge,
    transactions: IntCounter,
    commits: IntCounter,
    commit_seconds: Counter,
    /// What the sink asked after its last commit (`Sink::commit_pause`).
    commit_pause: Gauge,
    reconnects: IntCounter,
    lww_held: IntCounter,
    checkpoint_version: IntGauge,
    errors: IntCounterVec,
    outbox_delivered: IntCounterVec,
    outbox_failures: IntCounterVec,
    outbox_rejected: IntCounterVec,
    outbox_pending: GaugeVec,
    outbox_lag: GaugeVec,
    /// Newest applied source commit time (µs), and whether the source is idle (caught up).
    newest_commit_us: AtomicI64,
    caught_up: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

/// The registry every pipeline of this process registers its metrics in (what `/metrics`
/// serves), and the pipelines' metrics by name.
struct All {
    registry: Registry,
    pipelines: Mutex<Vec<&'static Metrics>>,
}

fn all() -> &'static All {
    static A: OnceLock<All> = OnceLock::new();
    A.get_or_init(|| All {
        registry: Registry::new(),
        pipelines: Mutex::new(Vec::new()),
    })
}

/// The metrics of pipeline `name` (created, and registered with the label
/// `pipeline="<name>"`, on first use; the same for the life of the process).
pub fn for_pipeline(name: &str) -> &'static Metrics {
    let a = all();
    let mut p = a.pipelines.lock().expect("metrics");
    if let Some(m) = p.iter().find(|m| m.pipeline == name) {
        return m;
    }
    let m: &'static Metrics = Box::leak(Box::new(Metrics::new(&a.registry, name)));
    p.push(m);
    m
}

impl Metrics {
    fn new(registry: &Registry, pipeline: &str) -> Self {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("pipeline", pipeline);
        let per_table = |name: &str, help: &str| {
            let v = IntCounterVec::new(opts(name, help), &["table"]).expect("metric");
            registry.register(Box::new(v.clone())).expect("register");
            v
        };
        let table_gauge = |name: &str, help: &str| {
            let v = GaugeVec::new(opts(name, help), &["table"]).expect("metric");
            registry.register(Box::new(v.clone())).expect("register");
            v
        };
        let per_outbox = |name: &str, help: &str| {
            let v = IntCounterVec::new(opts(name, help), &["outbox"]).expect("metric");
            registry.register(Box::new(v.clone())).expect("register");
            v
        };
        let outbox_gauge = |name: &str, help: &str| {
            let v = GaugeVec::new(opts(name, help), &["outbox"]).expect("metric");
            registry.register(Box::new(v.clone())).expect("register");
            v
        };
        let m = Metrics {
            outbox_delivered: per_outbox(
                "binlake_outbox_delivered_total",
                "Outbox events acknowledged by the endpoint (2xx).",
            ),
            outbox_failures: per_outbox(
                "binlake_outbox_delivery_failures_total",
                "Outbox delivery attempts that failed (connection, timeout, status not 2xx); each is retried.",
            ),
            outbox_rejected: per_outbox(
                "binlake_outbox_rejected_total",
                "Outbox events given up on after deliver_max_attempts (written to _binlake_rejects).",
            ),
            outbox_pending: outbox_gauge(
                "binlake_outbox_pending_events",
                "Outbox events durable in the target and not acknowledged yet.",
            ),
            outbox_lag: outbox_gauge(
                "binlake_outbox_delivery_lag_seconds",
                "Now minus the source commit time of the oldest event not acknowledged (0: none).",
            ),
            rows: per_table(
                "binlake_rows_applied_total",
                "Rows (changes and snapshot rows) durably applied to the target.",
            ),
            table_transactions: per_table(
                "binlake_table_transactions_applied_total",
                "Source transactions that changed the table, applied.",
            ),
            bytes: per_table(
                "binlake_bytes_applied_total",
                "Buffered bytes of the rows applied.",
            ),
            batches: per_table(
                "binlake_batches_applied_total",
                "Batches written to the table.",
            ),
            table_lag: table_gauge(
                "binlake_table_lag_seconds",
                "Source commit to visible in the target, of the table's last applied change.",
            ),
            commit_to_visible: {
                let v = HistogramVec::new(
                    HistogramOpts::new(
                        "binlake_table_commit_to_visible_seconds",
                        "Source commit to durably committed in the target, of the oldest change of the table in each commit (the commit's worst case): alert on its quantiles for freshness SLOs.",
                    )
                    .const_label("pipeline", pipeline)
                    .buckets(vec![
                        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    ]),
                    &["table"],
                )
                .expect("metric");
                registry.register(Box::new(v.clone())).expect("register");
                v
            },
            snapshot_rows: table_gauge(
                "binlake_snapshot_rows",
                "Rows read by the table's snapshot in progress.",
            ),
            snapshot_estimate: table_gauge(
                "binlake_snapshot_estimated_rows",
                "Estimated rows of the table's snapshot in progress.",
            ),
            snapshotting: Mutex::new(Vec::new()),
            lag: Gauge::with_opts(opts(
                "binlake_lag_seconds",
                "Now minus the newest applied source commit time (0 when the source has nothing newer).",
            ))
            .expect("metric"),
            transactions: IntCounter::with_opts(opts(
                "binlake_transactions_applied_total",
                "Source transactions taken in (filtered ones included).",
            ))
            .expect("metric"),
            commits: IntCounter::with_opts(opts("binlake_commits_total", "Commits to the target."))
                .expect("metric"),
            commit_seconds: Counter::with_opts(opts(
                "binlake_commit_seconds_total",
                "Time spent in commits.",
            ))
            .expect("metric"),
            commit_pause: Gauge::with_opts(opts(
                "binlake_commit_pause_seconds",
                "How long the sink asked the next commit to wait after the last one started (Delta: the bytes its last commit rewrote over rewrite_budget; 0 when commits are cheap).",
            ))
            .expect("metric"),
            reconnects: IntCounter::with_opts(opts(
                "binlake_source_reconnects_total",
                "Binlog stream reconnects and failovers.",
            ))
            .expect("metric"),
            lww_held: IntCounter::with_opts(opts(
                "binlake_lww_clock_held_total",
                "conflict = last_writer_wins: transactions whose commit time was below the source's previous one, stamped with the previous one (a clock stepped back; in MariaDB also a long transaction committed after shorter ones). Counted when taken in.",
            ))
            .expect("metric"),
            checkpoint_version: IntGauge::with_opts(opts(
                "binlake_checkpoint_version",
                "_binlake_version of the last committed checkpoint.",
            ))
            .expect("metric"),
            errors: IntCounterVec::new(
                opts(
                    "binlake_errors_total",
                    "Errors by class: transient ones are retried, definite ones stop the pipeline or a table.",
                ),
                &["class"],
            )
            .expect("metric"),
            newest_commit_us: AtomicI64::new(0),
            caught_up: AtomicBool::new(false),
            pipeline: pipeline.to_string(),
        };
        for c in [
            Box::new(m.lag.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.transactions.clone()),
            Box::new(m.commits.clone()),
            Box::new(m.commit_seconds.clone()),
            Box::new(m.commit_pause.clone()),
            Box::new(m.reconnects.clone()),
            Box::new(m.lww_held.clone()),
            Box::new(m.checkpoint_version.clone()),
            Box::new(m.errors.clone()),
        ] {
            registry.register(c).expect("register");
        }
        // both classes are shown from the start (0 until the first error)
        m.errors.with_label_values(&["transient"]);
        m.errors.with_label_values(&["definite"]);
        m
    }

    /// A commit finished: what it applied, and how long it took.
    pub fn committed(&self, applied: &[Applied], took_us: u64, now_us: i64, version: u64) {
        self.commits.inc();
        self.commit_seconds.inc_by(took_us as f64 / 1e6);
        self.checkpoint_version.set(version as i64);
        for a in applied {
            let t = [a.table.as_str()];
            self.rows.with_label_values(&t).inc_by(a.rows);
            self.table_transactions
                .with_label_values(&t)
                .inc_by(a.transactions);
            self.bytes.with_label_values(&t).inc_by(a.bytes);
            self.batches.with_label_values(&t).inc();
            if a.first_clock_us > 0 {
                self.commit_to_visible
                    .with_label_values(&t)
                    .observe(((now_us - a.first_clock_us) as f64 / 1e6).max(0.0));
            }
            let lag = self.table_lag.with_label_values(&t);
            if a.last_commit_us > 0 {
                lag.set(((now_us - a.last_commit_us) as f64 / 1e6).max(0.0));
            }
        }
    }

    /// What the sink asked after its last commit.
    pub fn commit_pause(&self, pause: std::time::Duration) {
        self.commit_pause.set(pause.as_secs_f64());
    }

    pub fn transactions(&self, n: u64) {
        self.transactions.inc_by(n);
    }

    /// The pipeline's freshness: newest applied source commit, and whether the source has said
    /// there is nothing newer.
    pub fn freshness(&self, newest_commit_us: i64, caught_up: bool) {
        self.newest_commit_us
            .store(newest_commit_us, Ordering::Relaxed);
        self.caught_up.store(caught_up, Ordering::Relaxed);
    }

    /// An outbox event was acknowledged (`Some(true)`), given up on (`Some(false)`), or an
    /// attempt failed (`None`).
    pub fn outbox_event(&self, outbox: &str, outcome: Option<bool>) {
        let o = [outbox];
        match outcome {
            Some(true) => self.outbox_delivered.with_label_values(&o).inc(),
            Some(false) => self.outbox_rejected.with_label_values(&o).inc(),
            None => self.outbox_failures.with_label_values(&o).inc(),
        }
    }

    /// An outbox's events not acknowledged, and the age of the oldest (seconds).
    pub fn outbox_backlog(&self, outbox: &str, pending: usize, lag_s: f64) {
        let o = [outbox];
        self.outbox_pending
            .with_label_values(&o)
            .set(pending as f64);
        self.outbox_lag.with_label_values(&o).set(lag_s.max(0.0));
    }

    pub fn reconnect(&self) {
        self.reconnects.inc();
    }

    /// `conflict`: a transaction stamped with a later time than its commit time.
    pub fn lww_held(&self) {
        self.lww_held.inc();
    }

    pub fn error(&self, transient: bool) {
        let class = if transient { "transient" } else { "definite" };
        self.errors.with_label_values(&[class]).inc();
    }

    /// Snapshot progress of the tables being read, as `(table, rows, estimate)`; the gauges of
    /// tables no longer being read are removed.
    pub fn snapshots(&self, progress: &[(String, u64, u64)]) {
        let mut active = self.snapshotting.lock().expect("metrics");
        for gone in active
            .iter()
            .filter(|t| !progress.iter().any(|(p, _, _)| p == *t))
        {
            let _ = self.snapshot_rows.remove_label_values(&[gone.as_str()]);
            let _ = self.snapshot_estimate.remove_label_values(&[gone.as_str()]);
        }
        active.clear();
        for (table, rows, estimate) in progress {
            let t = [table.as_str()];
            self.snapshot_rows.with_label_values(&t).set(*rows as f64);
            self.snapshot_estimate
                .with_label_values(&t)
                .set(*estimate as f64);
            active.push(table.clone());
        }
    }

    /// Sets the pipeline's lag gauge as of `now_us`.
    fn update_lag(&self, now_us: i64) {
        let newest = self.newest_commit_us.load(Ordering::Relaxed);
        let lag = if self.caught_up.load(Ordering::Relaxed) || newest == 0 {
            0.0
        } else {
            ((now_us - newest) as f64 / 1e6).max(0.0)
        };
        self.lag.set(lag);
    }
}

/// The text exposition format of every pipeline's metrics, with their lag as of `now_us`.
pub fn render(now_us: i64) -> String {
    let a = all();
    for m in a.pipelines.lock().expect("metrics").iter() {
        m.update_lag(now_us);
    }
    TextEncoder::new()
        .encode_to_string(&a.registry.gather())
        .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
}

/// Every response of binlake's endpoints says `Connection: close`: a scrape or a request is one
/// short exchange, and clients that read to the end of the stream (scripts, `nc`) then finish.
pub(crate) async fn close_after(mut r: axum::response::Response) -> axum::response::Response {
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}

/// Serves `GET /metrics` (axum; any other path: 404) until the process ends.
pub async fn serve(listener: TcpListener) {
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "serving Prometheus metrics at /metrics");
    }
    let app = Router::new()
        .route(
            "/metrics",
            routing::get(|| async {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4")],
                    render(crate::clock::now_us()),
                )
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics\n") })
        .layer(axum::middleware::map_response(close_after));
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "metrics endpoint stopped");
    }
}

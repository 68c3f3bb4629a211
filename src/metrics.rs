//! Prometheus metrics: `replicate --metrics-addr 127.0.0.1:9187` serves `GET /metrics` in the
//! text exposition format.
//!
//! Invariants:
//! - Counters only count what the target has durably applied (updated when a commit is done),
//!   so `rate(binlake_rows_applied_total[1m])` is the replica's real progress.
//! - Lag is measured from the source commit time of a change to the moment its commit finished
//!   in the target (per table), and, for the pipeline, from the newest applied source commit to
//!   now unless the source reported that nothing newer exists (then 0).
//! - Recording is a few atomic or mutex-guarded map updates per commit, never per row.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

#[derive(Default, Clone)]
struct TableStats {
    rows: u64,
    transactions: u64,
    bytes: u64,
    batches: u64,
    lag_s: f64,
    snapshot_rows: u64,
    snapshot_estimate: u64,
    snapshot_active: bool,
}

/// What one commit applied to one table.
pub struct Applied {
    pub table: String,
    pub rows: u64,
    pub transactions: u64,
    pub bytes: u64,
    /// Source commit time (µs) of the newest change of the table in the commit (0: none).
    pub last_commit_us: i64,
}

#[derive(Default)]
pub struct Metrics {
    tables: Mutex<BTreeMap<String, TableStats>>,
    commits: AtomicU64,
    commit_us_sum: AtomicU64,
    transactions: AtomicU64,
    reconnects: AtomicU64,
    errors_transient: AtomicU64,
    errors_definite: AtomicU64,
    /// Newest applied source commit time (µs), and whether the source is idle (caught up).
    newest_commit_us: AtomicI64,
    caught_up: AtomicU64,
    checkpoint_version: AtomicU64,
}

pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

impl Metrics {
    /// A commit finished: what it applied, and how long it took.
    pub fn committed(&self, applied: &[Applied], took_us: u64, now_us: i64, version: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_us_sum.fetch_add(took_us, Ordering::Relaxed);
        self.checkpoint_version.store(version, Ordering::Relaxed);
        let mut t = self.tables.lock().expect("metrics");
        for a in applied {
            let s = t.entry(a.table.clone()).or_default();
            s.rows += a.rows;
            s.transactions += a.transactions;
            s.bytes += a.bytes;
            s.batches += 1;
            if a.last_commit_us > 0 {
                s.lag_s = ((now_us - a.last_commit_us) as f64 / 1e6).max(0.0);
            }
        }
    }

    pub fn transactions(&self, n: u64) {
        self.transactions.fetch_add(n, Ordering::Relaxed);
    }

    /// The pipeline's freshness: newest applied source commit, and whether the source has said
    /// there is nothing newer.
    pub fn freshness(&self, newest_commit_us: i64, caught_up: bool) {
        self.newest_commit_us
            .store(newest_commit_us, Ordering::Relaxed);
        self.caught_up.store(caught_up as u64, Ordering::Relaxed);
    }

    pub fn reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, transient: bool) {
        if transient {
            self.errors_transient.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors_definite.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Snapshot progress of the tables being read (others are marked inactive).
    pub fn snapshots(&self, progress: &[(String, u64, u64)]) {
        let mut t = self.tables.lock().expect("metrics");
        for s in t.values_mut() {
            s.snapshot_active = false;
        }
        for (table, rows, estimate) in progress {
            let s = t.entry(table.clone()).or_default();
            s.snapshot_rows = *rows;
            s.snapshot_estimate = *estimate;
            s.snapshot_active = true;
        }
    }

    /// The text exposition format.
    pub fn render(&self, now_us: i64) -> String {
        let mut o = String::new();
        let t = self.tables.lock().expect("metrics").clone();
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut family =
            |name: &str, kind: &str, help: &str, f: &dyn Fn(&TableStats) -> Option<f64>| {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (table, s) in &t {
                    if let Some(v) = f(s) {
                        let _ = writeln!(o, "{name}{{table=\"{}\"}} {v}", esc(table));
                    }
                }
            };
        family(
            "binlake_rows_applied_total",
            "counter",
            "Rows (changes and snapshot rows) durably applied to the target.",
            &|s| Some(s.rows as f64),
        );
        family(
            "binlake_table_transactions_applied_total",
            "counter",
            "Source transactions that changed the table, applied.",
            &|s| Some(s.transactions as f64),
        );
        family(
            "binlake_bytes_applied_total",
            "counter",
            "Buffered bytes of the rows applied.",
            &|s| Some(s.bytes as f64),
        );
        family(
            "binlake_batches_applied_total",
            "counter",
            "Batches written to the table.",
            &|s| Some(s.batches as f64),
        );
        family(
            "binlake_table_lag_seconds",
            "gauge",
            "Source commit to visible in the target, of the table's last applied change.",
            &|s| Some(s.lag_s),
        );
        family(
            "binlake_snapshot_rows",
            "gauge",
            "Rows read by the table's snapshot in progress.",
            &|s| s.snapshot_active.then_some(s.snapshot_rows as f64),
        );
        family(
            "binlake_snapshot_estimated_rows",
            "gauge",
            "Estimated rows of the table's snapshot in progress.",
            &|s| s.snapshot_active.then_some(s.snapshot_estimate as f64),
        );
        let newest = self.newest_commit_us.load(Ordering::Relaxed);
        let lag = if self.caught_up.load(Ordering::Relaxed) == 1 || newest == 0 {
            0.0
        } else {
            ((now_us - newest) as f64 / 1e6).max(0.0)
        };
        let scalars: [(&str, &str, &str, f64); 6] = [
            ("binlake_lag_seconds", "gauge", "Now minus the newest applied source commit time (0 when the source has nothing newer).", lag),
            ("binlake_transactions_applied_total", "counter", "Source transactions taken in (filtered ones included).", self.transactions.load(Ordering::Relaxed) as f64),
            ("binlake_commits_total", "counter", "Commits to the target.", self.commits.load(Ordering::Relaxed) as f64),
            ("binlake_commit_seconds_total", "counter", "Time spent in commits.", self.commit_us_sum.load(Ordering::Relaxed) as f64 / 1e6),
            ("binlake_source_reconnects_total", "counter", "Binlog stream reconnects and failovers.", self.reconnects.load(Ordering::Relaxed) as f64),
            ("binlake_checkpoint_version", "gauge", "_binlake_version of the last committed checkpoint.", self.checkpoint_version.load(Ordering::Relaxed) as f64),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP binlake_errors_total Errors by class: transient ones are retried, definite ones stop the pipeline or a table.\n# TYPE binlake_errors_total counter\nbinlake_errors_total{{class=\"transient\"}} {}\nbinlake_errors_total{{class=\"definite\"}} {}",
            self.errors_transient.load(Ordering::Relaxed),
            self.errors_definite.load(Ordering::Relaxed)
        );
        o
    }
}

/// Serves `GET /metrics` (any other path: 404) until the process ends.
pub async fn serve(listener: TcpListener) {
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "serving Prometheus metrics at /metrics");
    }
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // the request line and headers (a GET has no body)
            while n < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf[n..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
                ("200 OK", get().render(crate::clock::now_us()))
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = sock.write_all(resp.as_bytes()).await {
                warn!(error = %e, "metrics response");
            }
        });
    }
}
